"""Issue 3: the verification suite tells the truth about every host.

It passes on a freshly deployed fleet, and when a host is broken in a known
way it fails on exactly the checks that break, with a message that names the
host, the cause and the fix. Each break is repaired by a plain redeploy (or by
undoing an operator's override), and the suite passes again.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from asgi_fleet.settings import PROJECT_ROOT

from e2e_helpers import fleet_hosts, fleet_targets, infra_of, run_deploy, run_verify, wait_until

WEB1 = "@docker/asgi-web1"
APP = "asgi-web1/hello"
SERVICE = "hello.service"
WORKERS = f"cat /proc/$(systemctl show -p MainPID --value {SERVICE})/task/*/children"
VENV = "/srv/hello/current/.venv"
SITE = f"$(echo {VENV}/lib/python3*/site-packages)"
UP = (f"for i in $(seq 120); do [ $({WORKERS} | wc -w) = 2 ] && curl -sf 127.0.0.1:8000/healthz"
      " >/dev/null && break; sleep 0.5; done")


def check(name: str) -> str:
    """A check's test id: NAME[host/app] for web1's app, or as given with its own [id]."""
    return f"test_{name}" if name.endswith("]") else f"test_{name}[{APP}]"


# name: (break it, wait until broken, the checks that must fail, words of the message, repair)
BREAKS = {
    "sync-worker": (
        "sed -i 's/^worker_class = .*/worker_class = \"sync\"/' /etc/hello/gunicorn.conf.py"
        f" && old=$({WORKERS}) && systemctl reload {SERVICE} && echo $old > /tmp/old-workers",
        f"[ \"$(curl -s -o /dev/null -w '%{{http_code}}' 127.0.0.1:8000/healthz)\" = 500 ]"
        f" && ! grep -qw \"$({WORKERS} | cut -d' ' -f1)\" /tmp/old-workers"
        f" && [ $({WORKERS} | wc -w) = 2 ]",
        {"workers_run_the_configured_worker_class", "workers_run_uvloop_and_httptools",
         "health_endpoint_answers_through_the_bind",
         # the load balancer sees it too: one of its upstream servers answers 500
         "every_upstream_server_answers_from_the_load_balancer[asgi-lb]"},
        "asgi-web1/hello: 2 of 2 workers run gunicorn's sync worker, but an ASGI app needs "
        "asgi_fleet_worker.DrainingUvicornWorker; set worker_class and redeploy",
        "deploy",
    ),
    "no-fast-stack": (
        f"cd {VENV}/lib/python3*/site-packages && rm -r uvloop uvloop-*.dist-info httptools httptools-*.dist-info"
        f" && systemctl restart {SERVICE}",  # as an uninstall would (the venv has no pip: uv built it)
        f"[ $({WORKERS} | wc -w) = 2 ] && curl -sf 127.0.0.1:8000/healthz",
        {"workers_run_uvloop_and_httptools"},
        "uvicorn silently fell back to asyncio/h11",
        "deploy",
    ),
    "unit-disabled": (
        f"systemctl disable -q {SERVICE}", "true",
        {"service_is_active_and_enabled"},
        "asgi-web1/hello: hello.service is not enabled",
        "deploy",
    ),
    "worker-removed": (
        f"kill -TTOU $(systemctl show -p MainPID --value {SERVICE})",
        f"[ $({WORKERS} | wc -w) = 1 ]",
        {"worker_count_matches_the_hosts_sizing"},
        "asgi-web1/hello: 1 workers run but this host should run 2",
        "deploy",
    ),
    "current-switched-without-reload": (
        "cp -a $(readlink -f /srv/hello/current) /srv/hello/releases/other"
        " && ln -sfn releases/other /srv/hello/current.tmp && mv -T /srv/hello/current.tmp /srv/hello/current",
        "true",
        {"workers_run_the_release_current_points_to"},
        "but current points to /srv/hello/releases/other; `current` was switched without a reload",
        "deploy; rm -rf /srv/hello/releases/other",
    ),
    # Drift that a plain redeploy repairs although nothing was staged anew:
    "secrets-readable": (
        "chmod 644 /etc/hello/secrets", "true",
        {"code_config_and_secrets_are_root_owned_and_not_writable_by_the_app"},
        "/etc/hello/secrets is root hello 644, want root hello 640",
        "deploy",
    ),
    "workers-without-uvloop": (  # restarted while uvloop was missing, then put back
        f"mv {SITE}/uvloop /root/uvloop-away && systemctl restart {SERVICE} && {UP}"
        f" && mv /root/uvloop-away {SITE}/uvloop",
        f"[ -d {SITE}/uvloop ]",
        {"workers_run_uvloop_and_httptools"},
        "uvicorn silently fell back to asyncio/h11",
        "deploy",
    ),
    "release-file-loose": (
        "chmod g+w,o+r $(readlink -f /srv/hello/current)/app.py", "true",
        {"no_file_under_the_code_virtualenv_or_config_is_the_apps_to_change"},
        "app.py (under /srv/hello/releases/",
        "deploy",
    ),
    "venv-file-writable-by-the-app": (
        f"chgrp hello {SITE}/uvicorn/main.py && chmod g+w {SITE}/uvicorn/main.py", "true",
        {"no_file_under_the_code_virtualenv_or_config_is_the_apps_to_change"},
        "uvicorn/main.py (under /srv/hello/venvs/",
        "deploy",
    ),
    "stop-timeout-below-graceful": (
        "mkdir -p /etc/systemd/system/hello.service.d && printf '[Service]\\nTimeoutStopSec=10\\n'"
        " > /etc/systemd/system/hello.service.d/override.conf && systemctl daemon-reload",
        "true",
        {"configuration_is_coherent"},
        "asgi-web1/hello: want graceful_timeout (25) <= timeout (30) < TimeoutStopSec (10)",
        "rm -rf /etc/systemd/system/hello.service.d && systemctl daemon-reload",
    ),
}


def promise_names(path) -> set[str]:
    """The promises the suite makes per app (the tests that take a probe)."""
    import ast
    tree = ast.parse(path.read_text())
    return {node.name.removeprefix("test_") for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            and "probe" in [a.arg for a in node.args.args]}


SAMPLED = "event_loop_is_not_blocked_by_a_synchronous_call"  # judged only when traffic flows


def verdicts(report: dict) -> list[tuple]:
    """Each promise's outcome; the sampled one's only as failed or not (whether
    it had traffic to judge depends on the moment, not on the run's mode)."""
    return sorted((p["host"], p["app"] or "", p["promise"],
                   (p["outcome"] == "fail") if p["promise"] == SAMPLED else p["outcome"])
                  for p in report["promises"])


def test_the_suite_passes_on_a_freshly_deployed_fleet_serially_and_in_parallel(deployed, tmp_path):
    serial = run_verify(tmp_path, "--report-json", str(tmp_path / "serial.json"),
                        "--prometheus-textfile", str(tmp_path / "verify.prom"), loop_seconds=1)
    assert serial.returncode == 0 and not serial.failures, serial.output[-4000:]
    assert serial.passed >= 10 * len(fleet_hosts())
    assert "asgi-fleet: inventories/docker.py" in serial.output  # the summary table
    assert "ASGI-FLEET OK - 0 of" in serial.output  # the one-line summary for monitoring
    report = json.loads((tmp_path / "serial.json").read_text())
    assert (report["verdict"], report["exit_code"]) == ("ok", 0)
    # every promise, for every host and app of the inventory
    apps = {(t.host.name.removeprefix("@docker/"), t.plan.paths.app) for t in fleet_targets()}
    promises = promise_names(PROJECT_ROOT / "tests/verify/test_promises.py")
    listed = {(p["host"], p["app"], p["promise"]) for p in report["promises"] if p["app"]}
    assert listed == {(h, a, p) for h, a in apps for p in promises}
    assert {(row["host"], row["app"]) for row in report["table"]} == apps
    # the junit and the JSON agree (the loop check has no traffic to judge here: skipped)
    assert sum(p["outcome"] != "skip" for p in report["promises"]) == serial.passed
    assert {p["promise"] for p in report["promises"] if p["outcome"] == "skip"} <= {
        "event_loop_is_not_blocked_by_a_synchronous_call"}
    prom = (tmp_path / "verify.prom").read_text()
    assert prom.count("asgi_fleet_promise_ok{") == serial.passed and "asgi_fleet_verify_exit_code 0" in prom
    # pytest-xdist, one worker per host: the same verdicts
    parallel = run_verify(tmp_path, "-n", "2", "--report-json", str(tmp_path / "parallel.json"))
    assert parallel.returncode == 0, parallel.output[-4000:]
    assert verdicts(json.loads((tmp_path / "parallel.json").read_text())) == verdicts(report)
    assert "asgi-fleet: inventories/docker.py" in parallel.output


KILL_A_WORKER = (f"kill -9 $({WORKERS} | cut -d' ' -f1)"
                 f" && for i in $(seq 60); do [ $({WORKERS} | wc -w) = 2 ] && break; sleep 0.5; done")
JOURNAL_TEST = f"test_journal_has_no_alarm_from_the_last_activation_or_that_keeps_happening[{APP}]"
JOURNAL_CHECK = f"tests/verify/test_promises.py::{JOURNAL_TEST}"


def test_a_worker_killed_once_is_a_warning_and_one_killed_again_and_again_fails(deployed, tmp_path):
    """Events are not state: the master respawns a killed worker, and the
    service is healthy; only a worker that keeps dying is a failure."""
    [web1] = [h for h in fleet_hosts() if h.name == WEB1]
    host = infra_of(web1)
    host.check_output(f"systemctl restart {SERVICE} && {UP}")  # a master with a clean journal
    try:
        host.check_output(KILL_A_WORKER)
        once = run_verify(tmp_path, "--report-json", str(tmp_path / "once.json"), select=JOURNAL_CHECK)
        assert once.returncode == 0 and once.passed == 1, once.output[-3000:]
        [promise] = json.loads((tmp_path / "once.json").read_text())["promises"]
        assert promise["outcome"] == "warn"
        assert "Perhaps out of memory?" in promise["warnings"][0] and "a warning" in promise["warnings"][0]
        assert "ASGI-FLEET WARNING" in once.output
        # --since before the kill makes the same event a failure
        since = run_verify(tmp_path, "--since", "10m", select=JOURNAL_CHECK)
        assert since.returncode == 1 and "at or after --since" in since.failures[JOURNAL_TEST]
        for _ in range(2):
            host.check_output(KILL_A_WORKER)
        looping = run_verify(tmp_path, select=JOURNAL_CHECK)
        assert looping.returncode == 1, looping.output[-3000:]
        message = looping.failures[JOURNAL_TEST]
        assert re.search(r"Perhaps out of memory\?.* [3-9] times, .*and it keeps happening", message), message
    finally:
        host.check_output(f"systemctl restart {SERVICE} && {UP}")


# A POST whose body never completes: the worker that took it drains for up to
# graceful_timeout - 1 s after a reload, so the host runs one worker too many.
SLOW_POST = ("setsid -f python3 -c \"import socket, time; s = socket.create_connection(('127.0.0.1', 8000));"
             " s.sendall(b'POST /items HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
             "Content-Length: 64\\r\\n\\r\\n{'); time.sleep(30)\" </dev/null >/dev/null 2>&1")
WORKER_COUNT_TEST = f"test_worker_count_matches_the_hosts_sizing[{APP}]"
WORKER_COUNT = f"tests/verify/test_promises.py::{WORKER_COUNT_TEST}"


def test_retry_timeout_turns_a_run_started_during_a_reload_from_fail_into_pass(deployed, tmp_path):
    [web1] = [h for h in fleet_hosts() if h.name == WEB1]
    host = infra_of(web1)
    host.check_output(f"{SLOW_POST} && sleep 0.5 && systemctl reload {SERVICE}")
    wait_until(host, f"[ $({WORKERS} | wc -w) = 3 ]")  # two new workers, one old draining
    during = run_verify(tmp_path, select=WORKER_COUNT)
    assert during.returncode == 1, during.output[-3000:]
    assert "3 workers run but this host should run 2" in during.failures[WORKER_COUNT_TEST]
    retried = run_verify(tmp_path, "--retry-timeout", "60", "--report-json", str(tmp_path / "r.json"),
                         select=WORKER_COUNT)
    assert retried.returncode == 0, retried.output[-3000:]
    [promise] = json.loads((tmp_path / "r.json").read_text())["promises"]
    assert promise["outcome"] == "pass" and promise["converged_after"] > 0, promise
    assert "converged within --retry-timeout" in retried.output
    assert f"{APP} worker_count_matches_the_hosts_sizing: passed after" in retried.output


def test_a_selection_that_checks_nothing_fails(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/verify", "-q", "-p", "no:cacheprovider",
                          "-k", "no_such_promise"], cwd=PROJECT_ROOT, text=True, capture_output=True,
                         timeout=300)
    assert run.returncode == 5, run  # pytest's "nothing collected": not green


def test_bad_verify_options_are_refused_naming_the_value(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/verify", "-q", "-p", "no:cacheprovider",
                          "--since", "last tuesday"], cwd=PROJECT_ROOT, text=True, capture_output=True,
                         timeout=300)
    assert run.returncode == 4 and "--since 'last tuesday': want an ISO 8601 time" in run.stderr, run


# The broken host and the load balancer (which sees its upstream servers):
# the other hosts are checked on the freshly deployed fleet, above.
WEB1_AND_LB = ("--limit", "asgi-web1", "--limit", "lb")


@pytest.mark.parametrize("name", list(BREAKS))
def test_a_broken_host_fails_exactly_the_right_check(deployed, tmp_path, name):
    breaking, broken, failing, message, repair = BREAKS[name]
    [web1] = [h for h in fleet_hosts() if h.name == WEB1]
    host = infra_of(web1)
    host.check_output(breaking)
    try:
        wait_until(host, broken)
        run = run_verify(tmp_path, *WEB1_AND_LB, "--report-json", str(tmp_path / "broken.json"))
        assert set(run.failures) == {check(name) for name in failing}, run.output[-6000:]
        messages = "\n".join(run.failures.values())
        assert message in messages, messages
        checked = {p["host"] for p in json.loads((tmp_path / "broken.json").read_text())["promises"]}
        assert checked == {"asgi-web1", "asgi-lb"}  # what --limit picks, and no other host
    finally:
        for step in repair.split("; "):
            if step == "deploy":
                redeploy = run_deploy(tmp_path, "--limit", WEB1)
                assert redeploy.returncode == 0, redeploy.output[-4000:]
            else:
                host.check_output(step)
    repaired = run_verify(tmp_path, *WEB1_AND_LB)
    assert repaired.returncode == 0 and not repaired.failures, repaired.output[-4000:]


def test_an_unreachable_host_is_reported_without_hiding_the_others(deployed, tmp_path):
    inventory = tmp_path / "with-a-ghost.py"
    inventory.write_text(textwrap.dedent("""
        app = [
            "@docker/asgi-web2",
            ("ghost", {"ssh_hostname": "127.0.0.1", "ssh_port": 2299, "ssh_user": "deploy"}),
        ]
    """))
    run = run_verify(tmp_path, inventory=str(inventory))
    assert run.returncode != 0
    assert set(run.failures) == {"test_host_is_reachable[ghost]"}, run.output[-4000:]
    assert "ghost: unreachable" in run.failures["test_host_is_reachable[ghost]"]
    assert run.passed >= 10  # every check of asgi-web2 still ran and passed
    assert "UNREACHABLE" in run.output


def test_a_limit_that_picks_no_host_fails_loudly():
    """`--limit asgi-wbe1` in CI must not check nothing and pass."""
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/verify", "--limit", "asgi-wbe1",
                          "-q", "-p", "no:cacheprovider"], cwd=PROJECT_ROOT, text=True,
                         capture_output=True, timeout=300)
    assert run.returncode == 4, run
    assert "--limit 'asgi-wbe1': no host or group of the inventory" in run.stderr, run
    assert "asgi-web1" in run.stderr  # and what there is


@pytest.mark.parametrize("inventory, says", [
    ("inventories/typo.py", "inventory 'inventories/typo.py': no such file"),
    ("lb-only", "has no app host (only 1 in group lb): nothing to check"),
])
def test_an_inventory_with_nothing_to_check_fails_loudly(tmp_path, inventory, says):
    """A typo in CI must not be green: neither verify nor status exits 0."""
    if inventory == "lb-only":
        inventory = str(tmp_path / "lb-only.py")
        (tmp_path / "lb-only.py").write_text('lb = ["@docker/asgi-lb"]\n')
    verify = subprocess.run([sys.executable, "-m", "pytest", "tests/verify", "--inventory", inventory,
                             "-q", "-p", "no:cacheprovider"], cwd=PROJECT_ROOT, text=True,
                            capture_output=True, timeout=300)
    assert verify.returncode not in (0, 1) and says in verify.stderr + verify.stdout, verify
    status = subprocess.run([sys.executable, "-m", "asgi_fleet.status", inventory], cwd=PROJECT_ROOT,
                            text=True, capture_output=True, timeout=300)
    assert status.returncode == 2 and says in status.stderr, status
