"""One line per host and app: what runs there, against what the deploy intends.

    python -m asgi_fleet.status inventories/docker.py

The expected side comes from the same functions the deploy uses (release id,
worker sizing from the host's own CPUs and memory); the running side is read
off the host (the master's workers, their release directories, a live GET).
Exits non-zero when any host is unreachable or any app differs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from asgi_fleet import commands
from asgi_fleet.activation import parse_running_master
from asgi_fleet.inventory import InventoryHost, load_inventory
from asgi_fleet.plan import AppPlan, plan_host
from asgi_fleet.sizing import RESOURCES_PROBE, app_worker_plan, parse_resources


@dataclass(frozen=True)
class AppObservation:
    host: str
    app: str
    release_expected: str
    releases_running: tuple[str, ...]  # the release of each worker
    workers_expected: int
    workers_running: int
    worker_users: tuple[str, ...]
    health: str  # HTTP status of GET health_path, "000" when nothing answered

    @property
    def ok(self) -> bool:
        return (self.health == "200" and self.workers_running == self.workers_expected
                and set(self.releases_running) == {self.release_expected}
                and set(self.worker_users) == {self.app})


def expected_workers(testinfra_host, app: dict) -> int:
    resources = parse_resources(testinfra_host.check_output(RESOURCES_PROBE))
    return app_worker_plan(resources, app).count


def observe_app(host: InventoryHost, testinfra_host, plan: AppPlan) -> AppObservation:
    run = testinfra_host.run
    master = parse_running_master(run(commands.running_master(plan.paths.service)).stdout)
    workers = master.worker_releases if master else ()
    users = ()
    if master:
        users = tuple(run(f"ps -o user= --ppid {master.pid}").stdout.split())
    health = run(commands.health_probe(plan.app["bind"], plan.app["health_path"])).stdout.strip()
    return AppObservation(
        host=host.name, app=plan.paths.app, release_expected=plan.release_id,
        releases_running=tuple(sorted({w.rsplit("/", 1)[-1] for w in workers})),
        workers_expected=expected_workers(testinfra_host, plan.app),
        workers_running=len(workers), worker_users=users, health=health or "000",
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    rows = [("host", "app", "release", "workers (expected/running)", "health", "")]
    failed = False
    for host in load_inventory(argv[0]):
        try:
            testinfra_host = host.testinfra_host()
            testinfra_host.check_output("true")
        except Exception as error:  # any transport failure: report the host, go on
            rows.append((host.name, "-", "-", "-", "unreachable", str(error).splitlines()[0][:60]))
            failed = True
            continue
        for plan in plan_host(host.data, host.name):
            seen = observe_app(host, testinfra_host, plan)
            running = ",".join(seen.releases_running) or "none"
            release = seen.release_expected if running == seen.release_expected \
                else f"{running} (want {seen.release_expected})"
            rows.append((host.name, seen.app, release,
                         f"{seen.workers_expected}/{seen.workers_running}", seen.health,
                         "ok" if seen.ok else "DIFFERS"))
            failed |= not seen.ok
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
