"""What the async doctor's sampling costs the app: throughput with and without it.

    .venv/bin/python bench/doctor_cost.py [--rounds 3] [--duration 5]

One test host (a systemd container pinned to CPU 1), the example app deployed
with deploy.py; wrk on the controller, pinned to CPU 0, GETs / over 64
connections. Each round measures, in the order plain, sampled, sampled,
plain (so that drift hits both alike): "sampled" runs the doctor's sampler,
`py-spy record --idle --nonblocking --rate 100` on every worker (exactly
what the verify check and `python -m asgi_fleet.doctor` run), for the whole
wrk window. Reports the ratio of medians, sampled/plain, and every run.

Writes bench/results/doctor_cost.json. About 2 minutes.
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


def start_sampler(seconds: int) -> None:
    """The doctor's sampler on every worker of hello, for `seconds`, as a transient unit."""
    record = (f"{PY_SPY} record --pid $pid --duration {seconds} --rate {SAMPLE_RATE} --idle "
              "--nonblocking --format speedscope -o /tmp/doctor-$pid.json >/dev/null 2>&1")
    workers = "$(cat /proc/$(systemctl show -p MainPID --value hello.service)/task/*/children)"
    sh(CONTAINER, f"systemd-run --quiet --collect --unit={SAMPLER_UNIT} /bin/sh -c "
                  f"'for pid in {workers}; do {record} & done; wait'")
    time.sleep(0.5)  # py-spy attached


def wait_sampler() -> None:
    for _ in range(60):
        if sh(CONTAINER, f"systemctl is-active {SAMPLER_UNIT} || true", check=False) != "active":
            return
        time.sleep(0.5)
    raise RuntimeError("the sampler did not end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--host-cpu", default="1")
    parser.add_argument("--loadgen-cpu", default="0")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
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
                for config in ("plain", "sampled", "sampled", "plain"):
                    if config == "sampled":
                        start_sampler(args.duration + 3)  # covers wrk's 1 s warm-up and its run
                    runs.append({"round": rnd, "config": config, **wrk(binary, args, url, "hello")})
                    if config == "sampled":
                        wait_sampler()
                    log(f"round {rnd} {config}: {runs[-1]['rps']} req/s")
            measured_s = time.monotonic() - measured_from
        machine = _serve.machine(CONTAINER)
    plain = median([r["rps"] for r in runs if r["config"] == "plain"])
    sampled = median([r["rps"] for r in runs if r["config"] == "sampled"])
    ratio = round(sampled / plain, 3)
    each = {c: ", ".join(f"{r['rps']:.0f}" for r in runs if r["config"] == c) for c in ("plain", "sampled")}
    table = ("| what (same host, same wrk) | median req/s | each run | sampled/plain |\n|---|---|---|---|\n"
             f"| plain | {plain:.0f} | {each['plain']} | |\n"
             f"| sampled by the doctor ({SAMPLE_RATE}/s, every worker) | {sampled:.0f} | {each['sampled']} "
             f"| **{ratio}** |\n\n"
             f"{args.rounds} rounds of plain, sampled, sampled, plain; wrk -t{args.threads} "
             f"-c{args.connections} -d{args.duration}s GET / on {workers} workers (host on CPU "
             f"{args.host_cpu}, wrk on CPU {args.loadgen_cpu}). py-spy runs on the host's CPU, so "
             "this is the whole cost while sampling; verify samples 1 s per app, the doctor 10 s.\n")
    return _serve.write_result("doctor_cost", {
        "benchmark": "doctor_cost", "command": command_line("doctor_cost.py", argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
        "summary": {"plain_rps": plain, "sampled_rps": sampled, "sampled_over_plain": ratio},
        "runs": runs, "timing": _serve.timing(started, deploy_s, measured_s), "table_md": table,
    }, args.output)


if __name__ == "__main__":
    sys.exit(main())
