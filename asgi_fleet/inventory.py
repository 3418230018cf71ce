"""Read a pyinfra inventory the way a deploy does, for tools that check hosts.

The verification suite and `python -m asgi_fleet.status` must see the same
hosts, groups, group data and host data as `pyinfra INVENTORY deploy.py`, so
they load it with pyinfra's own loader, then reach each host with testinfra.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgi_fleet.rollout import LB_GROUP


@dataclass(frozen=True)
class InventoryHost:
    name: str  # the pyinfra host name, as the deploy prints it
    data: dict[str, Any]  # all its data: group_data/all.py < groups < host data
    groups: tuple[str, ...] = ()  # its inventory groups

    @property
    def is_lb(self) -> bool:  # a load balancer (group `lb`), not an app host
        return LB_GROUP in self.groups

    @property
    def testinfra_spec(self) -> str:
        if self.name.startswith("@docker/"):
            return "docker://" + self.name.removeprefix("@docker/")
        if self.name.startswith("@local"):
            return "local://"
        user = self.data.get("ssh_user")
        address = self.data.get("ssh_hostname") or self.name
        port = self.data.get("ssh_port") or 22
        return f"ssh://{user + '@' if user else ''}{address}:{port}"

    def argv(self, command: list[str]) -> list[str]:
        """`command` run on this host, as a local argv (docker exec, ssh, or as is)."""
        if self.name.startswith("@docker/"):
            return ["docker", "exec", self.name.removeprefix("@docker/"), *command]
        if self.name.startswith("@local"):
            return command
        on_host = shlex.join(["sudo", "-n", *command] if self.data.get("_sudo") else command)
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                   "-p", str(self.data.get("ssh_port") or 22)]
        if self.data.get("ssh_key"):
            options += ["-i", self.data["ssh_key"]]
        if self.data.get("ssh_known_hosts_file"):
            options += ["-o", f"UserKnownHostsFile={self.data['ssh_known_hosts_file']}",
                        "-o", "StrictHostKeyChecking=yes"]
        user = self.data.get("ssh_user")
        address = self.data.get("ssh_hostname") or self.name
        return ["ssh", *options, f"{user}@{address}" if user else address, "--", on_host]

    def testinfra_host(self):
        import testinfra

        spec = self.testinfra_spec
        if not spec.startswith("ssh://"):
            return testinfra.get_host(spec)
        extra = ["-o BatchMode=yes", "-o ConnectTimeout=10"]
        if self.data.get("ssh_known_hosts_file"):
            extra += [f"-o UserKnownHostsFile={self.data['ssh_known_hosts_file']}",
                      "-o StrictHostKeyChecking=yes"]
        return testinfra.get_host(
            spec, ssh_identity_file=self.data.get("ssh_key"), ssh_extra_args=" ".join(extra),
            sudo=bool(self.data.get("_sudo")),
        )


class InventoryError(Exception):
    """An inventory that names nothing to check: a typo must not pass as green."""


def app_hosts_of(path: str) -> list[InventoryHost]:
    """The app hosts of an inventory, or InventoryError saying why there are none."""
    hosts = load_inventory(path)
    if not hosts:
        lbs = load_inventory(path, load_balancers=True)
        raise InventoryError(f"inventory {path!r} has no app host (only {len(lbs)} in group lb): "
                             "nothing to check")
    return hosts


def limited(hosts: list[InventoryHost], patterns: tuple[str, ...] | list[str]) -> list[InventoryHost]:
    """The hosts a `--limit` picks, as pyinfra's does: by name (also without
    `@docker/`), by glob pattern on the name, or by group (none given: all).
    A pattern that picks no host is an error, not a run that checks less."""
    def picks(pattern: str, host: InventoryHost) -> bool:
        return pattern in host.groups or any(
            fnmatch.fnmatchcase(name, pattern) for name in (host.name, host.name.removeprefix("@docker/")))

    for pattern in patterns:
        if not any(picks(pattern, host) for host in hosts):
            known = sorted({h.name.removeprefix("@docker/") for h in hosts} | {g for h in hosts for g in h.groups})
            raise InventoryError(f"--limit {pattern!r}: no host or group of the inventory by that name "
                                 f"or pattern (it has {', '.join(known)})")
    return [host for host in hosts if not patterns or any(picks(p, host) for p in patterns)]


def load_inventory(path: str, load_balancers: bool = False) -> list[InventoryHost]:
    """The app hosts of a pyinfra inventory file (or its load balancers), in
    inventory order, with their data.

    pyinfra's loader runs in a child process: importing pyinfra_cli
    monkey-patches the whole interpreter for gevent, which a test runner or a
    tool using threads and subprocesses must not inherit.
    """
    # pyinfra reads a name that is not a file as a host name: "inventories/typo.py"
    # would be one host of that name, unreachable, and every check skipped.
    if path.endswith(".py") and not Path(path).is_file():  # relative: to where it runs, as pyinfra's
        raise InventoryError(f"inventory {path!r}: no such file (in {Path.cwd()})")
    loaded = subprocess.run(
        [sys.executable, "-m", "asgi_fleet.inventory", path],
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    if loaded.returncode != 0:
        raise InventoryError(f"inventory {path!r} could not be loaded: "
                             f"{(loaded.stderr.strip().splitlines() or ['?'])[-1]}")
    output = loaded.stdout
    hosts = [InventoryHost(name, data, tuple(groups)) for name, data, groups in json.loads(output)]
    return [h for h in hosts if h.is_lb == load_balancers]


def _dump_inventory(path: str) -> str:
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    with ctx_state.use(State()):  # pyinfra's loader expects a state in context
        inventory = make_inventory(path, cwd=os.getcwd())
    return json.dumps([(host.name, host.data.dict(), sorted(host.groups)) for host in inventory],
                      default=str)


if __name__ == "__main__":
    print(_dump_inventory(sys.argv[1]))
