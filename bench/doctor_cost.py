"""What the async doctor's sampling costs the app: throughput with and without it.

    .venv/bin/python bench/doctor_cost.py [--rounds 5] [--duration 5] [--rates 20,50,100]

One test host (a systemd container pinned to CPU 1), the example app deployed
with deploy.py; wrk on the controller, pinned to CPU 0, GETs / over 64
connections. Each round measures plain, then sampled at each rate, then back
in the mirrored order (so that drift hits all alike). "Sampled" runs the
doctor's sampler, `py-spy record --idle --nonblocking` on every worker
(what the verify check and `python -m asgi_fleet.doctor` run, at their rate
first), for the whole wrk window. Reports the ratio of medians to plain, and
every run.

Writes bench/results/doctor_cost.json. About 6 minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _serve
from _serve import sh
from deploylib import BenchLock, command_line, log, median
from throughput import CONTAINER, ensure_wrk, wrk  # one serving host, so wrk counts its CPU

from asgi_fleet.doctor import SAMPLE_RATE
from asgi_fleet.verify import PY_SPY

SAMPLER_UNIT = "asgi-bench-doctor-sampler"
# py-spy reads the worker's maps and symbols when it starts (a fraction of a
# second of CPU, once per sampling run): started this long before wrk, so
# that the table is the cost while it samples, stated apart from that.
STARTUP = 2.0


def start_sampler(seconds: int, rate: int) -> None:
    """The doctor's sampler on every worker of hello, for `seconds`, as a transient unit."""
    record = (f"{PY_SPY} record --pid $pid --duration {seconds} --rate {rate} --idle "
              "--nonblocking --format speedscope -o /tmp/doctor-$pid.json >/dev/null 2>&1")
    workers = "$(cat /proc/$(systemctl show -p MainPID --value hello.service)/task/*/children)"
    sh(CONTAINER, f"systemd-run --quiet --collect --unit={SAMPLER_UNIT} /bin/sh -c "
                  f"'for pid in {workers}; do {record} & done; wait'")
    time.sleep(STARTUP)


def wait_sampler() -> None:
    for _ in range(60):
        if sh(CONTAINER, f"systemctl is-active {SAMPLER_UNIT} || true", check=False) != "active":
            return
        time.sleep(0.5)
    raise RuntimeError("the sampler did not end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--host-cpu", default="1")
    parser.add_argument("--loadgen-cpu", default="0")
    parser.add_argument("--rates", default=f"{SAMPLE_RATE},50,100",
                        help="sampling rates to measure (the first is the doctor's)")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    configs = ["plain", *(f"{r}/s" for r in rates)]
    started = time.monotonic()
    binary = ensure_wrk()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, _serve.test_host(CONTAINER, args.host_cpu) as host:
        deploy_s = _serve.deploy(_serve.write_inventory(Path(tmp) / "inventory.py", host))
        url = f"http://{_serve.container_ip(CONTAINER)}:8000/"
        workers = int(sh(CONTAINER, "cat /proc/$(systemctl show -p MainPID --value hello.service)"
                                    "/task/*/children | wc -w"))
        with BenchLock():
            measured_from = time.monotonic()
            for rnd in range(args.rounds):
                for config in configs + configs[::-1]:
                    if config != "plain":  # covers wrk's 1 s warm-up and its run
                        start_sampler(args.duration + 6, int(config.removesuffix("/s")))
                    runs.append({"round": rnd, "config": config, **wrk(binary, args, url, "hello")})
                    if config != "plain":
                        wait_sampler()
                    log(f"round {rnd} {config}: {runs[-1]['rps']} req/s")
            measured_s = time.monotonic() - measured_from
        machine = _serve.machine(CONTAINER)
    rps = {c: median([r["rps"] for r in runs if r["config"] == c]) for c in configs}
    each = {c: ", ".join(f"{r['rps']:.0f}" for r in runs if r["config"] == c) for c in configs}
    ratios = {c: round(rps[c] / rps["plain"], 3) for c in configs}
    rows = [f"| {'plain' if c == 'plain' else 'sampled at ' + c + (' (the doctor and verify)' if c == configs[1] else '')} "
            f"| {rps[c]:.0f} | {each[c]} | {'' if c == 'plain' else '**' + str(ratios[c]) + '**'} |"
            for c in configs]
    table = ("| what (same host, same wrk) | median req/s | each run | sampled/plain |\n|---|---|---|---|\n"
             + "\n".join(rows) + "\n\n"
             f"{args.rounds} rounds, each measuring {', '.join(configs)} and back (mirrored against drift); "
             f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s GET / on {workers} worker(s), "
             f"saturated (host on CPU {args.host_cpu}, wrk on CPU {args.loadgen_cpu}). py-spy runs on "
             "the host's one CPU, so this is the worst case: the whole cost lands on the worker it "
             f"samples. Each sampler starts {STARTUP:g} s before wrk: py-spy's start (reading the "
             "worker's maps and symbols, once per run) is not in these figures. verify samples 3 s "
             "per app, the doctor 10 s.\n")
    return _serve.write_result("doctor_cost", {
        "benchmark": "doctor_cost", "command": command_line("doctor_cost.py", argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
        "summary": {"median_rps": rps, "over_plain": ratios},
        "runs": runs, "timing": _serve.timing(started, deploy_s, measured_s), "table_md": table,
    }, args.output)


if __name__ == "__main__":
    sys.exit(main())
