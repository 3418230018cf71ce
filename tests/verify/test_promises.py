"""Every promise the deploy makes, one test each, per host and app.

Each failure says what is wrong where, the likely cause and the fix.
"""

from __future__ import annotations

import time

import pytest

from asgi_fleet import commands

from asgi_fleet.doctor import FIX, describe_site
from asgi_fleet.verify import (AppProbe, fast_stack, fast_stack_needed, masters_view_disagrees,
                               recognised_worker, serves_as, worker_in_stack)
from verify_session import connect, short


def test_host_is_reachable(inventory_host):
    connection = connect(inventory_host)
    if isinstance(connection, Exception):
        first_line = (str(connection).strip().splitlines() or [type(connection).__name__])[0]
        pytest.fail(f"{short(inventory_host.name)}: unreachable ({first_line[:200]}); "
                    "check that the host is up and that SSH and sudo work for the inventory's user")


def test_service_is_active_and_enabled(probe: AppProbe):
    service = probe.host.service(probe.paths.service)
    assert service.is_running, (
        f"{probe.label}: {probe.paths.service} is not running; read "
        f"`journalctl -u {probe.paths.service}` for why, fix, and redeploy")
    assert service.is_enabled, (
        f"{probe.label}: {probe.paths.service} is not enabled, so it will not come back after a "
        f"reboot; run `systemctl enable {probe.paths.service}` or redeploy")


def test_socket_listens_on_the_configured_address(probe: AppProbe):
    socket = probe.paths.socket
    state = probe.unit_properties(socket, "ActiveState", "UnitFileState", "Listen")
    bind = probe.app.bind.removeprefix("unix:")
    assert state["ActiveState"] == "active", (
        f"{probe.label}: {socket} is {state['ActiveState']}; redeploy to start it")
    assert state["UnitFileState"] == "enabled", f"{probe.label}: {socket} is not enabled; redeploy"
    assert state["Listen"] == f"{bind} (Stream)", (
        f"{probe.label}: {socket} listens on {state['Listen']!r} but bind is "
        f"{probe.app.bind!r}; the unit is stale: redeploy")


def test_master_runs_as_the_app_user(probe: AppProbe):
    assert probe.master, f"{probe.label}: no gunicorn master runs for {probe.paths.service}"
    assert probe.master_user == probe.paths.app, (
        f"{probe.label}: the master runs as {probe.master_user}, not {probe.paths.app}; "
        "the unit lost its User=: redeploy")
    others = [u for u in probe.worker_users if u != probe.paths.app]
    assert not others, f"{probe.label}: workers run as {sorted(set(others))}, not {probe.paths.app}"


def test_worker_count_matches_the_hosts_sizing(probe: AppProbe):
    running, expected = len(probe.workers), probe.expected_workers
    assert running == expected, (
        f"{probe.label}: {running} workers run but this host should run {expected} "
        f"(worker_policy={probe.app.worker_policy!r}, workers={probe.app.workers!r}); "
        + ("a worker may have been removed with TTOU or died; " if running < expected else "")
        + f"`systemctl reload {probe.paths.service}` restores the configured count, "
        "or redeploy if the host's CPUs or memory changed")


def test_workers_run_the_configured_worker_class(probe: AppProbe):
    wanted = probe.app.worker_class
    assert probe.stacks, f"{probe.label}: no workers to inspect"
    wrong = {pid: recognised_worker(stack) for pid, stack in probe.stacks.items()
             if not worker_in_stack(stack, wanted)}
    if wrong:
        kinds = ", ".join(sorted(set(wrong.values())))
        pytest.fail(
            f"{probe.label}: {len(wrong)} of {len(probe.stacks)} workers run {kinds}, "
            f"but an ASGI app needs {wanted}; set worker_class and redeploy")


def test_workers_run_uvloop_and_httptools(probe: AppProbe):
    """uvloop and httptools for uvicorn's workers; uvloop for gunicorn's ASGI
    worker, whose HTTP parser is its own (the table says which runs)."""
    needed = fast_stack_needed(probe.app.worker_class)
    missing = {}
    for pid, maps in probe.maps.items():
        for name, loaded in fast_stack(maps).items():
            if not loaded and name in needed:
                missing.setdefault(name, []).append(pid)
    assert not missing, (
        f"{probe.label}: workers run without "
        + "; ".join(f"{name} (pids {', '.join(map(str, pids))})" for name, pids in missing.items())
        + (": gunicorn's ASGI worker runs asyncio because the virtualenv lacks uvloop; "
           "lock uvloop and redeploy" if needed == ("uvloop",) else
           ": uvicorn silently fell back to asyncio/h11 because the virtualenv lacks "
           "uvicorn[standard]'s extras; lock uvicorn[standard] (not plain uvicorn) and redeploy"))


def test_health_endpoint_answers_through_the_bind(probe: AppProbe):
    health = probe.health
    assert health["status"] == "200", (
        f"{probe.label}: GET {probe.app.health_path} through {probe.app.bind} answered "
        f"{health['status']} (000: nothing answered); read `journalctl -u {probe.paths.service}`")
    assert serves_as(probe.app.worker_class, health["server"]), (
        f"{probe.label}: the answer came from server {health['server']!r}, not the one "
        f"worker_class {probe.app.worker_class!r} runs: something else serves this bind")


def test_workers_run_the_release_current_points_to(probe: AppProbe):
    current = probe.current_release
    stale = [w.pid for w in probe.workers if w.cwd != current]
    assert not stale, (
        f"{probe.label}: workers {stale} run code from {sorted({w.cwd for w in probe.workers})} "
        f"but current points to {current}; `current` was switched without a reload: "
        f"`systemctl reload {probe.paths.service}` or redeploy")
    module = probe.app.app_module.split(":")[0].replace(".", "/")
    assert probe.host.run(f"test -e {current}/{module}.py -o -d {current}/{module}").rc == 0, (
        f"{probe.label}: the app module {module} is not in {current}")
    reported = probe.health["body"].get("release")
    if reported is not None:  # the example app reports REVISION; other apps may not
        assert reported == current.rsplit("/", 1)[-1], (
            f"{probe.label}: the health endpoint reports release {reported} but current is "
            f"{current}: workers serve old code; reload or redeploy")


def test_the_masters_own_view_of_its_workers_matches_the_processes(probe: AppProbe):
    """gunicorn's control socket (`gunicornc -j show workers`) against the
    processes: a worker the master lost track of, or one it still counts
    after it died, is a finding."""
    why = masters_view_disagrees(probe.control_workers, [w.pid for w in probe.workers], probe.app.timeout)
    for _ in range(3):  # two reads, not one instant: a draining worker may exit between them
        if why is None:
            break
        time.sleep(1)
        why = masters_view_disagrees(*probe.masters_view_again(), probe.app.timeout)
    assert why is None, (f"{probe.label}: gunicorn's master and the host disagree: {why}; "
                         f"`systemctl reload {probe.paths.service}`, or restart it if that persists")


def test_configuration_is_coherent(probe: AppProbe):
    config = probe.effective_config
    assert config, (f"{probe.label}: the master does not answer on its control socket "
                    f"{probe.paths.control_socket}; is it running with asgi-fleet's config?")
    graceful, timeout, stop = config["graceful_timeout"], config["timeout"], probe.timeout_stop_seconds
    assert graceful <= timeout < stop, (
        f"{probe.label}: want graceful_timeout ({graceful}) <= timeout ({timeout}) < "
        f"TimeoutStopSec ({stop:g}); otherwise systemd kills draining workers mid-request: "
        "fix the settings or the unit, and redeploy")
    assert config["preload_app"] is False, (
        f"{probe.label}: preload_app is on, so a reload (HUP) keeps the old code; turn it off")
    assert str(config["control_socket"]).startswith(probe.paths.runtime_dir + "/"), (
        f"{probe.label}: the control socket {config['control_socket']} is outside "
        f"{probe.paths.runtime_dir}; another gunicorn may unlink it")


@pytest.mark.events
def test_journal_has_no_alarm_from_the_last_activation_or_that_keeps_happening(
        probe: AppProbe, since, request):
    """Events, not state: a worker killed once and respawned is a warning;
    alarms during the last activation, after --since, or recurring fail."""
    findings = probe.journal_findings(since)
    for finding in findings:
        if not finding.failing:
            request.node.user_properties.append(("warning", f"{probe.label}: {finding.describe()}"))
    failing = [f for f in findings if f.failing]
    assert not failing, f"{probe.label}: the journal of {probe.paths.service} says:\n" + "\n".join(
        f"  {finding.describe()}" for finding in failing)


@pytest.mark.sampled
def test_event_loop_is_not_blocked_by_a_synchronous_call(probe: AppProbe, request):
    """The async doctor's check: sampled while traffic flows, no worker's
    event loop may spend BLOCKED_SHARE of its time in one synchronous call."""
    seconds = request.config.getoption("loop_seconds")
    if not seconds:
        pytest.skip(f"{probe.label}: --loop-seconds 0: the event loop was not sampled")
    reports = probe.loop_reports(seconds)
    judged = [r for r in reports if r.judged]
    if not judged:
        busiest = max((r.busy_share for r in reports), default=0)
        pytest.skip(f"{probe.label}: no traffic to judge: {len(reports)} workers sampled for "
                    f"{seconds} s spent at most {busiest:.0%} outside the loop's poll")
    blocked = [(r, site) for r in judged for site in r.blocked]
    assert not blocked, f"{probe.label}: the event loop is blocked by synchronous calls:\n" + "\n".join(
        f"  worker {r.pid}: {describe_site(site)} (longest stall {r.longest_stall:.2f} s)"
        for r, site in blocked) + f"\n  fix: {FIX}"


EXPOSURE_THRESHOLD = 1.5  # systemd-analyze security: 0 is locked down, 10 is exposed


def test_unit_is_sandboxed(probe: AppProbe):
    score = probe.exposure
    assert score is not None, f"{probe.label}: `systemd-analyze security` gave no score"
    assert score <= EXPOSURE_THRESHOLD, (
        f"{probe.label}: {probe.paths.service} scores {score} in `systemd-analyze security` "
        f"(want <= {EXPOSURE_THRESHOLD}); the unit lost its sandbox directives: redeploy, or "
        "look for a drop-in that loosens it (`systemctl cat`)")


def test_code_config_and_secrets_are_root_owned_and_not_writable_by_the_app(probe: AppProbe):
    app, paths = probe.paths.app, probe.paths
    release = probe.current_release
    expected = {  # path: (owner, group, mode)
        release: ("root", app, "750"),
        probe.run(f"readlink -f {release}/.venv").strip(): ("root", "root", "755"),
        paths.etc: ("root", app, "750"),
        paths.gunicorn_conf: ("root", app, "640"),
        paths.env_file: ("root", app, "640"),
        paths.secrets_file: ("root", app, "640"),
    }
    for path, (owner, group, mode) in expected.items():
        seen = probe.run(f"stat -c '%U %G %a' {path}").split()
        assert seen == [owner, group, mode], (
            f"{probe.label}: {path} is {' '.join(seen) or 'missing'}, want {owner} {group} {mode}; "
            "something changed it after the deploy: redeploy")
        writable = probe.host.run(f"runuser -u {app} -- test -w {path}").rc == 0
        assert not writable, f"{probe.label}: the app user {app} can write {path}; redeploy"


def test_no_file_under_the_code_virtualenv_or_config_is_the_apps_to_change(probe: AppProbe):
    """Deep, not only the top of each tree: a file the app's user could
    change is code the next worker imports. One `find` per tree."""
    app, paths = probe.paths.app, probe.paths
    release = probe.current_release
    venv = probe.run(f"readlink -f {release}/.venv").strip()
    loose = {tree: probe.run(commands.writable_by_app(tree, app)).strip()
             for tree in (release, venv, paths.etc)}
    loose[release] = loose[release] or probe.run(commands.loose_files(release, app)).strip()
    found = {tree: path for tree, path in loose.items() if path}
    assert not found, (f"{probe.label}: " + "; ".join(
        f"{path} (under {tree}) is {probe.run(f'stat -c %U:%G:%A {path}').strip()}, want root-owned, "
        "writable by root only (and in the release, group APP, nothing for others)" for tree, path in found.items()) + ": redeploy")


def test_sockets_are_reachable_only_by_root_the_app_and_its_group(probe: AppProbe):
    app, paths = probe.paths.app, probe.paths
    control = probe.run(f"stat -c '%U %a' {paths.control_socket}").split()
    assert control == [app, "600"], (
        f"{probe.label}: the control socket {paths.control_socket} is {' '.join(control) or 'missing'}"
        f", want {app} 600: anyone who can open it controls the workers")
    bind = probe.app.bind
    if bind.startswith("unix:"):
        seen = probe.run(f"stat -c '%U %G %a' {bind[5:]}").split()
        assert seen == ["root", app, "660"], (
            f"{probe.label}: {bind[5:]} is {' '.join(seen)}, want root {app} 660 (a reverse proxy "
            f"joins group {app})")
