"""The controller's reading of the agent's state, against the readers it stands in for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from asgi_fleet.agent_state import HostState, state_request
from asgi_fleet.commands import AppPaths
from asgi_fleet.release import parse_releases_state

AGENT = Path(__file__).resolve().parents[2] / "asgi_fleet" / "onhost" / "agent.py"


def run_agent(request: dict) -> HostState:
    run = subprocess.run([sys.executable, str(AGENT), "state", json.dumps(request)],
                         capture_output=True, text=True, timeout=60, check=True)
    return HostState.parse(run.stdout)


def test_releases_match_the_shell_reader(tmp_path):
    paths = AppPaths("hello", str(tmp_path))
    root = Path(paths.root)
    (root / "venvs" / "v1").mkdir(parents=True)
    for release in ("r1", "r2"):
        (root / "releases" / release).mkdir(parents=True)
        (root / "releases" / release / ".venv").symlink_to(f"{paths.venvs}/v1")
    (root / "current").symlink_to("releases/r2")
    (root / "history").write_text("1 r1\n2 r2\n3 r2 failed\n4 r1\n")
    request = state_request([paths]) | {"systemctl": str(tmp_path / "no-systemctl")}
    found = run_agent(request).app(paths).releases
    shell = parse_releases_state(
        f"current releases/r2\nhistory 1 r1\nhistory 2 r2\nhistory 3 r2 failed\nhistory 4 r1\n"
        f"release r1 {paths.venvs}/v1\nrelease r2 {paths.venvs}/v1\nvenv v1\n")
    assert found == shell and found.failed == {"r2"}


def test_staged_changes_compare_content_owner_and_mode():
    paths = AppPaths("hello")
    state = HostState({"resources": {}, "lock": None, "apps": {"hello": {
        "history": [], "current": None, "releases": {}, "venvs": [], "master": None, "units": {},
        "activation": None, "files": {
            staged: {"sha256": "a", "owner": "root", "group": "hello", "mode": "640"}
            for staged, _ in paths.staged.values()} | {
            paths.gunicorn_conf: {"sha256": "a", "owner": "root", "group": "hello", "mode": "640"},
            paths.env_file: {"sha256": "b", "owner": "root", "group": "hello", "mode": "640"},
            paths.secrets_file: {"sha256": "a", "owner": "root", "group": "hello", "mode": "644"},
        }}}})
    assert state.app(paths).staged_changes == {"env", "secrets", "service_unit", "socket_unit"}


def test_the_master_and_its_slow_workers():
    paths = AppPaths("hello")
    doc = {"apps": {"hello": {"master": {"pid": 7, "venv": "/srv/hello/venvs/v1", "workers": [
        {"pid": 8, "cwd": "/srv/hello/releases/r1", "uvloop": True, "httptools": True},
        {"pid": 9, "cwd": "/srv/hello/releases/r1", "uvloop": True, "httptools": False}]},
        "units": {"hello.socket": {"enabled": "enabled"}, "hello.service": None}}}}
    app = HostState(doc).app(paths)
    master = app.master
    assert (master.pid, master.venv, master.worker_releases, master.slow_workers) == (
        7, "/srv/hello/venvs/v1", ("/srv/hello/releases/r1",) * 2, (9,))
    assert app.units_not_enabled == {"hello.service"}
