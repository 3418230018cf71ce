"""Releases: content-addressed ids, the tarball that ships one, the lock file.

A release id is a digest of what will run: the app's files and its lock file.
The same content always gets the same id, so a re-run of an unchanged deploy
ships nothing, and two different contents can never share an id (a "deploy"
that quietly keeps the old code shows up as a different id than expected).
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import pathspec

from asgi_fleet.settings import runs_gunicorns_asgi

# Never part of a release, whatever the source: secrets, dependencies that
# the virtualenv provides, VCS metadata, caches, build and editor leftovers
# (gitignore patterns). REVISION is written on the host.
ALWAYS_EXCLUDED = (
    ".env", ".env.*", "*.env", ".envrc", ".git/", ".hg/", ".svn/", "node_modules/",
    "__pycache__/", ".venv/", "venv/", ".tox/", ".nox/", ".pytest_cache/", ".mypy_cache/",
    ".ruff_cache/", ".hypothesis/", ".cache/", ".coverage", "htmlcov/", "*.egg-info/", "*.pyc",
    "*.pyo", "*.swp", "*~", ".DS_Store", "/REVISION",
)

# Distributions the server stack needs in every app's lock file, and why.
REQUIRED_IN_LOCK = {
    "gunicorn": "the process manager",
    "uvicorn": "the ASGI server",
    "uvicorn-worker": "the gunicorn worker class uvicorn_worker.UvicornWorker",
    "uvloop": "the fast event loop: lock uvicorn[standard], not plain uvicorn",
    "httptools": "the fast HTTP parser: lock uvicorn[standard], not plain uvicorn",
    "setproctitle": "readable process titles (gunicorn: master [APP])",
}

# With gunicorn's own ASGI worker (worker_class = "asgi"), what its lock needs.
REQUIRED_FOR_GUNICORN_ASGI = {
    "gunicorn": "the process manager and, since 25.1, its stable ASGI worker",
    "uvloop": "the fast event loop the worker runs (asgi_loop)",
    "setproctitle": "readable process titles (gunicorn: master [APP])",
}
GUNICORN_ASGI_SINCE = (25, 1)

_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def _git_files(app_dir: Path) -> list[str] | None:
    """The files git tracks under `app_dir` (None: not in a git work tree)."""
    try:
        listed = subprocess.run(["git", "-C", str(app_dir), "ls-files", "-z", "--cached"],
                                capture_output=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]


def source_commit(app_dir: Path) -> str | None:
    """The git commit the release comes from, "+dirty" when tracked files
    under `app_dir` differ from it (None: not in a git work tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(app_dir), *args], capture_output=True, text=True,
                              timeout=60, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def release_files(app_dir: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """The files of a release, relative to app_dir, in a stable order.

    From a git work tree, the files git tracks (as they are in the work tree);
    otherwise every file but those the app's .gitignore names. Never what
    ALWAYS_EXCLUDED or `exclude` (gitignore patterns, the release_exclude
    setting) match.
    """
    patterns = [*ALWAYS_EXCLUDED, *exclude]
    tracked = _git_files(app_dir)
    if tracked is None:
        ignore = app_dir / ".gitignore"
        patterns += ignore.read_text().splitlines() if ignore.is_file() else []
        tracked = [str(p.relative_to(app_dir)) for p in app_dir.rglob("*")]
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    return sorted(Path(name) for name in tracked
                  if not spec.match_file(name) and (app_dir / name).is_file())


def digest(app_dir: Path, lock_file: Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over every release file (path and bytes) and the release's virtualenv."""
    sha = hashlib.sha256()
    for rel in release_files(app_dir, exclude):
        sha.update(str(rel).encode() + b"\0" + (app_dir / rel).read_bytes() + b"\0")
    sha.update(b"venv\0" + venv_id(lock_file).encode())
    return sha.hexdigest()


def release_id(app_dir: Path, lock_file: Path, exclude: tuple[str, ...] = ()) -> str:
    """What will run: the app's files and the virtualenv (lock + worker module)."""
    return digest(app_dir, lock_file, exclude)[:12]


# asgi-fleet's modules, installed into every app virtualenv: the worker classes
# (uvicorn's worker draining, the default, and gunicorn's own ASGI worker
# draining) and the master's hook that reloads one worker at a time.
WORKER_MODULE = "asgi_fleet_worker"
WORKER_SOURCE = Path(__file__).resolve().parent / "worker.py"
WORKER_MODULES = {WORKER_MODULE: WORKER_SOURCE, "asgi_fleet_gasgi": WORKER_SOURCE.with_name("gasgi_worker.py"),
                  "asgi_fleet_roll": WORKER_SOURCE.with_name("roll.py")}


def venv_id(lock_file: Path) -> str:
    """Virtualenvs are keyed by their lock and asgi-fleet's worker modules:
    releases that share both share a virtualenv."""
    sha = hashlib.sha256(lock_file.read_bytes())
    for source in WORKER_MODULES.values():
        sha.update(source.read_bytes())
    return sha.hexdigest()[:12]


def release_tarball(app_dir: Path, exclude: tuple[str, ...] = ()) -> bytes:
    """A reproducible gzipped tarball of the release files (fixed owner, mode,
    mtime; readable by the owner and the group only: the host makes them
    root's and the app group's)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel in release_files(app_dir, exclude):
            data = (app_dir / rel).read_bytes()
            info = tarfile.TarInfo(str(rel))
            info.size = len(data)
            info.mode = 0o640
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def locked_versions(lock_text: str) -> dict[str, str]:
    """{normalized distribution name: version} for every `name==version` line."""
    versions = {}
    for line in lock_text.splitlines():
        match = _LOCK_LINE.match(line)
        if match:
            versions[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return versions


def lock_problems(lock_text: str, lock_name: str, worker_class: str = "") -> list[str]:
    """What is wrong with a lock file for asgi-fleet and `worker_class` (empty when fine)."""
    problems = []
    versions = locked_versions(lock_text)
    gunicorn_asgi = runs_gunicorns_asgi(worker_class)
    for name, why in (REQUIRED_FOR_GUNICORN_ASGI if gunicorn_asgi else REQUIRED_IN_LOCK).items():
        if name not in versions:
            problems.append(f"app_lock={lock_name!r}: does not pin {name} ({why})")
    if gunicorn_asgi and "gunicorn" in versions:
        numbers = re.findall(r"\d+", versions["gunicorn"])[:2]
        if tuple(int(n) for n in numbers) < GUNICORN_ASGI_SINCE:
            problems.append(f"app_lock={lock_name!r}: pins gunicorn {versions['gunicorn']}; worker_class "
                            f"{worker_class!r} needs gunicorn {'.'.join(map(str, GUNICORN_ASGI_SINCE))} or later")
    if "--hash=" not in lock_text:
        problems.append(f"app_lock={lock_name!r}: has no --hash lines; generate it with hashes (make lock)")
    return problems


def parse_history(text: str) -> list[str]:
    """Release ids in the order they were activated (a line "EPOCH RELEASE_ID"
    each; a line "EPOCH RELEASE_ID failed" marks a rollback away from it)."""
    return [line.split()[1] for line in text.splitlines() if len(line.split()) == 2]


def failed_releases(text: str) -> set[str]:
    """Releases whose last word in the history is a rollback away from them."""
    last = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            last[parts[1]] = parts[2:] == ["failed"]
    return {release for release, failed in last.items() if failed}


def previous_release(history: list[str], current: str | None,
                     failed: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The release that ran before `current`: what a rollback goes back to
    (never one that failed its gate and was rolled back)."""
    seen_current = False
    for release in reversed(history):
        if release == current:
            seen_current = True
        elif seen_current and release not in failed:
            return release
    return None


def releases_to_prune(history: list[str], present: list[str], current: str | None,
                      keep: int) -> list[str]:
    """Releases to delete so that `keep` remain: the most recently activated
    ones stay, and the running and previous releases are never deleted.
    Releases never activated (one that failed preflight) count as the oldest.
    """
    recency = {release: i for i, release in enumerate(history)}  # later = more recent
    ranked = sorted(present, key=lambda r: recency.get(r, -1), reverse=True)
    protected = {current, previous_release(history, current)} - {None}
    kept = [r for r in ranked if r in protected]
    for release in ranked:
        if len(kept) >= keep:
            break
        if release not in kept:
            kept.append(release)
    return [r for r in present if r not in kept]


@dataclass(frozen=True)
class ReleasesState:
    """An app's releases on a host, as the agent reports them (agent_state.AppState.releases)."""

    current: str | None
    history: list[str]
    releases: dict[str, str]  # release id -> its venv dir
    venvs: list[str]
    failed: frozenset[str] = frozenset()  # releases an activation rolled back from

    def activated(self, release_id: str) -> ReleasesState:
        """The releases as they are once `release_id` is activated (the agent
        records a switch in the history, not a re-activation)."""
        if self.current == release_id:
            return self
        return replace(self, current=release_id, history=[*self.history, release_id])


def venvs_to_prune(state: ReleasesState, kept_releases: list[str]) -> list[str]:
    """Virtualenvs that no kept release links to."""
    used = {state.releases[r].rstrip("/").rsplit("/", 1)[-1] for r in kept_releases
            if r in state.releases}
    return [v for v in state.venvs if v not in used]


def to_prune(state: ReleasesState, keep: int) -> tuple[list[str], list[str]]:
    """(releases, virtualenvs) to delete so that `keep` releases remain
    (releases_to_prune), with the virtualenvs no remaining release uses."""
    doomed = releases_to_prune(state.history, list(state.releases), state.current, keep)
    return doomed, venvs_to_prune(state, [r for r in state.releases if r not in doomed])
