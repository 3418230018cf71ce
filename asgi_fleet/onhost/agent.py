"""asgi-fleet's program on each host: JSON in, JSON out. Standard library only.

    python3 /opt/asgi-fleet/agent.py state|lock|prune REQUEST_JSON

`state` reads, in one round trip, everything the controller needs to decide
what a host needs, for every app the request names:

- the host's resources for sizing (online CPUs, affinity, cgroup quotas and
  memory limits up the cgroup tree, physical memory);
- each app's releases, `current`, the activation history, the virtualenvs;
- the running master (from its unit's MainPID), its virtualenv, each worker
  with the release it runs (its cwd) and whether uvloop and httptools are in
  its memory maps;
- each named file's sha256, owner, group and mode (live and staged files);
- each unit's load, active and enabled states;
- the last activation's record, the deploy lock's holder, and the files of
  a flag directory (a load balancer's drain flags).

`lock` takes, gives back or reports the host's deploy lock; `prune` deletes
releases and virtualenvs the controller chose. Each prints one JSON object.

The request says where things are (the controller's AppPaths): this program
knows no layout of its own. What it cannot read is reported as null, never
guessed. The controller parses the document with asgi_fleet.agent_state.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
import time

VERSION = 1


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def file_state(path: str) -> dict | None:
    """sha256, owner, group and octal mode of a regular file (None if missing)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                digest.update(block)
    except OSError:
        return None
    return {"sha256": digest.hexdigest(), "owner": _user(info.st_uid), "group": _group(info.st_gid),
            "mode": format(stat.S_IMODE(info.st_mode), "o")}


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def resources() -> dict:
    """What sizing needs, as RESOURCES_PROBE in asgi_fleet/sizing.py reads it."""
    quotas, memory_limits = [], []
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        names = controllers.split(",")
        if controllers == "":
            files, mount = ("cpu.max", "memory.max"), "/sys/fs/cgroup"
        elif "cpu" in names:
            files, mount = ("cpu.cfs_quota_us", "cpu.cfs_period_us"), f"/sys/fs/cgroup/{controllers}"
        elif "memory" in names:
            files, mount = ("memory.limit_in_bytes",), "/sys/fs/cgroup/memory"
        else:
            continue
        while True:
            values = {f: (read_text(f"{mount}{path}/{f}") or "").strip() for f in files}
            if values.get("cpu.max") and not values["cpu.max"].startswith("max"):
                quota, period = values["cpu.max"].split()[:2]
                quotas.append(int(quota) / int(period))
            quota_us = values.get("cpu.cfs_quota_us", "")
            if quota_us.lstrip("-").isdigit() and int(quota_us) > 0 and values["cpu.cfs_period_us"]:
                quotas.append(int(quota_us) / int(values["cpu.cfs_period_us"]))
            for key in ("memory.max", "memory.limit_in_bytes"):
                if values.get(key, "").isdigit():
                    memory_limits.append(int(values[key]) // (1024 * 1024))
            if path in ("", "/"):
                break
            path = path.rsplit("/", 1)[0] or "/"
    meminfo = read_text("/proc/meminfo") or ""
    total_kb = next((int(line.split()[1]) for line in meminfo.splitlines()
                     if line.startswith("MemTotal:")), None)
    return {"online_cpus": os.sysconf("SC_NPROCESSORS_ONLN"),
            "affinity_cpus": len(os.sched_getaffinity(0)),
            "cpu_quotas": quotas, "memory_limits_mb": memory_limits, "mem_total_kb": total_kb}


def systemctl_show(systemctl: str, unit: str, *properties: str) -> dict[str, str]:
    try:
        out = subprocess.run([systemctl, "show", unit, *(f"--property={p}" for p in properties)],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


def master(systemctl: str, service: str) -> dict | None:
    """The unit's main process, its virtualenv, and its workers."""
    pid = systemctl_show(systemctl, service, "MainPID").get("MainPID", "0")
    if not pid.isdigit() or int(pid) == 0:
        return None
    maps = read_text(f"/proc/{pid}/maps") or ""
    site = next((word for line in maps.splitlines() for word in line.split()
                 if "/site-packages/" in word), None)
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children += (read_text(f"/proc/{pid}/task/{task}/children") or "").split()
    except OSError:
        return None
    workers = []
    for child in children:
        try:
            cwd = os.readlink(f"/proc/{child}/cwd")
        except OSError:
            continue  # gone since
        child_maps = read_text(f"/proc/{child}/maps") or ""
        workers.append({"pid": int(child), "cwd": cwd,
                        "uvloop": "/uvloop/" in child_maps, "httptools": "/httptools/" in child_maps})
    venv = site.split("/site-packages/", 1)[0].rsplit("/lib/", 1)[0] if site else None
    return {"pid": int(pid), "venv": venv, "workers": workers}


def releases(root: str) -> dict:
    def entries(path: str) -> list[str]:
        try:
            return sorted(e for e in os.listdir(path) if os.path.isdir(os.path.join(path, e)))
        except OSError:
            return []
    try:
        current = os.readlink(f"{root}/current").rstrip("/").rsplit("/", 1)[-1]
    except OSError:
        current = None
    linked = {}
    for name in entries(f"{root}/releases"):
        if name.endswith(".tmp"):
            continue  # an unpacking that did not finish
        try:
            linked[name] = os.readlink(f"{root}/releases/{name}/.venv")
        except OSError:
            linked[name] = ""
    return {"current": current, "history": (read_text(f"{root}/history") or "").splitlines(),
            "releases": linked, "venvs": entries(f"{root}/venvs")}


def units(systemctl: str, names: list[str]) -> dict:
    found = {}
    for unit in names:
        shown = systemctl_show(systemctl, unit, "LoadState", "ActiveState", "UnitFileState")
        found[unit] = {"load": shown.get("LoadState"), "active": shown.get("ActiveState"),
                       "enabled": shown.get("UnitFileState")} if shown else None
    return found


def app_state(app: dict, systemctl: str) -> dict:
    record = (read_text(app["activation_record"]) or "").split() if app.get("activation_record") else []
    return {
        **releases(app["root"]),
        "master": master(systemctl, app["service"]),
        "files": {path: file_state(path) for path in app.get("files", [])},
        "units": units(systemctl, app.get("units", [])),
        "activation": ({"started": float(record[0]), "ended": float(record[1]), "status": int(record[2])}
                       if len(record) == 3 and record[2].lstrip("-").isdigit() else None),
    }


def state(request: dict) -> dict:
    systemctl = request.get("systemctl", "systemctl")
    flag_dir = request.get("flag_dir")
    flags = None
    if flag_dir:
        try:
            flags = sorted(os.listdir(flag_dir))
        except OSError:
            flags = []
    lock = read_text(request["lock"]).strip() if request.get("lock") and read_text(request["lock"]) else None
    return {
        "agent": VERSION,
        "now": time.time(),
        "resources": resources(),
        "lock": lock,
        "flags": flags,
        "apps": {app["name"]: app_state(app, systemctl) for app in request.get("apps", [])},
    }


def _holder_report(request: dict, systemctl: str) -> dict:
    """Who holds the lock, which activations still run, and each app's last words."""
    try:
        out = subprocess.run([systemctl, "list-units", "--no-legend", "--plain",
                              "--state=activating,active", request.get("activation_units", "asgi-fleet-activate-*")],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    last_words = {}
    logs = request.get("logs_dir")
    for name in sorted(os.listdir(logs)) if logs and os.path.isdir(logs) else []:
        lines = (read_text(os.path.join(logs, name)) or "").splitlines()
        if name.endswith(".log") and lines:
            last_words[name[:-4]] = lines[-1]
    return {"holder": (read_text(request["lock"]) or "").strip() or None,
            "activating": [line.split()[0] for line in out.splitlines() if line.split()],
            "last_words": last_words}


def lock(request: dict) -> dict:
    """take: create the lock (atomically, O_EXCL) with `owner`, replacing it
    only if it is exactly `stale` (a holder the controller found gone; under
    a mutex, so two runs that found it stale cannot both take it); give:
    remove it if `run_id` holds it; status: who holds it."""
    import fcntl

    path, action = request["lock"], request["action"]
    systemctl = request.get("systemctl", "systemctl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if action == "status":
        return {"outcome": "held" if read_text(path) else "free", **_holder_report(request, systemctl)}
    with open(request.get("mutex", path + ".mutex"), "w") as mutex:
        deadline = time.monotonic() + float(request.get("mutex_wait", 10))
        while True:
            try:
                fcntl.flock(mutex, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return {"outcome": "busy", "error": f"{mutex.name} stayed locked"}
                time.sleep(0.1)
        held = (read_text(path) or "").strip()
        if action == "give":
            if held.split(" ", 1)[0] == request["run_id"]:
                os.unlink(path)
                return {"outcome": "given"}
            return {"outcome": "not ours", "holder": held or None}
        if held and request.get("stale") and held == request["stale"].strip():
            os.unlink(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return {"outcome": "held", **_holder_report(request, systemctl)}
        with os.fdopen(fd, "w") as f:
            f.write(request["owner"].strip() + "\n")
        return {"outcome": "acquired"}


def prune(request: dict) -> dict:
    """Delete the named releases and virtualenvs of one app (the controller
    decides which: asgi_fleet.release.releases_to_prune); names only, never paths."""
    import shutil

    removed, refused = [], []
    for kind in ("releases", "venvs"):
        for name in request.get(kind, []):
            if not name or "/" in name or name in (".", ".."):
                refused.append(f"{kind}/{name}")
                continue
            target = os.path.join(request["root"], kind, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
                removed.append(f"{kind}/{name}")
    return {"outcome": "refused" if refused else "pruned", "removed": removed, "refused": refused}


COMMANDS = {"state": state, "lock": lock, "prune": prune}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in COMMANDS:
        print(json.dumps({"error": f"usage: agent.py {{{'|'.join(COMMANDS)}}} REQUEST_JSON"}))
        return 2
    try:
        request = json.loads(argv[2])
    except ValueError as error:
        print(json.dumps({"error": f"the request is not JSON: {error}"}))
        return 2
    print(json.dumps(COMMANDS[argv[1]](request), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
