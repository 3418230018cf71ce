"""Issue 18: the async doctor finds the synchronous call that blocks a live event loop.

asgi-web2 runs the example app with two async mistakes (example/doctor_demo.py:
`time.sleep` inside `async def`, and a task nobody keeps). Under load on the
blocking endpoint the verify check fails naming the file, the line and the
call; under several shapes of well-behaved load it passes; with no traffic
it says it had nothing to judge; a task garbage-collected while pending is
reported from the journal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from asgi_fleet.settings import PROJECT_ROOT
from e2e_helpers import HostLoad, fleet_hosts, infra_of, run_deploy, run_verify

HOST = "@docker/asgi-web2"
LOOP_TEST = "test_event_loop_is_not_blocked_by_a_synchronous_call[asgi-web2/hello]"
LOOP_CHECK = f"tests/verify/test_promises.py::{LOOP_TEST}"
HEALTH_CHECK = "tests/verify/test_promises.py::test_health_endpoint_answers_through_the_bind[asgi-web2/hello]"
BLOCKING_LINE = next(n for n, line in enumerate(
    (PROJECT_ROOT / "example/doctor_demo.py").read_text().splitlines(), 1) if "time.sleep(" in line)


@pytest.fixture(scope="module")
def demo(deployed, tmp_path_factory):
    """asgi-web2 serving example/doctor_demo.py; put back as it was afterwards."""
    tmp = tmp_path_factory.mktemp("doctor")
    run = run_deploy(tmp, "--limit", HOST, "--data", "app_module=doctor_demo:app")
    assert run.returncode == 0, run.output[-3000:]
    [web2] = [h for h in fleet_hosts() if h.name == HOST]
    yield infra_of(web2)
    restored = run_deploy(tmp, "--limit", HOST)
    assert restored.returncode == 0, restored.output[-3000:]


def loaded(host, *args: str) -> HostLoad:
    return HostLoad(host, "asgi-web2", "--clients", "2", *args, max_seconds=60)


def doctor(tmp_path, *args: str) -> subprocess.CompletedProcess:
    inventory = tmp_path / "web2.py"
    inventory.write_text(f'app = ["{HOST}"]\n')
    return subprocess.run([sys.executable, "-m", "asgi_fleet.doctor", str(inventory), *args],
                          cwd=PROJECT_ROOT, text=True, capture_output=True, timeout=300)


def test_a_sync_call_in_async_def_under_load_fails_naming_file_line_and_call(demo, tmp_path):
    with loaded(demo, "--get", "/blocking") as load:
        run = run_verify(tmp_path, select=LOOP_CHECK, loop_seconds=3)
        found = doctor(tmp_path, "--seconds", "2")
    assert load.result["requests"] > 0
    assert run.returncode == 1, run.output[-3000:]
    message = run.failures[LOOP_TEST]
    assert re.search(rf"doctor_demo\.py:{BLOCKING_LINE} in blocking\(\) calls time\.sleep "
                     r"synchronously: \d+% of the loop's samples", message), message
    assert "run_in_executor" in message  # the fix
    assert found.returncode == 1, found.stdout + found.stderr
    top = found.stdout.split("Top blocking call sites across the fleet:", 1)[1]
    assert "asgi-web2/hello worker" in top and f"doctor_demo.py:{BLOCKING_LINE}" in top, found.stdout
    assert "BLOCKED" in found.stdout


@pytest.mark.parametrize("shape", [
    ("--get", "/"),  # light GETs, two clients per mode
    ("--get", "/", "--clients", "8"),  # the same, many connections
    (),  # GET / and POST /items (pydantic validation), alternating
    ("--get", "/", "--rate", "50"),  # paced: a loop mostly waiting, busy a tenth of the time
])
def test_well_behaved_async_load_passes(demo, tmp_path, shape):
    with loaded(demo, *shape):
        run = run_verify(tmp_path, "--report-json", str(tmp_path / "r.json"), select=LOOP_CHECK,
                         loop_seconds=3)
    assert run.returncode == 0 and not run.failures, run.output[-3000:]
    [promise] = json.loads((tmp_path / "r.json").read_text())["promises"]
    assert promise["outcome"] == "pass", promise  # judged (not skipped for want of traffic)


def test_no_traffic_is_reported_as_nothing_to_judge_and_does_not_fail(demo, tmp_path):
    run = run_verify(tmp_path, HEALTH_CHECK, "--report-json", str(tmp_path / "r.json"),
                     select=LOOP_CHECK, loop_seconds=1)
    assert run.returncode == 0, run.output[-3000:]
    outcomes = {p["promise"]: p for p in json.loads((tmp_path / "r.json").read_text())["promises"]}
    loop = outcomes["event_loop_is_not_blocked_by_a_synchronous_call"]
    assert loop["outcome"] == "skip" and "no traffic to judge" in loop["message"], loop
    quiet = doctor(tmp_path, "--seconds", "1")
    assert quiet.returncode == 0 and "no traffic to judge" in quiet.stdout, quiet.stdout + quiet.stderr


def test_a_task_collected_while_pending_is_reported_from_the_journal(demo, tmp_path):
    for _ in range(3):  # each request collects the task the one before dropped
        demo.check_output("curl -sf 127.0.0.1:8000/fire-and-forget")
    found = doctor(tmp_path, "--seconds", "1")
    signs = found.stdout.split("Journal signs of async misuse since the last activation:", 1)[1]
    assert re.search(r"asgi-web2/hello: 'Task was destroyed but it is pending' \(.*\) "
                     r"(at|\d+ times, )\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", signs), found.stdout
