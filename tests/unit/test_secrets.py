from asgi_fleet.secrets import Redacted, secrets_file, source_problems


def test_redacted_never_shows_its_value():
    secret = Redacted(b"API_TOKEN=hunter2\n")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in repr({"content": secret})
    assert bytes(secret) == b"API_TOKEN=hunter2\n"


def test_sources_from_the_controller_env_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOP_TOKEN", "t0ken")
    (tmp_path / "db").write_text("pa55word\n")
    sources = {"API_TOKEN": "env:SHOP_TOKEN", "DB_PASSWORD": f"file:{tmp_path}/db"}
    assert source_problems(sources) == []
    assert bytes(secrets_file(sources)) == b"API_TOKEN=t0ken\nDB_PASSWORD=pa55word\n"


def test_problems_name_the_secret_and_the_source_never_a_value(monkeypatch):
    monkeypatch.delenv("MISSING_VAR", raising=False)
    problems = source_problems({"A": "env:MISSING_VAR", "B": "file:/no/such/file", "c-d": "x"})
    assert problems == [
        "A: the controller has no environment variable MISSING_VAR",
        "B: the controller has no file /no/such/file",
        "'c-d': must be a dict of NAME: \"env:VARIABLE\" or \"file:/path\", "
        "NAME made of letters, digits and _",
    ]
