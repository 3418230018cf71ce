"""A roll's new worker importing the app at nice 19, against at its own priority.

    .venv/bin/python bench/calm_boot.py [--rounds 3] [--hups 5]

The reload that replaces workers one at a time (asgi_fleet/roll.py) starts
each new worker beside the old one, which serves meanwhile on the same CPU.
With `boot_behind_the_old` and `serve_at_full_priority` as gunicorn's
post_fork and post_worker_init hooks (what gunicorn.conf.py sets), the new
worker imports the app at nice 19 and returns to nice 0 before it serves.

On a server, systemd gives the unit the RLIMIT_NICE that allows the return
(LimitNICE=+0). The Docker test hosts cannot have it (no container here may
raise an rlimit: runc fails with "error setting rlimit type 13"), so the
workers there never leave nice 0, and bench/activation_latency.py measures
the roll without it. This measures the two side by side where they can
differ: one gunicorn master with the example app and asgi-fleet's worker on
loopback, pinned to CPU 1 (root's CAP_SYS_NICE stands in for LimitNICE),
under a paced load pinned to CPU 0 (bench/loadgen.py: keep-alive and
one-connection-per-request clients, GET / and POST /items). Each round runs
both, in alternating order, each with HUPS reloads 8 s apart; per reload,
the p99 of the 3 s before the HUP and of the 4 s from it.

Writes bench/results/calm_boot.json. About 5 minutes.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _serve
from deploylib import ROOT, BenchLock, command_line, log, machine, median

from asgi_fleet.release import WORKER_MODULES

PYTHON = ROOT / ".venv" / "bin" / "python"
MODES = ("plain", "calm")
CONFIG = """workers = {workers}
worker_class = "asgi_fleet_worker.DrainingUvicornWorker"
bind = ["127.0.0.1:{port}"]
keepalive = 5
timeout = 30
graceful_timeout = 10
from asgi_fleet_roll import roll_workers as on_reload
"""
CALM = ("from asgi_fleet_roll import boot_behind_the_old as post_fork, "
        "serve_at_full_priority as post_worker_init\n")
BEFORE, DURING, APART = 3.0, 4.0, 8.0


def p99(values: list[float]) -> float | None:
    values = sorted(values)
    return values[int(0.99 * (len(values) - 1))] if values else None


def measure(mode: str, work: Path, args) -> dict:
    """One master in `mode` under load, HUPped args.hups times: p99 ms around each."""
    run = work / mode
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    shutil.copy(ROOT / "example" / "app.py", run / "app.py")
    for name, source in WORKER_MODULES.items():
        shutil.copy(source, run / f"{name}.py")
    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (run / "gunicorn.conf.py").write_text(CONFIG.format(workers=args.workers, port=port)
                                          + (CALM if mode == "calm" else ""))
    master = subprocess.Popen(
        ["taskset", "-c", args.host_cpu, str(PYTHON), "-m", "gunicorn", "-c", "gunicorn.conf.py",
         "--no-control-socket", "app:app"], cwd=run, env=os.environ | {"PYTHONPATH": str(run)},
        stdout=subprocess.DEVNULL, stderr=open(run / "gunicorn.log", "w"))
    records, hups = run / "records.csv", []
    try:
        time.sleep(4)  # booted, and its first requests served
        seconds = BEFORE + 1 + args.hups * APART
        load = subprocess.Popen(
            ["taskset", "-c", args.loadgen_cpu, str(PYTHON), str(ROOT / "bench" / "loadgen.py"),
             "--port", str(port), "--clients", str(args.clients), "--rate", str(args.rate),
             "--records", str(records), "--max-seconds", str(seconds), "--stop-file", str(run / "stop")],
            stdout=subprocess.DEVNULL)
        time.sleep(BEFORE + 1)
        for _ in range(args.hups):
            hups.append(time.time())
            master.send_signal(signal.SIGHUP)
            time.sleep(APART)
        load.wait(timeout=seconds + 60)
    finally:
        master.terminate()
        master.wait(timeout=60)
    rows = [(float(start), float(ms), ok == "1") for start, ms, ok, *_ in csv.reader(open(records))]
    windows = [{"before": p99([ms for start, ms, ok in rows if t - BEFORE <= start < t and ok]),
                "during": p99([ms for start, ms, ok in rows if t <= start < t + DURING and ok])}
               for t in hups]
    return {"mode": mode, "requests": len(rows), "failed": sum(not ok for *_, ok in rows), "hups": windows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hups", type=int, default=5, help="reloads per run")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=6, help="per mode (keep-alive, close)")
    parser.add_argument("--rate", type=float, default=40, help="requests per second per client")
    parser.add_argument("--host-cpu", default="1")
    parser.add_argument("--loadgen-cpu", default="0")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    started = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, BenchLock():
        for rnd in range(args.rounds):
            for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
                runs.append({"round": rnd, **measure(mode, Path(tmp), args)})
                log(f"round {rnd} {mode}: {runs[-1]['failed']} failed of {runs[-1]['requests']}, "
                    + ", ".join(f"{w['before']:.1f}/{w['during']:.1f}" for w in runs[-1]["hups"]))
        measured_s = time.monotonic() - started
    summary = {}
    for mode in MODES:
        windows = [w for r in runs if r["mode"] == mode for w in r["hups"]]
        summary[mode] = {
            "failed": sum(r["failed"] for r in runs if r["mode"] == mode),
            "requests": sum(r["requests"] for r in runs if r["mode"] == mode),
            "p99_before_ms": median([w["before"] for w in windows]),
            "p99_during_ms": median([w["during"] for w in windows]),
            "during_over_before": median([w["during"] / w["before"] for w in windows]),
        }
    calm_over_plain = round(summary["calm"]["p99_during_ms"] / summary["plain"]["p99_during_ms"], 2)
    rows = [f"| {mode} | {s['failed']} / {s['requests']:,} | {s['p99_before_ms']:.1f} | {s['p99_during_ms']:.1f} "
            f"| **{s['during_over_before']:.2f}** |" for mode, s in summary.items()]
    table = ("| new worker imports the app | failed / requests | p99 ms before | p99 ms during | "
             "p99 during / before |\n|---|---|---|---|---|\n" + "\n".join(rows).replace(
                 "| plain |", "| at its own priority (nice 0) |").replace("| calm |", "| at nice 19 (calm) |")
             + f"\n\np99 during the roll, calm / plain: **{calm_over_plain}**. {args.rounds} rounds of both "
             f"(order alternating), {args.hups} reloads each, {args.workers} worker(s); medians over the "
             f"reloads of each window's p99 (before: {BEFORE:g} s before the HUP, during: {DURING:g} s from it). "
             f"Load: {2 * args.clients} clients x {args.rate:g} req/s on CPU {args.loadgen_cpu}, the master on "
             f"CPU {args.host_cpu}.\n")
    return _serve.write_result("calm_boot", {
        "benchmark": "calm_boot", "command": command_line("calm_boot.py", argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
        "summary": summary, "calm_over_plain_during": calm_over_plain, "runs": runs,
        "timing": _serve.timing(started, 0.0, measured_s), "table_md": table,
    }, args.output)


if __name__ == "__main__":
    sys.exit(main())
