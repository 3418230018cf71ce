import io
import tarfile

from asgi_fleet.release import lock_problems, locked_versions, release_id, release_tarball

LOCK = """\
gunicorn==27.0.1 \\
    --hash=sha256:aa
uvicorn==0.54.0 \\
    --hash=sha256:bb
uvicorn-worker==0.4.0 \\
    --hash=sha256:cc
uvloop==0.23.0 ; sys_platform != 'win32' \\
    --hash=sha256:dd
httptools==0.9.0 \\
    --hash=sha256:ee
setproctitle==1.3.8 \\
    --hash=sha256:ff
"""


def make_app(tmp_path, body="app = 1\n"):
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "main.py").write_text(body)
    (app / "__pycache__").mkdir(exist_ok=True)
    (app / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    return app, lock


def test_release_id_is_stable_and_ignores_build_leftovers(tmp_path):
    app, lock = make_app(tmp_path)
    first = release_id(app, lock)
    (app / "__pycache__" / "other.pyc").write_bytes(b"more junk")
    assert release_id(app, lock) == first


def test_release_id_changes_with_code_and_with_the_lock(tmp_path):
    app, lock = make_app(tmp_path)
    first = release_id(app, lock)
    (app / "main.py").write_text("app = 2\n")
    second = release_id(app, lock)
    lock.write_text(LOCK + "# changed\n")
    assert len({first, second, release_id(app, lock)}) == 3


def test_tarball_is_reproducible_and_holds_only_release_files(tmp_path):
    app, _ = make_app(tmp_path)
    data = release_tarball(app)
    assert data == release_tarball(app)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["main.py"]


def test_locked_versions_normalizes_names():
    assert locked_versions(LOCK)["uvicorn-worker"] == "0.4.0"
    assert locked_versions("Foo_Bar.baz[x]==1.0 \\\n")["foo-bar-baz"] == "1.0"


def test_lock_without_the_fast_stack_is_refused():
    plain = LOCK.replace("uvloop==0.23.0 ; sys_platform != 'win32' \\\n    --hash=sha256:dd\n", "")
    problems = lock_problems(plain, "app.lock")
    assert problems == ["app_lock='app.lock': does not pin uvloop "
                        "(the fast event loop: lock uvicorn[standard], not plain uvicorn)"]


def test_lock_without_hashes_is_refused():
    assert any("no --hash" in p for p in lock_problems("gunicorn==1\n", "x"))
