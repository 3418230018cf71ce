"""Activation under load: failed requests and p50/p99 latency before, during and after.

    .venv/bin/python bench/activation_latency.py                  # 3 rounds per kind
    .venv/bin/python bench/activation_latency.py --rounds 3 --kinds config,code

Starts its own test host `asgi-bench-serve2` (bookworm, systemd, --cpuset-cpus=1, sshd),
deploys the example app with the project's deploy.py, and puts beside it the
STOCK RECIPE: the same release and virtualenv served by
`gunicorn -k uvicorn_worker.UvicornWorker` from a plain Type=notify unit that
binds its port itself (no systemd socket, no draining worker), with the same
worker count, keepalive and access log.

Under a paced load (bench/loadgen.py on the controller, pinned to CPU 0 with
taskset: keep-alive and one-connection-per-request clients alternating GET /
and POST /items, --rate req/s each) every activation kind is applied ROUNDS times:

| kind | asgi-fleet (through `pyinfra deploy.py`) | stock recipe |
|---|---|---|
| config | --data keepalive=6/5 (HUP) | edit keepalive, `systemctl reload` (HUP) |
| code | --data app_source=B/A (HUP) | re-point `current`, `systemctl reload` |
| rollback | --data rollback=1 (HUP) | re-point `current` back, `systemctl reload` |
| dependencies | --data app_lock=ALT/default (restart behind the socket) | re-point the venv, `systemctl restart` |

asgi-fleet runs twice, side by side: as deployed by default (`reload_workers=one_at_a_time`:
its reload hook replaces the workers one at a time) and with `reload_workers=all_at_once`
(gunicorn's own HUP: every new worker at once).

Windows, per activation (t_cmd = the deploy or systemctl command starts, t_sig =
the master logs `Handling signal: hup|term`, read from the journal, t_end = the
command returns): before = [t_cmd-3s, t_cmd), work = [t_cmd, t_sig) (asgi-fleet's
preflight, canary and venv build; about zero for the stock recipe), during =
[t_sig, t_sig+4s), after = [t_end+3s, t_end+6s). A request belongs to the window
in which it was sent; latency is of complete 2xx responses; a failed request is
anything else. A window's p50/p99 are over all the activations of its kind and
recipe at once (pooled): one window's own p99 is too few requests to rank.
Writes bench/results/activation_latency.json. The measured part holds
/tmp/asgi-fleet-bench.lock (flock).

The host is reached as a server is: pyinfra over SSH as the user deploy,
with sudo (sshd on 127.0.0.1:2230), and the stock recipe's commands by ssh
and sudo too. Each command then costs the host what it costs a server (an
SSH channel, sudo, the command). Through `docker exec`, each command cost
the machine about 45 ms of CPU in the Docker daemon, containerd and runc
besides the 3 ms of a bare `true` inside the host, on the same two CPUs as
the app; an SSH channel with sudo costs 10 ms in all (side by side, 20
commands each). The controller's side (pyinfra; ssh for the stock recipe)
runs as `taskset -c LOADGEN_CPU nice -n 19`: in production it is another
machine, and here, left free, its Python (pyinfra's start, planning and
exit) ran on the host's CPU or delayed the load generator's clients, which
the p99 charged to the activation. What the activation costs the host
itself (sshd, sudo, the agent, the workers) is on the host's CPU, and
measured. The other benchmarks' hosts are reached with docker exec.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serve  # noqa: E402
from _serve import sh  # noqa: E402
from deploylib import ROOT, BenchLock, command_line, log  # noqa: E402

CONTAINER = "asgi-bench-serve2"
SSH_PORT = 2230  # the bench host's sshd, published on 127.0.0.1 only
ALT_LOCK = ROOT / "tests" / "e2e" / "data" / "requirements-with-six.lock"
DEFAULT_LOCK = "example/requirements.lock"
FLEET_PORT, STOCK_PORT = 8000, 8100
KINDS = ("config", "code", "rollback", "dependencies")
# asgi-fleet's recipes: the reload_workers setting each deploys with.
FLEET_RECIPES = {"asgi-fleet": "one_at_a_time", "asgi-fleet-all-at-once": "all_at_once"}
WINDOWS = ("before", "work", "during", "after")

STOCK_UNIT = """[Unit]
Description=stock recipe: gunicorn + uvicorn_worker.UvicornWorker, plain unit
After=network.target

[Service]
Type=notify
NotifyAccess=main
User=hello
Group=hello
RuntimeDirectory=stock
WorkingDirectory=/srv/stock
ExecStart=/srv/stock/venv/bin/gunicorn --config /etc/stock/gunicorn.conf.py
ExecReload=/bin/kill -s HUP $MAINPID
KillMode=mixed
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
"""

STOCK_CONF = """wsgi_app = "app:app"
bind = "0.0.0.0:{port}"
workers = {workers}
worker_class = "uvicorn_worker.UvicornWorker"
chdir = "/srv/stock/current"
keepalive = 5
accesslog = "-"
errorlog = "-"
control_socket = "/run/stock/gunicorn.ctl"
"""


def variants(workdir: Path) -> dict[str, Path]:
    made = {}
    for name in ("a", "b"):
        target = workdir / f"code-{name}"
        shutil.copytree(ROOT / "example", target, ignore=shutil.ignore_patterns("__pycache__"))
        with open(target / "app.py", "a") as app:
            app.write(f"\n# variant {name}\n")
        made[name] = target
    return made


def fleet_data(kind: str, n: int, code: dict[str, Path]) -> list[str]:
    a = f"app_source={code['a']}"
    if kind == "config":
        return [a, f"keepalive={6 if n % 2 == 0 else 5}"]
    if kind == "code":
        return [f"app_source={code['b' if n % 2 == 0 else 'a']}"]
    if kind == "dependencies":
        return [a, f"app_lock={ALT_LOCK if n % 2 == 0 else DEFAULT_LOCK}"]
    return ["rollback=1"]


def relink(link: str, target: str) -> str:
    return f"ln -sfn {target} {link}.new && mv -T {link}.new {link}"


def stock_command(kind: str, n: int, releases: dict[str, str], venvs: dict[str, str],
                  state: dict[str, str]) -> str:
    """`state` tracks the stock recipe's current and previous release ("a"/"b")."""
    if kind in ("code", "rollback"):
        target = ("b" if n % 2 == 0 else "a") if kind == "code" else state["previous"]
        state["previous"], state["current"] = state["current"], target
        return relink("/srv/stock/current", releases[target]) + " && systemctl reload stock"
    if kind == "config":
        return (f"sed -i 's/^keepalive = .*/keepalive = {6 if n % 2 == 0 else 5}/' /etc/stock/gunicorn.conf.py"
                " && systemctl reload stock")
    return relink("/srv/stock/venv", venvs["alt" if n % 2 == 0 else "default"]) + " && systemctl restart stock"


def signal_time(unit: str, since: float, until: float) -> float | None:
    out = sh(CONTAINER, f"journalctl -u {unit}.service -o short-unix --no-pager --since @{since:.3f} "
                        f"--until @{until + 2:.3f} | grep -m1 -E 'Handling signal: (hup|term)' || true",
             check=False)
    try:
        return float(out.split()[0]) if out else None
    except ValueError:
        return None


class Load:
    """bench/loadgen.py on the controller, pinned with taskset, bounded by --max-seconds."""

    def __init__(self, tmp: Path, ip: str, port: int, args: argparse.Namespace, name: str):
        self.records = tmp / f"{name}.csv"
        self.stop = tmp / f"{name}.stop"
        self.output = tmp / f"{name}.json"
        self.proc = subprocess.Popen(
            ["taskset", "-c", args.loadgen_cpu, sys.executable, str(ROOT / "bench" / "loadgen.py"),
             "--host", ip, "--port", str(port), "--clients", str(args.clients), "--rate", str(args.rate),
             "--max-seconds", str(args.max_load_seconds), "--timeout", "10", "--stop-file", str(self.stop),
             "--records", str(self.records), "--output", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(self) -> tuple[dict, list[tuple[float, float, int, str]]]:
        self.stop.touch()
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            _, err = self.proc.communicate()
        if not self.output.exists():
            raise RuntimeError(f"loadgen failed: {err[-2000:]}")
        with open(self.records) as handle:
            rows = [(float(s), float(lat), int(ok), mode) for s, lat, ok, mode in csv.reader(handle)]
        return json.loads(self.output.read_text()), rows


def windows(act: dict) -> dict[str, tuple[float, float]]:
    sig = act["t_sig"] if act["t_sig"] is not None else act["t_end"]
    return {"before": (act["t_cmd"] - 3, act["t_cmd"]), "work": (act["t_cmd"], sig),
            "during": (sig, sig + 4), "after": (act["t_end"] + 3, act["t_end"] + 6)}


def analyse(act: dict, rows: list) -> dict:
    out = {}
    act["_latencies"] = {}  # each window's 2xx latencies, for the pooled percentiles (not written out)
    for name, (lo, hi) in windows(act).items():
        mine = [r for r in rows if lo <= r[0] < hi]
        good = sorted(r[1] for r in mine if r[2])
        act["_latencies"][name] = good
        out[name] = {"seconds": round(hi - lo, 2), "requests": len(mine),
                     "failed": sum(1 for r in mine if not r[2]),
                     "p50_ms": _pct(good, 50), "p99_ms": _pct(good, 99), "max_ms": good[-1] if good else None}
    period = [r for r in rows if act["t_cmd"] - 3 <= r[0] < act["t_end"] + 6]
    out["period"] = {"requests": len(period), "failed": sum(1 for r in period if not r[2]),
                     "failed_keepalive": sum(1 for r in period if not r[2] and r[3] == "k"),
                     "failed_close": sum(1 for r in period if not r[2] and r[3] == "c")}
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    rank = max(1, min(len(values), -(-len(values) * q // 100)))
    return round(values[int(rank) - 1], 2)


def deployed(inventory: Path) -> tuple[str, str]:
    """The release and virtualenv directories the last deploy activated, from
    its record (not a command to the host: this runs in the measured windows)."""
    hello = next(iter(json.loads(_serve.record_path(inventory).read_text())["hosts"].values()))["apps"]["hello"]
    return f"/srv/hello/releases/{hello['release']}", f"/srv/hello/venvs/{hello['venv']}"


def controller(args) -> list[str]:
    """The launcher of the controller's commands during the measured activations (see the docstring)."""
    return ["taskset", "-c", args.loadgen_cpu, "nice", "-n", "19"]


def run_recipe(recipe: str, args, tmp: Path, ip: str, act_fn) -> list[dict]:
    port = FLEET_PORT if recipe in FLEET_RECIPES else STOCK_PORT
    unit = "hello" if recipe in FLEET_RECIPES else "stock"
    load = Load(tmp, ip, port, args, recipe)
    acts = []
    try:
        time.sleep(args.lead)
        for kind in args.kinds.split(","):
            for n in range(args.rounds):
                t_cmd = time.time()
                detail = act_fn(recipe, kind, n)
                t_end = time.time()
                acts.append({"recipe": recipe, "kind": kind, "round": n, "t_cmd": t_cmd, "t_end": t_end,
                             "command_s": round(t_end - t_cmd, 2), "detail": detail})
                log(f"{recipe} {kind} #{n}: {t_end - t_cmd:.1f} s")
                time.sleep(args.gap)
    finally:
        summary, rows = load.finish()
    for act in acts:
        act["t_sig"] = signal_time(unit, act["t_cmd"], act["t_end"])
        act["windows"] = analyse(act, rows)
    log(f"{recipe}: loadgen {summary['requests']} requests, {summary['failed']} failed {summary['errors']}")
    return acts, summary


def pooled(acts: list[dict], window: str, q: float) -> float | None:
    """The q-th percentile of `window` over the requests of all `acts` at
    once. One window holds about 1,400 requests, so its own p99 is its 15th
    slowest: quiet windows of one run gave 1.2 to 5.5 ms. Pooled over the
    activations, a p99 is ranked among several thousand."""
    value = _pct(sorted(v for a in acts for v in a["_latencies"][window]), q)
    return None if value is None else round(value, 1)


def pooled_summary(acts: list[dict]) -> dict:
    """Per recipe and kind, each window's pooled p50 and p99 (and how many 2xx they rank)."""
    out: dict = {}
    for a in acts:
        out.setdefault(a["recipe"], {}).setdefault(a["kind"], [])
    for recipe, kinds in out.items():
        for kind in kinds:
            mine = [a for a in acts if a["recipe"] == recipe and a["kind"] == kind]
            kinds[kind] = {w: {"p50_ms": pooled(mine, w, 50), "p99_ms": pooled(mine, w, 99),
                               "responses": sum(len(a["_latencies"][w]) for a in mine)} for w in WINDOWS}
    return out


def table(acts: list[dict], rounds: int, args, workers: int) -> str:
    rows = ["| kind | recipe (mechanism) | failed / requests | p50 ms before / during / after | "
            "p99 ms before / during / after | p99 during / before | p99 ms while the deploy works (before the switch) |",
            "|---|---|---|---|---|---|---|"]
    mech = {("asgi-fleet", "dependencies"): "deploy.py: restart behind the socket",
            ("asgi-fleet-all-at-once", "dependencies"): "deploy.py: restart behind the socket",
            ("asgi-fleet", None): "deploy.py: HUP, one worker at a time",
            ("asgi-fleet-all-at-once", None): "deploy.py: HUP, all workers at once",
            ("stock", "dependencies"): "`systemctl restart`, no socket",
            ("stock", None): "`systemctl reload` (HUP)"}
    for kind in args.kinds.split(","):
        for recipe in ("stock", "asgi-fleet-all-at-once", "asgi-fleet"):
            mine = [a for a in acts if a["recipe"] == recipe and a["kind"] == kind]
            if not mine:
                continue
            failed = sum(a["windows"]["period"]["failed"] for a in mine)
            total = sum(a["windows"]["period"]["requests"] for a in mine)
            m = mech.get((recipe, kind)) or mech[recipe, None]

            def trio(q: float) -> str:
                return " / ".join(f"{pooled(mine, w, q)}" for w in ("before", "during", "after"))
            work = pooled(mine, "work", 99) if recipe in FLEET_RECIPES else "-"
            before, during = pooled(mine, "before", 99), pooled(mine, "during", 99)
            spike = f"{during / before:.2f}" if before and during else "-"
            bold = "**" if failed else ""
            rows.append(f"| {kind} | {recipe} ({m}) | {bold}{failed}{bold} / {total:,} | {trio(50)} | "
                        f"{trio(99)} | {spike} | {work} |")
    rows.append("")
    rows.append(f"{rounds} activation(s) per kind and recipe; failed = sum over them, counted from 3 s before "
                "the command to 6 s after it returned; latencies = each window's p50/p99 over the complete 2xx "
                "responses of all the activations of that kind and recipe, pooled (a window's own p99, its 15th "
                "slowest of about 1,400, moved from 1.2 to 5.5 ms between quiet windows of one run). "
                f"Load: {2 * args.clients} clients x {args.rate:g} req/s "
                "(half keep-alive, half one connection per request; GET / and POST /items), Python http.client, "
                f"pinned to CPU {args.loadgen_cpu}; host on CPU {args.host_cpu}, {workers} worker(s) "
                f"({'forced' if args.workers else 'sized by the deploy'}), reached over SSH with sudo; "
                f"the controller's commands (pyinfra, ssh) as `{' '.join(controller(args))}`.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--recipes", default="asgi-fleet,asgi-fleet-all-at-once,stock",
                        help="an asgi-fleet recipe must run before stock")
    parser.add_argument("--rounds", type=int, default=3, help="activations per kind and recipe")
    parser.add_argument("--clients", type=int, default=6, help="per mode (keep-alive, close)")
    parser.add_argument("--rate", type=float, default=40, help="requests per second per client")
    parser.add_argument("--lead", type=float, default=4)
    parser.add_argument("--gap", type=float, default=6, help="seconds after each command returns")
    parser.add_argument("--max-load-seconds", type=float, default=600)
    parser.add_argument("--workers", type=int, help="force the worker count (default: sized by the deploy, 1 on one CPU)")
    parser.add_argument("--host-cpu", default="1")
    parser.add_argument("--loadgen-cpu", default="0")
    parser.add_argument("--keep", action="store_true", help="leave the container running")
    parser.add_argument("--output")
    args = parser.parse_args(argv)

    started = time.monotonic()
    acts: list[dict] = []
    loads: dict[str, dict] = {}
    with (tempfile.TemporaryDirectory() as tmpdir,
          _serve.test_host(CONTAINER, args.host_cpu, keep=args.keep, ssh_port=SSH_PORT) as host):
        tmp = Path(tmpdir)
        inventory = _serve.write_inventory(tmp / "inventory.py", host)
        code = variants(tmp)
        log("deploying the example app (code variant a) with deploy.py")
        forced = [f"workers={args.workers}"] if args.workers else []
        deploy_s = _serve.deploy(inventory, f"app_source={code['a']}", *forced)
        ip = _serve.container_ip(CONTAINER)
        workers = int(sh(CONTAINER, "sed -n 's/^workers = //p' /etc/hello/gunicorn.conf.py"))
        release_a, venv_default = deployed(inventory)
        releases, venvs = {"a": release_a}, {"default": venv_default}
        durations: dict[str, list[float]] = {}

        def fleet_act(recipe: str, kind: str, n: int) -> dict:
            data = fleet_data(kind, n, code) + [f"reload_workers={FLEET_RECIPES[recipe]}", *forced]
            seconds = _serve.deploy(inventory, *data, launcher=controller(args))
            durations.setdefault(kind, []).append(seconds)
            current, venv = deployed(inventory)
            if kind == "code" and n % 2 == 0:
                releases["b"] = current
            if kind == "dependencies" and n % 2 == 0:
                venvs["alt"] = venv
            return {"data": [d.replace(str(tmp), "$TMP").replace(str(ROOT) + "/", "") for d in data],
                    "release": current.rsplit("/", 1)[-1]}

        stock_state = {"current": "a", "previous": "b"}

        def stock_act(recipe: str, kind: str, n: int) -> dict:
            command = stock_command(kind, n, releases, venvs, stock_state)
            _serve.as_root(host, command, timeout=120, launcher=controller(args))
            return {"command": command}

        with BenchLock():
            measured_from = time.monotonic()
            for recipe in args.recipes.split(","):
                if recipe == "stock":
                    if "b" not in releases or "alt" not in venvs:  # stock borrows fleet's releases and venvs
                        if "b" not in releases:
                            _serve.deploy(inventory, f"app_source={code['b']}", *forced)
                            releases["b"] = deployed(inventory)[0]
                        if "alt" not in venvs:
                            _serve.deploy(inventory, f"app_source={code['a']}", f"app_lock={ALT_LOCK}", *forced)
                            venvs["alt"] = deployed(inventory)[1]
                    unit = STOCK_UNIT
                    conf = STOCK_CONF.format(port=STOCK_PORT, workers=workers)
                    sh(CONTAINER, f"mkdir -p /srv/stock /etc/stock && {relink('/srv/stock/current', releases['a'])}"
                                  f" && {relink('/srv/stock/venv', venvs['default'])}"
                                  f" && cat > /etc/systemd/system/stock.service <<'EOF'\n{unit}EOF\n"
                                  f"cat > /etc/stock/gunicorn.conf.py <<'EOF'\n{conf}EOF\n"
                                  "systemctl daemon-reload && systemctl restart stock")
                    _serve.wait_http(CONTAINER, STOCK_PORT)
                    time.sleep(1)
                    acts_r, loads[recipe] = run_recipe("stock", args, tmp, ip, stock_act)
                else:
                    acts_r, loads[recipe] = run_recipe(recipe, args, tmp, ip, fleet_act)
                acts += acts_r
            measured_s = time.monotonic() - measured_from
        info = _serve.machine(CONTAINER)

    payload = {
        "benchmark": "activation_latency",
        "command": command_line("activation_latency.py", argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": info,
        "setup": {"host": CONTAINER, "host_cpuset": args.host_cpu, "workers": workers,
                  "loadgen": f"bench/loadgen.py on the controller, taskset -c {args.loadgen_cpu}, "
                             f"{args.clients} keep-alive + {args.clients} close clients, {args.rate:g} req/s each",
                  "controller": " ".join(controller(args)),
                  "rounds": args.rounds, "stock_unit": STOCK_UNIT,
                  "stock_config": STOCK_CONF.format(port=STOCK_PORT, workers=workers),
                  "windows": "before [t_cmd-3, t_cmd), work [t_cmd, t_sig), during [t_sig, t_sig+4), "
                             "after [t_end+3, t_end+6)"},
        "deploy_seconds_per_kind": {k: [round(v, 1) for v in vs] for k, vs in durations.items()},
        "loadgen_totals": loads,
        "pooled": pooled_summary(acts),
        "table_md": table(acts, args.rounds, args, workers),
        "activations": [{k: v for k, v in a.items() if k != "_latencies"} for a in acts],
        "timing": _serve.timing(started, deploy_s, measured_s),
    }
    return _serve.write_result("activation_latency", payload, args.output)


if __name__ == "__main__":
    sys.exit(main())
