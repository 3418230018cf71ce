"""The on-host agent, run for real: a temporary tree of releases, a fake
systemctl, and a fake master with two worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from asgi_fleet.sizing import RESOURCES_PROBE, parse_resources, resources_from_agent

AGENT = Path(__file__).resolve().parents[2] / "asgi_fleet" / "onhost" / "agent.py"


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(AGENT), *args], capture_output=True, text=True,
                          timeout=60)


def state(request: dict) -> dict:
    run = agent("state", json.dumps(request))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "srv" / "hello"
    (root / "venvs" / "v1").mkdir(parents=True)
    for release in ("r1", "r2"):
        (root / "releases" / release).mkdir(parents=True)
        (root / "releases" / release / ".venv").symlink_to("../../venvs/v1")
    (root / "releases" / "r3.tmp").mkdir()  # an unpacking cut short
    (root / "current").symlink_to("releases/r2")
    (root / "history").write_text("1764626000 r1\n1764626100 r2\n")
    etc = tmp_path / "etc" / "hello"
    (etc / "next").mkdir(parents=True)
    (etc / "env").write_text("A=1\n")
    (etc / "next" / "env").write_text("A=2\n")
    (etc / "env").chmod(0o640)
    return tmp_path, root, etc


@pytest.fixture
def master(tree):
    """A process with two children that run in releases/r2, as gunicorn's workers do."""
    _, root, _ = tree
    code = (f"import subprocess, time; kids = [subprocess.Popen(['sleep', '30'], cwd={str(root / 'releases/r2')!r})"
            " for _ in range(2)]; time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(100):  # until both children exist
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if len(kids) == 2:
            break
        time.sleep(0.05)
    yield proc.pid, [int(k) for k in kids]
    for kid in kids:
        try:
            os.kill(int(kid), 9)
        except ProcessLookupError:
            pass
    proc.kill()
    proc.wait()


def fake_systemctl(tmp_path: Path, main_pid: int) -> str:
    script = tmp_path / "systemctl"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$2" in
          hello.service) echo MainPID={main_pid}; echo LoadState=loaded; echo ActiveState=active;
                         echo UnitFileState=enabled ;;
          hello.socket) echo LoadState=loaded; echo ActiveState=active; echo UnitFileState=disabled ;;
          *) echo MainPID=0; echo LoadState=not-found; echo ActiveState=inactive; echo UnitFileState= ;;
        esac
        """))
    script.chmod(0o755)
    return str(script)


def test_state_reads_releases_master_workers_files_units_lock_and_flags(tree, master):
    tmp_path, root, etc = tree
    pid, kids = master
    (tmp_path / "lock").write_text("run-1 deployer@laptop 1764626400\n")
    (tmp_path / "flags").mkdir()
    (tmp_path / "flags" / "hello-batch-2").touch()
    (tmp_path / "activated").write_text("1764626400 1764626412 0\n")
    found = state({
        "systemctl": fake_systemctl(tmp_path, pid), "lock": str(tmp_path / "lock"),
        "flag_dir": str(tmp_path / "flags"),
        "apps": [{"name": "hello", "root": str(root), "service": "hello.service",
                  "units": ["hello.service", "hello.socket", "gone.service"],
                  "files": [str(etc / "env"), str(etc / "next" / "env"), str(etc / "missing")],
                  "activation_record": str(tmp_path / "activated")}],
    })
    app = found["apps"]["hello"]
    assert (app["current"], sorted(app["releases"]), app["venvs"]) == ("r2", ["r1", "r2"], ["v1"])
    assert app["releases"]["r1"] == "../../venvs/v1"
    assert app["history"] == ["1764626000 r1", "1764626100 r2"]
    assert app["master"]["pid"] == pid
    assert sorted(w["pid"] for w in app["master"]["workers"]) == sorted(kids)
    assert {w["cwd"] for w in app["master"]["workers"]} == {str(root / "releases" / "r2")}
    assert not any(w["uvloop"] or w["httptools"] for w in app["master"]["workers"])
    live, staged, missing = (app["files"][str(p)] for p in (etc / "env", etc / "next" / "env", etc / "missing"))
    assert live["mode"] == "640" and live["sha256"] != staged["sha256"] and missing is None
    assert live["owner"] == staged["owner"]
    assert app["units"]["hello.socket"] == {"load": "loaded", "active": "active", "enabled": "disabled"}
    assert app["units"]["gone.service"]["load"] == "not-found"
    assert app["activation"] == {"started": 1764626400.0, "ended": 1764626412.0, "status": 0}
    assert found["lock"] == "run-1 deployer@laptop 1764626400"
    assert found["flags"] == ["hello-batch-2"]


def test_nothing_there_is_null_not_a_guess(tmp_path):
    found = state({"systemctl": fake_systemctl(tmp_path, 0), "lock": str(tmp_path / "no-lock"),
                   "apps": [{"name": "new", "root": str(tmp_path / "srv" / "new"),
                             "service": "new.service"}]})
    app = found["apps"]["new"]
    assert (app["current"], app["releases"], app["master"], app["activation"]) == (None, {}, None, None)
    assert found["lock"] is None and found["flags"] is None
    # no systemctl at all (a host without systemd): units and master are unknown, not made up
    blind = state({"systemctl": str(tmp_path / "absent"),
                   "apps": [{"name": "new", "root": str(tmp_path), "service": "new.service",
                             "units": ["new.service"]}]})
    assert blind["apps"]["new"]["master"] is None and blind["apps"]["new"]["units"] == {"new.service": None}


def test_resources_agree_with_the_shell_probe_on_this_machine():
    probe = subprocess.run(["bash", "-c", RESOURCES_PROBE], capture_output=True, text=True, check=True)
    assert resources_from_agent(state({})["resources"]) == parse_resources(probe.stdout)


@pytest.mark.parametrize("args, says", [
    ((), "usage: agent.py {state} REQUEST_JSON"),
    (("launch", "{}"), "usage"),
    (("state", "{not json"), "the request is not JSON"),
])
def test_bad_requests_are_refused_as_json(args, says):
    run = agent(*args)
    assert run.returncode == 2 and says in json.loads(run.stdout)["error"]
