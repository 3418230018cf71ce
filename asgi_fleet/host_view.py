"""The host as the deploy's decisions see it: the agent's `state`, read in one
round trip for every operation, and read again only once an operation has
changed the host.

Each operation that decides on the host is a `view_operation`: when the
deploy defines it (deploy.py runs before anything executes), it adds what it
will read to the host's request. So at execution the first read covers every
operation, and a re-run that changes nothing reads the host once.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Callable

import gevent
from pyinfra import host
from pyinfra.api import operation

from asgi_fleet.agent_state import HostState, agent_command, merge_request
from asgi_fleet.facts import AgentState
from asgi_fleet.onhost.agent import bare_state


# A read this young is as good as a new one to an operation that would read
# the host again before it acts: a master that dies just after either read is
# caught by the activation's own health gate all the same.
RECENT_SECONDS = 5


def predicting() -> bool:
    """Whether this is pyinfra's prepare pass, not its execution.

    pyinfra runs an operation's body twice: once before anything executes (to
    say what it would do; all --dry does) and once when it executes. What a
    rollout learns as it goes (which batch is drained, whether it halted, who
    failed, which lock it holds, which release is live to prune around) exists
    only at execution; before it, an operation says what it will decide on."""
    return not host.state.is_executing


class HostView:
    """One host's view (deploy.py makes one per host)."""

    def __init__(self, request: dict | None = None):
        self.request: dict = request or {}
        self.unseen: set[str] = set()  # operations (by hash) whose changes no other operation reads
        # ((changes then, request then), the state, time.monotonic() then)
        self._read: tuple[tuple[int, str], HostState, float] | None = None

    def watch(self, **needs) -> None:
        """Add to what the next read covers (agent_state.merge_request)."""
        self.request = merge_request(self.request, needs)

    def state(self) -> HostState:
        """The host's state: the last read, unless an operation changed the
        host or the request grew since."""
        key = self._key()
        if self._read is None or self._read[0] != key:
            found = host.get_fact(AgentState, request=key[1], install=not predicting())
            if found is None and predicting():  # predicting (--dry) on a host without python3 yet
                found = HostState(bare_state(self.request))
            if found is None:
                raise RuntimeError(f"{host.name}: python3 is missing, so the agent cannot run; "
                                   "the deploy lock's step installs it before any decision")
            self._keep(found, key)
        return self._read[1]

    def _key(self) -> tuple[int, str]:
        """What a read holds for: the host's changes so far, and the request."""
        return changes_so_far(host, self.unseen), json.dumps(self.request, sort_keys=True)

    def _keep(self, found: HostState, key: tuple[int, str] | None = None) -> None:
        self._read = (key or self._key(), found, time.monotonic())

    def read_with(self, doc: dict) -> None:
        """Take `doc`, the agent's state for this view's request read by
        another call (the deploy lock's), as this view's read."""
        self._keep(HostState(doc))

    def recent(self) -> bool:
        """Whether the last read still holds (no change, the same request) and
        is under RECENT_SECONDS old."""
        return (self._read is not None and self._read[0] == self._key()
                and time.monotonic() - self._read[2] < RECENT_SECONDS)

    def read_now(self, time_limit: int) -> HostState | None:
        """Read the state afresh, within `time_limit` (None: no answer in time).
        A fact would wait on a host that stopped answering: pyinfra bounds a
        command's output, not an SSH channel that never opens, and a fact
        swallows the timeout."""
        try:
            with gevent.Timeout(time_limit, TimeoutError):
                answered, output = host.run_shell_command(
                    agent_command("state", self.request), _sudo=bool(host.data.get("_sudo")),
                    _timeout=time_limit)
        except TimeoutError:
            return None
        found = HostState.parse("\n".join(output.stdout_lines)) if answered else None
        if found is not None:
            self._keep(found)
        return found


def changes_so_far(some_host, unseen: set[str] = frozenset()) -> int:
    """How many of this host's operations have run commands on it so far
    (not counting those in `unseen`)."""
    count = 0
    for op_hash in some_host.state.get_op_order():
        if op_hash in unseen:
            continue
        try:
            meta = some_host.state.get_op_data_for_host(some_host, op_hash).operation_meta
        except KeyError:
            continue
        if meta.is_complete() and meta.did_change():
            count += 1
    return count


def view_operation(reads: Callable[..., dict], seen_by_others: bool = True):
    """A pyinfra operation that decides on the HostView passed as `view`.
    `reads(**kwargs)` says what it reads (a part of the agent's request);
    that is added to the view when the deploy defines the operation.
    With `seen_by_others=False`, what it changes is read by no other
    operation (a check's own stamp), so its change does not send the
    operations after it back to the host for a new read."""
    def wrap(func):
        op = operation()(func)

        @functools.wraps(func)
        def define(*args, **kwargs):
            view = kwargs["view"]
            view.watch(**reads(**kwargs))
            meta = op(*args, **kwargs)
            if not seen_by_others:
                view.unseen.add(meta._hash)  # pyinfra's name for the operation, as in its op order
            return meta
        return define
    return wrap
