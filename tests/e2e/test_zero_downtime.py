"""Issue 4: zero failed requests while config, code, dependencies or a rollback
go live, and a broken release never takes traffic.

A bounded load (bench/loadgen.py: keep-alive and one-connection-per-request
clients, GET and POST) runs inside the test host against the real bind while
the deploy activates each kind of change five times.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from asgi_fleet.settings import PROJECT_ROOT
from e2e_helpers import HostLoad, app_variants, fleet_hosts, infra_of, run_deploy

HOST = "@docker/asgi-web1"
CONTAINER = "asgi-web1"
SERVICE = "hello.service"
ROUNDS = 3  # per kind; the rollout tests add more


@pytest.fixture(scope="module")
def web1(deployed):
    [host] = [h for h in fleet_hosts() if h.name == HOST]
    return infra_of(host)


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> str:
    """web1 with only the hello app, so the load's target is the only app changing."""
    path = tmp_path_factory.mktemp("inventory") / "web1.py"
    path.write_text(f'app = [("{HOST}", {{"apps": [{{"app_name": "hello"}}]}})]\n')
    return str(path)


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """Copies of the example app that differ only in code, and a broken pair."""
    return app_variants(tmp_path_factory.mktemp("apps"), {
        "code-a": lambda text: text + "\n# variant a\n",
        "code-b": lambda text: text + "\n# variant b\n",
        "import-error": lambda text: "import module_that_is_not_installed\n" + text,
        "health-500": lambda text: text.replace(
            'async def healthz() -> dict:\n',
            'async def healthz():\n'
            '    from fastapi.responses import JSONResponse\n'
            '    return JSONResponse({"status": "broken"}, status_code=500)\n'),
    })


@pytest.fixture(scope="module")
def alternative_lock() -> Path:
    """The example lock plus one more locked package: a dependency change."""
    return PROJECT_ROOT / "tests" / "e2e" / "data" / "requirements-with-six.lock"


def Load(host) -> HostLoad:  # six clients per mode, on the host under test
    return HostLoad(host, CONTAINER, "--clients", "6")


def master_pid(host) -> str:
    return host.check_output(f"systemctl show -p MainPID --value {SERVICE}")


def served_release(host) -> str:
    return json.loads(host.check_output("curl -sf 127.0.0.1:8000/healthz"))["release"]


def deploy(tmp_path, inventory, *data: str):
    args = [arg for item in data for arg in ("--data", item)]
    return run_deploy(tmp_path, *args, inventory=inventory)


def activation_of(run) -> dict:
    return run.host(HOST)["apps"]["hello"]


def under_load(web1, steps):
    """Run steps (each a callable) under load; return the load's result."""
    with Load(web1) as load:
        for step in steps:
            step()
    return load.result


def assert_no_failed_request(result):
    assert result["failed"] == 0, json.dumps(result, indent=1)
    assert result["by_mode"]["keepalive"]["requests"] > 0 and result["by_mode"]["close"]["requests"] > 0


@pytest.mark.parametrize("kind", ["config", "code", "dependencies", "rollback"])
def test_activation_under_load_fails_no_request(web1, inventory, variants, alternative_lock,
                                                tmp_path, kind):
    source = f"app_source={variants['code-a']}"
    base = deploy(tmp_path, inventory, source)  # a known starting point, outside the load
    assert base.returncode == 0, base.output[-3000:]
    if kind == "rollback":  # two releases in the history to go back and forth between
        second = deploy(tmp_path, inventory, f"app_source={variants['code-b']}")
        assert second.returncode == 0, second.output[-3000:]

    def step(round_no: int):
        def run():
            pid = master_pid(web1)
            if kind == "config":
                data = [source, f"keepalive={6 + round_no % 2}"]
            elif kind == "code":
                data = [f"app_source={variants['code-b' if round_no % 2 == 0 else 'code-a']}"]
            elif kind == "dependencies":
                lock = alternative_lock if round_no % 2 == 0 else "example/requirements.lock"
                data = [source, f"app_lock={lock}"]
            else:
                data = ["rollback=1"]
            run_ = deploy(tmp_path, inventory, *data)
            assert run_.returncode == 0, run_.output[-3000:]
            activation = activation_of(run_)
            expected = {"config": "reload", "code": "reload", "dependencies": "restart",
                        "rollback": "reload"}[kind]
            assert activation["activation"] == expected
            assert served_release(web1) == activation["release"]  # every worker on the new code
            assert (master_pid(web1) == pid) == (expected == "reload")
        return run

    result = under_load(web1, [step(i) for i in range(ROUNDS)])
    assert_no_failed_request(result)


# On the host: the number of workers of the unit's master, every 20 ms, until
# the stop file appears (at most 3000 samples, about a minute); one line each.
SAMPLER = r"""
import os, subprocess, sys, time
service, stop, out = sys.argv[1:]
with open(out, "w") as samples:
    for _ in range(3000):
        if os.path.exists(stop):
            break
        pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", service],
                             capture_output=True, text=True).stdout.strip()
        try:
            count = sum(len(open(f"/proc/{pid}/task/{task}/children").read().split())
                        for task in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            count = -1  # no master: a sample below any worker count
        samples.write(f"{count}\n")
        time.sleep(0.02)
"""


def test_a_reload_replaces_the_workers_one_at_a_time_under_load(web1, inventory, variants, tmp_path):
    base = deploy(tmp_path, inventory, f"app_source={variants['code-a']}")  # outside the load
    assert base.returncode == 0, base.output[-3000:]
    workers = len(web1.check_output(f"cat /proc/{master_pid(web1)}/task/*/children").split())
    web1.run("systemctl stop asgi-fleet-sampler 2>/dev/null; rm -f /tmp/sampler.stop /tmp/samples")
    with Load(web1) as load:
        web1.check_output("systemd-run --quiet --collect --unit=asgi-fleet-sampler python3 -c "
                          f"{shlex.quote(SAMPLER)} {SERVICE} /tmp/sampler.stop /tmp/samples")
        run = deploy(tmp_path, inventory, f"app_source={variants['code-b']}")
        web1.check_output("touch /tmp/sampler.stop; while systemctl -q is-active asgi-fleet-sampler; do sleep 0.1; done")
    assert run.returncode == 0, run.output[-3000:]
    assert_no_failed_request(load.result)
    counts = [int(line) for line in web1.check_output("cat /tmp/samples").split()]
    assert len(counts) > 50 and min(counts) >= workers, counts
    assert max(counts) == workers + 1, counts  # one new worker at a time, never all at once
    release = activation_of(run)["release"]
    cwds = web1.check_output(f"for w in $(cat /proc/{master_pid(web1)}/task/*/children); do "
                             "readlink /proc/$w/cwd; done").split()
    assert cwds == [f"/srv/hello/releases/{release}"] * workers, cwds
    # whatever priority each imported the app at, every worker serves at nice 0
    nice = web1.check_output(f"ps -o ni= -p \"$(cat /proc/{master_pid(web1)}/task/*/children | xargs | tr ' ' ,)\"").split()
    assert nice == ["0"] * workers, nice


@pytest.mark.parametrize("broken, cause", [
    ("import-error", "ModuleNotFoundError: No module named 'module_that_is_not_installed'"),
    ("health-500", "the canary's health check failed"),
])
def test_a_broken_release_is_refused_at_preflight(web1, inventory, variants, tmp_path,
                                                   broken, cause):
    good = deploy(tmp_path, inventory, f"app_source={variants['code-a']}")
    assert good.returncode == 0, good.output[-3000:]
    pid, release = master_pid(web1), served_release(web1)
    current = web1.check_output("readlink /srv/hello/current")
    with Load(web1) as load:
        # a canary that answers 500 is waited for until health_deadline
        refused = deploy(tmp_path, inventory, f"app_source={variants[broken]}", "health_deadline=8")
    assert refused.returncode != 0
    assert cause in refused.output, refused.output[-3000:]
    assert "preflight" in refused.output
    assert web1.check_output("readlink /srv/hello/current") == current
    assert (master_pid(web1), served_release(web1)) == (pid, release)  # never signalled
    assert_no_failed_request(load.result)


def test_two_concurrent_deploys_one_fails_fast_and_the_host_ends_on_one_release(
        web1, inventory, variants, tmp_path):
    base = deploy(tmp_path, inventory, f"app_source={variants['code-a']}")
    assert base.returncode == 0, base.output[-3000:]
    command = [str(Path(PROJECT_ROOT / ".venv" / "bin" / "pyinfra")), "-y", inventory, "deploy.py"]
    procs = []
    for n, variant in enumerate(["code-b", "code-a"]):
        procs.append(subprocess.Popen(
            command + ["--data", f"app_source={variants[variant]}"], cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "ASGI_FLEET_RECORD": str(tmp_path / f"c{n}.json")}))
        time.sleep(1.5)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outputs
    loser = outputs[codes.index(1)]
    # a live run (its pyinfra process is alive here) keeps its lock: never taken over
    assert "another deploy holds this host's lock" in loser and "Nothing was changed" in loser, loser[-3000:]
    winner = json.loads((tmp_path / f"c{codes.index(0)}.json").read_text())
    release = winner["hosts"][HOST]["apps"]["hello"]["release"]
    assert web1.check_output("readlink /srv/hello/current") == f"releases/{release}"
    assert served_release(web1) == release
    assert web1.run("test -e /run/lock/asgi-fleet.deploy").rc != 0  # both gave the lock back
