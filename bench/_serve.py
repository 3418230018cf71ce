"""Shared plumbing for bench/throughput.py and bench/activation_latency.py.

One test host per script (a systemd container from fleet/, pinned with
--cpuset-cpus), deployed with the project's own deploy.py through a throwaway
inventory; the load generator runs on the controller, pinned to another CPU
with taskset, and sends traffic only to that container's address.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fleet import hostctl  # noqa: E402
from fleet.hosts import TestHost  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
LOCK_FILE = "/tmp/asgi-fleet-bench.lock"
RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sh(container: str, command: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(["docker", "exec", container, "sh", "-c", command],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{container}: {command!r} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


@contextlib.contextmanager
def bench_lock():
    """Hold /tmp/asgi-fleet-bench.lock (flock(2), as `flock FILE ...` does) around measured runs."""
    waited = time.monotonic()
    with open(LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {LOCK_FILE} (another benchmark runs)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        info = {"lock_wait_s": round(time.monotonic() - waited, 1)}
        try:
            yield info
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def test_host(name: str, cpuset: str, dist: str = "bookworm", keep: bool = False):
    """Start a fresh systemd test host (an old one of that name is removed first); remove it after."""
    host = TestHost(name, dist, "docker", cpuset=cpuset)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    try:
        hostctl.start(host)
        hostctl.wait_booted(host)
        yield host
    finally:
        if not keep:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def write_inventory(path: Path, host: TestHost) -> Path:
    data = {"test_host_connector": "docker", "test_host_dist": host.dist,
            "test_host_cpuset": host.cpuset, "test_host_cpus": host.cpus}
    path.write_text("# asgi-fleet benchmark host (shape of inventories/docker.py)\n"
                    f"app = [({f'@docker/{host.name}'!r}, {data!r})]\n")
    return path


def deploy(inventory: Path, *data: str, timeout: float = 600) -> float:
    """Run the project's deploy.py with --data overrides; return its wall time in seconds."""
    args = [a for item in data for a in ("--data", item)]
    started = time.monotonic()
    result = subprocess.run([PYINFRA, "-y", str(inventory), "deploy.py", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise RuntimeError(f"deploy {data} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return time.monotonic() - started


def container_ip(name: str) -> str:
    """The container's address on its network (test hosts join the user-defined
    network `asgi-fleet`, where .NetworkSettings.IPAddress is empty)."""
    address = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
        check=True, capture_output=True, text=True).stdout.split()
    if not address:
        raise RuntimeError(f"container {name} has no IP address")
    return address[0]


def wait_http(container: str, port: int, path: str = "/healthz", deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if '"ok"' in sh(container, f"curl -fsS -m 2 http://127.0.0.1:{port}{path} || true",
                        timeout=10, check=False):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{container}: http://127.0.0.1:{port}{path} not healthy after {deadline}s")


def machine(container: str | None = None) -> dict:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    cpu_model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    info = {"nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_mb": mem_kb // 1024,
            "kernel": platform.release(), "python": platform.python_version(),
            "docker": out(["docker", "version", "--format", "{{.Server.Version}}"]),
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3]}
    if container:
        info["host_nproc"] = sh(container, "nproc", check=False)
        info["host_packages"] = sh(container, "/srv/hello/current/.venv/bin/python -c "
                                   "\"import importlib.metadata as m; print(' '.join(p + '=' + m.version(p) "
                                   "for p in ('gunicorn', 'uvicorn', 'uvicorn-worker', 'uvloop', 'httptools', "
                                   "'h11', 'fastapi')))\"", check=False)
    return info


def command_line(script: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([".venv/bin/python", f"bench/{script}", *args])


def timing(started: float, deploy_s: float, measured_s: float, lock: dict) -> dict:
    """Where a benchmark's own run time went, for its JSON result."""
    return {"deploy_s": round(deploy_s, 1), "measured_s": round(measured_s, 1),
            "lock_wait_s": lock["lock_wait_s"], "total_s": round(time.monotonic() - started, 1)}


def write_result(name: str, payload: dict, output: str | None = None) -> int:
    """Write bench/results/NAME.json (or OUTPUT) and print its table."""
    path = Path(output) if output else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(payload["table_md"])
    log(f"wrote {path} in {payload['timing']['total_s']} s")
    return 0


def median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
