"""The serving benchmarks' plumbing: bench/throughput.py and bench/activation_latency.py
(and bench/rolling_deploy.py, for the load balancer's address).

One test host per script (a systemd container from fleet/, pinned with
--cpuset-cpus), deployed with the project's own deploy.py through a throwaway
inventory; the load generator runs on the controller, pinned to another CPU
with taskset, and sends traffic only to that container's address.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import deploylib  # first: it puts the project root on sys.path, for fleet
from deploylib import ROOT, BenchLock, log
from asgi_fleet.fleet import hostctl
from asgi_fleet.fleet.hosts import TestHost, inventory_entry

RESULTS = ROOT / "bench" / "results"


def sh(container: str, command: str, timeout: float = 120, check: bool = True) -> str:
    """`command` run by sh in the container (docker exec)."""
    return _run(["docker", "exec", container, "sh", "-c", command], container, command, timeout, check)


def _run(argv: list[str], where: str, command: str, timeout: float, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{where}: {command!r} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


@contextlib.contextmanager
def test_host(name: str, cpuset: str, dist: str = "bookworm", keep: bool = False, ssh_port: int | None = None):
    """Start a fresh systemd test host (an old one of that name is removed first); remove it after.
    With `ssh_port` it is reached as a server is: pyinfra over SSH (published on
    127.0.0.1:ssh_port) as the user deploy, with sudo; else with docker exec."""
    host = TestHost(name, dist, "ssh" if ssh_port else "docker", cpuset=cpuset, ssh_port=ssh_port)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    try:
        hostctl.start(host)
        hostctl.wait_booted(host)
        if ssh_port:
            hostctl.setup_ssh(host, hostctl.ensure_key())
        yield host
    finally:
        if not keep:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def write_inventory(path: Path, host: TestHost) -> Path:
    """A one-host inventory, in the shape of inventories/docker.py."""
    path.write_text("# asgi-fleet benchmark host (shape of inventories/docker.py)\n"
                    f"app = [{inventory_entry(host)!r}]\n")
    return path


def as_root(host: TestHost, command: str, timeout: float = 120, launcher: Sequence[str] = ()) -> str:
    """`command` run by sh as root on the host, the way its deploys reach it:
    over SSH with sudo (an SSH host), or with docker exec."""
    if host.connector == "ssh":
        via = [*map(str, hostctl.ssh_args(host)), f"sudo -n sh -c {shlex.quote(command)}"]
    else:
        via = ["docker", "exec", host.name, "sh", "-c", command]
    return _run([*launcher, *via], host.name, command, timeout)


def record_path(inventory: Path) -> Path:
    """Where deploy() has the deploy write its record, by default: next to the inventory."""
    return inventory.with_suffix(".record.json")


def deploy(inventory: Path, *data: str, timeout: float = 600, record: Path | None = None,
           launcher: Sequence[str] = ()) -> float:
    """Run the project's deploy.py with --data overrides; return its wall time in seconds.
    `record`: where the deploy writes its own record of the run (default: next to the inventory);
    `launcher`: a command prefix for pyinfra."""
    args = [a for item in data for a in ("--data", item)]
    started = time.monotonic()
    run = deploylib.run_deploy(inventory, *args, record=record or record_path(inventory),
                               timeout=timeout, launcher=launcher)
    if run.returncode:
        raise RuntimeError(f"deploy {data} failed:\n{run.output[-5000:]}")
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


def machine(container: str) -> dict:
    """The controller, and the test host's CPUs and served stack."""
    return {**deploylib.machine(),
            "host_nproc": sh(container, "nproc", check=False),
            "host_packages": sh(container, "/srv/hello/current/.venv/bin/python -c "
                                "\"import importlib.metadata as m; print(' '.join(p + '=' + m.version(p) "
                                "for p in ('gunicorn', 'uvicorn', 'uvicorn-worker', 'uvloop', 'httptools', "
                                "'h11', 'fastapi')))\"", check=False)}


def timing(started: float, deploy_s: float, measured_s: float) -> dict:
    """Where a benchmark's own run time went, for its JSON result."""
    return {"deploy_s": round(deploy_s, 1), "measured_s": round(measured_s, 1),
            "lock_wait_s": round(BenchLock.waited, 1), "total_s": round(time.monotonic() - started, 1)}


def ensure_wrk() -> str:
    if not shutil.which("wrk"):
        log("wrk is missing on the controller: apt-get install -y wrk")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True, timeout=300)
    return shutil.which("wrk")


WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out: str) -> dict:
    def ms(text: str) -> float:
        number, unit_ = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
        return round(float(number) * WRK_UNITS[unit_], 3)
    result = {"rps": None, "requests": None, "errors": 0, "non_2xx": 0}
    for line in out.splitlines():
        s = line.strip()
        if m := re.match(r"Requests/sec:\s+([\d.]+)", s):
            result["rps"] = float(m.group(1))
        elif m := re.match(r"(\d+) requests in", s):
            result["requests"] = int(m.group(1))
        elif m := re.match(r"(50|90|99)%\s+(\S+)", s):
            result[f"p{m.group(1)}_ms"] = ms(m.group(2))
        elif s.startswith("Socket errors:"):
            result["errors"] = sum(int(x) for x in re.findall(r"\d+", s))
        elif m := re.match(r"Non-2xx or 3xx responses:\s+(\d+)", s):
            result["non_2xx"] = int(m.group(1))
    return result


def unit_cpu_seconds(container: str, unit: str, also: tuple[str, ...] = ()) -> float:
    """CPU time (user+sys) of a unit's master and live children, plus the
    master's reaped children (retired or recycled workers), plus the processes
    named in `also` (e.g. systemd-journald, the access log's other half)."""
    main = sh(container, f"systemctl show -p MainPID --value {unit}", check=False) or "0"
    if main == "0":
        return 0.0
    pids = [main, *sh(container, f"pgrep -P {main} || true", check=False).split()]
    script = ("t=0; for p in " + " ".join(pids) + "".join(f" $(pidof {name})" for name in also) + "; do "
              "set -- $(cut -d')' -f2 /proc/$p/stat 2>/dev/null); "
              "[ $# -gt 15 ] && t=$((t + ${12} + ${13} + ${14} + ${15})); done; echo $t")
    return int(sh(container, script, check=False) or 0) / 100.0  # USER_HZ


def measure_wrk(binary: str, container: str, unit: str, url: str, *, loadgen_cpu: str, duration: int,
                threads: int = 1, connections: int = 64, also: tuple[str, ...] = ()) -> dict:
    """One wrk run (after a 1 s warm-up, not counted) from the controller's
    `loadgen_cpu`: wrk's figures, the unit's server CPU and requests per CPU-second."""
    base = ["taskset", "-c", loadgen_cpu, binary, "-t", str(threads), "-c", str(connections)]
    subprocess.run(base + ["-d", "1s", url], capture_output=True, timeout=30)
    cpu_before = unit_cpu_seconds(container, unit, also)
    load_before = Path("/proc/loadavg").read_text().split()[0]
    proc = subprocess.run(base + ["-d", f"{duration}s", "--latency", url], capture_output=True,
                          text=True, timeout=duration + 30)
    cpu = unit_cpu_seconds(container, unit, also) - cpu_before
    parsed = parse_wrk(proc.stdout)
    parsed["server_cpu_s"] = round(cpu, 2)
    parsed["req_per_cpu_s"] = round(parsed["requests"] / cpu) if parsed.get("requests") and cpu > 0 else None
    parsed["loadavg_1min"] = float(load_before)
    if parsed["rps"] is None:
        raise RuntimeError(f"wrk gave no result for {url}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return parsed


def write_result(name: str, payload: dict, output: str | None = None) -> int:
    """Write bench/results/NAME.json (or OUTPUT) and print its table."""
    path = Path(output) if output else RESULTS / f"{name}.json"
    deploylib.write_json(path, payload)
    print(payload["table_md"])
    log(f"wrote {path} in {payload['timing']['total_s']} s")
    return 0
