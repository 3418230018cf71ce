"""Issue 2's promises, checked on every host and app of the fleet."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from asgi_fleet import commands
from asgi_fleet.plan import plan_host
from asgi_fleet.settings import PROJECT_ROOT
from e2e_helpers import (INVENTORY, PYINFRA, Target, fleet_hosts, fleet_targets, infra_of, probe_of,
                         run_deploy)


def test_units_are_enabled_active_and_the_socket_listens(deployed, target: Target):
    host, paths = infra_of(target.host), target.plan.paths
    service = host.service(paths.service)
    assert service.is_enabled and service.is_running
    socket = host.check_output(
        f"systemctl show -p ActiveState,SubState,UnitFileState --value {paths.socket}").split()
    # "running": systemd has handed the listening socket to the service
    assert socket[0] == "active" and socket[1] in ("listening", "running") and socket[2] == "enabled"
    bind = target.plan.app.bind
    listen = host.check_output(f"systemctl show -p Listen --value {paths.socket}")
    assert listen == f"{bind.removeprefix('unix:')} (Stream)"
    if not bind.startswith("unix:"):  # the kernel's own word: a TCP socket in LISTEN state (0A)
        port = f"{int(bind.rsplit(':', 1)[1]):04X}"
        assert host.run(f"awk '$2 ~ /:{port}$/ && $4 == \"0A\"' /proc/net/tcp /proc/net/tcp6").stdout


def test_one_master_and_the_sized_number_of_workers_run_as_the_app_user(deployed, target: Target):
    host, probe = infra_of(target.host), probe_of(target)
    assert len(probe.workers) == probe.expected_workers > 0
    assert set(probe.worker_users) == {target.plan.paths.app}
    master = host.check_output(
        f"ps -o user=,args= -p $(systemctl show -p MainPID --value {target.plan.paths.service})")
    assert master.split()[0] == target.plan.paths.app
    assert f"gunicorn: master [{target.plan.paths.app}]" in master


def test_every_worker_runs_the_deployed_release(deployed, target: Target):
    releases = {w.cwd.rsplit("/", 1)[-1] for w in probe_of(target).workers}
    assert sorted(releases) == [target.plan.release_id]


def test_health_endpoint_answers_200_through_the_socket(deployed, target: Target):
    host = infra_of(target.host)
    args = " ".join(commands.q(a) for a in commands.curl_args(target.plan.app.bind, "/healthz"))
    body = json.loads(host.check_output(f"curl -sf --max-time 5 {args}"))
    assert body["status"] == "ok" and body["release"] == target.plan.release_id


def test_code_and_virtualenv_belong_to_root(deployed, target: Target):
    host, plan = infra_of(target.host), target.plan
    for path in (plan.release_dir, plan.venv_dir, plan.paths.gunicorn_conf):
        file = host.file(path)
        assert file.user == "root", path
        assert not file.mode & 0o002, f"{path} is world-writable"
    user = host.user(plan.paths.app)
    assert user.shell == "/usr/sbin/nologin" and not user.home.startswith("/home")


def test_worker_count_follows_each_hosts_usable_cpus(deployed):
    counts = {t.host.name.removeprefix("@docker/"): probe_of(t).expected_workers
              for t in fleet_targets() if t.plan.paths.app == "hello"}
    assert counts["asgi-web1"] == 2  # two CPUs, no limits
    assert counts["asgi-web2"] == 1  # --cpuset-cpus=0
    assert counts["asgi-web4"] == 1  # --cpus=1: a cgroup quota


def test_two_apps_coexist_on_one_host(deployed):
    [host] = [h for h in fleet_hosts() if len(h.data.get("apps") or []) >= 2]
    plans = plan_host(host.data, host.name)
    infra = infra_of(host)
    users, roots, masters = set(), set(), set()
    for plan in plans:
        probe = probe_of(Target(host, plan))
        assert probe.serves(plan.release_dir), probe.summary()
        users.add(probe.worker_users[0])
        roots.add(plan.paths.root)
        masters.add(infra.check_output(f"systemctl show -p MainPID --value {plan.paths.service}"))
    assert len(users) == len(roots) == len(masters) == len(plans) == 2


def test_second_run_changes_nothing(deployed, tmp_path):
    again = run_deploy(tmp_path)
    assert again.returncode == 0, again.output[-4000:]
    assert {h["status"] for h in again.record["hosts"].values()} == {"ok"}
    assert again.changed_ops() == {name: [] for name in again.record["hosts"]}


def fingerprint(host) -> str:
    """What a deploy would change: unit states, main PIDs, managed files, releases."""
    return host.check_output(
        "for u in $(systemctl list-units --plain --no-legend '*.service' '*.socket' | awk '{print $1}'); do "
        "systemctl show -p Id,MainPID,ActiveEnterTimestampMonotonic $u; done; "
        "stat -c '%n %Y %s' /etc/*/gunicorn.conf.py /etc/*/env /etc/systemd/system/*.s* "
        "/srv/*/current /srv/*/releases/* 2>/dev/null || true")


def test_bad_settings_stop_the_run_before_any_host_changes(deployed, tmp_path):
    hosts = fleet_hosts()
    before = {h.name: fingerprint(infra_of(h)) for h in hosts}
    run = run_deploy(tmp_path, "--data", "graceful_timeout=90", "--data", "worker_policy=lots")
    assert run.returncode != 0
    assert "graceful_timeout=90" not in run.output or "must be <= timeout" in run.output
    assert "worker_policy='lots': must be one of 'cores', 'cores+1', '2*cores+1'" in run.output
    assert all(not h["ops"] for h in run.record["hosts"].values())
    assert {h.name: fingerprint(infra_of(h)) for h in hosts} == before


def test_a_failing_and_an_unreachable_host_do_not_stop_the_others(deployed, tmp_path):
    """Within the failure budget: by default (0) either one stops the rollout."""
    inventory = tmp_path / "mixed.py"
    inventory.write_text(textwrap.dedent("""
        app = [
            "@docker/asgi-web2",
            # healthy service, but the gate asks for a path it does not serve
            ("@docker/asgi-web4", {"health_path": "/no-such-path", "health_deadline": 2}),
            # nothing listens on this loopback port
            ("ghost", {"ssh_hostname": "127.0.0.1", "ssh_port": 2299, "ssh_user": "deploy"}),
        ]
    """))
    run = run_deploy(tmp_path, "--data", "rollout_max_failures=2", inventory=str(inventory))
    assert run.returncode != 0
    assert run.record["rollout"]["halted"] is None
    assert run.host("@docker/asgi-web2")["status"] == "ok"
    assert run.host("@docker/asgi-web4")["status"] == "failed"
    assert run.host("ghost")["status"] == "unreachable"
    assert "[ghost]" in run.output
    assert "health gate failed: want GET http://127.0.0.1:8000/no-such-path to answer 200" in run.output
    assert "it answered 404" in run.output


def test_a_dry_run_says_what_each_host_would_activate_and_changes_nothing(deployed, tmp_path):
    hosts = fleet_hosts()
    before = {h.name: fingerprint(infra_of(h)) for h in hosts}
    record = tmp_path / "record.json"
    # without -y: with it, pyinfra skips the change detection that --dry prints
    done = subprocess.run([PYINFRA, "--dry", INVENTORY, "deploy.py", "--data", "keepalive=9"],
                          cwd=PROJECT_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900, env=os.environ | {"ASGI_FLEET_RECORD": str(record)})
    assert done.returncode == 0, done.stdout[-4000:]
    assert not record.exists()  # the last run's record is left alone
    plan = done.stdout.split("--> asgi-fleet plan (--dry", 1)[1].splitlines()[2:]
    predicted = {(row.split()[0], row.split()[1]): row.split()[5] for row in plan if row.strip()}
    # gunicorn.conf.py changes: every app would reload
    assert predicted == {(t.host.name, t.plan.paths.app): "reload" for t in fleet_targets()}, done.stdout[-3000:]
    assert {h.name: fingerprint(infra_of(h)) for h in hosts} == before


@pytest.mark.parametrize("mode", [["-y"], ["--dry"]])
def test_json_output_parses(deployed, tmp_path, mode):
    done = subprocess.run([PYINFRA, *mode, "--json", INVENTORY, "deploy.py"], cwd=PROJECT_ROOT, text=True,
                          capture_output=True, timeout=900,
                          env=os.environ | {"ASGI_FLEET_RECORD": str(tmp_path / "record.json")})
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout)  # the summary goes to stderr, with pyinfra's progress
    assert results["plan"] and "--> asgi-fleet" in done.stderr


def test_one_wheelhouse_per_platform_and_every_virtualenv_holds_the_locks_wheels(deployed, controller_cache):
    """bookworm (asgi-web1..3) and trixie (asgi-web4), one lock: two
    wheelhouses on the controller; every host's venv holds exactly the
    wheels of its platform's, each with a hash from the lock."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    from asgi_fleet.wheelhouse import PLATFORM_PROBE, Wheelhouse, parse_platform

    lock = PROJECT_ROOT / "example" / "requirements.lock"
    lock_hashes: dict[str, set[str]] = {}
    name = None
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = canonicalize_name(line.split("==")[0])
        for word in line.split():
            if word.startswith("--hash=sha256:"):
                lock_hashes.setdefault(name, set()).add(word.removeprefix("--hash=sha256:"))
    targets = [t for t in fleet_targets() if t.plan.lock_file == lock]
    platform = {t.id: parse_platform(infra_of(t.host).check_output(PLATFORM_PROBE).splitlines(), t.id)
                for t in targets}
    houses = {}
    for host_platform in set(platform.values()):  # the deploy's, from the session's cache
        house = Wheelhouse(lock, host_platform)
        house.tarball()
        houses[host_platform] = json.loads((house.directory / "wheels.json").read_text())["wheels"]
    assert len(houses) == 2, platform
    for key, wheels in houses.items():
        for wheel, sha in wheels.items():
            assert sha in lock_hashes[parse_wheel_filename(wheel)[0]], (key, wheel)
    for target in targets:
        want = {parse_wheel_filename(w)[0]: str(parse_wheel_filename(w)[1]) for w in houses[platform[target.id]]}
        listing = infra_of(target.host).check_output(
            f"cd {target.plan.venv_dir}/lib/python3*/site-packages && ls -d *.dist-info")
        installed = dict(d.removesuffix(".dist-info").rsplit("-", 1) for d in listing.split())
        installed = {canonicalize_name(name): version for name, version in installed.items()}
        for bundled in ("pip", "setuptools"):  # the venv's own, from the host's python3
            installed.pop(bundled, None)
        assert installed == want, target.id
