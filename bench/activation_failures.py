"""Failed requests per activation kind, stock worker against asgi-fleet's, side by side.

    .venv/bin/python bench/activation_failures.py --container asgi-web1 \
        --kinds config,code,dependencies,rollback --workers stock,draining --rounds 5

For each worker class and activation kind: bench/loadgen.py runs inside the
test host (keep-alive and one-connection-per-request clients, GET and POST)
while `pyinfra deploy.py` activates that kind of change ROUNDS times, exactly
as an operator would. Prints one JSON line per run and writes them all to
bench/results/activation_failures.json. Traffic stays inside the container.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKERS = {"stock": "uvicorn_worker.UvicornWorker",
           "draining": "asgi_fleet_worker.DrainingUvicornWorker"}
ALT_LOCK = ROOT / "tests" / "e2e" / "data" / "requirements-with-six.lock"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def sh(container: str, command: str) -> str:
    return subprocess.run(["docker", "exec", container, "sh", "-c", command], check=True,
                          capture_output=True, text=True).stdout.strip()


def deploy(inventory: Path, *data: str) -> None:
    args = [a for item in data for a in ("--data", item)]
    result = subprocess.run([PYINFRA, "-y", str(inventory), "deploy.py", *args], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"deploy failed:\n{result.stdout[-3000:]}")


def variants(workdir: Path) -> dict[str, Path]:
    made = {}
    for name in ("a", "b"):
        target = workdir / f"code-{name}"
        shutil.copytree(ROOT / "example", target)
        with open(target / "app.py", "a") as app:
            app.write(f"\n# variant {name}\n")
        made[name] = target
    return made


def round_data(kind: str, n: int, code: dict[str, Path]) -> list[str]:
    source = f"app_source={code['a']}"
    if kind == "config":
        return [source, f"keepalive={6 + n % 2}"]
    if kind == "code":
        return [f"app_source={code['b' if n % 2 == 0 else 'a']}"]
    if kind == "dependencies":
        return [source, f"app_lock={ALT_LOCK if n % 2 == 0 else 'example/requirements.lock'}"]
    return ["rollback=1"]


def measure(container: str, inventory: Path, kind: str, worker: str, rounds: int,
            code: dict[str, Path]) -> dict:
    pinned = f"worker_class={WORKERS[worker]}"
    deploy(inventory, f"app_source={code['a']}", pinned)
    if kind == "rollback":
        deploy(inventory, f"app_source={code['b']}", pinned)
    subprocess.run(["docker", "cp", str(ROOT / "bench" / "loadgen.py"), f"{container}:/tmp/loadgen.py"],
                   check=True)
    sh(container, "systemctl stop asgi-fleet-loadgen 2>/dev/null; rm -f /tmp/loadgen.stop /tmp/loadgen.json; "
                  "systemd-run --quiet --collect --unit=asgi-fleet-loadgen python3 /tmp/loadgen.py "
                  "--clients 6 --max-seconds 900 --stop-file /tmp/loadgen.stop --output /tmp/loadgen.json")
    time.sleep(1)
    started = time.monotonic()
    for n in range(rounds):
        deploy(inventory, *round_data(kind, n, code), pinned)
    sh(container, "touch /tmp/loadgen.stop")
    for _ in range(120):
        if subprocess.run(["docker", "exec", container, "test", "-e", "/tmp/loadgen.json"]).returncode == 0:
            break
        time.sleep(0.5)
    load = json.loads(sh(container, "cat /tmp/loadgen.json"))
    return {"kind": kind, "worker": worker, "activations": rounds,
            "seconds": round(time.monotonic() - started, 1), "requests": load["requests"],
            "failed": load["failed"], "errors": load["errors"],
            "failed_keepalive": load["by_mode"]["keepalive"]["failed"],
            "failed_close": load["by_mode"]["close"]["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--container", default="asgi-web1")
    parser.add_argument("--app", default="hello")
    parser.add_argument("--kinds", default="config,code,dependencies,rollback")
    parser.add_argument("--workers", default="stock,draining")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "activation_failures.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        inventory = workdir / "inventory.py"
        inventory.write_text(f'app = [("@docker/{args.container}", {{"apps": [{{"app_name": "{args.app}"}}]}})]\n')
        code = variants(workdir)
        results = []
        for kind in args.kinds.split(","):
            for worker in args.workers.split(","):  # side by side, in the same run
                results.append(measure(args.container, inventory, kind, worker, args.rounds, code))
                print(json.dumps(results[-1]), flush=True)
        deploy(inventory)  # back to the defaults
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": os.uname().nodename, "results": results}, indent=1))


if __name__ == "__main__":
    main()
