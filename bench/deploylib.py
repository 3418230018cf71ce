"""Shared helpers of the benchmarks: the basics every script uses (log, the bench
lock, medians, the machine, the command line, result files), and what
bench/deploy_speed.py and bench/scaling.py need besides (bench/_serve.py has
the serving benchmarks' own).

Fresh test hosts (containers named asgi-bench-N, started with the project's
own fleet code), timed runs of pyinfra and ansible-playbook with a timestamp
on every output line (phases and per-operation times come from those), a
`docker` shim on PATH that logs every docker CLI call (so both tools' round
trips to the hosts can be counted: `docker exec` = one command or fact,
`docker cp` = one upload), the machine's description and medians.

The shim costs a bash start per docker call (a few ms) and is on PATH for
every timed run of both tools alike.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import runpy
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)) if str(ROOT) not in sys.path else None

from asgi_fleet.fleet import hostctl  # noqa: E402
from asgi_fleet.fleet.hosts import TestHost  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
ANSIBLE_VENV = ROOT / "bench" / ".venv-ansible"
ANSIBLE_PIN = "ansible==12.3.0"  # ansible-core 2.19.x, with community.docker
LOCK_FILE = "/tmp/asgi-fleet-bench.lock"  # shared with the other benchmarks (flock(1) compatible)
LOCK_WAIT = 1800  # seconds at most to wait for another benchmark's heavy run
PREFIX = "asgi-bench-"
BENCH_LABEL = "asgi-fleet.bench-host=1"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def exit_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a CI stop) ends the script through its finally: clauses,
    so containers are removed and partial results are kept."""
    import signal

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")
    signal.signal(signal.SIGTERM, stop)


def write_json(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def runtime(started: float) -> dict:
    """The script's own run time so far, with and without waiting for the bench lock."""
    total = time.monotonic() - started
    return {"runtime_seconds": round(total, 1),
            "lock_wait_seconds": round(BenchLock.waited, 1),
            "runtime_excluding_lock_wait_seconds": round(total - BenchLock.waited, 1)}


def median(values):
    """The median of the values that are there (None: not measured), or None."""
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


# --- machine ---------------------------------------------------------------------

def machine() -> dict:
    """The controller, and its load when asked (results are written at the end)."""
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True).stdout.strip()
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return {"nproc": os.cpu_count(), "memory_mb": mem_kb // 1024, "docker_server": docker,
            "kernel": os.uname().release, "cpu": cpu.group(1) if cpu else None,
            "python": sys.version.split()[0], "node": os.uname().nodename,
            "loadavg": os.getloadavg()}


@functools.lru_cache(maxsize=None)
def tool_versions() -> dict:
    out = {}
    for name, cmd in (("pyinfra", [PYINFRA, "--version"]),
                      ("ansible", [str(ANSIBLE_VENV / "bin" / "ansible"), "--version"])):
        try:
            out[name] = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            out[name] = None
    return out


# --- the bench lock --------------------------------------------------------------

class BenchLock:
    """flock on /tmp/asgi-fleet-bench.lock (the same lock `flock(1)` takes), bounded wait.
    Taken around each timed run (or side-by-side pair); timers start once it is held."""

    waited = 0.0  # seconds spent waiting for the lock, over the whole script

    def __enter__(self):
        self.fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        t0 = time.monotonic()
        deadline = t0 + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                BenchLock.waited += time.monotonic() - t0
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise RuntimeError(f"{LOCK_FILE} still held after {LOCK_WAIT}s")
                time.sleep(1)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# --- hosts -----------------------------------------------------------------------

def host_names(n: int, start: int = 1) -> list[str]:
    return [f"{PREFIX}{i}" for i in range(start, start + n)]


def fresh_hosts(names: list[str], dist: str = "bookworm") -> None:
    """Remove and re-create each container: a bare host, systemd booted."""
    remove_hosts(names)
    hosts = [TestHost(name, dist, "docker") for name in names]
    for h in hosts:
        # hostctl.start's flags, with a label of our own: `fleet down` (make fleet-down)
        # removes asgi-fleet.test-host containers, and must not take these mid-run.
        subprocess.run(["docker", "run", "-d", "--name", h.name, "--hostname", h.name,
                        "--label", BENCH_LABEL, *hostctl.SYSTEMD_FLAGS, h.image, "/sbin/init"],
                       check=True, capture_output=True)
    for h in hosts:
        hostctl.wait_booted(h)


def remove_hosts(names: list[str]) -> None:
    for name in names:
        assert name.startswith(PREFIX), name  # never anyone else's container
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def write_pyinfra_inventory(path: Path, names: list[str]) -> Path:
    path.write_text("app = [\n" + "".join(f'    ("@docker/{n}", {{}}),\n' for n in names) + "]\n")
    return path


# --- docker shim -----------------------------------------------------------------

SHIM = """#!/bin/bash
s=$EPOCHREALTIME
{docker} "$@"
rc=$?
printf '%s %s %s\\n' "$s" "$EPOCHREALTIME" "$1" >> "$BENCH_DOCKER_LOG"
exit $rc
"""


def make_shim(workdir: Path) -> Path:
    real = shutil.which("docker")
    bindir = workdir / "shim-bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "docker"
    shim.write_text(SHIM.format(docker=real))
    shim.chmod(0o755)
    return bindir


def docker_calls(logfile: Path) -> dict:
    calls: dict[str, dict] = {}
    if not logfile.exists():
        return calls
    for line in logfile.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        start, end, verb = float(parts[0].replace(",", ".")), float(parts[1].replace(",", ".")), parts[2]
        entry = calls.setdefault(verb, {"count": 0, "seconds": 0.0})
        entry["count"] += 1
        entry["seconds"] = round(entry["seconds"] + end - start, 3)
    return calls


# --- timed runs ------------------------------------------------------------------

PYINFRA_MARKS = [("connect", "--> Connecting to hosts"), ("prepare", "--> Preparing operation"),
                 ("execute", "--> Beginning operation run"), ("results", "--> Results")]
PYINFRA_OP = re.compile(r"^--> Starting operation: (.*?)\s*$")
ANSIBLE_OP = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*?)\]")
ANSIBLE_RECAP = re.compile(r"^(\S+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def compile_like_an_install() -> None:
    """asgi-fleet's modules as a wheel's install leaves them: compiled. pip
    compiles what it installs (pyinfra's, Ansible's); the editable install
    of this checkout is not, and with PYTHONDONTWRITEBYTECODE (set on these
    machines) Python never caches it, so every run would compile about
    7,000 lines first (0.08 s of a 1 s no-op re-run)."""
    import compileall

    for package in ("asgi_fleet", "tasks", "fleet"):  # links from asgi_fleet/, which compile_dir skips
        compileall.compile_dir(str(ROOT / package), quiet=1)
    compileall.compile_file(str(ROOT / "deploy.py"), quiet=1)


def run_timed(cmd: list[str], workdir: Path, tag: str, env: dict | None = None,
              cwd: Path = ROOT, timeout: float = 900) -> dict:
    """Run a deploy tool, timestamping each output line; wall time, phases, per-op times,
    docker CLI calls. Raises if the tool fails."""
    compile_like_an_install()  # before the clock starts; nothing to do once compiled
    shim_dir = make_shim(workdir)
    dlog = workdir / f"docker-{tag}.log"
    dlog.unlink(missing_ok=True)
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "BENCH_DOCKER_LOG": str(dlog),
                "PATH": f"{shim_dir}:{os.environ['PATH']}", "PYINFRA_YES": "1",
                "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"}
    out_path = workdir / f"out-{tag}.log"
    lines: list[tuple[float, str]] = []
    cpu_before = _children_cpu()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    deadline = started + timeout
    try:
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            if time.monotonic() > deadline:
                proc.kill()
                break
        rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -9
    seconds = time.monotonic() - started
    controller_cpu = _children_cpu() - cpu_before
    out_path.write_text("".join(f"{t:8.3f} {text}\n" for t, text in lines))
    if rc != 0:
        tail = "\n".join(text for _, text in lines[-40:])
        raise RuntimeError(f"{tag}: {' '.join(cmd)} exited {rc} (log {out_path}):\n{tail}")
    return {"seconds": round(seconds, 3), "controller_cpu_seconds": round(controller_cpu, 3),
            "loadavg_1min_after": os.getloadavg()[0], "phases": _phases(lines, seconds), "ops": _ops(lines, seconds),
            "docker_calls": docker_calls(dlog), "recap": _ansible_recap(lines)}


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and
    theirs: the deploy tool and every docker CLI call it made, on the controller."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _phases(lines, total) -> dict:
    """pyinfra: seconds in connect, prepare (the deploy file runs per host, facts), execute."""
    at = {}
    for t, text in lines:
        for name, mark in PYINFRA_MARKS:
            if name not in at and text.startswith(mark):
                at[name] = t
    if len(at) < 4:
        return {}
    return {"startup": round(at["connect"], 3), "connect": round(at["prepare"] - at["connect"], 3),
            "prepare": round(at["execute"] - at["prepare"], 3),
            "execute": round(at["results"] - at["execute"], 3),
            "finish": round(total - at["results"], 3)}


def _ops(lines, total) -> list:
    """(name, seconds) per operation / task: from its start line to the next one's."""
    marks = []
    for t, text in lines:
        m = PYINFRA_OP.match(text) or ANSIBLE_OP.match(text)
        if m:
            marks.append((t, m.group(1)))
        elif text.startswith(("--> Results", "PLAY RECAP")):
            marks.append((t, None))
    ops = []
    for (t, name), (t_next, _) in zip(marks, marks[1:] + [(total, None)]):
        if name is not None:
            ops.append([name, round(t_next - t, 3)])
    return ops


def _ansible_recap(lines) -> dict:
    recap = {}
    for _, text in lines:
        m = ANSIBLE_RECAP.match(text)
        if m:
            recap[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)),
                                 "unreachable": int(m.group(4)), "failed": int(m.group(5))}
    return recap


@dataclass
class Run:
    """A finished `pyinfra INVENTORY deploy.py`: its exit code, its output
    (stdout and stderr interleaved) and the run's record (asgi_fleet/record.py)."""

    returncode: int
    output: str
    record: dict

    def host(self, name: str) -> dict:
        return self.record["hosts"][name]

    def changed_ops(self) -> dict[str, list[str]]:
        return {name: [op["name"] for op in host["ops"] if op["changed"]]
                for name, host in self.record["hosts"].items()}


def run_deploy(inventory: str | Path, *args: str, record: Path, cwd: Path = ROOT,
               timeout: float = 1500, env: dict[str, str] | None = None, launcher: Sequence[str] = ()) -> Run:
    """`pyinfra -y INVENTORY deploy.py ARGS`, its record written to `record`:
    the one deploy runner of bench/ and the e2e tests. `launcher`: a command
    prefix for pyinfra (e.g. taskset and nice: where the controller runs)."""
    record.unlink(missing_ok=True)
    result = subprocess.run(
        [*launcher, PYINFRA, "-y", str(inventory), "deploy.py", *args], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        env=os.environ | (env or {}) | {"ASGI_FLEET_RECORD": str(record)},
    )
    data = json.loads(record.read_text()) if record.exists() else {"hosts": {}}
    return Run(result.returncode, result.stdout, data)


def pyinfra_deploy(inventory: Path, workdir: Path, tag: str, data: list[str] = (),
                   deploy_file: str = "deploy.py") -> dict:
    """Run `pyinfra -y INVENTORY deploy.py` and check the deploy record: every host ok."""
    record = workdir / f"record-{tag}.json"
    args = [a for item in data for a in ("--data", item)]
    result = run_timed([PYINFRA, "-y", str(inventory), deploy_file, *args], workdir, tag,
                       env={"ASGI_FLEET_RECORD": str(record)})
    if deploy_file == "deploy.py":
        rec = json.loads(record.read_text())
        bad = {h: e["status"] for h, e in rec["hosts"].items() if e["status"] != "ok"}
        if bad:
            raise RuntimeError(f"{tag}: hosts not ok: {bad}")
        result["changed_ops"] = {h: sum(op["changed"] for op in e["ops"]) for h, e in rec["hosts"].items()}
        result["activation"] = {h: {a: v.get("activation") for a, v in e["apps"].items()}
                                for h, e in rec["hosts"].items()}
    return result


def app_copy(workdir: Path) -> Path:
    """A copy of example/ to change code in (example/ itself is never touched)."""
    target = workdir / "app"
    if not target.exists():
        shutil.copytree(ROOT / "example", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def bump_code(app_dir: Path, n: int) -> None:
    with open(app_dir / "app.py", "a") as f:
        f.write(f"\n# bench code release {n}\n")


def group_defaults() -> dict:
    return {k: v for k, v in runpy.run_path(str(ROOT / "group_data" / "all.py")).items()
            if not k.startswith("_")}


def new_workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"asgi-bench-{name}-"))


def command_line(script: str, argv: list[str] | None) -> str:
    """How to run it again, from the project root (argv None: this process's arguments)."""
    return shlex.join([".venv/bin/python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])


# --- Ansible ---------------------------------------------------------------------

ANSIBLE_DIR = ROOT / "bench" / "ansible"


def ensure_ansible() -> Path:
    """bench/.venv-ansible with the pinned Ansible (installed from the package index once).

    With uv (a pinned dev dependency): Ansible is some 23,000 files, which pip
    took 48 s to install without a cache, and uv 4 s.
    """
    playbook = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        log(f"installing {ANSIBLE_PIN} into {ANSIBLE_VENV}")
        uv = Path(sys.executable).with_name("uv")
        subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(ANSIBLE_VENV / "bin" / "python"),
                        ANSIBLE_PIN], check=True)
    return playbook


def write_ansible_inventory(path: Path, names: list[str]) -> Path:
    path.write_text("app:\n  hosts:\n" + "".join(f"    {n}:\n" for n in names)
                    + "  vars:\n    ansible_connection: community.docker.docker\n")
    return path


def ansible_vars(app_dir: Path, path: Path) -> dict:
    """The playbook's variables, from asgi-fleet's own plan for the same settings, so
    both tools render identical files and use the same release and venv ids."""
    from dataclasses import asdict

    from asgi_fleet.plan import plan_host
    from asgi_fleet.release import WORKER_MODULES

    plan = plan_host({**group_defaults(), "app_source": str(app_dir)}, "bench")[0]
    cls = type(plan.paths)
    paths = {n: getattr(plan.paths, n) for n in dir(cls) if isinstance(getattr(cls, n), property)}
    paths.update(app=plan.paths.app, srv_root=plan.paths.srv_root)
    data = {"app": asdict(plan.app) | {"runs_gunicorns_asgi": plan.app.runs_gunicorns_asgi}, "paths": paths, "release_id": plan.release_id, "venv_id": plan.venv_id,
            "lock_src": str(plan.lock_file), "verify_lock_src": str(ROOT / "requirements" / "verify-tools.lock"),
            "worker_modules": {name: str(source) for name, source in WORKER_MODULES.items()},
            "tarball_src": str(plan.tarball),
            "templates_dir": str(ROOT / "templates")}
    path.write_text(json.dumps(data, indent=1, default=str))
    return data


def ansible_play(inventory: Path, vars_file: Path | None, workdir: Path, tag: str,
                 playbook: str = "site.yml") -> dict:
    cmd = [str(ANSIBLE_VENV / "bin" / "ansible-playbook"), "-i", str(inventory), playbook]
    if vars_file is not None:
        cmd += ["-e", f"@{vars_file}"]
    result = run_timed(cmd, workdir, tag, env={"ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")},
                       cwd=ANSIBLE_DIR)
    bad = {h: r for h, r in result["recap"].items() if r["failed"] or r["unreachable"]}
    if bad or not result["recap"]:
        raise RuntimeError(f"{tag}: ansible failed: {bad or 'no recap'}")
    result["changed_ops"] = {h: r["changed"] for h, r in result["recap"].items()}
    return result
