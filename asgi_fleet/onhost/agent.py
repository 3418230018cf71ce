"""asgi-fleet's program on each host: JSON in, JSON out. Standard library only.

    python3 /opt/asgi-fleet/agent-VERSION.py state|preflight|activate|lock|prune|venv REQUEST_JSON

`state` reads, in one round trip, everything the controller needs to decide
what a host needs, for every app the request names:

- the host's resources for sizing (online CPUs, affinity, cgroup quotas and
  memory limits up the cgroup tree, physical memory);
- each app's releases, `current`, the activation history, the virtualenvs;
- the running master (from its unit's MainPID), its virtualenv, each worker
  with the release it runs (its cwd) and whether uvloop and httptools are in
  its memory maps;
- each named file's sha256, owner, group and mode (live and staged files);
- each unit's load, active and enabled states, and the health endpoint's answer;
- the last activation's record, the deploy lock's holder, and the files of
  a flag directory (a load balancer's drain flags);
- for the deploy's other decisions: virtualenvs (their build marker, what is
  installed now, a path the app could change), release trees (a path with
  looser owners or modes), digests and first lines of files (preflight's
  stamp), what is at named paths, Debian packages, users and groups, mtimes.

`activate` makes an app run a staged release: it installs the staged
files, points `current` at the release, starts, reloads, restarts or rebinds
the service, holds it to the health gate, and on a failed gate puts
everything back. It runs as a transient systemd unit (`run-activation`
inside it), not in the connection: a controller that dies mid-activation
leaves a host that finishes, or rolls itself back, on its own. Its result
(outcome, each step with its start and end, the cause of a failure with the
journal tail, secrets redacted) is kept in a file beside the activation
record, and printed.

`lock` takes, gives back or reports the host's deploy lock; `prune` deletes
releases and virtualenvs the controller chose; `venv` builds a virtualenv
from a hash-locked requirements file (with uv, offline, from the shipped
wheelhouse; with pip from the host's index). Each prints one JSON object.

The request says where things are (the controller's AppPaths): this program
knows no layout of its own. What it cannot read is reported as null, never
guessed. The controller parses the document with asgi_fleet.agent_state.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time

VERSION = 1
# The deploy's own work on a host yields the CPUs to the app serving beside
# it; on an idle host it is no slower. The controller starts this program at
# this nice (asgi_fleet.agent_state.AGENT_NICE), and what it runs inherits it
# (the installer of a virtualenv); the units it starts for preflight's canary
# and check and for the activation are given it (systemd does not inherit).
DEPLOY_NICE = 10


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


def main_pid(systemctl: str, service: str) -> int | None:
    pid = systemctl_show(systemctl, service, "MainPID").get("MainPID", "0")
    return int(pid) if pid.isdigit() and int(pid) else None


def children(pid: int) -> list[str] | None:
    """The PIDs of a process's children (None: the process is gone)."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += (read_text(f"/proc/{pid}/task/{task}/children") or "").split()
    except OSError:
        return None
    return found


def master(systemctl: str, service: str) -> dict | None:
    """The unit's main process, its virtualenv, and its workers."""
    pid = main_pid(systemctl, service)
    pids = children(pid) if pid else None
    if pids is None:
        return None
    maps = read_text(f"/proc/{pid}/maps") or ""
    site = next((word for line in maps.splitlines() for word in line.split()
                 if "/site-packages/" in word), None)
    workers = []
    for child in pids:
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
        "health": http_status(app["health"]["bind"], app["health"]["path"]) if app.get("health") else None,
        **({"deploys": deploy_history(app["deploys"]["path"], app["name"], app["deploys"]["last"])}
           if app.get("deploys") else {}),
    }


VENV_MARKER = ".asgi-fleet-complete"  # written last by build_venv


def dists_digest(venv: str) -> str:
    """sha256 over the sorted names of the venv's dist-info directories, a
    line each: recorded at the build, and compared on every run (a package
    removed or added by hand changes it, and the venv is rebuilt, not trusted)."""
    names = []
    for lib in sorted(glob_dirs(f"{venv}/lib", "python3")):
        site = os.path.join(lib, "site-packages")
        try:
            names += [e for e in os.listdir(site) if e.endswith(".dist-info") and os.path.isdir(os.path.join(site, e))]
        except OSError:
            continue
    return hashlib.sha256("".join(f"{name}\n" for name in sorted(names, key=os.fsencode)).encode()).hexdigest()


def glob_dirs(parent: str, prefix: str) -> list[str]:
    try:
        return [os.path.join(parent, e) for e in os.listdir(parent) if e.startswith(prefix)]
    except OSError:
        return []


def first_path(tree: str, loose) -> str:
    """The first path under `tree` (the tree included, symlinks aside) for which
    loose(stat) holds, or "" (also when there is no tree)."""
    def check(path: str) -> bool:
        try:
            info = os.lstat(path)
        except OSError:
            return False
        return not stat.S_ISLNK(info.st_mode) and loose(info)

    if not os.path.lexists(tree):
        return ""
    if check(tree):
        return tree
    for parent, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = os.path.join(parent, name)
            if check(path):
                return path
    return ""


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def venv_state(venv: str, app: str) -> dict:
    """A venv's build marker (lock digest and dists digest at build), its dists
    digest now, and the first path in it the app's user could change."""
    marker = (read_text(os.path.join(venv, VENV_MARKER)) or "").splitlines()
    gid = group_id(app)
    writable = first_path(venv, lambda i: i.st_uid != 0 or i.st_mode & 0o002
                          or (gid is not None and i.st_gid == gid and i.st_mode & 0o020))
    return {"built_lock": (marker + [""])[0].strip(), "built_dists": (marker + ["", ""])[1].strip(),
            "dists": dists_digest(venv), "writable": writable}


def tree_state(tree: str, group: str) -> dict:
    """Whether a release tree exists, and its first path not root:GROUP,
    writable by the group or open to others (u=rwX,g=rX,o= is the rule)."""
    gid = group_id(group)
    loose = first_path(tree, lambda i: i.st_uid != 0 or i.st_gid != gid or i.st_mode & 0o020
                       or i.st_mode & 0o007)
    return {"exists": os.path.isdir(tree), "loose": loose}


def path_state(path: str) -> dict | None:
    """What is at a path: its type (dir, file, link, other), owner, group and mode."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    kind = ("dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode)
            else "link" if stat.S_ISLNK(info.st_mode) else "other")
    return {"type": kind, "owner": _user(info.st_uid), "group": _group(info.st_gid),
            "mode": format(stat.S_IMODE(info.st_mode), "o")}


def packages(names: list[str]) -> dict[str, bool]:
    """Whether each Debian package is installed (dpkg's status), None without dpkg."""
    if not names:
        return {}
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${db:Status-Abbrev}\n", *names],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {name: None for name in names}
    installed = {line.split("\t")[0].split(":")[0] for line in out.splitlines()
                 if "\t" in line and line.split("\t")[1].startswith("ii")}
    return {name: name in installed for name in names}


def accounts(names: list[str]) -> dict:
    """Each name's user (its primary group, home and shell) and group, None where missing."""
    users, groups = {}, {}
    for name in names:
        try:
            user = pwd.getpwnam(name)
            users[name] = {"group": _group(user.pw_gid), "home": user.pw_dir, "shell": user.pw_shell,
                           "uid": user.pw_uid}
        except KeyError:
            users[name] = None
        try:
            groups[name] = {"gid": grp.getgrnam(name).gr_gid}
        except KeyError:
            groups[name] = None
    return {"users": users, "groups": groups}


def mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def first_line(path: str) -> str | None:
    """A small file's first line, stripped (None: no file, or an empty one)."""
    lines = (read_text(path) or "").splitlines()
    return lines[0].strip() if lines else None


def digest(paths: list[str]) -> str:
    """sha256 over the files' contents, one after the other (missing: empty)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError:
            pass
    return h.hexdigest()


def state(request: dict) -> dict:
    systemctl = request.get("systemctl", "systemctl")
    flag_dir = request.get("flag_dir")
    flags = None
    if flag_dir:
        try:
            flags = sorted(os.listdir(flag_dir))
        except OSError:
            flags = []
    held = read_text(request["lock"]) if request.get("lock") else None
    lock = held.strip() if held else None
    return {
        "agent": VERSION,
        "now": time.time(),
        "resources": resources(),
        "lock": lock,
        "flags": flags,
        "apps": {app["name"]: app_state(app, systemctl) for app in request.get("apps", [])},
        "venvs": {v["path"]: venv_state(v["path"], v["app"]) for v in request.get("venvs", [])},
        "trees": {t["path"]: tree_state(t["path"], t["group"]) for t in request.get("trees", [])},
        "digests": {name: digest(paths) for name, paths in request.get("digests", {}).items()},
        "texts": {path: first_line(path) for path in request.get("texts", [])},
        "paths": {path: path_state(path) for path in request.get("paths", [])},
        "files": {path: file_state(path) for path in request.get("files", [])},
        "packages": packages(request.get("packages", [])),
        "accounts": accounts(request.get("accounts", [])),
        "mtimes": {path: mtime(path) for path in request.get("mtimes", [])},
        "units": units(systemctl, request.get("units", [])),
    }


ABSENT_UNIT = {"load": "not-found", "active": "inactive", "enabled": ""}  # systemctl show, no such unit


def bare_state(request: dict) -> dict:
    """What `state` answers on a host that has none of what `request` asks
    about: no files, releases, virtualenvs, packages, accounts or units. The
    controller predicts with it (--dry) on a host the agent cannot run on
    yet (no python3); tests hold it to `state` on paths that do not exist."""
    nothing = {"current": None, "history": [], "releases": {}, "venvs": [], "master": None,
               "activation": None}
    return {
        "agent": VERSION,
        "now": time.time(),
        "resources": None,
        "lock": None,
        "flags": [] if request.get("flag_dir") else None,
        "apps": {app["name"]: {**nothing, "files": {path: None for path in app.get("files", [])},
                               "units": {unit: dict(ABSENT_UNIT) for unit in app.get("units", [])},
                               "health": 0 if app.get("health") else None,
                               **({"deploys": []} if app.get("deploys") else {})}
                 for app in request.get("apps", [])},
        "venvs": {v["path"]: {"built_lock": "", "built_dists": "", "dists": hashlib.sha256().hexdigest(),
                              "writable": ""} for v in request.get("venvs", [])},
        "trees": {t["path"]: {"exists": False, "loose": ""} for t in request.get("trees", [])},
        "digests": {name: hashlib.sha256().hexdigest() for name in request.get("digests", {})},
        "texts": {path: None for path in request.get("texts", [])},
        "paths": {path: None for path in request.get("paths", [])},
        "files": {path: None for path in request.get("files", [])},
        "packages": {name: False for name in request.get("packages", [])},
        "accounts": {"users": {name: None for name in request.get("accounts", [])},
                     "groups": {name: None for name in request.get("accounts", [])}},
        "mtimes": {path: None for path in request.get("mtimes", [])},
        "units": {unit: dict(ABSENT_UNIT) for unit in request.get("units", [])},
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
    remove it if `run_id` holds it; status: who holds it. A take may carry
    `then_state`, a state request answered once the lock is taken: the first
    read of a deploy is made under its lock, in the same round trip."""
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
    if request.get("then_state") is not None:
        return {"outcome": "acquired", "state": state(request["then_state"])}
    return {"outcome": "acquired"}


def prune(request: dict) -> dict:
    """Delete the named releases and virtualenvs of one app (the controller
    decides which: asgi_fleet.release.to_prune); names only, never paths."""
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


# --- virtualenvs -----------------------------------------------------------

def lock_hashes(lock: str) -> set[str]:
    """Every sha256 a hash-locked requirements file admits."""
    text = read_text(lock) or ""
    return {word.split(":", 1)[1] for word in text.split() if word.startswith("--hash=sha256:")}


def bootstrap_uv(wheels_dir: str, lock: str, into: str) -> str | None:
    """uv's binary, taken out of the uv wheel in an unpacked wheelhouse (a
    wheel whose sha256 the lock admits) into `into`; None without one."""
    import zipfile

    admitted = lock_hashes(lock)
    for name in sorted(os.listdir(wheels_dir)):
        if not (name.startswith("uv-") and name.endswith(".whl")):
            continue
        wheel = os.path.join(wheels_dir, name)
        if digest([wheel]) not in admitted:
            continue
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith(".data/scripts/uv"):
                    with archive.open(member) as source, open(into, "wb") as target:
                        shutil.copyfileobj(source, target)
                    os.chmod(into, 0o700)
                    return into
    return None


def install_argv(request: dict, venv: str, found_links: str | None, uv: str | None) -> list[list[str]]:
    """The commands that create `venv` and install the lock into it, as argv
    lists (no shell): uv from the wheelhouse, offline (the fastest way, and
    bytecode compiled, as pip does: the app's user cannot write .pyc files
    beside root's code); pip where there is no uv or no wheelhouse (the
    host's own index, its CA bundle)."""
    python, lock = request.get("python", "python3"), request["lock"]
    if uv and found_links:
        uv_pip = [uv, "pip", "install", "--no-config", "--no-cache", "--python", f"{venv}/bin/python",
                  "--offline", "--no-index", "--find-links", found_links, "--require-hashes", "--no-deps",
                  "--compile-bytecode", "-r", lock]
        return [[uv, "venv", "--no-config", "--quiet", "--no-python-downloads", "--python", python, venv],
                uv_pip, [uv, "pip", "check", "--no-config", "--python", f"{venv}/bin/python"]]
    pip = [f"{venv}/bin/pip", "install", "--no-input", "--disable-pip-version-check", "--require-hashes",
           "--no-deps", "-r", lock]
    if found_links:
        pip += ["--no-index", "--find-links", found_links]
    else:
        pip += ["--index-url", request["index_url"]] if request.get("index_url") else []
        pip += ["--cert", request["ca_bundle"]] if request.get("ca_bundle") else []
    return [[python, "-m", "venv", venv], pip, [f"{venv}/bin/pip", "check"]]


def build_venv(request: dict) -> dict:
    """Build a virtualenv where it will live (its scripts carry its path) from
    a hash-locked requirements file, and mark it complete last: a half-built
    one from an interrupted run has no marker and is rebuilt. `wheels`: a tar
    of the lock's wheels shipped beside it (installed offline, never from an
    index); `uv`: the host's uv, else one from the wheelhouse's own uv wheel;
    `modules`: single-file modules shipped beside it as VENV.NAME.py, moved
    into its site-packages (asgi-fleet's worker classes)."""
    venv, lock, said = request["venv"], request["lock"], []
    unpacked = f"{venv}.wheels" if request.get("wheels") else None
    try:
        shutil.rmtree(venv, ignore_errors=True)
        # after the removal: the tools' venv, rebuilt, takes uv from its wheelhouse, not from itself
        uv = request.get("uv") if request.get("uv") and os.access(request["uv"], os.X_OK) else None
        if unpacked:
            shutil.rmtree(unpacked, ignore_errors=True)
            os.mkdir(unpacked, 0o700)
            import tarfile
            with tarfile.open(request["wheels"]) as tar:  # the filter where this Python has it (3.11.4+)
                tar.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            uv = uv or bootstrap_uv(unpacked, lock, f"{venv}.uv")
        installer = "uv" if uv and unpacked else "pip"
        for argv in install_argv(request, venv, unpacked, uv):
            done = subprocess.run(argv, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, env=dict(os.environ, UV_PYTHON_DOWNLOADS="never"))
            if done.returncode != 0:
                words = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
                said.extend(words[-12:])
                said.append(f"virtualenv {venv}: {os.path.basename(argv[0])} {argv[1]} failed "
                             f"(status {done.returncode})")
                return {"outcome": "failed", "said": said, "installer": installer}
        if installer == "uv":  # uv's lock file for its own runs, made writable by all (0666)
            try:
                os.unlink(os.path.join(venv, ".lock"))
            except FileNotFoundError:
                pass
        site = glob_dirs(f"{venv}/lib", "python3")[0] + "/site-packages"
        added = [f"{site}/{name}.py" for name in request.get("modules", [])]
        for module in added:
            shipped = f"{venv}.{os.path.basename(module)}"
            shutil.copyfile(shipped, module)
            os.chmod(module, 0o644)
            os.unlink(shipped)
        if added:  # their bytecode too, as the installer's
            subprocess.run([f"{venv}/bin/python", "-m", "compileall", "-q", *added], capture_output=True)
        write_atomically(os.path.join(venv, VENV_MARKER), f"{digest([lock])}\n{dists_digest(venv)}\n")
        return {"outcome": "built", "said": said, "installer": installer}
    finally:
        for leftover in (unpacked, request.get("wheels"), f"{venv}.uv"):
            if leftover and os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover and os.path.exists(leftover):
                os.unlink(leftover)


# --- activation ------------------------------------------------------------

# How each kind of activation is carried out, and how a failed one is undone
# once the previous files and release are back (asgi_fleet/activation.py
# decides the kind). A reload's new workers may have taken the master down
# with them ("worker failed to boot"), so its undo also starts a master
# that is gone.
ACTIVATE = {
    "start": [["restart", "{socket}"], ["start", "{service}"]],
    "reload": [["reload", "{service}"]],
    "restart": [["restart", "{service}"]],
    "rebind": [["stop", "{service}"], ["restart", "{socket}"], ["start", "{service}"]],
}
UNDO = {
    "start": [["stop", "{service}"]],
    "reload": [["reload-or-restart", "{service}"]],
    "restart": [["restart", "{service}"]],
    "rebind": ACTIVATE["rebind"],
}
REDACT_MIN = 4  # secret values shorter than this are not hunted down in the journal
WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}  # a wildcard bind is reached on loopback


def loopback(bind: str) -> tuple[str, int]:
    """Where the host itself reaches a TCP bind ("HOST:PORT", "[V6]:PORT")."""
    address, _, port = bind.rpartition(":")
    return WILDCARDS.get(address, address), int(port)


def http_status(bind: str, path: str, timeout: float = 5) -> int:
    """The status of one GET through the app's own socket (0: no answer)."""
    import http.client  # here, not at the top: it is a third of a lock call's start-up

    if bind.startswith("unix:"):
        connection = http.client.HTTPConnection("localhost", timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(bind[5:])
        except OSError:
            sock.close()
            return 0
        connection.sock = sock
    else:
        address, port = loopback(bind)
        connection = http.client.HTTPConnection(address.strip("[]"), port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def url(bind: str, path: str) -> str:
    if bind.startswith("unix:"):
        return f"http://localhost{path} (through {bind[5:]})"
    address, port = loopback(bind)
    return f"http://{address}:{port}{path}"


class WorkersOn:
    """Calling it counts (the unit's workers running from release_dir, all
    its workers), from /proc. The master's PID is asked of systemd once, and
    again only once that process is gone (systemd restarted the unit): the
    gate counts at every poll while the workers roll, and a `systemctl show`
    each time was a process and a call to PID 1 on the app's CPUs. A master
    with no workers may be a dead one not reaped yet: systemd is asked again."""

    def __init__(self, systemctl: str, service: str, release_dir: str):
        self.systemctl, self.service = systemctl, service
        self.want = os.path.realpath(release_dir)  # the kernel resolves cwd: srv_root may be a symlink
        self.pid: int | None = None

    def __call__(self) -> tuple[int, int]:
        workers = children(self.pid) if self.pid else None
        if not workers:
            self.pid = main_pid(self.systemctl, self.service)
            workers = (children(self.pid) if self.pid else None) or []
        cwds = []
        for worker in workers:
            try:
                cwds.append(os.readlink(f"/proc/{worker}/cwd"))
            except OSError:
                continue  # gone since
        return sum(cwd == self.want for cwd in cwds), len(cwds)


# The gate asks every 0.1 s until the first healthy answer (new workers are
# ready within a second; a coarser poll only adds its own wait to every
# activation), then holds: each further answer in a row comes 0.5 s later,
# so `consecutive` answers span (consecutive - 1) * 0.5 s of staying healthy.
GATE_POLL_SECONDS, GATE_HOLD_SECONDS = 0.1, 0.5


def gate(request: dict, spec: dict) -> tuple[bool, str]:
    """Poll until GET answers 200 `consecutive` times in a row (the first
    within GATE_POLL_SECONDS of being ready, the rest GATE_HOLD_SECONDS apart),
    and, with `release_dir` and `workers`, until exactly that many workers run,
    all from release_dir: after a HUP the old workers keep answering 200 for
    a while, and a gate that stops at the first 200 would pass on the old code."""
    end = time.monotonic() + spec["deadline"]
    consecutive, release_dir, workers = spec.get("consecutive", 1), spec.get("release_dir"), spec.get("workers")
    count = None
    if release_dir is not None and workers is not None:
        count = WorkersOn(request.get("systemctl", "systemctl"), request["service"], release_dir)
    healthy, status, seen = 0, 0, (0, 0)
    while True:
        status = http_status(spec["bind"], spec["path"])
        on_release = True
        if count is not None:
            seen = count()
            on_release = seen == (workers, workers)
        healthy = healthy + 1 if status == 200 and on_release else 0
        if healthy >= consecutive:
            return True, ""
        if time.monotonic() >= end:
            break
        time.sleep(GATE_HOLD_SECONDS if healthy else GATE_POLL_SECONDS)
    in_a_row = f" {consecutive} times in a row" if consecutive > 1 else ""
    why = f" and {workers} workers on {release_dir} (seen: {seen[0]} of {seen[1]})" if count is not None else ""
    return False, (f"{spec.get('label', 'health gate')} failed: want GET {url(spec['bind'], spec['path'])} "
                   f"to answer 200{in_a_row}{why} within {spec['deadline']}s; it answered {status or '000'}.")


def secret_values(paths: list[str]) -> list[str]:
    values = []
    for path in paths:
        for line in (read_text(path) or "").splitlines():
            value = line.partition("=")[2]
            if len(value) >= REDACT_MIN:
                values.append(value)
    return sorted(set(values), key=len, reverse=True)


def journal_tail(request: dict, lines: int = 30) -> list[str]:
    """The service's last journal lines, with every secret value replaced."""
    try:
        out = subprocess.run([request.get("journalctl", "journalctl"), "-u", request["service"],
                              "-n", str(lines), "--no-pager", "-o", "cat"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    secrets = secret_values(request.get("secrets", []))
    tail = []
    for line in out.splitlines():
        for value in secrets:
            line = line.replace(value, "<redacted>")
        tail.append(line)
    return tail


class Activation:
    """One activation's steps, each with its start, end and outcome; what it
    says goes to stderr (the unit's log) as it goes."""

    def __init__(self, request: dict):
        self.request = request
        self.systemctl = request.get("systemctl", "systemctl")
        self.steps: list[dict] = []
        self.said: list[str] = []  # what it reported as it went, failures included
        self.journal: list[str] = []  # the service's journal tail, once something failed
        self.pruned: list[str] | None = None  # what it deleted once healthy

    def say(self, line: str) -> None:
        self.said.append(line)
        print(line, file=sys.stderr, flush=True)

    def step(self, name: str, action) -> bool:
        started = time.time()
        try:
            problem = action()
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            problem = f"{type(error).__name__}: {error}"
        entry = {"step": name, "started": started, "ended": time.time(), "ok": not problem}
        if problem:
            entry["error"] = problem
            self.say(problem)
        self.steps.append(entry)
        return not problem

    def systemctl_run(self, commands: list[list[str]]) -> str | None:
        units = {"service": self.request["service"], "socket": self.request["socket"]}
        for command in commands:
            argv = [self.systemctl, *(word.format(**units) for word in command)]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return (f"{' '.join(argv[1:])} failed with status {done.returncode}: "
                        + (done.stderr.strip().splitlines() or [""])[-1])
        return None

    # the steps
    def back_up_and_install(self) -> str | None:
        backup = self.request["previous_files"]
        shutil.rmtree(backup, ignore_errors=True)
        os.makedirs(backup)
        for name, (staged, live) in sorted(self.request["staged"].items()):
            if os.path.exists(live):
                copy_file(live, os.path.join(backup, name))
                if file_state(staged) == file_state(live):
                    continue  # rewritten, an unchanged unit would be "changed on disk" to systemd
            copy_file(staged, live)
        return None

    def restore(self) -> str | None:
        backup = self.request["previous_files"]
        for name, (_, live) in sorted(self.request["staged"].items()):
            kept = os.path.join(backup, name)
            if os.path.exists(kept):
                copy_file(kept, live)
            elif os.path.lexists(live):
                os.unlink(live)
        return None

    def switch(self, release_id: str, note: str = "") -> str | None:
        root = self.request["root"]
        tmp = f"{root}/current.tmp-{os.getpid()}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(f"releases/{release_id}", tmp)
        os.replace(tmp, f"{root}/current")  # rename(2): never a moment without `current`
        return append_history(root, release_id, note)

    def daemon_reload(self) -> str | None:
        return self.systemctl_run([["daemon-reload"]]) if self.request.get("reload_units") else None

    def enable_and_listen(self) -> str | None:
        # `enable` takes 0.1 s even when there is nothing to do, `is-enabled` 7 ms (a
        # unit at a time: given several, it answers whether any is enabled)
        enabled = all(subprocess.run([self.systemctl, "is-enabled", "--quiet", self.request[unit]],
                                     capture_output=True, timeout=60).returncode == 0
                      for unit in ("socket", "service"))
        return self.systemctl_run(([] if enabled else [["enable", "--quiet", "{socket}", "{service}"]])
                                  + [["start", "{socket}"]])

    def run(self) -> dict:
        request, app = self.request, self.request["app"]
        release_id, previous, kind = request["release_id"], request.get("previous"), request["kind"]
        if kind == "none":
            return self.repair()
        ok = (self.step("install the staged files", self.back_up_and_install)
              and (previous == release_id or self.step(f"point current at releases/{release_id}",
                                                       lambda: self.switch(release_id)))
              and self.step("daemon-reload", self.daemon_reload)
              and self.step("enable the units and start the socket", self.enable_and_listen)
              and self.step(kind, lambda: self.systemctl_run(ACTIVATE[kind]))
              and self.step("health gate", lambda: gate_problem(request, request["gate"])))
        if ok:
            self.say(f"activated: {app} runs releases/{release_id} and answers 200")
            return self.healthy()
        went_back = f"releases/{previous}" if previous else "nothing (the first release: stopped)"
        self.journal = journal_lines(request)
        self.say(f"rolling back {app} to {went_back}")
        self.step("put the previous files back", self.restore)
        if previous and previous != release_id:
            self.step(f"point current back at releases/{previous}", lambda: self.switch(previous))
            # rollback=1 must never pick a release a gate rolled back from
            append_history(request["root"], release_id, "failed")
        self.step("daemon-reload", self.daemon_reload)
        self.step(f"undo the {kind}", lambda: self.systemctl_run(UNDO[kind]))
        if not previous:
            return self.result("failed")
        if self.step("health gate, on the previous release", lambda: gate_problem(request, request["back_gate"])):
            self.say(f"rolled back: {app} runs releases/{previous} again and answers 200")
            return self.result("rolled back")
        self.say(f"rollback FAILED: {app} on releases/{previous} does not answer 200 either")
        return self.result("rollback failed")

    def repair(self) -> dict:
        """Nothing to activate: put back what was undone by hand (a disabled
        unit, `current` switched), and hold an unhealthy service to the gate."""
        request = self.request
        ok = (self.step("enable the units", lambda: self.systemctl_run(
                  [["enable", "--quiet", unit] for unit in request.get("enable", [])]))
              and (not request.get("switch") or self.step(
                  f"point current at releases/{request['release_id']}", lambda: self.switch(request["release_id"])))
              and (not request.get("check_health") or self.step(
                  "health gate", lambda: gate_problem(request, request["back_gate"]))))
        if not ok:
            self.journal = journal_lines(request)
            return self.result("failed")
        self.say(f"activated: {request['app']} runs releases/{request['release_id']} and answers 200")
        return self.healthy()

    def healthy(self) -> dict:
        """Activated: the releases beyond keep_releases go (the controller
        named them, from the releases as they now are); a release that cannot
        be deleted does not undo a healthy activation."""
        plan = self.request.get("prune")
        if plan is not None:
            self.pruned = []

            def delete() -> str | None:
                done = prune({"root": self.request["root"], **plan})
                self.pruned = done["removed"]
                return f"prune refused: {', '.join(done['refused'])}" if done["refused"] else None
            if plan.get("releases") or plan.get("venvs"):
                self.step("prune old releases", delete)
        return self.result("activated")

    def result(self, outcome: str) -> dict:
        return {"outcome": outcome, "app": self.request["app"], "kind": self.request["kind"],
                "release": self.request["release_id"], "previous": self.request.get("previous"),
                "steps": self.steps, "said": self.said, "journal": self.journal,
                **({"pruned": self.pruned} if self.pruned is not None else {})}


def gate_problem(request: dict, spec: dict) -> str | None:
    ok, problem = gate(request, spec)
    return None if ok else problem


def journal_lines(request: dict) -> list[str]:
    state = systemctl_show(request.get("systemctl", "systemctl"), request["service"], "ActiveState")
    return [f"{state.get('ActiveState', 'unknown')} {request['service']}; last journal lines:",
            *journal_tail(request)]


def copy_file(source: str, target: str) -> None:
    """Copy with mode and owner, into place by a rename: a reader sees the old
    file or the new one, never half of one."""
    info = os.stat(source)
    tmp = f"{target}.new"
    shutil.copyfile(source, tmp)
    os.chown(tmp, info.st_uid, info.st_gid)
    os.chmod(tmp, stat.S_IMODE(info.st_mode))
    os.replace(tmp, target)


def append_history(root: str, release_id: str, note: str = "") -> None:
    with open(f"{root}/history", "a") as f:
        f.write(f"{int(time.time())} {release_id}{' ' + note if note else ''}\n")


def write_atomically(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.new", "w") as f:
        f.write(text)
    os.replace(f"{path}.new", path)


def run_activation(request: dict) -> dict:
    """The activation itself, inside its transient unit. When it ran is kept
    across reboots ("START END STATUS"): verify fails on journal alarms from
    that window (the deploy caused them) and only warns about older ones."""
    started = time.time()
    result = Activation(request).run()
    status = 0 if result["outcome"] == "activated" else 1
    write_atomically(request["result"], json.dumps(result, sort_keys=True))
    write_atomically(request["record"], f"{int(started)} {int(time.time())} {status}\n")
    if request.get("audit"):
        append_audit(request, result, started)
    return result


def append_audit(request: dict, result: dict, started: float) -> None:
    """One line of the host's append-only deploy history (JSON lines): when,
    who and from which commit (as the controller says), which release of
    which app, how it was activated and how it ended. Only a repair or an
    activation writes one; a run that changed nothing on the app does not."""
    audit = request["audit"]
    line = {"started": round(started, 3), "ended": round(time.time(), 3), "app": request["app"],
            "release": request["release_id"], "previous": request["previous"],
            "activation": request["kind"], "outcome": result["outcome"], **audit["who"]}
    os.makedirs(os.path.dirname(audit["path"]), exist_ok=True)
    fd = os.open(audit["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write of one line: O_APPEND keeps concurrent appends whole
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def deploy_history(path: str, app: str, last: int) -> list[dict]:
    """The last `last` lines of the deploy history for `app` (a torn or foreign line is skipped)."""
    lines = []
    for text in (read_text(path) or "").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("app") == app:
            lines.append(line)
    return lines[-last:] if last else []


def activate(request: dict) -> dict:
    """Run the activation as a transient systemd unit and wait for it. The
    unit belongs to systemd, not to this connection; what it says goes to a
    log that outlives it (the next run's lock check reports its last line)."""
    unit, log, result_file = request["unit"], request["log"], request["result"]
    systemctl = request.get("systemctl", "systemctl")
    os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    if os.path.exists(result_file):
        os.unlink(result_file)
    subprocess.run([systemctl, "reset-failed", unit], capture_output=True, timeout=20)
    argv = [request.get("systemd_run", "systemd-run"), "--quiet", "--wait", "--collect", f"--unit={unit}",
            "-p", f"StandardOutput=truncate:{log}", "-p", f"StandardError=file:{log}",
            "-p", f"Nice={DEPLOY_NICE}",
            sys.executable, os.path.abspath(__file__), "run-activation", json.dumps(request)]
    done = subprocess.run(argv, capture_output=True, text=True)
    try:
        with open(result_file) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"outcome": "failed", "app": request["app"], "steps": [], "journal": [], "said": [
            f"the activation unit {unit} ended with status {done.returncode} and left no result",
            *(done.stderr.strip().splitlines()[-5:]), *(read_text(log) or "").splitlines()[-5:]]}
    return result


# --- preflight ---------------------------------------------------------------


def preflight(request: dict) -> dict:
    """Check a release with its virtualenv and the candidate config, before
    any switch; nothing here touches the running service.

    1. a one-worker canary boots from the release on a private unix socket
       (a transient unit, as the app user, with the candidate environment);
    2. beside it, the preflight script reads the candidate gunicorn.conf.py
       with gunicorn's own loader (as `gunicorn --check-config` would), then
       imports the app (an ASGI callable, or a factory called as such) and
       the worker class; when it fails, its words are the cause, and the
       canary is stopped unheard;
    3. the canary must answer the health endpoint with 200 within the deadline.
    The two import the app at once, as a reload's new workers always do, so
    the check waits on the slower of them, not on their sum.
    Only then is the stamp written (root:APP 0640), with the digest of what
    was checked.
    """
    app, release, deadline = request["app"], request["release_dir"], int(request["deadline"])
    systemctl = request.get("systemctl", "systemctl")
    systemd_run = request.get("systemd_run", "systemd-run")
    conf, unit = request["config"], request["unit"]
    said: list[str] = []
    as_app = ["-p", f"Nice={DEPLOY_NICE}",
              "-p", f"User={app}", "-p", f"Group={app}", "-p", f"EnvironmentFile={request['env_file']}",
              "-p", f"WorkingDirectory={release}", "-E", f"ASGI_FLEET_PREFLIGHT_RELEASE={release}",
              "-E", f"ASGI_FLEET_PREFLIGHT_SECRETS={request['secrets_file']}"]
    gunicorn = f"{release}/.venv/bin/gunicorn"
    run_dir = f"/run/{unit}"
    sock = f"{run_dir}/canary.sock"

    def failed(line: str) -> dict:
        said.append(line)
        return {"outcome": "failed", "said": said}

    for verb in ("stop", "reset-failed"):
        subprocess.run([systemctl, verb, f"{unit}.service"], capture_output=True, timeout=60)
    # The canary serves no one: its stop kills it (a graceful stop, a third
    # of a second of every preflight, would drain nothing).
    started = subprocess.run([systemd_run, "--quiet", "--collect", f"--unit={unit}", *as_app,
                              "-p", f"RuntimeDirectory={unit}", "-p", "KillSignal=SIGKILL",
                              gunicorn, "-c", conf, "--chdir", release, "--workers", "1", "--bind",
                              f"unix:{sock}", "--control-socket", f"{run_dir}/ctl", "--worker-tmp-dir", run_dir,
                              request["app_module"]],
                             capture_output=True, text=True)
    try:
        # run the way the service runs, stopped after the deadline (an import
        # that hangs never hangs a deploy)
        checked = subprocess.run([systemd_run, "--quiet", "--collect", "--wait", "--pipe", *as_app,
                                  "-p", f"RuntimeMaxSec={deadline}", f"{release}/.venv/bin/python",
                                  request["script"], request["app_module"], request["worker_class"], conf],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out = (checked.stdout + checked.stderr).strip()
        if checked.returncode != 0:
            words = [line for line in out.splitlines() if line.strip()]
            if checked.returncode != 1 or not words:
                words.append(f"preflight failed: the check ended with status {checked.returncode}; one "
                             f"that hangs is stopped after {deadline} s (health_deadline)")
            said.extend(words[:-1])
            return failed(words[-1])
        said.append(out)
        if started.returncode != 0:
            return failed(f"preflight failed: the canary did not start: {started.stderr.strip()}")
        healthy, problem = gate({"service": f"{unit}.service", "systemctl": systemctl},
                                {"bind": f"unix:{sock}", "path": request["health_path"], "deadline": deadline,
                                 "label": "preflight: the canary's health check"})
        if not healthy:
            said.append(problem)
            said.extend(journal_lines({"service": f"{unit}.service", "systemctl": systemctl,
                                       "journalctl": request.get("journalctl", "journalctl"),
                                       "secrets": [request["secrets_file"]]}))
            return {"outcome": "failed", "said": said}
    finally:
        subprocess.run([systemctl, "stop", f"{unit}.service"], capture_output=True, timeout=120)
    write_atomically(request["stamp"], request["digest"] + "\n")
    os.chown(request["stamp"], 0, grp.getgrnam(request.get("group", app)).gr_gid)
    os.chmod(request["stamp"], 0o640)
    return {"outcome": "passed", "said": said}


COMMANDS = {"state": state, "preflight": preflight, "activate": activate,
            "run-activation": run_activation, "lock": lock, "prune": prune, "venv": build_venv}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in COMMANDS:
        print(json.dumps({"error": f"usage: agent.py {{{'|'.join(COMMANDS)}}} REQUEST_JSON"}))
        return 2
    try:
        request = json.loads(argv[2])
    except ValueError as error:
        print(json.dumps({"error": f"the request is not JSON: {error}"}))
        return 2
    if argv[1] == "run-activation":  # inside its unit: the result goes to its file, the words to the log
        return 0 if run_activation(request)["outcome"] == "activated" else 1
    result = COMMANDS[argv[1]](request)
    print(json.dumps(result, sort_keys=True))
    if result.get("outcome") == "failed":  # a command run for its effect fails, with its words
        print("\n".join(result.get("said", [])), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
