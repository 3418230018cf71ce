"""Helpers for the end-to-end tests: run deploys, name the fleet's hosts and apps."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asgi_fleet.inventory import InventoryHost, load_inventory
from asgi_fleet.plan import AppPlan, plan_host
from asgi_fleet.settings import PROJECT_ROOT
from asgi_fleet.verify import AppProbe

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
# bench/ holds the one deploy runner and the one load harness, shared with the e2e tests
import deploylib  # noqa: E402
from deploylib import PYINFRA, Run  # noqa: E402,F401
from loadgen import WebSocketSession  # noqa: E402,F401

INVENTORY = "inventories/docker.py"


def run_deploy(tmp_path: Path, *args: str, inventory: str = INVENTORY, timeout: int = 1500,
               env: dict[str, str] | None = None) -> Run:
    """`pyinfra -y INVENTORY deploy.py ARGS`, with the run's own record in `tmp_path`."""
    record = tmp_path / f"record-{len(list(tmp_path.glob('record-*')))}.json"
    return deploylib.run_deploy(inventory, *args, record=record, cwd=PROJECT_ROOT, timeout=timeout, env=env)


@dataclass(frozen=True)
class Target:
    """One app on one host of the fleet."""

    host: InventoryHost
    plan: AppPlan

    @property
    def id(self) -> str:
        return f"{self.host.name.removeprefix('@docker/')}/{self.plan.paths.app}"


def fleet_hosts() -> list[InventoryHost]:
    return load_inventory(INVENTORY)


def app_variants(root: Path, edits: dict) -> dict[str, Path]:
    """Copies of the example app under `root`, each with app.py edited: {name: edit(text)}."""
    made = {}
    for name, edit in edits.items():
        target = root / name
        shutil.copytree(PROJECT_ROOT / "example", target)
        app = target / "app.py"
        text = app.read_text()
        assert edit(text) != text, f"variant {name} changed nothing"
        app.write_text(edit(text))
        made[name] = target
    return made


def load_balancers() -> list[InventoryHost]:
    return load_inventory(INVENTORY, load_balancers=True)


def fleet_targets() -> list[Target]:
    return [Target(host, plan) for host in fleet_hosts() for plan in plan_host(host.data, host.name)]


_testinfra_hosts: dict[str, object] = {}


def infra_of(host: InventoryHost):
    if host.name not in _testinfra_hosts:
        _testinfra_hosts[host.name] = host.testinfra_host()
    return _testinfra_hosts[host.name]


@dataclass
class VerifyRun:
    returncode: int
    output: str
    failures: dict[str, str]  # test id -> failure message
    passed: int


def run_verify(tmp_path: Path, *args: str, inventory: str = INVENTORY,
               env: dict[str, str] | None = None, select: str = "tests/verify",
               loop_seconds: int = 0) -> VerifyRun:
    """Run the verification suite as an operator would, and read its JUnit report.
    The event-loop sampling (1 s per app) is off unless a test asks for it."""
    import xml.etree.ElementTree as ET

    report = tmp_path / f"verify-{len(list(tmp_path.glob('verify-*')))}.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", select, "--inventory", inventory, "-q",
         "-p", "no:cacheprovider", f"--junitxml={report}", "--loop-seconds", str(loop_seconds),
         *args],
        cwd=PROJECT_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
        env=os.environ | (env or {}),
    )
    failures, passed = {}, 0
    for case in ET.parse(report).iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        name = case.get("name")
        if failure is not None:
            failures[name] = failure.get("message", "")
        elif case.find("skipped") is None:
            passed += 1
    return VerifyRun(result.returncode, result.stdout, failures, passed)


def wait_until(host, condition: str, timeout: float = 60) -> None:
    """Poll a shell condition on a host until it holds (bounded)."""
    result = host.run(f"for i in $(seq {int(timeout * 2)}); do ({condition}) && exit 0; "
                      "sleep 0.5; done; exit 1")
    assert result.rc == 0, f"timed out after {timeout}s waiting for: {condition}"


def probe_of(target: Target):
    """The verification suite's probe of one app, for reading its live state."""
    return AppProbe(target.id, infra_of(target.host), target.plan.app, target.plan.paths)


class HostLoad:
    """bench/loadgen.py on a test host, as a transient unit: it stops when the
    block ends, or after `max_seconds` by itself. `result` is its JSON."""

    def __init__(self, host, container: str, *args: str, max_seconds: int = 600):
        self.host, self.container, self.args, self.max_seconds = host, container, args, max_seconds

    def __enter__(self):
        subprocess.run(["docker", "cp", str(PROJECT_ROOT / "bench" / "loadgen.py"),
                        f"{self.container}:/tmp/loadgen.py"], check=True)
        self.host.run("systemctl stop asgi-fleet-loadgen 2>/dev/null; rm -f /tmp/loadgen.stop /tmp/loadgen.json")
        self.host.check_output(
            "systemd-run --quiet --collect --unit=asgi-fleet-loadgen python3 /tmp/loadgen.py "
            f"--max-seconds {int(self.max_seconds)} --stop-file /tmp/loadgen.stop "
            f"--output /tmp/loadgen.json " + " ".join(shlex.quote(a) for a in self.args))
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        self.host.run("touch /tmp/loadgen.stop")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.host.run("test -e /tmp/loadgen.json").rc:
            time.sleep(0.5)
        self.result = json.loads(self.host.check_output("cat /tmp/loadgen.json"))
