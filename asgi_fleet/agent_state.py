"""The controller's reading of the agent's `state` document (asgi_fleet/onhost/agent.py).

Each piece comes back as the type the decisions already take, so a fact
that runs `agent.py state` once can stand in for the per-question facts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from asgi_fleet.activation import RunningMaster
from asgi_fleet.commands import ACTIVATION_LOGS, DEPLOY_HISTORY, DEPLOY_LOCK, LOCK_MUTEX, AppPaths
from asgi_fleet.release import ReleasesState, failed_releases, parse_history
from asgi_fleet.sinks import shell
from asgi_fleet.sizing import HostResources, resources_from_agent

AGENT_SOURCE = Path(__file__).with_name("onhost") / "agent.py"
AGENT_DIR = "/opt/asgi-fleet"  # one file per agent version: agent-DIGEST.py
# Every agent run yields the CPUs to the app serving beside it, from its
# first instruction (on an idle host it is no slower): a python3 start is
# some 40 ms of CPU, and the run that gives back the lock comes while the
# activation's new workers take their first requests. The agent's own
# DEPLOY_NICE, which its units are given (systemd does not inherit it).
AGENT_NICE = 10
_END = "ASGI_FLEET_AGENT_END"


def agent_path(source: str) -> str:
    return f"{AGENT_DIR}/agent-{hashlib.sha256(source.encode()).hexdigest()[:16]}.py"


def agent_command(subcommand: str, request: dict, install: bool = True) -> str:
    """Run the agent on a host: the controller's own version, installed on
    first use (its source travels with the command, so there is nothing to
    ship first and no round trip to check), older versions removed. Without
    `install` it runs from its source on stdin and leaves nothing behind (a
    read before the run executes: --dry changes nothing). It runs at nice
    AGENT_NICE. A host without python3 yet (a bare server before its first
    deploy) answers `null`.
    The only value in this text is the request, quoted for the shell here."""
    source = AGENT_SOURCE.read_text()
    assert _END not in source
    path = agent_path(source)
    quoted = shell(json.dumps(request, sort_keys=True))
    if not install:
        return (f"command -v python3 >/dev/null 2>&1 || {{ echo null; exit 0; }}\n"
                f"exec nice -n {AGENT_NICE} python3 - {subcommand} {quoted} <<'{_END}'\n{source}{_END}\n")
    return (f"command -v python3 >/dev/null 2>&1 || {{ echo null; exit 0; }}\n"
            f"if [ ! -f {path} ]; then\n"
            f"mkdir -p -m 755 {AGENT_DIR} && cat > {path}.$$ <<'{_END}'\n{source}{_END}\n"
            f"chmod 755 {path}.$$ && mv -f {path}.$$ {path} || exit 1\n"
            f"find {AGENT_DIR} -maxdepth 1 -name 'agent-*.py' ! -name {path.rsplit('/', 1)[1]} -delete\n"
            f"fi\n"
            f"exec nice -n {AGENT_NICE} python3 {path} {subcommand} {quoted}\n")


def parse_answer(text: str) -> dict | None:
    """An agent's answer (None from a host without python3); a refused
    request raises, with the agent's words."""
    doc = json.loads(text)
    if isinstance(doc, dict) and "error" in doc:
        raise ValueError(f"the agent refused the request: {doc['error']}")
    return doc


def app_entry(paths: AppPaths, health: tuple[str, str] | None = None, deploys: int = 0) -> dict:
    """One app's part of a `state` request: its places, (bind, health path)
    for a GET of its health endpoint, and how many of the last lines of its
    deploy history to read."""
    entry = {"name": paths.app, "root": paths.root, "service": paths.service,
             "units": [paths.socket, paths.service],
             "files": [path for pair in paths.staged.values() for path in pair],
             "activation_record": paths.activation_record}
    if health:
        entry["health"] = {"bind": health[0], "path": health[1]}
    if deploys:
        entry["deploys"] = {"path": DEPLOY_HISTORY, "last": deploys}
    return entry


def state_request(paths: list[AppPaths], flag_dir: str | None = None) -> dict:
    """What `agent.py state` is asked for: every app's places, by AppPaths."""
    return {"lock": DEPLOY_LOCK, "flag_dir": flag_dir, "apps": [app_entry(p) for p in paths]}


def merge_request(request: dict, more: dict) -> dict:
    """Two `state` requests as one: apps merged by name, lists joined without
    repeats, mappings merged, anything else set."""
    merged = dict(request)
    for key, value in more.items():
        old = merged.get(key)
        if key == "apps":
            apps = {app["name"]: app for app in old or []}
            for app in value:
                apps[app["name"]] = {**apps.get(app["name"], {}), **app}
            merged[key] = list(apps.values())
        elif isinstance(value, list):
            merged[key] = list(old or []) + [v for v in value if v not in (old or [])]
        elif isinstance(value, dict):
            merged[key] = {**(old or {}), **value}
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class FileState:
    sha256: str
    owner: str
    group: str
    mode: str


@dataclass(frozen=True)
class AppState:
    paths: AppPaths
    doc: dict

    @property
    def releases(self) -> ReleasesState:
        history_text = "\n".join(self.doc["history"])
        return ReleasesState(self.doc["current"], parse_history(history_text),
                             dict(self.doc["releases"]), list(self.doc["venvs"]),
                             frozenset(failed_releases(history_text)))

    @property
    def master(self) -> RunningMaster | None:
        found = self.doc["master"]
        if not found or not found.get("venv"):
            return None
        workers = found["workers"]
        return RunningMaster(pid=found["pid"], venv=found["venv"],
                             worker_releases=tuple(w["cwd"] for w in workers),
                             slow_workers=tuple(w["pid"] for w in workers
                                                if not (w["uvloop"] and w["httptools"])))

    def file(self, path: str) -> FileState | None:
        found = self.doc["files"].get(path)
        return FileState(**found) if found else None

    @property
    def staged_changes(self) -> set[str]:
        """The staged files that differ from the live ones in content, owner or
        mode (a missing one on either side counts as a change)."""
        return {name for name, (staged, live) in self.paths.staged.items()
                if self.file(staged) is None or self.file(staged) != self.file(live)}

    @property
    def health(self) -> int | None:
        """The status of a GET of the health path through the app's socket (0: no answer)."""
        return self.doc.get("health")

    @property
    def units_not_enabled(self) -> set[str]:
        return {unit for unit, found in self.doc["units"].items()
                if not found or found.get("enabled") != "enabled"}


@dataclass(frozen=True)
class VenvState:
    built_lock: str  # the lock's sha256 recorded when the build completed ("" if it never did)
    built_dists: str  # the installed distributions' digest then
    dists: str  # ...and now
    writable: str  # the first path in it the app's user could change ("" if none)


@dataclass(frozen=True)
class PathState:
    type: str  # dir, file, link, other
    owner: str
    group: str
    mode: str


@dataclass(frozen=True)
class TreeState:
    exists: bool
    loose: str  # the first path not root:GROUP u=rwX,g=rX,o= ("" if none)


@dataclass(frozen=True)
class HostState:
    doc: dict

    @classmethod
    def parse(cls, text: str) -> HostState | None:
        """The document, or None from a host without python3 (nothing deployed yet)."""
        doc = parse_answer(text)
        return None if doc is None else cls(doc)

    @property
    def resources(self) -> HostResources:
        return resources_from_agent(self.doc["resources"])

    @property
    def lock(self) -> str | None:
        return self.doc["lock"]

    def app(self, paths: AppPaths) -> AppState:
        return AppState(paths, self.doc["apps"][paths.app])

    def venv(self, path: str) -> VenvState:
        return VenvState(**self.doc["venvs"][path])

    def tree(self, path: str) -> TreeState:
        return TreeState(**self.doc["trees"][path])

    def digest(self, name: str) -> str:
        return self.doc["digests"][name]

    def text(self, path: str) -> str | None:
        return self.doc["texts"][path]

    def path(self, path: str) -> PathState | None:
        found = self.doc["paths"][path]
        return PathState(**found) if found else None

    def file(self, path: str) -> FileState | None:
        found = self.doc["files"][path]
        return FileState(**found) if found else None

    def installed(self, package: str) -> bool | None:
        return self.doc["packages"][package]

    def user(self, name: str) -> dict | None:
        return self.doc["accounts"]["users"][name]

    def group(self, name: str) -> dict | None:
        return self.doc["accounts"]["groups"][name]

    def unit(self, name: str) -> dict | None:
        """A unit's load, active and enabled states (None: systemd could not say)."""
        return self.doc["units"][name]

    @property
    def flags(self) -> list[str] | None:
        """The files in the request's flag directory (None: not asked)."""
        return self.doc["flags"]

    def mtime(self, path: str) -> float | None:
        return self.doc["mtimes"][path]

    @property
    def now(self) -> float:
        return self.doc["now"]


def activation_request(paths: AppPaths, *, release_id: str, previous: str | None, kind: str,
                       reload_units: bool, bind: str, health_path: str, deadline: int,
                       consecutive: int, workers: int, release_dir: str,
                       enable: tuple[str, ...] = (), check_health: bool = True,
                       who: dict[str, str] | None = None,
                       prune: tuple[list[str], list[str]] = ([], [])) -> dict:
    """What `agent.py activate` is asked to do for one app. With kind "none"
    it only repairs: enables the units in `enable`, points `current` back at
    the release if it was switched by hand, and gates an unhealthy service.
    `who` (by, commit, run_id) goes into the host's deploy history. `prune`:
    the releases and virtualenvs (names) to delete once it is healthy."""
    health = {"bind": bind, "path": health_path, "deadline": deadline, "consecutive": consecutive}
    return {
        "app": paths.app, "root": paths.root, "service": paths.service, "socket": paths.socket,
        "release_id": release_id, "previous": previous, "kind": kind, "reload_units": reload_units,
        "staged": {name: list(pair) for name, pair in paths.staged.items()},
        "previous_files": paths.previous_files,
        "secrets": [paths.secrets_file, paths.staged["secrets"][0]],
        "gate": {**health, "release_dir": release_dir, "workers": workers},
        "back_gate": health,
        "enable": sorted(enable), "switch": previous != release_id, "check_health": check_health,
        "unit": paths.activation_unit, "log": f"{ACTIVATION_LOGS}/{paths.app}.log",
        "result": paths.activation_result, "record": paths.activation_record,
        "prune": {"releases": list(prune[0]), "venvs": list(prune[1])},
        **({"audit": {"path": DEPLOY_HISTORY, "who": who}} if who else {}),
    }


@dataclass(frozen=True)
class ActivationResult:
    """What `agent.py activate` answered: its outcome, its steps, and why it failed."""

    outcome: str  # activated, rolled back, rollback failed, failed
    steps: tuple[dict, ...]
    said: tuple[str, ...]  # what it reported as it went: each failure, the rollback's outcome
    journal: tuple[str, ...]  # the service's journal tail once something failed (secrets redacted)
    pruned: tuple[str, ...] | None = None  # what it deleted once healthy ("releases/ID", "venvs/ID")

    @classmethod
    def parse(cls, text: str) -> ActivationResult:
        doc = parse_answer(text)
        if not isinstance(doc, dict) or "outcome" not in doc:
            raise ValueError(f"the agent's activation answered {text[-200:]!r}")
        pruned = doc.get("pruned")
        return cls(doc["outcome"], tuple(doc.get("steps", ())), tuple(doc.get("said", ())),
                   tuple(doc.get("journal", ())), None if pruned is None else tuple(pruned))

    @property
    def health(self) -> str:
        """The record's word for it."""
        return "healthy" if self.outcome == "activated" else self.outcome

    @property
    def cause(self) -> list[str]:
        """For the run's record: the verdicts, then the journal's last words."""
        if self.outcome == "activated":
            return []
        return [*self.said, *self.journal[:1], *self.journal[1:][-8:]]


def lock_request(action: str, **fields) -> dict:
    """What `agent.py lock` is asked: take (owner, stale), give (run_id) or status."""
    return {"lock": DEPLOY_LOCK, "mutex": LOCK_MUTEX, "logs_dir": ACTIVATION_LOGS,
            "activation_units": "asgi-fleet-activate-*", "action": action, **fields}


def preflight_request(paths: AppPaths, release_dir: str, *, app_module: str, worker_class: str,
                      health_path: str, deadline: int, script: str, stamp: str, digest: str) -> dict:
    """What `agent.py preflight` is asked to check: a release with the candidate config."""
    return {"app": paths.app, "release_dir": release_dir, "app_module": app_module,
            "worker_class": worker_class, "health_path": health_path, "deadline": deadline,
            "script": script, "stamp": stamp, "digest": digest, "unit": paths.preflight_unit,
            "config": paths.staged["config"][0], "env_file": paths.staged["env"][0],
            "secrets_file": paths.staged["secrets"][0]}
