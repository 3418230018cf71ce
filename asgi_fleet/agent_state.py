"""The controller's reading of the agent's `state` document (asgi_fleet/onhost/agent.py).

Each piece comes back as the type the decisions already take, so a fact
that runs `agent.py state` once can stand in for the per-question facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from asgi_fleet.activation import RunningMaster
from asgi_fleet.commands import AppPaths, DEPLOY_LOCK
from asgi_fleet.release import ReleasesState, failed_releases, parse_history
from asgi_fleet.sinks import shell
from asgi_fleet.sizing import HostResources, resources_from_agent

AGENT_SOURCE = Path(__file__).with_name("onhost") / "agent.py"
_END = "ASGI_FLEET_AGENT_END"


def agent_command(subcommand: str, request: dict) -> str:
    """Run the agent on a host, its source sent on stdin: nothing to ship
    first, and a host always runs the agent of the controller that asks.
    A host without python3 yet (a bare server before its first deploy)
    answers `null`."""
    source = AGENT_SOURCE.read_text()
    assert _END not in source
    return (f"command -v python3 >/dev/null 2>&1 || {{ echo null; exit 0; }}\n"
            f"python3 - {subcommand} {shell(json.dumps(request, sort_keys=True))} <<'{_END}'\n"
            f"{source}{_END}\n")


def state_request(paths: list[AppPaths], flag_dir: str | None = None) -> dict:
    """What `agent.py state` is asked for: every app's places, by AppPaths."""
    return {
        "lock": DEPLOY_LOCK,
        "flag_dir": flag_dir,
        "apps": [{"name": p.app, "root": p.root, "service": p.service,
                  "units": [p.socket, p.service],
                  "files": [path for pair in p.staged.values() for path in pair],
                  "activation_record": p.activation_record} for p in paths],
    }


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
    def units_not_enabled(self) -> set[str]:
        return {unit for unit, found in self.doc["units"].items()
                if not found or found.get("enabled") != "enabled"}


@dataclass(frozen=True)
class HostState:
    doc: dict

    @classmethod
    def parse(cls, text: str) -> HostState | None:
        """The document, or None from a host without python3 (nothing deployed yet)."""
        doc = json.loads(text)
        if doc is None:
            return None
        if "error" in doc:
            raise ValueError(f"the agent refused the request: {doc['error']}")
        return cls(doc)

    @property
    def resources(self) -> HostResources:
        return resources_from_agent(self.doc["resources"])

    @property
    def lock(self) -> str | None:
        return self.doc["lock"]

    def app(self, paths: AppPaths) -> AppState:
        return AppState(paths, self.doc["apps"][paths.app])
