"""Served throughput on one host at one fixed load-generator setting, side by side.

    .venv/bin/python bench/throughput.py            # defaults: 4 rounds, wrk -t1 -c64, 3 s
    .venv/bin/python bench/throughput.py --rounds 8 --duration 5

Starts its own test host `asgi-bench-serve1` (bookworm, systemd, pinned to CPU 1
with --cpuset-cpus), deploys the example app with the project's deploy.py, then
measures, in every round and one after the other:

  (a) the deployed asgi-fleet service (DrainingUvicornWorker, systemd socket,
      the deployed defaults: no access log, no worker recycling) at every
      worker count from 1 to 2*cores+1 (cores = the host's usable CPUs; the
      count is changed in the deployed gunicorn.conf.py and applied with
      `systemctl restart`), against the count asgi-fleet's sizing chose;
  (b) `gunicorn -k uvicorn_worker.UvicornWorker -w N` against bare
      `uvicorn --workers N` (same venv, same release, no access log, N = the auto count);
  (c) uvloop + httptools against asyncio + h11, through gunicorn
      (UvicornWorker vs uvicorn_worker.UvicornH11Worker) and bare uvicorn
      (--loop/--http), same N;
  plus what two settings cost, each switched on alone in the deployed
  service: the access log (`access_log`: `accesslog = "-"`, into journald)
  and worker recycling (`max_requests` 10000, jitter 1000); and where the
  rest of the distance to a plain gunicorn command goes (the worker class,
  the unit's system-call filter).

The load generator is wrk on the controller, pinned to CPU 0 with taskset,
sending GET / with keep-alive to the container's bridge address (traffic goes
to this test host only). Every wrk run is bounded by its duration. Medians over
the rounds; ratios are of medians. Writes bench/results/throughput.json.
The measured part holds /tmp/asgi-fleet-bench.lock (flock).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serve  # noqa: E402
from _serve import ensure_wrk, sh  # noqa: E402
from deploylib import BenchLock, command_line, log, median, write_json  # noqa: E402

CONTAINER = "asgi-bench-serve1"
CONF = "/etc/hello/gunicorn.conf.py"
VENV = "/srv/hello/current/.venv/bin"

# name -> (port, command run as a transient systemd unit in /srv/hello/current); {n} = workers
SIDE_CARS = {
    "gunicorn_uvloop": (8101, f"{VENV}/gunicorn -k uvicorn_worker.UvicornWorker -w {{n}} -b 0.0.0.0:8101 app:app"),
    "uvicorn_uvloop": (8102, f"{VENV}/uvicorn --workers {{n}} --host 0.0.0.0 --port 8102 --no-access-log "
                             "--loop uvloop --http httptools app:app"),
    "gunicorn_h11": (8103, f"{VENV}/gunicorn -k uvicorn_worker.UvicornH11Worker -w {{n}} -b 0.0.0.0:8103 app:app"),
    "uvicorn_h11": (8104, f"{VENV}/uvicorn --workers {{n}} --host 0.0.0.0 --port 8104 --no-access-log "
                          "--loop asyncio --http h11 app:app"),
    # asgi-fleet's worker class in a plain process: tells the worker's cost from the unit's
    "gunicorn_draining": (8105, f"{VENV}/gunicorn -k asgi_fleet_worker.DrainingUvicornWorker -w {{n}} "
                                "-b 0.0.0.0:8105 app:app"),
}
# extra systemd-run properties per side car: the unit's system-call filter alone
SIDE_CAR_PROPS = {"gunicorn_draining_seccomp": "-p 'SystemCallFilter=@system-service' "
                                               "-p 'SystemCallFilter=~@privileged @resources'"}
SIDE_CARS["gunicorn_draining_seccomp"] = (8106, SIDE_CARS["gunicorn_draining"][1].replace("8105", "8106"))
LABELS = {
    "gunicorn_uvloop": "gunicorn + uvicorn_worker.UvicornWorker (uvloop + httptools), no access log",
    "uvicorn_uvloop": "bare `uvicorn --workers N` (uvloop + httptools), no access log",
    "gunicorn_h11": "gunicorn + uvicorn_worker.UvicornH11Worker (asyncio + h11), no access log",
    "uvicorn_h11": "bare `uvicorn --workers N --loop asyncio --http h11`, no access log",
    "gunicorn_draining": "gunicorn + asgi_fleet_worker.DrainingUvicornWorker, plain process, no access log",
    "fleet_accesslog": "asgi-fleet service, N = auto, `accesslog = \"-\"` (journald)",
    "gunicorn_draining_seccomp": "the same plain process with the unit's SystemCallFilter",
    "fleet_recycling": "asgi-fleet service, N = auto, `max_requests = 10000`, jitter 1000",
}


def unit(name: str) -> str:
    return f"asgi-bench-{name.replace('_', '-')}"


def unit_pids(unit_name: str) -> list[str]:
    main = sh(CONTAINER, f"systemctl show -p MainPID --value {unit_name}.service", check=False) or "0"
    children = sh(CONTAINER, f"pgrep -P {main} || true", check=False).split() if main != "0" else []
    return ([main] if main != "0" else []) + children


def stack(unit_name: str) -> dict:
    """Which loop/parser the processes of a unit have mapped (any of them)."""
    pids = unit_pids(unit_name)
    maps = sh(CONTAINER, " ; ".join(f"cat /proc/{p}/maps 2>/dev/null" for p in pids) or "true", check=False)
    return {"processes": len(pids), "uvloop": "uvloop/loop" in maps, "httptools": "httptools/parser" in maps}


def fleet_workers() -> int:
    return int(sh(CONTAINER, "pgrep -c -f '^gunicorn: worker \\[hello\\]' || true", check=False) or 0)


def set_fleet(deployed: str, workers: int, **settings: str) -> None:
    """Restart the service with the deployed gunicorn.conf.py, but `workers`
    workers and `settings` (name -> Python literal) changed."""
    conf = re.sub(r"(?m)^workers = .*$", f"workers = {workers}", deployed)
    for name, value in settings.items():
        conf, found = re.subn(rf"(?m)^{name} = .*$", f"{name} = {value}", conf)
        if not found:
            raise RuntimeError(f"{CONF} has no `{name} = ` line")
    sh(CONTAINER, f"cat > {CONF} <<'EOF'\n{conf}\nEOF\nsystemctl restart hello", timeout=120)
    end = time.monotonic() + 60
    while time.monotonic() < end and fleet_workers() != workers:
        time.sleep(0.3)
    if fleet_workers() != workers:
        raise RuntimeError(f"hello: {fleet_workers()} workers running, {workers} wanted:\n"
                           + sh(CONTAINER, "ps -eo pid,ppid,etimes,args", check=False))
    _serve.wait_http(CONTAINER, 8000)
    time.sleep(1)


def wrk(binary: str, args: argparse.Namespace, url: str, unit_name: str) -> dict:
    return _serve.measure_wrk(binary, CONTAINER, f"{unit_name}.service", url, loadgen_cpu=args.loadgen_cpu,
                              duration=args.duration, threads=args.threads, connections=args.connections,
                              also=("systemd-journald",))


def table(summary: dict, auto: int, sweep: list[int], rounds: int, args: argparse.Namespace) -> str:
    rows = ["| what (same host, same wrk setting) | median req/s (min-max) | ratio of medians | "
            "req per server CPU-second | ratio | p50 / p99 ms |", "|---|---|---|---|---|---|"]

    def cells(key: str) -> str:
        s = summary[key]
        lo, hi = s["rps_min_max"]
        cpu = f"{s['req_per_cpu_s']:,.0f}" if s.get("req_per_cpu_s") else "?"
        return f"{s['rps']:,.0f} ({lo:,.0f}-{hi:,.0f})", cpu, f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"

    def ratio(key: str, base: str, field: str) -> str:
        a, b = summary[key].get(field), summary[base].get(field)
        return f"{a / b:.2f}" if a and b else "?"
    best_n = max(sweep, key=lambda n: summary[f"fleet_w{n}"]["rps"])
    for n in sweep:
        key = f"fleet_w{n}"
        rps, cpu, lat = cells(key)
        tag = (" (auto-sized)" if n == auto else "") + (" (best)" if n == best_n else "")
        rows.append(f"| (a) asgi-fleet service, {n} worker(s){tag} | {rps} | {ratio(key, f'fleet_w{best_n}', 'rps')} "
                    f"of best | {cpu} | | {lat} |")
    rows.append(f"| (a) **auto-sized ({auto}) / best of the sweep ({best_n})** | | "
                f"**{ratio(f'fleet_w{auto}', f'fleet_w{best_n}', 'rps')}** | | | |")
    pairs = [("(b)", "gunicorn_uvloop", "uvicorn_uvloop", "gunicorn / bare uvicorn"),
             ("(c)", "gunicorn_h11", "gunicorn_uvloop", "h11 / uvloop, gunicorn"),
             ("(c)", "uvicorn_h11", "uvicorn_uvloop", "h11 / uvloop, bare uvicorn"),
             ("(+)", "fleet_accesslog", f"fleet_w{auto}", "with / without access log"),
             ("(+)", "fleet_recycling", f"fleet_w{auto}", "max_requests 10000 / 0"),
             ("(+)", "gunicorn_draining", "gunicorn_uvloop", "draining / stock class"),
             ("(+)", "gunicorn_draining_seccomp", "gunicorn_draining", "with / without SystemCallFilter"),
             ("(+)", f"fleet_w{auto}", "gunicorn_draining", "asgi-fleet unit / plain process, same worker"),
             ("(+)", f"fleet_w{auto}", "gunicorn_uvloop", "asgi-fleet service / stock gunicorn command")]
    rows.append(f"| (b/c) {LABELS['uvicorn_uvloop']}, N={auto} | {cells('uvicorn_uvloop')[0]} | | "
                f"{cells('uvicorn_uvloop')[1]} | | {cells('uvicorn_uvloop')[2]} |")
    for tag, key, base, what in pairs:
        if key not in summary or base not in summary:
            continue
        rps, cpu, lat = cells(key)
        label = LABELS.get(key, "asgi-fleet service as deployed")
        n_shown = summary[key].get("workers", auto)
        rows.append(f"| {tag} {label}, N={n_shown} | {rps} | {what}: **{ratio(key, base, 'rps')}** | {cpu} | "
                    f"{ratio(key, base, 'req_per_cpu_s')} | {lat} |")
    rows.append("")
    rows.append(f"Medians of {rounds} rounds (configurations interleaved in every round); wrk -t{args.threads} "
                f"-c{args.connections} -d{args.duration}s GET / (keep-alive) pinned to CPU {args.loadgen_cpu}; "
                f"host container on CPU {args.host_cpu}. A ratio above 1 means the first of the pair did better. "
                "Server CPU = user+sys of the unit's processes and of systemd-journald during the run: "
                "requests per CPU-second is less sensitive than req/s to other load on the shared machine.")
    return "\n".join(rows)


def _cpu_ratio(summary: dict, key: str, base: str) -> float | None:
    a, b = summary[key].get("req_per_cpu_s"), summary[base].get("req_per_cpu_s")
    return a / b if a and b else None


PAIRS = [("gunicorn_over_uvicorn", "gunicorn_uvloop", "uvicorn_uvloop"),
         ("h11_over_uvloop_gunicorn", "gunicorn_h11", "gunicorn_uvloop"),
         ("h11_over_uvloop_uvicorn", "uvicorn_h11", "uvicorn_uvloop"),
         ("draining_over_stock_plain", "gunicorn_draining", "gunicorn_uvloop"),
         ("accesslog_over_fleet", "fleet_accesslog", "fleet_w{auto}"),
         ("recycling_over_fleet", "fleet_recycling", "fleet_w{auto}"),
         ("seccomp_over_plain_draining", "gunicorn_draining_seccomp", "gunicorn_draining"),
         ("fleet_over_draining_plain", "fleet_w{auto}", "gunicorn_draining"),
         ("fleet_over_gunicorn_stock", "fleet_w{auto}", "gunicorn_uvloop")]


def analyse(runs: list[dict], auto: int, sweep: list[int], args: argparse.Namespace) -> dict:
    summary = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        summary[config] = {k: median([r.get(k) for r in mine]) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "req_per_cpu_s")}
        summary[config]["rps_min_max"] = [min(r["rps"] for r in mine), max(r["rps"] for r in mine)]
        summary[config].update(runs=len(mine), workers=mine[0]["workers"], errors=sum(r["errors"] + r["non_2xx"] for r in mine),
                               label=LABELS.get(config, f"asgi-fleet service, {mine[0]['workers']} worker(s)"))
    best_n = max(sweep, key=lambda n: summary[f"fleet_w{n}"]["rps"])
    ratios = {
        "auto_over_best": summary[f"fleet_w{auto}"]["rps"] / summary[f"fleet_w{best_n}"]["rps"],
        "gunicorn_over_uvicorn": summary["gunicorn_uvloop"]["rps"] / summary["uvicorn_uvloop"]["rps"],
        "h11_over_uvloop_gunicorn": summary["gunicorn_h11"]["rps"] / summary["gunicorn_uvloop"]["rps"],
        "h11_over_uvloop_uvicorn": summary["uvicorn_h11"]["rps"] / summary["uvicorn_uvloop"]["rps"],
        "accesslog_over_fleet": summary["fleet_accesslog"]["rps"] / summary[f"fleet_w{auto}"]["rps"],
        "recycling_over_fleet": summary["fleet_recycling"]["rps"] / summary[f"fleet_w{auto}"]["rps"],
        "fleet_over_gunicorn_stock": summary[f"fleet_w{auto}"]["rps"] / summary["gunicorn_uvloop"]["rps"],
        "per_cpu_gunicorn_over_uvicorn": _cpu_ratio(summary, "gunicorn_uvloop", "uvicorn_uvloop"),
        "per_cpu_h11_over_uvloop_gunicorn": _cpu_ratio(summary, "gunicorn_h11", "gunicorn_uvloop"),
        "per_cpu_h11_over_uvloop_uvicorn": _cpu_ratio(summary, "uvicorn_h11", "uvicorn_uvloop"),
        "per_cpu_fleet_over_gunicorn_stock": _cpu_ratio(summary, f"fleet_w{auto}", "gunicorn_uvloop"),
        "draining_over_stock_plain": summary["gunicorn_draining"]["rps"] / summary["gunicorn_uvloop"]["rps"],
        "fleet_over_draining_plain": summary[f"fleet_w{auto}"]["rps"] / summary["gunicorn_draining"]["rps"],
    }
    paired = {}
    for name, key, base in PAIRS + [(f"w{n}_over_w{auto}", f"fleet_w{n}", f"fleet_w{auto}") for n in sweep if n != auto]:
        key, base = key.format(auto=auto), base.format(auto=auto)
        per_round = []
        for rnd in sorted({r["round"] for r in runs}):
            x = [r["rps"] for r in runs if r["round"] == rnd and r["config"] == key]
            y = [r["rps"] for r in runs if r["round"] == rnd and r["config"] == base]
            if x and y:
                per_round.append(round(x[0] / y[0], 3))
        paired[name] = {"median": median(per_round), "per_round": per_round}
    lines = [table(summary, auto, sweep, args.rounds, args), "",
             "Same ratios taken within each round (adjacent runs), median over rounds [per round]:", ""]
    for name, value in paired.items():
        if value["median"] is not None:
            lines.append(f"- {name}: **{value['median']:.2f}** {value['per_round']}")
    return {"summary": summary, "best_workers": best_n,
            "ratios": {k: None if v is None else round(v, 3) for k, v in ratios.items()},
            "paired_ratios": paired, "table_md": "\n".join(lines)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=3, help="seconds per measured wrk run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--host-cpu", default="1", help="the test host's --cpuset-cpus")
    parser.add_argument("--loadgen-cpu", default="0", help="taskset CPU list for wrk")
    parser.add_argument("--max-workers", type=int, help="sweep end (default 2*host cores+1)")
    parser.add_argument("--keep", action="store_true", help="leave the container running")
    parser.add_argument("--output")
    parser.add_argument("--reanalyse", metavar="JSON", help="recompute summary and tables from a result's raw runs (into --output, else in place)")
    args = parser.parse_args(argv)
    if args.reanalyse:
        payload = json.loads(Path(args.reanalyse).read_text())
        saved = payload["setup"]
        args.rounds = saved["rounds"]
        args.threads, args.connections, args.duration = (int(x[2:].rstrip("s")) for x in saved["wrk"].split()[:3])
        payload.update(analyse(payload["runs"], saved["auto_workers"], saved["sweep"], args))
        write_json(args.output or args.reanalyse, payload)
        print(payload["table_md"])
        return 0

    started = time.monotonic()
    binary = ensure_wrk()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, _serve.test_host(CONTAINER, args.host_cpu, keep=args.keep) as host:
        inventory = _serve.write_inventory(Path(tmp) / "inventory.py", host)
        log("deploying the example app with deploy.py")
        deploy_s = _serve.deploy(inventory)
        ip = _serve.container_ip(CONTAINER)
        auto = int(sh(CONTAINER, f"sed -n 's/^workers = //p' {CONF}"))
        cores = int(sh(CONTAINER, "nproc"))
        sweep = list(range(1, (args.max_workers or 2 * cores + 1) + 1))
        original_conf = sh(CONTAINER, f"cat {CONF}")
        for name, (port, command) in SIDE_CARS.items():
            sh(CONTAINER, f"systemd-run --quiet --collect --unit={unit(name)} {SIDE_CAR_PROPS.get(name, '')} "
                          f"-p WorkingDirectory=/srv/hello/current {command.format(n=auto)}")
        for name, (port, _) in SIDE_CARS.items():
            _serve.wait_http(CONTAINER, port)
        stacks = {name: stack(unit(name)) for name in SIDE_CARS}
        stacks["fleet"] = stack("hello")
        stacks["fleet_worker_status"] = sh(CONTAINER, "for p in $(pgrep -f '^gunicorn: worker .hello'); do "
                                           "grep -E 'Seccomp:|Speculation_Store' /proc/$p/status; done", check=False)
        log(f"auto-sized workers: {auto}; sweep {sweep}; stacks {stacks}")
        with BenchLock():
            measured_from = time.monotonic()
            for rnd in range(args.rounds):
                for n in sweep:
                    set_fleet(original_conf, n)
                    runs.append({"round": rnd, "config": f"fleet_w{n}", "workers": n,
                                 **wrk(binary, args, f"http://{ip}:8000/", "hello")})
                    log(f"round {rnd} {runs[-1]['config']}: {runs[-1]['rps']} req/s, {runs[-1]['req_per_cpu_s']} req/cpu-s")
                for config, settings in (("fleet_accesslog", {"accesslog": '"-"'}),
                                         ("fleet_recycling", {"max_requests": "10000",
                                                              "max_requests_jitter": "1000"})):
                    set_fleet(original_conf, auto, **settings)
                    runs.append({"round": rnd, "config": config, "workers": auto,
                                 **wrk(binary, args, f"http://{ip}:8000/", "hello")})
                    log(f"round {rnd} {config}: {runs[-1]['rps']} req/s")
                set_fleet(original_conf, auto)
                order = list(SIDE_CARS)
                order = order[rnd % len(order):] + order[:rnd % len(order)]  # rotate: no fixed position
                for name in order:
                    runs.append({"round": rnd, "config": name, "workers": auto,
                                 **wrk(binary, args, f"http://{ip}:{SIDE_CARS[name][0]}/", unit(name))})
                    log(f"round {rnd} {name}: {runs[-1]['rps']} req/s, {runs[-1]['req_per_cpu_s']} req/cpu-s")
            measured_s = time.monotonic() - measured_from
        stacks_after = {"fleet": stack("hello")}
        sh(CONTAINER, f"cat > {CONF} <<'EOF'\n{original_conf}\nEOF\nsystemctl reload hello", check=False)
        info = _serve.machine(CONTAINER)

    analysed = analyse(runs, auto, sweep, args)
    payload = {
        "benchmark": "throughput",
        "command": command_line("throughput.py", argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": info,
        "setup": {"host": CONTAINER, "host_cpuset": args.host_cpu, "loadgen": f"wrk on the controller, "
                  f"taskset -c {args.loadgen_cpu}", "wrk": f"-t{args.threads} -c{args.connections} "
                  f"-d{args.duration}s --latency (after a 1 s warm-up)", "request": "GET / (FastAPI example app)",
                  "rounds": args.rounds, "auto_workers": auto, "host_cores": cores, "sweep": sweep,
                  "stacks_loaded": stacks, "stack_fleet_after": stacks_after,
                  "side_car_commands": {k: v[1].format(n=auto) for k, v in SIDE_CARS.items()}},
        **{k: v for k, v in analysed.items() if k != "table_md"},
        "runs": runs,
        "timing": _serve.timing(started, deploy_s, measured_s),
        "table_md": analysed["table_md"],
    }
    return _serve.write_result("throughput", payload, args.output)


if __name__ == "__main__":
    sys.exit(main())
