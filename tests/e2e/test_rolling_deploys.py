"""Rolling deploys across the fleet, behind the nginx load balancer (host asgi-lb).

A bounded load (bench/loadgen.py: keep-alive and one-connection-per-request
clients, GET and POST, no retries) runs from the controller through the load
balancer while the whole fleet is deployed, one host per batch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asgi_fleet.settings import PROJECT_ROOT
from e2e_helpers import (
    INVENTORY, PYINFRA, WebSocketSession, app_variants, fleet_hosts, infra_of, load_balancers, run_deploy,
    run_verify, wait_until,
)

LB = "asgi-lb"
APP_HOSTS = ["@docker/asgi-web1", "@docker/asgi-web2", "asgi-web3", "@docker/asgi-web4"]
FIRST = "@docker/asgi-web1"


SICK_FLAG = "/etc/asgi-fleet-test-sick"
SIX_LOCK = f"app_lock={PROJECT_ROOT / 'tests/e2e/data/requirements-with-six.lock'}"


@pytest.fixture(scope="module", autouse=True)
def back_to_the_default_release(deployed, tmp_path_factory):
    """The tests below chain (each starts where the one before ended, so its
    first deploy changes nothing); afterwards the fleet runs the default again."""
    yield
    run = run_deploy(tmp_path_factory.mktemp("restore"))
    assert run.returncode == 0, run.output[-5000:]


@pytest.fixture(scope="module")
def hosts(deployed):
    return {h.name: infra_of(h) for h in fleet_hosts() + load_balancers()}


@pytest.fixture(scope="module")
def lb_address(deployed) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", LB],
        check=True, text=True, capture_output=True).stdout.strip()


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """Copies of the example app: two that differ only in code, and one whose
    health check fails on asgi-web1 only, and only in the real service (its
    preflight canary, a transient unit, passes)."""
    return app_variants(tmp_path_factory.mktemp("apps"), {
        "code-a": lambda text: text + "\n# rollout variant a\n",
        "code-b": lambda text: text + "\n# rollout variant b\n",
        "sick-on-web1": lambda text: text.replace(
            'async def healthz() -> dict:\n',
            'async def healthz():\n'
            '    import socket\n'
            '    from fastapi.responses import JSONResponse\n'
            '    if socket.gethostname() == "asgi-web1" and "preflight" not in open("/proc/self/cgroup").read():\n'
            '        return JSONResponse({"status": "sick on this host"}, status_code=503)\n'),
        # sick wherever SICK_FLAG exists (outside preflight's canary): a host
        # that fails its gate and cannot roll back, since its old release is too
        **{f"sick-if-flagged-{v}": (lambda v: lambda text: text.replace(
            'async def healthz() -> dict:\n',
            'async def healthz():\n'
            '    import os\n'
            '    from fastapi.responses import JSONResponse\n'
            f'    if os.path.exists({SICK_FLAG!r}) and "preflight" not in open("/proc/self/cgroup").read():\n'
            '        return JSONResponse({"status": "sick while flagged"}, status_code=503)\n'
        ) + f"\n# variant {v}\n")(v) for v in "ab"},
    })


class LoadThroughLb:
    """bench/loadgen.py on the controller against the load balancer, bounded in time."""

    def __init__(self, address: str, tmp_path: Path):
        self.address, self.stop, self.out = address, tmp_path / "load.stop", tmp_path / "load.json"

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "bench" / "loadgen.py"), "--host", self.address,
             "--port", "8000", "--clients", "4", "--max-seconds", "900",
             "--stop-file", str(self.stop), "--output", str(self.out)],
            stdout=subprocess.DEVNULL)
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        self.stop.touch()
        self.proc.wait(timeout=60)
        self.result = json.loads(self.out.read_text())


def deploy(tmp_path, *data: str, limit: tuple[str, ...] = (), **kwargs):
    """A deploy with `--data` for each of `data`, and `--limit` for each of `limit`."""
    return run_deploy(tmp_path, *[a for item in data for a in ("--data", item)],
                      *[a for item in limit for a in ("--limit", item)], **kwargs)


def releases(run) -> dict[str, str]:
    """host -> release of its hello app, as the run recorded it."""
    return {h: run.host(h)["apps"]["hello"]["release"] for h in APP_HOSTS}


def served_release(host) -> str:
    return json.loads(host.check_output("curl -sf 127.0.0.1:8000/healthz"))["release"]


def assert_no_failed_request(result):
    assert result["failed"] == 0, json.dumps(result, indent=1)
    assert result["by_mode"]["keepalive"]["requests"] > 0 and result["by_mode"]["close"]["requests"] > 0


def assert_batches_in_order(run, batches: list[list[str]]):
    """From the record: the batches are `batches`, and each batch's activations
    all ended before any of the next batch's started."""
    assert run.record["rollout"]["batches"] == batches
    steps = {}
    for name, entry in run.record["hosts"].items():
        for app, info in entry["apps"].items():
            if "started" in info:
                steps.setdefault(info["batch"], []).append((info["started"], info["ended"], name))
    assert sorted(steps) == list(range(1, len(batches) + 1)), steps
    for number, batch in enumerate(batches, start=1):
        assert sorted({name for _, _, name in steps[number]}) == sorted(batch)
        if number > 1:
            assert max(end for _, end, _ in steps[number - 1]) <= min(start for start, _, _ in steps[number])


@pytest.mark.parametrize("change", ["code", "dependencies"])
def test_a_rolling_deploy_through_the_load_balancer_fails_no_request(
        hosts, lb_address, variants, tmp_path, change):
    before = {"code": [f"app_source={variants['code-a']}"],
              "dependencies": [f"app_source={variants['code-b']}"]}[change]
    base = deploy(tmp_path, *before)
    assert base.returncode == 0, base.output[-5000:]
    new = {"code": [f"app_source={variants['code-b']}"],
           "dependencies": [f"app_source={variants['code-b']}", SIX_LOCK]}[change]

    with LoadThroughLb(lb_address, tmp_path) as load:
        run = deploy(tmp_path, *new)
    assert run.returncode == 0, run.output[-5000:]

    assert_no_failed_request(load.result)
    old, now = releases(base), releases(run)
    assert len(set(now.values())) == 1 and set(now.values()) != set(old.values())
    # the load went through the load balancer to the old and the new release
    assert {*old.values(), *now.values()} <= set(load.result["releases"]), load.result["releases"]
    for name in APP_HOSTS:
        assert served_release(hosts[name]) == now[name]
        hello = run.host(name)["apps"]["hello"]
        assert hello["health"] == "healthy"
        assert hello["activation"] == ("reload" if change == "code" else "restart")
    assert_batches_in_order(run, [[h] for h in APP_HOSTS])
    # each host was drained at the load balancer, then put back
    lb_ops = [op["name"] for op in run.host(f"@docker/{LB}")["ops"] if op["changed"]]
    for number in range(1, len(APP_HOSTS) + 1):
        assert any(f"Batch {number}/" in op and "drain" in op for op in lb_ops), lb_ops
    assert hosts[f"@docker/{LB}"].check_output("ls -A /run/asgi-fleet-lb") == ""
    assert "asgi-fleet summary" in run.output and "old release" in run.output


def test_open_websockets_through_the_load_balancer_get_the_drain_bound_then_1012(
        hosts, lb_address, variants, tmp_path):
    """A rolling reload: a session open on a host is served for
    websocket_drain_seconds after its host's reload, then closed with 1012
    (service restart), never dropped; one that ends sooner is not cut."""
    drain = 10  # group_data/all.py websocket_drain_seconds
    base = deploy(tmp_path, f"app_source={variants['code-a']}")
    assert base.returncode == 0, base.output[-5000:]
    deadline = time.time() + 300
    held = [WebSocketSession(f"ws://{lb_address}:8000/ws/echo", deadline) for _ in range(8)]
    for session in held:
        session.start()
    for _ in range(60):  # until all 8 answer (30 s at most)
        if all(s.echoes for s in held):
            break
        time.sleep(0.5)
    assert all(s.echoes for s in held), [vars(s) for s in held]
    short = []

    def open_short_sessions():  # 3 s each, one every 1.5 s while the rollout runs
        for _ in range(12):
            session = WebSocketSession(f"ws://{lb_address}:8000/ws/echo", deadline,
                                       talk_seconds=3)
            session.start()
            short.append(session)
            time.sleep(1.5)

    opener = threading.Thread(target=open_short_sessions, daemon=True)
    opener.start()
    run = deploy(tmp_path, f"app_source={variants['code-b']}")
    assert run.returncode == 0, run.output[-5000:]
    opener.join(timeout=60)
    for session in held + short:
        session.join(timeout=max(1, deadline - time.time()))

    by_host = {name.rsplit("/", 1)[-1]: run.host(name)["apps"]["hello"] for name in APP_HOSTS}
    waits = []
    for session in held:
        assert session.error is None and session.code == 1012, vars(session)
        activation = by_host[session.host]  # the HUP came between its start and its end
        waits.append(session.closed_at - activation["started"])
        assert activation["started"] + drain - 1 <= session.closed_at <= activation["ended"] + drain + 5, (
            vars(session), activation)
    for session in short:
        assert session.error is None and session.code == 1000 and session.echoes >= 10, vars(session)
    print(f"WebSockets closed with 1012 {min(waits):.1f}-{max(waits):.1f} s after their host's "
          f"activation began (websocket_drain_seconds={drain}); {len(short)} short sessions untouched")


def test_a_release_sick_on_its_first_host_is_rolled_back_there_and_goes_no_further(
        hosts, lb_address, variants, tmp_path):
    base = deploy(tmp_path, f"app_source={variants['code-b']}", SIX_LOCK)
    assert base.returncode == 0, base.output[-5000:]
    old = releases(base)

    with LoadThroughLb(lb_address, tmp_path) as load:
        # a gate that fails waits health_deadline: 10 s, not 60, is as telling
        run = deploy(tmp_path, f"app_source={variants['sick-on-web1']}", SIX_LOCK, "health_deadline=10")

    assert run.returncode != 0
    assert_no_failed_request(load.result)
    first = run.host(FIRST)["apps"]["hello"]
    assert first["health"] == "rolled back", first
    assert any("health gate failed" in line for line in first["cause"]), first["cause"]
    assert any("sick on this host" in line or "503" in line for line in first["cause"]), first["cause"]
    assert "rollout stopped" in run.output and "asgi-web1" in run.record["rollout"]["halted"]
    assert served_release(hosts[FIRST]) == old[FIRST]
    for name in APP_HOSTS[1:]:  # never switched: current and the workers stay on the old release
        assert run.host(name)["apps"]["hello"]["health"] == "not activated: rollout stopped"
        assert served_release(hosts[name]) == old[name]
        assert hosts[name].check_output("readlink /srv/hello/current") == f"releases/{old[name]}"
    # the failed host is healthy on its old release, so it went back into rotation
    assert hosts[f"@docker/{LB}"].check_output("ls -A /run/asgi-fleet-lb") == ""


def upstream_servers(lb, app: str) -> list[str]:
    config = lb.file("/etc/nginx/conf.d/asgi-fleet.conf").content_string
    block = re.search(r"upstream %s \{(.*?)\}" % re.escape(app), config, re.S)
    return re.findall(r"server (\S+) ", block.group(1))


def main_pid(host, service: str = "hello") -> str:
    return host.check_output(f"systemctl show -p MainPID --value {service}")


def test_a_limited_deploy_activates_only_its_hosts_and_the_load_balancer_still_fronts_them_all(
        hosts, lb_address, variants, tmp_path):
    base = deploy(tmp_path, f"app_source={variants['code-a']}")
    assert base.returncode == 0, base.output[-5000:]
    lb = hosts[f"@docker/{LB}"]
    upstreams = {app: upstream_servers(lb, app) for app in ("hello", "shop")}
    assert upstreams == {"hello": [f"{h.rsplit('/', 1)[-1]}:8000" for h in APP_HOSTS],
                         "shop": ["asgi-web1:8001"]}
    others = [h for h in APP_HOSTS if h != "@docker/asgi-web2"]
    pids = {h: main_pid(hosts[h]) for h in others}

    with LoadThroughLb(lb_address, tmp_path) as load:
        run = deploy(tmp_path, f"app_source={variants['code-b']}",
                     limit=("@docker/asgi-web2", f"@docker/{LB}"))
    assert run.returncode == 0, run.output[-5000:]

    assert_no_failed_request(load.result)
    assert {app: upstream_servers(lb, app) for app in ("hello", "shop")} == upstreams
    web2 = run.host("@docker/asgi-web2")["apps"]["hello"]
    assert (web2["activation"], web2["health"]) == ("reload", "healthy")
    assert served_release(hosts["@docker/asgi-web2"]) == web2["release"] != releases(base)["@docker/asgi-web2"]
    for name in others:  # not in the run, not drained, not touched
        assert name not in run.record["hosts"]
        assert main_pid(hosts[name]) == pids[name]
        assert served_release(hosts[name]) == releases(base)[name]
    lb_ops = [op["name"] for op in run.host(f"@docker/{LB}")["ops"] if op["changed"]]
    assert all("Batch 2/4" in op for op in lb_ops), lb_ops
    assert lb.check_output("ls -A /run/asgi-fleet-lb") == ""


def test_a_host_that_cannot_roll_back_stays_out_of_rotation_until_a_deploy_finds_it_healthy(
        hosts, variants, tmp_path):
    lb, web1 = hosts[f"@docker/{LB}"], hosts[FIRST]
    web1.run_test(f"rm -f {SICK_FLAG}")  # an interrupted run of this test may have left it
    base = deploy(tmp_path, f"app_source={variants['sick-if-flagged-a']}")
    assert base.returncode == 0, base.output[-5000:]
    web1.run_test(f"touch {SICK_FLAG}")
    try:
        for attempt in ("the halted run", "the next run"):
            run = deploy(tmp_path, f"app_source={variants['sick-if-flagged-b']}", "health_deadline=10")
            assert run.returncode != 0, attempt
            assert run.host(FIRST)["apps"]["hello"]["health"] == "rollback failed", attempt
            assert "asgi-web1" in run.record["rollout"]["halted"]
            # batch 1 of 4 failed, yet at the end of the run it is out of rotation
            assert "asgi-web1:8000" not in upstream_servers(lb, "hello"), attempt
            assert upstream_servers(lb, "hello") == ["asgi-web2:8000", "asgi-web3:8000", "asgi-web4:8000"]
            assert json.loads(lb.file("/var/lib/asgi-fleet-lb/kept-out.json").content_string) \
                == {"hello": [FIRST]}
            assert lb.check_output("ls -A /run/asgi-fleet-lb") == ""
            codes = lb.check_output("for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code} ' "
                                    "127.0.0.1:8000/healthz; done").split()
            assert codes == ["200"] * 40, f"{attempt}: through the load balancer: {codes}"
    finally:
        web1.run(f"rm -f {SICK_FLAG}")
    healed = deploy(tmp_path, f"app_source={variants['sick-if-flagged-b']}")
    assert healed.returncode == 0, healed.output[-5000:]
    assert healed.host(FIRST)["apps"]["hello"]["health"] == "healthy"
    assert upstream_servers(lb, "hello") == [f"{h.rsplit('/', 1)[-1]}:8000" for h in APP_HOSTS]
    assert json.loads(lb.file("/var/lib/asgi-fleet-lb/kept-out.json").content_string) == {}


def test_a_host_that_stops_answering_mid_rollout_stops_it_within_the_time_limit(
        hosts, variants, tmp_path):
    """asgi-web3 (SSH) is paused once batch 2 is done: its SSH server stops answering."""
    base = deploy(tmp_path, f"app_source={variants['code-b']}", SIX_LOCK)
    assert base.returncode == 0, base.output[-5000:]
    old = releases(base)
    record = tmp_path / f"record-{len(list(tmp_path.glob('record-*')))}.json"
    paused = threading.Event()

    def pause_after_batch_2():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            data = json.loads(record.read_text()) if record.exists() else {}
            if data.get("hosts", {}).get("@docker/asgi-web2", {}).get("apps", {}).get("hello", {}).get("ended"):
                subprocess.run(["docker", "pause", "asgi-web3"], check=True)
                paused.set()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=pause_after_batch_2, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        run = deploy(tmp_path, f"app_source={variants['code-a']}", SIX_LOCK, "health_deadline=10",
                     timeout=600)
    finally:
        watcher.join(timeout=5)
        subprocess.run(["docker", "unpause", "asgi-web3"], check=False)
    took = time.monotonic() - started

    assert paused.is_set()
    assert run.returncode != 0
    assert took < 300, f"the rollout took {took:.0f}s"
    web3 = run.host("asgi-web3")["apps"]["hello"]
    assert web3["health"] == "unreachable", web3
    assert "asgi-web3" in run.record["rollout"]["halted"]
    assert run.host("@docker/asgi-web4")["apps"]["hello"]["health"] == "not activated: rollout stopped"
    assert served_release(hosts["@docker/asgi-web4"]) == old["@docker/asgi-web4"]
    # the paused host could not give its lock back: the next deploy's message names it
    wait_until(hosts["asgi-web3"], "true", timeout=30)
    hosts["asgi-web3"].run("rm -f /run/lock/asgi-fleet.deploy")
    again = deploy(tmp_path, f"app_source={variants['code-a']}", SIX_LOCK)
    assert again.returncode == 0, again.output[-5000:]


def test_a_controller_killed_mid_activation_leaves_a_host_that_finishes_and_a_run_that_converges(
        hosts, lb_address, variants, tmp_path):
    """SIGKILL to pyinfra (and its children) while batch 2 (asgi-web2) activates
    a code change, under load through the load balancer."""
    web2 = "@docker/asgi-web2"
    base = deploy(tmp_path, f"app_source={variants['code-a']}")
    assert base.returncode == 0, base.output[-5000:]
    record = tmp_path / "killed-run.json"
    activating = "systemctl is-active -q asgi-fleet-activate-hello.service"
    with LoadThroughLb(lb_address, tmp_path) as load:
        controller = subprocess.Popen(
            [PYINFRA, "-y", INVENTORY, "deploy.py", "--data", f"app_source={variants['code-b']}"],
            cwd=PROJECT_ROOT, env=os.environ | {"ASGI_FLEET_RECORD": str(record)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(hosts[web2], activating, timeout=300)
        finally:
            os.killpg(controller.pid, signal.SIGKILL)
            controller.wait(timeout=30)
        new = json.loads(record.read_text())["hosts"][web2]["apps"]["hello"]["release"]
        # the host finishes by itself; the dead run's lock and drain are left behind
        wait_until(hosts[web2], f"! {activating}", timeout=120)
        assert served_release(hosts[web2]) == new
        assert hosts[web2].file("/run/lock/asgi-fleet.deploy").exists
        assert "hello.drain-batch-2" in hosts[f"@docker/{LB}"].check_output("ls -A /run/asgi-fleet-lb")

        again = deploy(tmp_path, f"app_source={variants['code-b']}")
    assert again.returncode == 0, again.output[-5000:]
    assert_no_failed_request(load.result)
    found = again.host(web2)["lock"]
    assert found.startswith("took over the deploy lock of run ") and "pid" in found and "is gone" in found
    assert f"its last activation of hello: activated: hello runs releases/{new} and answers 200" in found
    assert again.host(web2)["apps"]["hello"]["activation"] == "none"  # it had finished by itself
    for name in APP_HOSTS:
        assert again.host(name)["apps"]["hello"]["health"] == "healthy"
        assert served_release(hosts[name]) == new
    assert hosts[f"@docker/{LB}"].check_output("ls -A /run/asgi-fleet-lb") == ""
    assert not hosts[web2].file("/run/lock/asgi-fleet.deploy").exists  # given back at the end


CLOSED_INDEX = "pip_index_url=http://127.0.0.1:9/simple"  # a closed port on the host's loopback


def test_eight_hosts_in_batches_of_two_activate_in_inventory_order(deployed, variants, tmp_path):
    """Four of them are bare, and none can reach its package index: their
    virtualenvs (the app's and the verify tools') come from the controller's
    wheelhouse, and verify passes on them."""
    spares = ["asgi-web5", "asgi-web6", "asgi-web7", "asgi-web8"]
    subprocess.run([sys.executable, "-m", "asgi_fleet.fleet", "up", "--fresh", *spares],
                   cwd=PROJECT_ROOT, check=True)
    inventory = tmp_path / "eight.py"
    inventory.write_text(
        "import runpy\n"
        "from asgi_fleet.fleet.hosts import SPARE_HOSTS, inventory_entry\n"
        f"_base = runpy.run_path({str(PROJECT_ROOT / 'inventories' / 'docker.py')!r})\n"
        "app = _base['app'] + [inventory_entry(h) for h in SPARE_HOSTS]\n"
        "lb = _base['lb']\n")
    try:
        run = deploy(tmp_path, f"app_source={variants['code-b']}", SIX_LOCK, "rollout_batch=2",
                     CLOSED_INDEX, inventory=str(inventory))
        assert run.returncode == 0, run.output[-5000:]
        order = APP_HOSTS + [f"@docker/{name}" for name in spares]
        assert_batches_in_order(run, [order[i:i + 2] for i in range(0, 8, 2)])
        assert {run.host(h)["apps"]["hello"]["health"] for h in order} == {"healthy"}
        only_spares = tmp_path / "spares.py"
        only_spares.write_text(f"app = {[f'@docker/{name}' for name in spares]!r}\n")
        verified = run_verify(tmp_path, inventory=str(only_spares))
        assert verified.returncode == 0 and not verified.failures, verified.output[-4000:]
        assert verified.passed >= 10 * len(spares)
    finally:
        subprocess.run(["docker", "rm", "-f", *spares], check=False, capture_output=True)
