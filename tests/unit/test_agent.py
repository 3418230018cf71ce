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

from asgi_fleet.lock import parse_lock_answer
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


def lock(tmp_path, **request) -> dict:
    run = agent("lock", json.dumps({"lock": str(tmp_path / "lock" / "deploy"),
                                    "systemctl": str(tmp_path / "absent"),
                                    "logs_dir": str(tmp_path / "logs"), **request}))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_lock_is_taken_once_given_back_by_its_holder_and_replaced_only_when_stale(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "hello.log").write_text("activating\nrolled back: hello runs releases/r1 again\n")
    assert lock(tmp_path, action="take", owner="run-1 ops@laptop 100") == {"outcome": "acquired"}
    held = lock(tmp_path, action="take", owner="run-2 ci@runner 200")
    assert held["outcome"] == "held" and held["holder"] == "run-1 ops@laptop 100"
    assert held["last_words"] == {"hello": "rolled back: hello runs releases/r1 again"}
    read = parse_lock_answer(held)  # as the deploy reads it
    assert not read.acquired and read.holder is None and read.holder_text == "run-1 ops@laptop 100"
    # a stale holder is replaced only if it is still exactly the one found gone
    assert lock(tmp_path, action="take", owner="run-3 x 300", stale="run-0 gone 1")["outcome"] == "held"
    assert lock(tmp_path, action="take", owner="run-3 x 300",
                stale="run-1 ops@laptop 100") == {"outcome": "acquired"}
    assert lock(tmp_path, action="give", run_id="run-1")["outcome"] == "not ours"
    assert lock(tmp_path, action="status")["holder"] == "run-3 x 300"
    assert lock(tmp_path, action="give", run_id="run-3") == {"outcome": "given"}
    assert lock(tmp_path, action="status")["outcome"] == "free"


def test_two_runs_racing_for_the_lock_one_wins(tmp_path):
    request = json.dumps({"lock": str(tmp_path / "deploy"), "action": "take",
                          "systemctl": str(tmp_path / "absent")})
    racers = [subprocess.Popen([sys.executable, str(AGENT), "lock",
                                request.replace('"take"', f'"take", "owner": "run-{i} r {i}"')],
                               stdout=subprocess.PIPE, text=True) for i in range(6)]
    outcomes = [json.loads(p.communicate(timeout=60)[0])["outcome"] for p in racers]
    assert sorted(outcomes) == ["acquired"] + ["held"] * 5


def test_prune_deletes_only_the_named_releases_and_venvs_by_name(tree):
    _, root, _ = tree
    run = agent("prune", json.dumps({"root": str(root), "releases": ["r1", "../../etc", ""],
                                     "venvs": ["v9"]}))
    result = json.loads(run.stdout)
    assert result == {"outcome": "refused", "removed": ["releases/r1"],
                      "refused": ["releases/../../etc", "releases/"]}
    assert not (root / "releases" / "r1").exists() and (root / "releases" / "r2").is_dir()


@pytest.mark.parametrize("args, says", [
    ((), "usage: agent.py {state|preflight|activate|run-activation|lock|prune|venv} REQUEST_JSON"),
    (("launch", "{}"), "usage"),
    (("state", "{not json"), "the request is not JSON"),
])
def test_bad_requests_are_refused_as_json(args, says):
    run = agent(*args)
    assert run.returncode == 2 and says in json.loads(run.stdout)["error"]


def test_a_lock_taken_with_a_state_request_answers_with_the_state_read_under_it(tree):
    tmp_path, root, _ = tree
    then_state = {"lock": str(tmp_path / "lock" / "deploy"), "systemctl": str(tmp_path / "absent"),
                  "apps": [{"name": "hello", "root": str(root), "service": "hello.service",
                            "units": [], "files": [], "activation_record": str(tmp_path / "rec")}]}
    taken = lock(tmp_path, action="take", owner="run-1 ops@laptop 100", then_state=then_state)
    assert taken["outcome"] == "acquired"
    assert taken["state"]["apps"]["hello"]["current"] == "r2"
    assert taken["state"]["lock"] == "run-1 ops@laptop 100"  # read after the lock was taken
    held = lock(tmp_path, action="take", owner="run-2 ci@runner 200", then_state=then_state)
    assert held["outcome"] == "held" and "state" not in held  # nothing to decide on for a loser
