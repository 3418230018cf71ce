"""The per-host deploy lock: who holds it, and when a new run may take it over.

A run that dies (Ctrl-C, a CI timeout, a dropped laptop) leaves its lock on
every host it reached. The next run takes such a lock over only when it is
sure the holder is gone, and never while an activation of the old run is
still running on the host (activation runs detached from the connection, as
a transient systemd unit, so it finishes or rolls back by itself).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Holder:
    """What a lock file says: "RUN_ID CONTROLLER PID EPOCH"."""

    run_id: str
    controller: str
    pid: int
    since: int
    text: str

    def describe(self, now: float) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return (f"run {self.run_id} from {self.controller} (pid {self.pid}), "
                f"since {when} ({int(now - self.since)} s ago)")


def parse_holder(text: str) -> Holder | None:
    parts = text.split()
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return Holder(parts[0], parts[1], int(parts[2]), int(parts[3]), text.strip())


@dataclass(frozen=True)
class LockAnswer:
    """What the host answered to an attempt to take its lock."""

    acquired: bool
    holder: Holder | None = None
    holder_text: str = ""
    activating: tuple[str, ...] = ()  # activation units of any run still running
    last_words: tuple[str, ...] = ()  # the last line each app's last activation logged


def parse_lock_answer(doc: dict) -> LockAnswer:
    """Read the agent's answer to `lock take` (asgi_fleet/onhost/agent.py)."""
    held = doc.get("holder") or ""
    return LockAnswer(doc.get("outcome") == "acquired", parse_holder(held), held,
                      tuple(doc.get("activating", ())),
                      tuple(f"{app}: {line}" for app, line in sorted(doc.get("last_words", {}).items())))


def stale_reason(holder: Holder, *, now: float, controller: str, pid_alive: Callable[[int], bool],
                 max_age: int, break_lock: str | None, activating: tuple[str, ...]) -> str | None:
    """Why `holder`'s lock may be taken over, or None while it may still be live."""
    if activating:  # the old run's activation still runs: let it finish or roll back
        return None
    if break_lock and break_lock == holder.run_id:
        return f"break_lock={break_lock} names it"
    if holder.controller == controller and not pid_alive(holder.pid):
        return f"its pyinfra process (pid {holder.pid}) on this controller is gone"
    if now - holder.since > max_age:
        return f"it is older than deploy_lock_max_age ({max_age} s)"
    return None
