"""The plan for one app on one host: validated settings plus what follows from them.

Everything here is computed on the controller before any operation runs, so a
bad lock file or app directory stops the run before a host is touched.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from asgi_fleet import release
from asgi_fleet.commands import PREFLIGHT_SCRIPT, AppPaths
from asgi_fleet.release import ReleasesState, previous_release
from asgi_fleet.secrets import secrets_file
from asgi_fleet.sizing import HostResources, WorkerPlan, app_worker_plan
from asgi_fleet.settings import InvalidSettings, Settings, app_settings, local_path



@dataclass(frozen=True)
class AppPlan:
    app: Settings  # the app's validated settings
    paths: AppPaths
    release_id: str
    venv_id: str
    lock_file: Path
    lock_sha256: str
    tarball: Path
    secrets: bytes = b""  # the content of /etc/APP/secrets (a secrets.Redacted)
    rollback: bool = False  # go back to a release already on the host; ship nothing
    workers: WorkerPlan | None = None  # set by sized(), from the host's own resources
    commit: str | None = None  # the git commit of app_source (the deploy history names it)

    def sized(self, resources: HostResources) -> AppPlan:
        """This app's plan with its worker count for a host's CPUs and memory."""
        return replace(self, workers=app_worker_plan(resources, self.app))

    def rolled_back(self, state: ReleasesState, where: str, to: str | None = None) -> AppPlan:
        """This app's plan for a rollback: to release `to`, or the one that ran before `current`."""
        if to is not None:
            if to not in state.releases:
                raise InvalidSettings([
                    f"{where}: rollback_to={to!r}: not kept on the host (releases there: "
                    f"{sorted(state.releases)}); nothing was changed"])
            target = to
        else:
            target = previous_release(state.history, state.current, state.failed)
        if target is None or target not in state.releases:
            raise InvalidSettings([
                f"{where}: rollback=True: no previous release of {self.paths.app} to go back to "
                f"(current {state.current}, history {state.history[-5:]}, rolled back from "
                f"{sorted(state.failed)}, "
                f"releases on the host {sorted(state.releases)})"])
        venv_id = state.releases[target].rstrip("/").rsplit("/", 1)[-1]
        return replace(self, release_id=target, venv_id=venv_id, rollback=True)

    @property
    def release_dir(self) -> str:
        return self.paths.release(self.release_id)

    @property
    def venv_dir(self) -> str:
        return self.paths.venv(self.venv_id)

    @property
    def preflight_stamp(self) -> str:  # the digest of what a passed preflight checked
        return f"{self.release_dir}/.preflight-ok"

    @property
    def preflight_inputs(self) -> tuple[str, ...]:
        """What preflight checks besides the release: the candidate config,
        environment and secrets (a secrets-only change is checked too), and
        the preflight script itself."""
        staged = self.paths.staged
        return (staged["config"][0], staged["env"][0], staged["secrets"][0], PREFLIGHT_SCRIPT)


def _local(path: str) -> Path:
    return local_path(path).resolve()


def plan_app(app: Settings, where: str = "") -> AppPlan:
    lock_file = _local(app.app_lock)
    lock_text = lock_file.read_text()
    problems = release.lock_problems(lock_text, app.app_lock, app.worker_class)
    if problems:
        raise InvalidSettings([f"{where}: {p}" for p in problems])
    app_dir = _local(app.app_source)
    exclude = tuple(app.release_exclude)
    if not release.release_files(app_dir, exclude):
        raise InvalidSettings([
            f"{where}: app_source={app.app_source!r}: no file to ship: it is in a git work tree "
            "whose tracked files are the release, and git tracks none there (git add them), "
            "or release_exclude leaves none out"])
    release_id = release.release_id(app_dir, lock_file, exclude)
    build_dir = Path.cwd() / ".asgi-fleet" / "build"  # beside the deploy's record
    tarball = build_dir / f"{app.app_name}-{release_id}.tar.gz"
    if not tarball.exists():
        build_dir.mkdir(parents=True, exist_ok=True)
        tmp = tarball.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(release.release_tarball(app_dir, exclude))
        os.replace(tmp, tarball)
    return AppPlan(
        app=app,
        paths=AppPaths(app.app_name, app.srv_root),
        release_id=release_id,
        venv_id=release.venv_id(lock_file),
        lock_file=lock_file,
        lock_sha256=hashlib.sha256(lock_file.read_bytes()).hexdigest(),
        tarball=tarball,
        secrets=secrets_file(app.app_secrets),
        commit=release.source_commit(app_dir),
    )


def plan_host(data: dict[str, Any], where: str = "") -> list[AppPlan]:
    """Validate one host's settings and plan each of its apps."""
    return [plan_app(app, f"{where}/{app.app_name}") for app in app_settings(data, where)]
