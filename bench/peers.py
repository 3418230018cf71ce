"""The peers, side by side: five ways of running the example app on one host under systemd.

    .venv/bin/python bench/peers.py                   # defaults: 3 activations a cell, 8 throughput rounds
    .venv/bin/python bench/peers.py --rounds 12 --activations 5

One test host (`asgi-bench-peers1`, bookworm, systemd, pinned to CPU 1), the
example app deployed there by the project's deploy.py. Every way serves that
same release from its virtualenv, as the app's user, with 2 workers, a 5 s
keep-alive, a 25 s graceful timeout and no access log:

  asgi-fleet      the deployed service: gunicorn + asgi_fleet_worker.DrainingUvicornWorker,
                  its systemd socket and its unit's sandboxing, as a deploy leaves it
  uvicorn-worker  gunicorn -k uvicorn_worker.UvicornWorker (the stock recipe)
  gunicorn-asgi   gunicorn -k asgi --asgi-loop uvloop (gunicorn's own ASGI worker)
  gunicorn-asgi-draining  the same, with asgi-fleet's draining subclass
                  (asgi_fleet_gasgi.DrainingASGIWorker, installed with the deploy)
  uvicorn         uvicorn --workers 2 (since 0.51 it restarts its workers one at a time on SIGHUP)

The other four run as transient systemd units (systemd-run), each on its own port.

What is measured, in one run:
  1. failed requests per activation kind (none; hup: SIGHUP to the master;
     restart: `systemctl restart`), with keep-alive and without, GET and POST
     counted apart: bench/loadgen.py on the controller (taskset CPU 0),
     8 clients, alternating GET / and POST /items, no retries. Each cell fires
     --activations activations 3 s apart, each waiting until the way answers
     again. A failed request is anything but a complete 2xx response.
  2. throughput and requests per server CPU-second: wrk -c64 keep-alive GET /
     for --duration s, every way once per round, the order rotated each
     round; server CPU is the unit's master, its workers and the workers it reaped.
     Ratios to asgi-fleet are taken within each round; the table gives their
     median and range over the rounds.
  3. open WebSockets across a HUP: 4 sessions on /ws/echo, a message every
     0.2 s; how long each lived after the HUP, and the close code it got.

Traffic goes to that container only; every load is bounded in time. Writes
bench/results/peers.json. The measured part holds /tmp/asgi-fleet-bench.lock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serve  # noqa: E402
from _serve import sh  # noqa: E402
from deploylib import BenchLock, command_line, log  # noqa: E402
from loadgen import WebSocketSession  # noqa: E402

CONTAINER = "asgi-bench-peers1"
BENCH = Path(__file__).resolve().parent
RESULT = BENCH / "results" / "peers.json"
RELEASE = "/srv/hello/current"
VENV = f"{RELEASE}/.venv/bin"
WORKERS, KEEPALIVE, GRACEFUL = 2, 5, 25
GUNICORN = (f"{VENV}/gunicorn -w {WORKERS} --keep-alive {KEEPALIVE} --graceful-timeout {GRACEFUL} "
            "--no-control-socket -b 0.0.0.0:{port}")


@dataclass(frozen=True)
class Way:
    name: str
    label: str
    port: int
    unit: str
    command: str | None = None  # None: the deployed service


WAYS = {way.name: way for way in (
    Way("asgi-fleet", "asgi-fleet (gunicorn + DrainingUvicornWorker, its systemd socket and sandbox)",
        8000, "hello"),
    Way("uvicorn-worker", "gunicorn + uvicorn_worker.UvicornWorker", 8101, "asgi-bench-peer-uvicorn-worker",
        GUNICORN.format(port=8101) + " -k uvicorn_worker.UvicornWorker app:app"),
    Way("gunicorn-asgi", "gunicorn -k asgi (uvloop)", 8102, "asgi-bench-peer-gunicorn-asgi",
        GUNICORN.format(port=8102) + " -k asgi --asgi-loop uvloop app:app"),
    Way("gunicorn-asgi-draining", "gunicorn -k asgi_fleet_gasgi.DrainingASGIWorker (uvloop)", 8104,
        "asgi-bench-peer-gunicorn-asgi-draining",
        GUNICORN.format(port=8104) + " -k asgi_fleet_gasgi.DrainingASGIWorker --asgi-loop uvloop app:app"),
    Way("uvicorn", "uvicorn --workers 2", 8103, "asgi-bench-peer-uvicorn",
        f"{VENV}/uvicorn --workers {WORKERS} --host 0.0.0.0 --port 8103 --no-access-log "
        f"--timeout-keep-alive {KEEPALIVE} --timeout-graceful-shutdown {GRACEFUL} app:app"),
)}
KINDS = ("none", "hup", "restart")
OURS = ("asgi-fleet", "gunicorn-asgi-draining")  # not peers to keep the lead over
MODES = ("keepalive", "close")


def start_peers() -> None:
    for way in WAYS.values():
        if way.command:
            sh(CONTAINER, f"systemctl stop {way.unit} 2>/dev/null; systemctl reset-failed {way.unit} 2>/dev/null; "
                          f"systemd-run --quiet --unit={way.unit} -p User=hello -p Group=hello "
                          f"-p WorkingDirectory={RELEASE} -p KillMode=mixed -p TimeoutStopSec={GRACEFUL + 15} "
                          f"{way.command}")
    for way in WAYS.values():
        _serve.wait_http(CONTAINER, way.port)


def main_pid(way: Way) -> str:
    return sh(CONTAINER, f"systemctl show -p MainPID --value {way.unit}")


def workers(way: Way) -> int:
    return int(sh(CONTAINER, f"pgrep -c -P {main_pid(way)} || true", check=False) or 0)


def activate(way: Way, kind: str) -> None:
    """One activation, then wait until the way answers and runs all its workers again."""
    if kind == "hup":
        sh(CONTAINER, f"kill -HUP {main_pid(way)}")
    elif kind == "restart":
        sh(CONTAINER, f"systemctl restart {way.unit}", timeout=GRACEFUL + 30)
    end = time.monotonic() + 60
    time.sleep(0.5)
    while time.monotonic() < end and workers(way) < WORKERS:
        time.sleep(0.3)
    _serve.wait_http(CONTAINER, way.port)


def failures_cell(ip: str, way: Way, kind: str, mode: str, args, tmp: Path) -> dict:
    """bench/loadgen.py against one way while it takes `args.activations` activations of one kind."""
    stop, out = tmp / "load.stop", tmp / "load.json"
    stop.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    load = subprocess.Popen(
        ["taskset", "-c", args.loadgen_cpu, sys.executable, str(BENCH / "loadgen.py"), "--host", ip,
         "--port", str(way.port), "--clients", "8", "--mode", mode, "--max-seconds", "150",
         "--timeout", "10", "--stop-file", str(stop), "--output", str(out)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(2)
        for _ in range(args.activations):
            if kind != "none":
                activate(way, kind)
            time.sleep(3)
    finally:
        stop.touch()
        load.wait(timeout=60)
    result = json.loads(out.read_text())
    return {"way": way.name, "kind": kind, "mode": mode, "requests": result["requests"],
            "failed": result["failed"], "errors": result["errors"], "by_method": result["by_method"],
            "seconds": result["seconds"]}


def throughput_round(ip: str, order: list[str], args, wrk: str) -> dict:
    round_ = {}
    for name in order:
        way = WAYS[name]
        parsed = _serve.measure_wrk(wrk, CONTAINER, way.unit, f"http://{ip}:{way.port}/",
                                    loadgen_cpu=args.loadgen_cpu, duration=args.duration)
        round_[name] = {"rps": parsed["rps"], "p99_ms": parsed.get("p99_ms"),
                        "errors": parsed["errors"] + parsed["non_2xx"], "server_cpu_s": parsed["server_cpu_s"],
                        "req_per_cpu_s": parsed["req_per_cpu_s"]}
    return round_


def websockets_across_hup(ip: str, way: Way, sessions: int = 4) -> dict:
    deadline = time.time() + GRACEFUL + 15
    held = [WebSocketSession(f"ws://{ip}:{way.port}/ws/echo", deadline) for _ in range(sessions)]
    for session in held:
        session.start()
    for _ in range(40):
        if all(s.echoes or s.error for s in held):
            break
        time.sleep(0.25)
    hup = time.time()
    sh(CONTAINER, f"kill -HUP {main_pid(way)}")
    for session in held:
        session.join(max(0.0, deadline - time.time()) + 15)
    lived = [round(s.closed_at - hup, 1) if s.closed_at else None for s in held]
    activate(way, "none")  # let the new workers finish starting before the next way
    return {"way": way.name, "sessions": sessions,
            "lived_after_hup_s": lived, "close_codes": [s.code for s in held],
            "errors": [s.error for s in held if s.error], "still_open_at_deadline": sum(1 for s in held if s.code is None)}


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def analyse(payload: dict) -> str:
    cells = {(c["way"], c["kind"], c["mode"]): c for c in payload["failures"]}
    acts = payload["setup"]["activations"]
    rows = ["Failed requests / requests, under the same load (8 clients, no retries), "
            f"{acts} activations per cell; GET and POST failures in brackets.", "",
            "| way | " + " | ".join(f"{k}, {m}" for k in KINDS for m in MODES) + " |",
            "|---|" + "---|" * (len(KINDS) * len(MODES))]
    for name, way in WAYS.items():
        row = []
        for kind in KINDS:
            for mode in MODES:
                c = cells[(name, kind, mode)]
                by = c["by_method"]
                row.append(f"{c['failed']} / {c['requests']:,} "
                           f"({by['GET'].get('failed', 0)} GET, {by['POST'].get('failed', 0)} POST)")
        rows.append(f"| {way.label} | " + " | ".join(row) + " |")
    rows += ["", "restart: the four other ways bind their port themselves, as they are run without "
             "asgi-fleet, so while one restarts its port refuses connections; asgi-fleet's systemd "
             "socket holds them in its backlog. hup: the uvicorn worker and uvicorn close connections "
             "they have accepted or kept alive; gunicorn's ASGI worker closes a connection it promised "
             "keep-alive when told to stop mid-response; the draining subclasses do neither."]
    rounds = payload["throughput"]
    rows += ["", f"Throughput, wrk -t1 -c64 keep-alive GET / for {payload['setup']['duration']} s, "
             f"{len(rounds)} rounds, ways interleaved (order rotated); median (min-max) over the rounds. "
             "Ratios to asgi-fleet are taken within each round.", "",
             "| way | req/s | req/s ratio | req per server CPU-s | per-CPU-s ratio | p99 ms |",
             "|---|---|---|---|---|---|"]
    for name, way in WAYS.items():
        rps = [r[name]["rps"] for r in rounds]
        per_cpu = [r[name]["req_per_cpu_s"] for r in rounds]
        ratio = [r[name]["rps"] / r["asgi-fleet"]["rps"] for r in rounds]
        cpu_ratio = [r[name]["req_per_cpu_s"] / r["asgi-fleet"]["req_per_cpu_s"] for r in rounds
                     if r[name]["req_per_cpu_s"] and r["asgi-fleet"]["req_per_cpu_s"]]
        rows.append(f"| {way.label} | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                    f"{spread(ratio)} | {statistics.median(per_cpu):,.0f} ({min(per_cpu):,.0f}-{max(per_cpu):,.0f}) | "
                    f"{spread(cpu_ratio)} | "
                    f"{spread([r[name]['p99_ms'] for r in rounds])} |")
    best_peer = max((n for n in WAYS if n not in OURS),
                    key=lambda n: statistics.median(r[n]["req_per_cpu_s"] for r in rounds))
    lead = [r["asgi-fleet"]["req_per_cpu_s"] / r[best_peer]["req_per_cpu_s"] for r in rounds]
    rows += ["", f"asgi-fleet's requests per server CPU-second against the best peer's "
             f"({WAYS[best_peer].label}), round by round: {spread(lead)} (the lead to keep: at least 0.95)."]
    rows += ["", "Open WebSockets across one HUP (4 sessions, a message every 0.2 s):", "",
             "| way | seconds each lived after the HUP | close codes |", "|---|---|---|"]
    for ws in payload["websockets"]:
        lived = ", ".join("open" if s is None else f"{s}" for s in ws["lived_after_hup_s"])
        rows.append(f"| {WAYS[ws['way']].label} | {lived} | {', '.join(str(c) for c in ws['close_codes'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", type=int, default=3, help="activations per failures cell")
    parser.add_argument("--rounds", type=int, default=8, help="throughput rounds")
    parser.add_argument("--duration", type=int, default=4, help="seconds per measured wrk run")
    parser.add_argument("--host-cpu", default="1", help="the test host's --cpuset-cpus")
    parser.add_argument("--loadgen-cpu", default="0", help="taskset CPU list for the load generators")
    parser.add_argument("--keep", action="store_true", help="leave the container running")
    parser.add_argument("--reanalyse", action="store_true", help="rewrite the table of the last result")
    args = parser.parse_args(argv)
    if args.reanalyse:
        payload = json.loads(RESULT.read_text())
        payload["table_md"] = analyse(payload)
        _serve.deploylib.write_json(RESULT, payload)
        print(payload["table_md"])
        return 0

    started = time.monotonic()
    wrk = _serve.ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp, _serve.test_host(CONTAINER, args.host_cpu, keep=args.keep) as host:
        tmp = Path(tmp)
        inventory = _serve.write_inventory(tmp / "inventory.py", host)
        log("deploying the example app with deploy.py (2 workers)")
        deploy_s = _serve.deploy(inventory, f"workers={WORKERS}", f"keepalive={KEEPALIVE}",
                                 f"graceful_timeout={GRACEFUL}")
        start_peers()
        ip = _serve.container_ip(CONTAINER)
        with BenchLock():
            measured_from = time.monotonic()
            failures = []
            for kind in KINDS:
                for name, way in WAYS.items():
                    for mode in MODES:
                        failures.append(failures_cell(ip, way, kind, mode, args, tmp))
                        log(f"{name} {kind} {mode}: {failures[-1]['failed']} / {failures[-1]['requests']}")
            names = list(WAYS)
            rounds = []
            for n in range(args.rounds):
                order = names[n % len(names):] + names[:n % len(names)]
                rounds.append(throughput_round(ip, order, args, wrk))
                log(f"round {n + 1}: " + ", ".join(f"{k} {v['rps']:.0f}/s" for k, v in rounds[-1].items()))
            websockets = [websockets_across_hup(ip, way) for way in WAYS.values()]
            measured_s = time.monotonic() - measured_from
        payload = {
            "command": command_line("peers.py", argv),
            "machine": _serve.machine(CONTAINER),
            "setup": {"host": CONTAINER, "host_cpuset": args.host_cpu, "loadgen_cpu": args.loadgen_cpu,
                      "workers": WORKERS, "keepalive": KEEPALIVE, "graceful_timeout": GRACEFUL,
                      "activations": args.activations, "duration": args.duration,
                      "ways": {name: way.command or "the deployed hello.service" for name, way in WAYS.items()}},
            "failures": failures, "throughput": rounds, "websockets": websockets,
            "timing": _serve.timing(started, deploy_s, measured_s),
        }
        _serve.deploylib.write_json(RESULT, payload)  # the raw data first: --reanalyse can redo the table
        payload["table_md"] = analyse(payload)
    return _serve.write_result("peers", payload)


if __name__ == "__main__":
    sys.exit(main())
