#!/usr/bin/env python3
"""Count requests lost while a deployed asgi-fleet service reloads or restarts.

Runs `hey` INSIDE a test container (traffic stays on the container's
loopback), fires N activations (`systemctl reload` = HUP, or `systemctl
restart`) spread over the run, and prints one JSON object per run:

    {"worker": ..., "kind": ..., "keepalive": ..., "activations": ...,
     "requests": ..., "failed": ..., "non_2xx": ..., "errors": {...}, "rps": ...}

`failed` = transport errors + non-2xx responses. By default every run is
done with the stock worker AND with asgi-fleet's draining worker (the
worker_class line of the gunicorn config is switched, and the service
restarted, between the two); the original config is restored at the end.

    python3 bench/reload_failures.py --container asgi-lab1 \
        --kinds none,hup,restart --keepalive off,on --activations 5
    python3 bench/reload_failures.py --container asgi-lab1 --method POST --path /items

Go's net/http (inside hey) silently retries an idempotent GET that failed on
a reused keep-alive connection, which hides server-side closes of idle
keep-alive connections; a POST is not retried, so use --method POST to see them.

Needs: a running container with the service deployed by asgi-fleet and `hey`
installed in it (`apt-get install -y hey`). Stdlib only. Every load run is
bounded (`hey -z`), every docker call has a timeout.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

WORKERS = {
    "stock": "uvicorn_worker.UvicornWorker",
    "fixed": "asgi_fleet_worker.DrainingUvicornWorker",
}
WORKER_FILE = Path(__file__).resolve().parent.parent / "asgi_fleet" / "worker.py"


def sh(container: str, script: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", "exec", container, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{script!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def install_worker(container: str, app: str) -> None:
    """Copy asgi_fleet/worker.py into the service's virtualenv(s)."""
    subprocess.run(["docker", "cp", str(WORKER_FILE), f"{container}:/tmp/asgi_fleet_worker.py"], check=True, timeout=60)
    sh(
        container,
        f"for d in /srv/{app}/venvs/*/lib/python3*/site-packages; do "
        f"install -m 0644 /tmp/asgi_fleet_worker.py $d/asgi_fleet_worker.py; done",
    )


def wait_healthy(container: str, port: int, deadline_s: float = 30) -> None:
    url = f"http://127.0.0.1:{port}/healthz"
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = sh(container, f"curl -fsS -m 2 {url} || true", timeout=10, check=False)
        if '"ok"' in out:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {deadline_s}s")


def set_worker(container: str, conf: str, app: str, worker_class: str, port: int) -> None:
    sh(container, f"sed -i 's/^worker_class = .*/worker_class = \"{worker_class}\"/' {conf}")
    sh(container, f"systemctl reset-failed {app} || true; systemctl restart {app}", timeout=90)
    wait_healthy(container, port)
    # Give the workers time to boot fully and settle.
    time.sleep(2)


def activate(container: str, app: str, kind: str) -> None:
    if kind == "hup":
        sh(container, f"systemctl reload {app}", timeout=60)
    elif kind == "restart":
        # A start-rate limit must not turn our 5 quick restarts into a failure.
        sh(container, f"systemctl reset-failed {app} || true; systemctl restart {app}", timeout=90)
    elif kind != "none":
        raise ValueError(kind)


ERROR_KINDS = [
    ("reset", re.compile(r"connection reset by peer", re.I)),
    ("eof", re.compile(r"\bEOF\b")),
    ("refused", re.compile(r"connection refused", re.I)),
    ("timeout", re.compile(r"timeout|deadline exceeded", re.I)),
    ("broken_pipe", re.compile(r"broken pipe", re.I)),
]


def parse_hey(out: str) -> dict:
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    samples: list[str] = []
    section = None
    rps = None
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("Requests/sec:"):
            rps = float(s.split()[1])
        elif s.startswith("Status code distribution"):
            section = "status"
        elif s.startswith("Error distribution"):
            section = "error"
        elif section == "status" and (m := re.match(r"\[(\d+)\]\s+(\d+) responses", s)):
            statuses[m.group(1)] = statuses.get(m.group(1), 0) + int(m.group(2))
        elif section == "error" and (m := re.match(r"\[(\d+)\]\s+(.*)", s)):
            n, msg = int(m.group(1)), m.group(2)
            kind = next((k for k, rx in ERROR_KINDS if rx.search(msg)), "other")
            errors[kind] = errors.get(kind, 0) + n
            if len(samples) < 3:
                samples.append(msg)
    n_err = sum(errors.values())
    non_2xx = sum(v for k, v in statuses.items() if not k.startswith("2"))
    return {
        "requests": sum(statuses.values()) + n_err,
        "failed": n_err + non_2xx,
        "non_2xx": non_2xx,
        "statuses": statuses,
        "errors": errors,
        "error_samples": samples,
        "rps": rps,
    }


def one_run(args: argparse.Namespace, worker: str, kind: str, keepalive: bool) -> dict:
    n = args.activations if kind != "none" else 0
    duration = args.lead + max(n, 1) * args.interval + args.tail
    cmd = ["hey", "-z", f"{duration:g}s", "-c", str(args.concurrency), "-t", "10"]
    if args.method != "GET":
        cmd += ["-m", args.method, "-T", args.content_type, "-d", args.body]
    if not keepalive:
        cmd.append("-disable-keepalive")
    cmd.append(f"http://127.0.0.1:{args.port}{args.path}")
    result: dict = {}

    def load() -> None:
        proc = subprocess.run(
            ["docker", "exec", args.container, *cmd], capture_output=True, text=True, timeout=duration + 60
        )
        result["out"] = proc.stdout + proc.stderr

    t = threading.Thread(target=load)
    t.start()
    time.sleep(args.lead)
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        activate(args.container, args.app, kind)
        times.append(round(time.monotonic() - t0, 2))
        time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))
    t.join(timeout=duration + 90)
    parsed = parse_hey(result.get("out", ""))
    out = {
        "worker": worker,
        "worker_class": WORKERS[worker],
        "kind": kind,
        "keepalive": keepalive,
        "activations": n,
        "activation_seconds": times,
        "duration_s": duration,
        "concurrency": args.concurrency,
        "request": f"{args.method} {args.path}",
        **parsed,
    }
    # Let old workers finish draining before the next run.
    time.sleep(args.settle)
    wait_healthy(args.container, args.port)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--container", required=True)
    p.add_argument("--app", default="hello")
    p.add_argument("--conf", default=None, help="default /etc/APP/gunicorn.conf.py")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET", help="POST is never retried by hey's Go client")
    p.add_argument("--body", default='{"name": "bench"}')
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--kinds", default="hup,restart", help="comma list of none,hup,restart")
    p.add_argument("--keepalive", default="off,on", help="comma list of off,on")
    p.add_argument("--workers", default="stock,fixed", help="comma list of stock,fixed")
    p.add_argument("--activations", type=int, default=5)
    p.add_argument("--interval", type=float, default=3.0, help="seconds between activations")
    p.add_argument("--lead", type=float, default=2.0)
    p.add_argument("--tail", type=float, default=3.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    conf = args.conf or f"/etc/{args.app}/gunicorn.conf.py"

    original = sh(args.container, f"grep '^worker_class' {conf}").strip()
    install_worker(args.container, args.app)
    results = []
    try:
        for worker in args.workers.split(","):
            set_worker(args.container, conf, args.app, WORKERS[worker], args.port)
            for kind in args.kinds.split(","):
                for ka in args.keepalive.split(","):
                    for _ in range(args.repeat):
                        r = one_run(args, worker, kind, ka == "on")
                        results.append(r)
                        print(json.dumps(r), flush=True)
    finally:
        restore = "s/^worker_class = .*/" + original.replace("/", "\\/") + "/"
        sh(args.container, f"sed -i {shlex.quote(restore)} {conf}")
        sh(args.container, f"systemctl reset-failed {args.app} || true; systemctl restart {args.app}", timeout=90)
    summary: dict = {}
    for r in results:
        key = f"{r['worker']}/{r['request']}/{r['kind']}/keepalive={'on' if r['keepalive'] else 'off'}"
        s = summary.setdefault(key, {"runs": 0, "requests": 0, "failed": 0, "activations": 0})
        s["runs"] += 1
        s["requests"] += r["requests"]
        s["failed"] += r["failed"]
        s["activations"] += r["activations"]
    print(json.dumps({"summary": summary}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
