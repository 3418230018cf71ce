"""Change classification: how to make a host run what was just deployed.

The decision compares what the running master really uses (its virtualenv,
its workers' release directories) with what was deployed, plus which managed
files changed in this run. Each kind of change gets the gentlest mechanism
that really applies it (see ../shared/notes/gunicorn-uvicorn.md):

- HUP (`systemctl reload`) re-reads gunicorn.conf.py and boots fresh workers
  that import the app from `current`: enough for config and code. The master
  PID stays.
- A new virtualenv, a changed unit or environment file need a new master:
  `systemctl restart`. systemd keeps the listening socket, so connections
  queue in the backlog instead of being refused.
- A changed socket unit (a new bind) means re-creating the socket itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgi_fleet.settings import Settings

NONE, START, RELOAD, RESTART, REBIND = "none", "start", "reload", "restart", "rebind"

# Files a deploy manages, by the mechanism a change to them needs.
NEEDS_REBIND = {"socket_unit"}
NEEDS_RESTART = {"service_unit", "env", "venv"}  # "venv": rebuilt in place
NEEDS_RELOAD = {"config", "secrets"}  # gunicorn.conf.py loads the secrets on every HUP
NEEDS_UNIT_RELOAD = {"service_unit", "socket_unit"}  # systemd re-reads units on daemon-reload


@dataclass(frozen=True)
class RunningMaster:
    """What the running gunicorn master is really using."""

    pid: int
    venv: str  # the virtualenv of the master's interpreter
    worker_releases: tuple[str, ...] = field(default=())  # each worker's cwd (a release dir)
    slow_workers: tuple[int, ...] = field(default=())  # workers without uvloop or httptools loaded


def parse_running_master(output: str) -> RunningMaster | None:
    """Parse commands.running_master's output, as verify reads it (None when no master runs)."""
    pid = venv = None
    workers, slow = [], []
    for line in output.splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "pid":
            pid = int(rest)
        elif key == "site" and "/lib/" in rest:  # VENV/lib/python3.X/site-packages/
            venv = rest.rsplit("/lib/", 1)[0]
        elif key == "worker":
            _, _, cwd = rest.partition(" ")
            workers.append(cwd)
        elif key == "slow":
            slow.append(int(rest))
    if not pid or venv is None:
        return None
    return RunningMaster(pid=pid, venv=venv, worker_releases=tuple(workers), slow_workers=tuple(slow))


def activation_kind(master: RunningMaster | None, *, venv: str, release_dir: str,
                    workers: int, changed: set[str]) -> str:
    """The activation a host needs: none, start, reload, restart or rebind.

    A HUP also restores the configured worker count (after a TTOU, say), and
    boots workers that load uvloop and httptools again, so a master with the
    wrong number of workers, or with workers that fell back to asyncio/h11,
    gets one.
    """
    if master is None:
        return START
    if changed & NEEDS_REBIND:
        return REBIND
    # By id (the last part of the path), not by path: the kernel resolves a
    # worker's cwd and the master's maps, and srv_root may be a symlink.
    if _id(master.venv) != _id(venv) or changed & NEEDS_RESTART:
        return RESTART
    stale_code = any(_id(cwd) != _id(release_dir) for cwd in master.worker_releases)
    if (stale_code or len(master.worker_releases) != workers or master.slow_workers
            or changed & NEEDS_RELOAD):
        return RELOAD
    return NONE


def _id(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# templates/app.service.j2 sets TimeoutStopSec to graceful_timeout + this: the
# master's own graceful stop, then room for stragglers before SIGKILL.
STOP_MARGIN = 15


def stop_timeout(app: Settings) -> int:
    """The unit's TimeoutStopSec: how long stopping the old master may take."""
    return app.graceful_timeout + STOP_MARGIN


def activation_time_limit(app: Settings) -> int:
    """How long one host's activation may take before the controller gives up
    on it: a stop and a gate, twice (the rollback), with room to spare."""
    return 2 * (stop_timeout(app) + app.health_deadline) + 30

