"""The agent's activation, run for real on a temporary tree: a fake systemctl
that starts a fake master (two worker processes in the release `current`
points at), a real HTTP health endpoint on loopback whose answer each
release decides, and a fake journalctl that leaks a secret."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from asgi_fleet.agent_state import ActivationResult, activation_request, app_entry
from asgi_fleet.commands import AppPaths

AGENT = Path(__file__).resolve().parents[2] / "asgi_fleet" / "onhost" / "agent.py"
SECRET = "s3cret-value-42"

FAKE_SYSTEMCTL = r'''
import json, os, signal, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
pidfile, root = os.path.join(here, "mainpid"), os.environ.get("FAKE_ROOT") or open(os.path.join(here, "root")).read()
def running():
    try:
        pid = int(open(pidfile).read())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return 0
def stop():
    pid = running()
    if pid:
        os.killpg(pid, signal.SIGKILL)
    if os.path.exists(pidfile):
        os.unlink(pidfile)
def start():
    code = ("import os, subprocess, time; "
            "cwd = os.path.realpath(os.path.join(%r, 'current')); "
            "kids = [subprocess.Popen(['sleep', '120'], cwd=cwd) for _ in range(2)]; time.sleep(120)" % root)
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            kids = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        except OSError:
            kids = []
        if len(kids) == 2:
            break
        time.sleep(0.02)
    open(pidfile, "w").write(str(proc.pid))
verb, args = sys.argv[1], sys.argv[2:]
if verb == "show":
    props = [a.split("=", 1)[1] for a in args if a.startswith("--property=")]
    values = {"MainPID": str(running()), "ActiveState": "active" if running() else "inactive"}
    for p in props:
        print(f"{p}={values.get(p, '')}")
elif verb in ("start", "restart", "reload", "reload-or-restart") and args[-1].endswith(".service"):
    if verb == "start" and running():
        sys.exit(0)
    stop()
    start()
elif verb == "stop" and args[-1].endswith(".service"):
    stop()
elif verb in ("enable", "is-enabled"):  # what is enabled, a unit a line
    path = os.path.join(here, "enabled")
    enabled = set(open(path).read().split()) if os.path.exists(path) else set()
    units = [a for a in args if not a.startswith("-")]
    if verb == "enable":
        open(path, "w").write("\n".join(sorted(enabled | set(units))))
    elif not set(units) <= enabled:
        sys.exit(1)
'''


class Health(http.server.BaseHTTPRequestHandler):
    """Answers with the status written in the release `current` points at."""

    root: Path

    def do_GET(self):  # noqa: N802 - http.server's name
        release = Path(os.path.realpath(self.root / "current"))
        status = int((release / "HEALTH").read_text()) if (release / "HEALTH").exists() else 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def host(tmp_path):
    """A tree with releases r1 (healthy, live) and r2, r3; staged files; the fakes."""
    paths = AppPaths("hello", str(tmp_path / "srv"))
    root = Path(paths.root)
    (root / "venvs" / "v1").mkdir(parents=True)
    for release, health in (("r1", 200), ("r2", 200), ("r3", 500)):
        (root / "releases" / release).mkdir(parents=True)
        (root / "releases" / release / "HEALTH").write_text(str(health))
    (root / "current").symlink_to("releases/r1")
    (root / "history").write_text("1000 r1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f"#!{sys.executable}\n{FAKE_SYSTEMCTL}")
    journalctl = bin_dir / "journalctl"
    journalctl.write_text(f"#!/bin/sh\necho 'worker booting'\necho 'connecting with password={SECRET}'\n")
    for tool in (systemctl, journalctl):
        tool.chmod(0o755)
    (bin_dir / "root").write_text(str(root))
    Health.root = root
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    subprocess.run([str(systemctl), "start", "hello.service"], check=True)
    yield paths, root, bin_dir, server.server_address[1]
    server.shutdown()
    subprocess.run([str(systemctl), "stop", "hello.service"])


def stage(tmp_path: Path, paths: AppPaths, **contents: str) -> dict:
    """Write staged and live files under tmp_path; return the request's `staged`."""
    staged = {}
    for name, (staged_path, live_path) in paths.staged.items():
        staged_file = tmp_path / "stage" / name
        live_file = tmp_path / "live" / name
        staged_file.parent.mkdir(parents=True, exist_ok=True)
        live_file.parent.mkdir(parents=True, exist_ok=True)
        staged_file.write_text(contents.get(name, f"{name} v2\n"))
        staged_file.chmod(0o640)
        if name != "secrets":  # a first secrets file: nothing live to keep
            live_file.write_text(f"{name} v1\n")
        staged[name] = [str(staged_file), str(live_file)]
    return staged


def request(host, tmp_path, *, release_id: str, previous: str | None, kind: str, **more) -> dict:
    paths, root, bin_dir, port = host
    req = activation_request(paths, release_id=release_id, previous=previous, kind=kind,
                             reload_units=False, bind=f"127.0.0.1:{port}", health_path="/healthz",
                             deadline=3, consecutive=2, workers=2,
                             release_dir=str(root / "releases" / release_id), **more)
    secrets = tmp_path / "live" / "secrets-staged"
    secrets.parent.mkdir(parents=True, exist_ok=True)
    secrets.write_text(f"DB_PASSWORD={SECRET}\n")
    return req | {"systemctl": str(bin_dir / "systemctl"), "journalctl": str(bin_dir / "journalctl"),
                  "staged": stage(tmp_path, paths, secrets=f"DB_PASSWORD={SECRET}\n"),
                  "previous_files": str(tmp_path / "previous"), "secrets": [str(secrets)],
                  "result": str(tmp_path / "state" / "hello.json"),
                  "record": str(tmp_path / "state" / "hello"),
                  "log": str(tmp_path / "logs" / "hello.log")}


def run_activation(req: dict) -> dict:
    run = subprocess.run([sys.executable, str(AGENT), "run-activation", json.dumps(req)],
                         capture_output=True, text=True, timeout=120)
    result = json.loads(Path(req["result"]).read_text())
    assert run.returncode == (0 if result["outcome"] == "activated" else 1), run.stderr
    assert run.stdout == "" and run.stderr.splitlines() == result["said"]  # the log has its words only
    return result


def calls(host) -> list[str]:
    return (host[2] / "calls").read_text().splitlines()


def test_a_reload_installs_switches_and_passes_the_gate_on_the_new_release(host, tmp_path):
    _, root, _, _ = host
    req = request(host, tmp_path, release_id="r2", previous="r1", kind="reload")
    result = run_activation(req)
    assert result["outcome"] == "activated", (result["said"], result["steps"])
    assert os.readlink(root / "current") == "releases/r2"
    assert (root / "history").read_text().splitlines()[-1].endswith(" r2")
    for name, (staged, live) in req["staged"].items():
        assert Path(live).read_text() == Path(staged).read_text()
        assert oct(Path(live).stat().st_mode & 0o777) == "0o640"  # the staged file's mode
    assert (tmp_path / "previous" / "config").read_text() == "config v1\n"
    assert [s["step"] for s in result["steps"]] == [
        "install the staged files", "point current at releases/r2", "daemon-reload",
        "enable the units and start the socket", "reload", "health gate"]
    assert all(s["ok"] and s["ended"] >= s["started"] for s in result["steps"])
    assert "reload hello.service" in calls(host)
    assert "daemon-reload" not in calls(host)  # no unit changed
    # the gate polled at least twice, and asked systemd for the master once: then /proc
    assert calls(host).count("show hello.service --property=MainPID") == 1
    assert "enable --quiet hello.socket hello.service" in calls(host)
    # the result and the window verify reads, kept on the host
    assert json.loads(Path(req["result"]).read_text()) == result
    start, end, status = Path(req["record"]).read_text().split()
    assert int(start) <= int(end) and status == "0"
    assert ActivationResult.parse(json.dumps(result)).health == "healthy"
    # the next activation finds both enabled, and leaves them so
    again = run_activation(request(host, tmp_path, release_id="r1", previous="r2", kind="reload"))
    assert again["outcome"] == "activated", again["said"]
    assert [c for c in calls(host) if c.startswith("enable")] == ["enable --quiet hello.socket hello.service"]


def test_a_release_that_fails_its_gate_is_rolled_back_with_its_files_and_the_journal_redacted(host, tmp_path):
    _, root, _, port = host
    req = request(host, tmp_path, release_id="r3", previous="r1", kind="reload")
    result = run_activation(req)
    assert result["outcome"] == "rolled back", result
    assert os.readlink(root / "current") == "releases/r1"
    # r1 is back, and r3 is marked: rollback=1 never picks it
    assert [line.split()[1:] for line in (root / "history").read_text().splitlines()[-2:]] == [
        ["r1"], ["r3", "failed"]]
    for name, (_, live) in req["staged"].items():  # the live files as they were
        if name == "secrets":
            assert not Path(live).exists()  # there was none before
        else:
            assert Path(live).read_text() == f"{name} v1\n"
    said = "\n".join(result["said"])
    assert (f"health gate failed: want GET http://127.0.0.1:{port}/healthz to answer 200 2 times in a row "
            f"and 2 workers on {root}/releases/r3") in said
    assert "rolling back hello to releases/r1" in said
    assert "rolled back: hello runs releases/r1 again and answers 200" in said
    assert SECRET not in json.dumps(result) and "password=<redacted>" in result["journal"][-1]
    assert calls(host)[-1] == "reload-or-restart hello.service"
    record = ActivationResult.parse(json.dumps(result))
    assert record.health == "rolled back" and record.cause[0].startswith("health gate failed")
    assert Path(req["record"]).read_text().split()[2] == "1"


def test_a_first_release_that_fails_is_stopped_not_rolled_back(host, tmp_path):
    _, root, bin_dir, _ = host
    subprocess.run([str(bin_dir / "systemctl"), "stop", "hello.service"], check=True)
    (root / "current").unlink()
    req = request(host, tmp_path, release_id="r3", previous=None, kind="start") | {"reload_units": True}
    result = run_activation(req)
    assert result["outcome"] == "failed"
    assert "rolling back hello to nothing (the first release: stopped)" in result["said"]
    assert calls(host).count("daemon-reload") == 2  # units installed, then removed again
    assert calls(host)[-1] == "stop hello.service"
    assert [s["step"] for s in result["steps"]][-1] == "undo the start"


def test_nothing_to_activate_puts_back_a_disabled_unit_and_a_switched_current(host, tmp_path):
    _, root, _, _ = host
    (root / "current").unlink()
    (root / "current").symlink_to("releases/r2")  # switched by hand; r1 still runs
    req = request(host, tmp_path, release_id="r1", previous="r2", kind="none",
                  enable=("hello.socket",), check_health=False)
    result = run_activation(req)
    assert result["outcome"] == "activated", (result["said"], result["steps"])
    assert os.readlink(root / "current") == "releases/r1"
    assert "enable --quiet hello.socket" in calls(host)
    assert not any(c.startswith(("reload", "restart")) for c in calls(host))
    assert Path(req["staged"]["config"][1]).read_text() == "config v1\n"  # files left alone


FAKE_SYSTEMD_RUN = r'''
import os, subprocess, sys
args = sys.argv[1:]
props, i = {}, 0
while args[i].startswith("-"):
    if args[i] == "-p":
        key, _, value = args[i + 1].partition("=")
        props[key] = value
        i += 2
    else:
        i += 1
kind, out = props["StandardOutput"].split(":", 1)
log = open(out, "w")
sys.exit(subprocess.run(args[i:], stdout=log, stderr=log).returncode)
'''


def test_activate_runs_in_a_unit_of_its_own_and_reports_its_result(host, tmp_path):
    _, root, bin_dir, _ = host
    fake = bin_dir / "systemd-run"
    fake.write_text(f"#!{sys.executable}\n{FAKE_SYSTEMD_RUN}")
    fake.chmod(0o755)
    req = request(host, tmp_path, release_id="r2", previous="r1", kind="restart") | {
        "systemd_run": str(fake)}
    run = subprocess.run([sys.executable, str(AGENT), "activate", json.dumps(req)],
                         capture_output=True, text=True, timeout=120)
    result = json.loads(run.stdout)
    assert result["outcome"] == "activated" and "restart hello.service" in calls(host)
    assert "reset-failed asgi-fleet-activate-hello.service" in calls(host)
    assert Path(req["log"]).read_text().strip() == "activated: hello runs releases/r2 and answers 200"
    # a unit that dies before it writes its result is a failure that says so
    broken = bin_dir / "systemd-run-broken"
    broken.write_text("#!/bin/sh\necho 'Failed to start transient service unit' >&2\nexit 1\n")
    broken.chmod(0o755)
    run = subprocess.run([sys.executable, str(AGENT), "activate", json.dumps(req | {"systemd_run": str(broken)})],
                         capture_output=True, text=True, timeout=60)
    failed = ActivationResult.parse(run.stdout)
    assert failed.outcome == "failed"
    assert failed.cause[:2] == ["the activation unit asgi-fleet-activate-hello.service ended with status 1 "
                                "and left no result", "Failed to start transient service unit"]


def test_each_activation_appends_to_the_hosts_deploy_history_which_state_reads_back(host, tmp_path):
    paths, root, bin_dir, _ = host
    history = tmp_path / "state" / "deploys.jsonl"
    who = {"by": "ops@laptop", "run_id": "3f2a9c0d1e4b", "commit": "0123456789ab+dirty"}
    for release_id, previous in (("r2", "r1"), ("r3", "r2")):
        req = request(host, tmp_path, release_id=release_id, previous=previous, kind="reload", who=who)
        req["audit"]["path"] = str(history)
        run_activation(req)
    history.open("a").write('{"torn line\n')  # a line cut short must not hide the others
    lines = [json.loads(line) for line in history.read_text().splitlines()[:2]]
    assert [(d["release"], d["previous"], d["activation"], d["outcome"]) for d in lines] == [
        ("r2", "r1", "reload", "activated"), ("r3", "r2", "reload", "rolled back")]
    assert all(d["by"] == "ops@laptop" and d["commit"] == "0123456789ab+dirty"
               and d["ended"] >= d["started"] for d in lines)
    entry = app_entry(paths, deploys=1) | {"deploys": {"path": str(history), "last": 1}}
    state = json.loads(subprocess.run(
        [sys.executable, str(AGENT), "state", json.dumps({"systemctl": str(bin_dir / "systemctl"),
                                                          "apps": [entry | {"root": str(root)}]})],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    assert [d["release"] for d in state["apps"]["hello"]["deploys"]] == ["r3"]  # the last one


def test_a_healthy_activation_prunes_what_it_was_told_and_a_failed_one_prunes_nothing(host, tmp_path):
    """The controller names what keep_releases leaves out once the new release
    is healthy; the activation deletes it as it ends, names only."""
    _, root, _, _ = host
    (root / "releases" / "r0").mkdir()
    prune = (["r0", "../../etc"], ["v1"])
    failed = run_activation(request(host, tmp_path, release_id="r3", previous="r1", kind="reload", prune=prune))
    assert failed["outcome"] == "rolled back" and "pruned" not in failed
    assert (root / "releases" / "r0").is_dir() and (root / "venvs" / "v1").is_dir()
    result = run_activation(request(host, tmp_path, release_id="r2", previous="r1", kind="reload", prune=prune))
    assert result["outcome"] == "activated", result["said"]
    assert result["pruned"] == ["releases/r0", "venvs/v1"]
    assert not (root / "releases" / "r0").exists() and not (root / "venvs" / "v1").exists()
    assert result["steps"][-1]["step"] == "prune old releases" and not result["steps"][-1]["ok"]  # ../../etc refused
    assert ActivationResult.parse(json.dumps(result)).pruned == ("releases/r0", "venvs/v1")
    nothing = run_activation(request(host, tmp_path, release_id="r1", previous="r2", kind="reload"))
    assert nothing["pruned"] == [] and nothing["steps"][-1]["step"] == "health gate"


def test_a_staged_file_the_same_as_the_live_one_is_left_in_place(host, tmp_path):
    """Rewritten, an unchanged unit would be "changed on disk" to systemd."""
    req = request(host, tmp_path, release_id="r2", previous="r1", kind="reload")
    staged, live = (Path(p) for p in req["staged"]["service_unit"])
    staged.write_text(live.read_text())
    live.chmod(0o640)  # the staged file's mode: nothing differs
    before = live.stat().st_ino
    assert run_activation(req)["outcome"] == "activated"
    assert live.stat().st_ino == before
    assert Path(req["staged"]["config"][1]).read_text() == "config v2\n"  # a changed one lands


def test_the_gates_worker_count_reads_proc_and_asks_systemd_again_only_once_the_master_is_gone(host):
    _, root, bin_dir, _ = host
    spec = importlib.util.spec_from_file_location("asgi_fleet_agent", AGENT)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    count = agent.WorkersOn(str(bin_dir / "systemctl"), "hello.service", str(root / "releases" / "r1"))
    on_r2 = agent.WorkersOn(str(bin_dir / "systemctl"), "hello.service", str(root / "releases" / "r2"))
    assert [count(), count(), on_r2()] == [(2, 2), (2, 2), (0, 2)]
    assert calls(host).count("show hello.service --property=MainPID") == 2  # once per count, not per poll
    (root / "current").unlink()
    (root / "current").symlink_to("releases/r2")
    subprocess.run([str(bin_dir / "systemctl"), "restart", "hello.service"], check=True)  # a new master
    assert [count(), on_r2(), on_r2()] == [(0, 2), (2, 2), (2, 2)]
    assert calls(host).count("show hello.service --property=MainPID") == 4
    subprocess.run([str(bin_dir / "systemctl"), "stop", "hello.service"], check=True)
    assert count() == (0, 0)
