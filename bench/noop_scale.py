"""The scale model of a no-op re-run: 1, 8 and 32 hosts cloned from one provisioned host.

    .venv/bin/python bench/noop_scale.py [--sizes 1,8,32] [--repeats 2]

One bare test host (asgi-bench-c0) gets a first provision; it is then
committed (`docker commit`) to an image, and each fleet size N is N clones of
it (asgi-bench-c1..cN), booted with systemd, so that no host builds a
virtualenv of its own: what is measured is the no-op re-run itself
(`pyinfra -y INVENTORY deploy.py`, no load balancer), REPEATS times per size.

Reports, per size: the median wall time and time(N)/time(1), controller
CPU-seconds per host (pyinfra and every docker CLI call it made, from
getrusage of the finished children), and `docker exec` round trips per host
(the docker shim of deploylib). Then a projection to 500 hosts on paper,
beside pyinfra's published second-pass figure for a 4-operation deploy
(500 hosts in 31 s), from the per-host CPU cost: on one controller the
no-op is bound by its CPU once the hosts answer in parallel.

Writes bench/results/noop_scale.json. About 6 minutes with the defaults on
a 2-core machine (the first provision is one of them). Each timed run holds
the bench lock. 32 systemd containers need more inotify instances than
Debian's default 128: the script raises fs.inotify.max_user_instances for its
run, and puts the old value back.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploylib as lib  # noqa: E402
from asgi_fleet.fleet import hostctl  # noqa: E402
from asgi_fleet.fleet.hosts import TestHost  # noqa: E402

RESULT = lib.ROOT / "bench" / "results" / "noop_scale.json"
ORIGIN = f"{lib.PREFIX}c0"
IMAGE = "asgi-fleet-bench-clone:latest"
PYINFRA_500_HOSTS_SECONDS = 31  # pyinfra's README: 4 operations, 500 hosts, second pass
PROJECTED_HOSTS = 500


def clone_names(n: int) -> list[str]:
    return [f"{lib.PREFIX}c{i}" for i in range(1, n + 1)]


INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 8  # systemd, journald, logind...: a booted test host holds about this many
BOOT_GROUP = 8  # clones booted at a time: 32 at once would crowd the 2 cores past any boot timeout


def enough_inotify(hosts: int) -> int | None:
    """Raise the controller's inotify instance limit for `hosts` systemd
    containers if it is lower (Debian's 128 stops at about 15); returns the
    old value to put back, or None when it was enough."""
    old = int(INOTIFY.read_text())
    want = INOTIFY_PER_HOST * hosts + 64
    if old >= want:
        return None
    lib.log(f"fs.inotify.max_user_instances {old} -> {want} for {hosts} systemd hosts (put back after)")
    INOTIFY.write_text(str(want))
    return old


def start_clones(names: list[str]) -> None:
    lib.remove_hosts(names)
    for start in range(0, len(names), BOOT_GROUP):
        group = names[start:start + BOOT_GROUP]
        for name in group:
            subprocess.run(["docker", "run", "-d", "--name", name, "--hostname", name, "--label",
                            lib.BENCH_LABEL, *hostctl.SYSTEMD_FLAGS, IMAGE, "/sbin/init"],
                           check=True, capture_output=True)
        for name in group:
            wait_serving(name)


def wait_serving(name: str) -> None:
    hostctl.wait_booted(TestHost(name, "bookworm", "docker"))
    deadline = time.monotonic() + 120  # the app's socket and service come up with the host
    while subprocess.run(["docker", "exec", name, "systemctl", "is-active", "--quiet", "hello.service"]
                         ).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: hello.service not active 120 s after boot")
        subprocess.run(["docker", "exec", name, "curl", "-s", "-o", "/dev/null", "127.0.0.1:8000/healthz"])
        time.sleep(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(RESULT))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    lib.exit_on_sigterm()
    workdir = lib.new_workdir("noop-scale")
    raw: dict[str, list[dict]] = {}
    errors: list[str] = []
    everyone = [ORIGIN, *clone_names(max(sizes))]
    old_inotify = enough_inotify(len(everyone) + 8)  # the test fleet's hosts run beside them
    try:
        with lib.BenchLock():
            lib.fresh_hosts([ORIGIN])
        origin_inventory = lib.write_pyinfra_inventory(workdir / "origin.py", [ORIGIN])
        with lib.BenchLock():
            first = lib.pyinfra_deploy(origin_inventory, workdir, "origin-first")
        lib.log(f"first provision of {ORIGIN}: {first['seconds']:.1f} s")
        subprocess.run(["docker", "commit", ORIGIN, IMAGE], check=True, capture_output=True)
        lib.remove_hosts([ORIGIN])
        for n in sizes:
            names = clone_names(n)
            with lib.BenchLock():
                start_clones(names)
            inventory = lib.write_pyinfra_inventory(workdir / f"clones-{n}.py", names)
            raw[str(n)] = []
            for r in range(args.repeats):
                with lib.BenchLock():
                    run = lib.pyinfra_deploy(inventory, workdir, f"noop-{n}-{r}")
                raw[str(n)].append(run)
                lib.log(f"N={n} no-op {run['seconds']:.2f} s, controller CPU {run['controller_cpu_seconds']:.2f} s, "
                        f"changed={sum(run['changed_ops'].values())}")
            lib.remove_hosts(names)
    except (Exception, SystemExit):
        errors.append(traceback.format_exc())
        lib.log(errors[-1])
    finally:
        lib.remove_hosts(everyone)
        subprocess.run(["docker", "image", "rm", "-f", IMAGE], capture_output=True)
        if old_inotify is not None:
            INOTIFY.write_text(str(old_inotify))
    out = report(raw, args, argv, errors, started)
    lib.write_json(args.output, out)
    print(out["table_md"])
    return 1 if errors else 0


def report(raw: dict, args, argv, errors: list[str], started: float) -> dict:
    rows, per_size = [], {}
    base = lib.median([r["seconds"] for r in raw.get("1", [])])
    for n, runs in raw.items():
        hosts = int(n)
        seconds = lib.median([r["seconds"] for r in runs])
        cpu = lib.median([r["controller_cpu_seconds"] / hosts for r in runs])
        trips = lib.median([r["docker_calls"].get("exec", {}).get("count", 0) / hosts for r in runs])
        per_size[n] = {"seconds": seconds, "ratio_to_one_host": round(seconds / base, 2) if base else None,
                       "controller_cpu_seconds_per_host": cpu, "round_trips_per_host": trips,
                       "changed_ops": sum(sum(r["changed_ops"].values()) for r in runs)}
        rows.append(f"| {n} | {len(runs)} | {seconds:.2f} | **{per_size[n]['ratio_to_one_host']}** | "
                    f"{cpu:.3f} | {trips:g} |")
    largest = max(per_size, key=int, default=None)
    projection = None
    if largest:
        cpu = per_size[largest]["controller_cpu_seconds_per_host"]
        projection = {"hosts": PROJECTED_HOSTS, "from_size": int(largest),
                      "controller_cpu_seconds": round(cpu * PROJECTED_HOSTS, 1),
                      "pyinfra_published_seconds": PYINFRA_500_HOSTS_SECONDS}
    table = ("| hosts (clones) | runs | no-op s | time(N)/time(1) | controller CPU s per host | "
             "docker exec round trips per host |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    if projection:
        cpu = projection["controller_cpu_seconds"]
        table += (f"\nThe no-op is three round trips per host: one prepare-time read (the host's resources "
                  "and the names its apps would take), the deploy lock taken with the agent's `state` "
                  "read under it, and the lock given back. The activation reads the host again only if "
                  "that read is over 5 s old, as it gets on the largest fleet here (the fraction above 3). "
                  "Here the hosts share the controller's 2 cores, so time(N) also carries every host's "
                  "own work (each agent reads its virtualenvs).\n"
                  f"\nOn paper, 500 hosts: the controller's work is the floor once the hosts answer in "
                  f"parallel, {cpu:g} CPU-seconds at the {largest}-host rate (pyinfra and its connection "
                  f"clients): about {cpu / 2:.0f} s on a 2-core controller, {cpu / 8:.0f} s on 8 cores. "
                  f"pyinfra publishes 500 hosts in {PYINFRA_500_HOSTS_SECONDS} s for the second pass of a "
                  "4-operation deploy; this deploy has about 30 operations per host, each deciding on the "
                  "one state it read.\n")
    return {
        "benchmark": "noop_scale",
        "command": lib.command_line("noop_scale.py", argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": lib.machine(),
        "tools": lib.tool_versions(),
        "sizes": per_size,
        "projection_500": projection,
        "checks": {"noop_changes_nothing": all(v["changed_ops"] == 0 for v in per_size.values())},
        "errors": errors,
        **lib.runtime(started),
        "raw": raw,
        "table_md": table,
    }


if __name__ == "__main__":
    sys.exit(main())
