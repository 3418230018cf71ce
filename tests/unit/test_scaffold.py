"""`asgi-fleet init`'s decisions: which ASGI app to deploy, and the files it writes."""

from __future__ import annotations

import os
import runpy
import shlex
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_fleet import scaffold
from asgi_fleet.inventory import InventoryHost
from asgi_fleet.settings import RULES, app_settings

APP = textwrap.dedent("""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    async def root():
        return {}

    @app.get("/-/ready")
    async def ready():
        return {"ok": True}
""")


def test_a_src_layout_ships_src_and_names_the_module_from_there(tmp_path):
    (tmp_path / "src" / "shopapi").mkdir(parents=True)
    (tmp_path / "src" / "shopapi" / "__init__.py").write_text("")
    (tmp_path / "src" / "shopapi" / "main.py").write_text(APP)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_app.py").write_text("from fastapi import FastAPI\napp = FastAPI()\n")
    assert scaffold.find_app(tmp_path) == scaffold.FoundApp("src", "shopapi.main:app", "/-/ready")


def test_a_flat_layout_ships_the_repository_and_two_apps_are_refused_by_name(tmp_path):
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "main.py").write_text(APP.replace("/-/ready", "/hello"))
    assert scaffold.find_app(tmp_path) == scaffold.FoundApp(".", "service.main:app", None)
    (tmp_path / "admin.py").write_text("from starlette.applications import Starlette\nweb = Starlette()\n")
    with pytest.raises(scaffold.NotFound, match=r"found 2 ASGI apps \(admin.py:web, service/main.py:app\)"):
        scaffold.find_app(tmp_path)


def test_the_files_written_are_valid_settings_that_only_override(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "requirements.lock").write_text("")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["humanize==4.12.1"]\n')
    files = scaffold.init_files(tmp_path, app_name="shopapi", app_source="src",
                                app_module="shopapi.main:app", health_path="/-/ready", port=8010)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    data = {k: v for k, v in runpy.run_path(str(tmp_path / "group_data" / "all.py")).items()
            if not k.startswith("_")}
    # only what init decided is set; the rest of the file lists the defaults, commented
    assert set(data) == {"app_name", "app_source", "app_module", "app_lock", "health_path", "bind"}
    assert all(f"# {key} = " in files["group_data/all.py"] for key in RULES if key not in data)
    monkeypatch.chdir(tmp_path)  # relative settings are the user's: against where the deploy runs
    [app] = app_settings(data, "web2")
    assert (app.app_name, app.bind, app.worker_class) == ("shopapi", "0.0.0.0:8010",
                                                          "asgi_fleet_worker.DrainingUvicornWorker")
    assert "humanize==4.12.1" in files["requirements.in"] and "uvicorn[standard]==" in files["requirements.in"]
    compile(files["deploy.py"], "deploy.py", "exec")
    assert runpy.run_path(str(tmp_path / "inventories" / "docker.py"))["app"] == ["@docker/asgi-web2"]


@pytest.mark.parametrize("word", ["a b", "$(reboot)", "x;y", "'q'", "--since=-1"])
def test_a_command_for_a_host_keeps_each_word_whole(word):
    docker = InventoryHost("@docker/asgi-web2", {}).argv(["journalctl", word])
    assert docker == ["docker", "exec", "asgi-web2", "journalctl", word]
    ssh = InventoryHost("web3", {"ssh_user": "deploy", "ssh_port": 2222, "_sudo": True,
                                 "ssh_hostname": "127.0.0.1"}).argv(["journalctl", word])
    assert ssh[:2] == ["ssh", "-o"] and ssh[-3:-1] == ["deploy@127.0.0.1", "--"]
    assert shlex.split(ssh[-1]) == ["sudo", "-n", "journalctl", word]  # the remote shell's words
    assert os.path.basename(ssh[0]) == "ssh"


@given(st.from_regex(r"[0-9a-f]{12}", fullmatch=True))
def test_a_release_id_reaches_the_deploy_as_the_string_it_is(release):
    """pyinfra reads --data digits as a number (382435980864, or 12345 from
    000000012345): the CLI sends the id as a JSON string, read back whole."""
    from pyinfra_cli.util import parse_cli_arg

    from asgi_fleet.cli import data_arg

    key, _, value = data_arg("rollback_to", release).partition("=")
    assert (key, parse_cli_arg(value)) == ("rollback_to", release)


def test_an_id_that_reached_the_settings_as_a_number_says_how_to_quote_it(defaults):
    from asgi_fleet.settings import InvalidSettings

    with pytest.raises(InvalidSettings, match=r"rollback_to=382435980864: must be a string .* not a number"):
        app_settings(defaults | {"rollback_to": 382435980864}, "web2")
