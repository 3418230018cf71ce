"""One line per host and app: what runs there, against what the deploy intends.

    python -m asgi_fleet.status inventories/docker.py

The expected side comes from the same functions the deploy uses (release id,
worker sizing from the host's own CPUs and memory); the running side is read
off the host by the verification suite's probe (the master's workers, their
release directories, a live GET). Exits non-zero when any host is unreachable
or any app differs.
"""

from __future__ import annotations

import sys

from asgi_fleet.inventory import InventoryError, app_hosts_of, load_inventory
from asgi_fleet.plan import plan_host
from asgi_fleet.rollout import FLAG_DIR
from asgi_fleet.sinks import shell
from asgi_fleet.verify import AppProbe, format_table


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        hosts = app_hosts_of(argv[0])
    except InventoryError as error:
        print(f"asgi-fleet status: {error}", file=sys.stderr)
        return 2
    rows = [["host", "app", "release", "workers (expected/running)", "health", ""]]
    failed = False
    for host in hosts:
        try:
            testinfra_host = host.testinfra_host()
            testinfra_host.check_output("true")
        except Exception as error:  # any transport failure: report the host, go on
            rows.append([host.name, "-", "-", "-", "unreachable", str(error).splitlines()[0][:60]])
            failed = True
            continue
        for plan in plan_host(host.data, host.name):
            probe = AppProbe(f"{host.name}/{plan.paths.app}", testinfra_host, plan.app, plan.paths)
            running = ",".join(sorted({w.cwd.rsplit("/", 1)[-1] for w in probe.workers})) or "none"
            release = plan.release_id if running == plan.release_id \
                else f"{running} (want {plan.release_id})"
            ok = probe.serves(plan.release_dir)
            rows.append([host.name, plan.paths.app, release,
                         f"{probe.expected_workers}/{len(probe.workers)}", probe.health["status"],
                         "ok" if ok else "DIFFERS"])
            failed |= not ok
    failed |= load_balancer_rows(argv[0], rows)
    print("\n".join(format_table(rows)))
    return 1 if failed else 0


def load_balancer_rows(inventory: str, rows: list[list[str]]) -> bool:
    """A line per load balancer and app: its upstream servers, and the health
    endpoint answered through it. True when one is unreachable or unhealthy."""
    apps = {}
    for host in load_inventory(inventory):
        for plan in plan_host(host.data, host.name):
            if not plan.app.bind.startswith("unix:"):
                port = plan.app.bind.rpartition(":")[2]
                apps.setdefault(plan.paths.app, [port, plan.app.health_path, 0])[2] += 1
    failed = False
    for lb in load_inventory(inventory, load_balancers=True):
        try:
            testinfra_host = lb.testinfra_host()
            drained = testinfra_host.check_output(f"ls -A {shell(FLAG_DIR)} 2>/dev/null || true")
        except Exception as error:  # any transport failure: report the host, go on
            rows.append([lb.name, "-", "-", "-", "unreachable", str(error).splitlines()[0][:60]])
            failed = True
            continue
        for app, (port, path, servers) in apps.items():
            code = testinfra_host.check_output(
                f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://127.0.0.1:{port}{path}")
            rows.append([lb.name, app, f"load balancer, :{port}", f"{servers} servers", code,
                         "ok" if code == "200" and not drained else f"DIFFERS {drained}".strip()])
            failed |= code != "200" or bool(drained)
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
