"""Helpers for the end-to-end tests: run deploys, name the fleet's hosts and apps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from asgi_fleet.inventory import InventoryHost, load_inventory
from asgi_fleet.plan import AppPlan, plan_host
from asgi_fleet.settings import PROJECT_ROOT

INVENTORY = "inventories/docker.py"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


@dataclass
class Run:
    returncode: int
    output: str
    record: dict

    def host(self, name: str) -> dict:
        return self.record["hosts"][name]

    def changed_ops(self) -> dict[str, list[str]]:
        return {name: [op["name"] for op in host["ops"] if op["changed"]]
                for name, host in self.record["hosts"].items()}


def run_deploy(tmp_path: Path, *args: str, inventory: str = INVENTORY, timeout: int = 1500) -> Run:
    """`pyinfra -y INVENTORY deploy.py ARGS`, with the run's own record."""
    record = tmp_path / f"record-{len(list(tmp_path.glob('record-*')))}.json"
    result = subprocess.run(
        [PYINFRA, "-y", inventory, "deploy.py", *args], cwd=PROJECT_ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        env=os.environ | {"ASGI_FLEET_RECORD": str(record)},
    )
    data = json.loads(record.read_text()) if record.exists() else {"hosts": {}}
    return Run(result.returncode, result.stdout, data)


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


def fleet_targets() -> list[Target]:
    return [Target(host, plan) for host in fleet_hosts() for plan in plan_host(host.data, host.name)]


_testinfra_hosts: dict[str, object] = {}


def infra_of(host: InventoryHost):
    if host.name not in _testinfra_hosts:
        _testinfra_hosts[host.name] = host.testinfra_host()
    return _testinfra_hosts[host.name]
