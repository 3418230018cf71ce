"""The agent's preflight, run for real: the preflight script and a real
gunicorn canary with uvicorn's worker, from a release whose .venv is this
project's virtualenv; a fake systemd-run runs the units in place."""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asgi_fleet.agent_state import preflight_request
from asgi_fleet.commands import AppPaths

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "asgi_fleet" / "onhost" / "agent.py"
SCRIPT = ROOT / "asgi_fleet" / "onhost" / "preflight.py"

FAKE_SYSTEMD_RUN = r'''
import os, subprocess, sys
here = os.path.dirname(os.path.abspath(__file__))
args, env, cwd, unit, wait, i = sys.argv[1:], dict(os.environ), None, None, False, 0
while args[i].startswith("-"):
    if args[i] in ("-p", "-E"):
        key, _, value = args[i + 1].partition("=")
        if args[i] == "-E":
            env[key] = value
        elif key == "WorkingDirectory":
            cwd = value
        elif key == "RuntimeDirectory":
            os.makedirs(f"/run/{value}", exist_ok=True)
        i += 2
    else:
        wait = wait or args[i] == "--wait"
        unit = args[i].split("=", 1)[1] if args[i].startswith("--unit=") else unit
        i += 1
if wait:
    sys.exit(subprocess.run(args[i:], cwd=cwd, env=env).returncode)
proc = subprocess.Popen(args[i:], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
open(os.path.join(here, f"{unit}.service.pid"), "w").write(str(proc.pid))
'''

FAKE_SYSTEMCTL = r'''
import os, signal, sys
here = os.path.dirname(os.path.abspath(__file__))
if sys.argv[1] == "stop":
    pidfile = os.path.join(here, sys.argv[2] + ".pid")
    if os.path.exists(pidfile):
        try:
            os.killpg(int(open(pidfile).read()), signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.unlink(pidfile)
elif sys.argv[1] == "show":
    print("ActiveState=inactive")
'''

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 200 if scope["path"] == "/healthz" else 404
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})
'''


@pytest.fixture
def release(tmp_path):
    paths = AppPaths("hello", str(tmp_path / "srv"))
    release_dir = Path(paths.release("r1"))
    release_dir.mkdir(parents=True)
    (release_dir / ".venv").symlink_to(sys.prefix)
    (release_dir / "app.py").write_text(APP)
    candidates = tmp_path / "next"
    candidates.mkdir()
    (candidates / "gunicorn.conf.py").write_text('worker_class = "uvicorn_worker.UvicornWorker"\n')
    (candidates / "env").write_text("")
    (candidates / "secrets").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, code in (("systemd-run", FAKE_SYSTEMD_RUN), ("systemctl", FAKE_SYSTEMCTL)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{code}")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "journalctl").write_text("#!/bin/sh\necho 'canary: Booting worker'\n")
    (bin_dir / "journalctl").chmod(0o755)
    unit = f"asgi-fleet-test-preflight-{os.getpid()}"
    yield paths, release_dir, candidates, bin_dir, unit
    subprocess.run([str(bin_dir / "systemctl"), "stop", f"{unit}.service"])
    subprocess.run(["rm", "-rf", f"/run/{unit}"])


def preflight(release, **changes) -> tuple[int, dict]:
    paths, release_dir, candidates, bin_dir, unit = release
    request = preflight_request(paths, str(release_dir), app_module="app:app",
                                worker_class="uvicorn_worker.UvicornWorker", health_path="/healthz",
                                deadline=20, script=str(SCRIPT), stamp=str(release_dir / ".preflight-ok"),
                                digest="d1gest")
    request |= {"config": str(candidates / "gunicorn.conf.py"), "env_file": str(candidates / "env"),
                "secrets_file": str(candidates / "secrets"), "unit": unit,
                "group": grp.getgrgid(os.getgid()).gr_name, "systemd_run": str(bin_dir / "systemd-run"),
                "systemctl": str(bin_dir / "systemctl"), "journalctl": str(bin_dir / "journalctl"),
                **changes}
    run = subprocess.run([sys.executable, str(AGENT), "preflight", json.dumps(request)],
                         capture_output=True, text=True, timeout=120)
    return run.returncode, json.loads(run.stdout)


def test_a_release_that_imports_and_serves_passes_and_is_stamped(release):
    status, result = preflight(release)
    assert (status, result["outcome"]) == (0, "passed"), result
    assert "preflight: app:app is an ASGI3 app; uvicorn_worker.UvicornWorker imports" in result["said"]
    stamp = release[1] / ".preflight-ok"
    assert stamp.read_text() == "d1gest\n" and oct(stamp.stat().st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("changes, says", [
    ({"app_module": "app:nothing"}, "preflight failed: app_module 'app:nothing': app has no attribute 'nothing'"),
    ({"health_path": "/missing"}, "preflight: the canary's health check failed: want GET http://localhost/missing "
                                  "(through /run/"),
    ({"worker_class": "gunicorn.workers.nope.Worker"}, "preflight failed: worker_class"),
])
def test_a_release_that_cannot_serve_fails_with_its_reason_and_no_stamp(release, changes, says):
    status, result = preflight(release, deadline=3, **changes)
    assert (status, result["outcome"]) == (1, "failed")
    assert any(line.startswith(says) for line in result["said"]), result["said"]
    assert not (release[1] / ".preflight-ok").exists()


def test_a_config_that_gunicorn_refuses_fails_before_any_canary(release):
    (release[2] / "gunicorn.conf.py").write_text("workers = 'many'\n")
    status, result = preflight(release)
    assert status == 1 and result["said"][-1] == (
        f"preflight failed: gunicorn refused the candidate config {release[2] / 'gunicorn.conf.py'}"), result
    assert "Invalid value for workers: many" in result["said"]  # gunicorn's own words
    assert not (release[3] / f"{release[4]}.service.pid").exists()  # no canary started


def test_a_config_that_preloads_the_apps_own_code_fails_preflight(release):
    """preload_libraries naming a module of the release: the master would
    serve it unchanged across reloads, so preflight refuses the config."""
    (release[2] / "gunicorn.conf.py").write_text(
        'worker_class = "uvicorn_worker.UvicornWorker"\n'
        "from asgi_fleet.roll import preload_libraries as _preload_libraries\n"  # asgi_fleet_roll on a host
        '_preload_libraries(["app"])\n')
    status, result = preflight(release)
    assert status == 1 and result["said"][-1].startswith("preflight failed: gunicorn refused the candidate config")
    assert any(f"preload_libraries: app is not a library installed in the virtualenv (it is {release[1]}/app.py)"
               in line for line in result["said"]), result["said"]
    assert not (release[1] / ".preflight-ok").exists()
