"""Calm reload: a gunicorn ``on_reload`` hook that replaces workers one at a time.

asgi-fleet copies this file into each host's virtualenv
(``site-packages/asgi_fleet_roll.py``); with ``reload_workers = "one_at_a_time"``
gunicorn.conf.py sets ``on_reload`` to :func:`roll_workers`. It imports only
the standard library and gunicorn.

Why
---
On HUP, gunicorn re-reads its config (and so re-resolves ``chdir``, the
``current`` symlink), then forks ``workers`` new workers at once and stops the
old ones. For a moment N new processes import the app and warm up beside N
old ones draining, all on the host's shared CPUs: p99 during a reload was
2.4-2.8x the p99 before it (bench/README.md). uvicorn 0.51+ restarts its own
workers one at a time for the same reason.

How
---
gunicorn calls ``on_reload`` once the new config is in place and before it
forks. This hook then, for each old worker, oldest first:

1. forks one new worker (from the new config, in the new release);
2. waits until it serves: its first heartbeat. uvicorn's worker sends it from
   its main loop, which starts once the app's lifespan startup is done and
   its sockets accept; gunicorn's ASGI worker likewise once it listens;
3. stops the old worker (SIGTERM: it drains) and waits until it has left,
   for at most ``keepalive`` + 1 s: by then its idle keep-alive connections
   have timed out. One still busy with a long request or an open WebSocket
   (``websocket_drain_seconds``) finishes beside the new workers, bounded by
   ``graceful_timeout``, as after gunicorn's own HUP: waiting for it would
   make the roll N times that long for nothing.

So the master's serving workers never number fewer than N nor more than
N + 1 (only old workers still draining a long request or a WebSocket can
add to the count). It then leaves gunicorn nothing to do: ``workers`` is 0
for the rest of this reload (it forks none), and the new workers' ages are
set just above the age counter as it was before the roll, so the reload's
final wait (for the workers older than the reload) waits only for old
workers still draining, and later workers stay younger.

Each new worker imports the app at the lowest CPU priority (nice 19, from
gunicorn's ``post_fork`` hook, :func:`boot_behind_the_old`) and returns to
its own before it serves (``post_worker_init``, :func:`serve_at_full_priority`):
the old workers serving beside it on the same CPUs come first, so a request
waits on them, not behind an import. It does so only where it can come back
(the unit's ``LimitNICE``) and the sandbox lets it (``setpriority``), and for
at most a quarter of ``timeout``: on CPUs the old workers keep busy, a worker
at nice 19 gets almost none, and its import goes on at its own priority
rather than run into ``timeout`` and end the roll.

A new worker that fails to boot, or does not serve within ``timeout``, ends
the roll: it is stopped and the old workers not replaced yet keep serving,
where a plain HUP would halt gunicorn ("Worker failed to boot") and leave
nothing serving until systemd restarts it. The deploy's health gate then
sees workers off the new release and rolls the host back.

While it rolls, the master handles no other signal (a stop waits for the
roll); each step is bounded by ``timeout`` and ``graceful_timeout``.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
from typing import Any

from gunicorn.errors import HaltServer

__all__ = ["boot_behind_the_old", "preload_libraries", "roll_workers", "serve_at_full_priority"]

POLL_SECONDS = 0.02
BOOT_NICE = 19  # a new worker's CPU priority while it imports the app beside old workers
ROLLING = "asgi_fleet_rolling"  # set on the arbiter while it rolls: its new workers boot behind the old
BOOT_PRIORITY = "asgi_fleet_boot_priority"  # on a worker that booted behind: the priority it returns to
BOOT_BEHIND = "asgi_fleet_boot_behind"  # on such a worker: the timer that ends its time behind
CAP_SYS_NICE = 23  # linux/capability.h


def preload_libraries(names: list[str]) -> None:
    """Import each of the libraries `names` that is installed, here in the
    master (gunicorn.conf.py calls this as the master reads it): every worker
    it forks has them loaded already and imports only the app's own code, so
    a new worker takes a fraction of the CPU it would to boot. Only code
    installed with Python or in the virtualenv qualifies: the app's own code,
    imported here, would stay what it was at start across every reload. So
    each name's top-level package is found, not imported, and checked first
    (importing `a.b` imports `a`)."""
    import importlib
    import importlib.util
    import sysconfig

    installed = tuple({os.path.realpath(sysconfig.get_path(key)) + os.sep
                       for key in ("stdlib", "platstdlib", "purelib", "platlib")})

    def refuse_unless_installed(name: str, places: list[str]) -> None:
        for place in places:
            if not os.path.realpath(place).startswith(installed):
                raise RuntimeError(f"preload_libraries: {name} is not a library installed in the virtualenv "
                                   f"(it is {place}): the master would serve that code across reloads")

    for name in names:
        top = importlib.util.find_spec(name.partition(".")[0])
        if top is None:
            continue  # not installed here: the workers import it as they would anyway, if at all
        if top.has_location or top.submodule_search_locations:  # else built into the interpreter
            refuse_unless_installed(name, [top.origin] if top.has_location else list(top.submodule_search_locations))
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue  # the package is installed, not this part of it
        if getattr(module, "__file__", None):
            refuse_unless_installed(name, [module.__file__])


def roll_workers(arbiter: Any) -> None:
    """Replace each of `arbiter`'s workers by a new one, one at a time (and
    reach the new config's worker count on the way: a surplus old worker is
    only stopped, a missing one only started)."""
    cfg, log = arbiter.cfg, arbiter.log
    age_before, want = arbiter.worker_age, arbiter.num_workers
    old = [pid for pid, _ in sorted(arbiter.WORKERS.items(), key=lambda item: item[1].age)]
    rolled = []
    setattr(arbiter, ROLLING, True)
    try:
        for step in range(max(len(old), want)):
            if len(rolled) < want:
                new_pid = arbiter.spawn_worker()
                new = arbiter.WORKERS[new_pid]
                problem = _wait_until_serving(arbiter, new_pid, new)
                if problem:
                    log.error("reload one at a time: new worker %s %s; the roll stops after %d of %d, "
                              "the old workers left keep serving", new_pid, problem, len(rolled), want)
                    break
                rolled.append(new)
                log.info("reload one at a time: worker %s serves (%d of %d)", new_pid, len(rolled), want)
            if step < len(old):
                _retire(arbiter, old[step], cfg.keepalive + 1)
    finally:
        setattr(arbiter, ROLLING, False)
    # gunicorn's reload forks `workers` after this hook and then waits for
    # every worker older than its age counter: neither is wanted now.
    cfg.set("workers", 0)
    arbiter.worker_age = age_before
    for place, worker in enumerate(rolled, 1):
        worker.age = age_before + place / (len(rolled) + 1)


def boot_behind_the_old(arbiter: Any, worker: Any) -> None:
    """gunicorn's ``post_fork``, in a new worker: one that a roll starts
    imports the app at nice BOOT_NICE. Not where it could not return to its
    priority (the unit's LimitNICE) or may not change it (the sandbox)."""
    if not getattr(arbiter, ROLLING, False):
        return
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if not _may_return_to(before):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, BOOT_NICE)
    except OSError:  # the sandbox's system call filter
        return
    setattr(worker, BOOT_PRIORITY, before)
    behind = threading.Timer(worker.cfg.timeout / 4, serve_at_full_priority, args=(worker,))
    behind.daemon = True
    setattr(worker, BOOT_BEHIND, behind)
    behind.start()


def _may_return_to(priority: int) -> bool:
    """Whether this process may raise its priority back to `priority` (the
    kernel's can_nice: RLIMIT_NICE, else CAP_SYS_NICE)."""
    limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
    if limit == resource.RLIM_INFINITY or 20 - priority <= limit:
        return True
    try:
        with open("/proc/self/status") as status:
            effective = next(line.split()[1] for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    return bool(int(effective, 16) >> CAP_SYS_NICE & 1)


def serve_at_full_priority(worker: Any) -> None:
    """gunicorn's ``post_worker_init``: the app is imported; the worker (every
    thread of it: Linux keeps a priority per thread) returns to its priority
    before it serves. Also the end of its time behind, if that comes first."""
    before = getattr(worker, BOOT_PRIORITY, None)
    if before is None:
        return
    behind = getattr(worker, BOOT_BEHIND, None)
    if behind is not None and behind is not threading.current_thread():
        behind.cancel()
    for thread in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(thread), before)
        except OSError as error:
            worker.log.warning("reload one at a time: thread %s of worker %s stays at nice %s: %s",
                               thread, os.getpid(), BOOT_NICE, error)


def _wait_until_serving(arbiter: Any, pid: int, worker: Any) -> str:
    """Wait for the new worker's first heartbeat ("" once it serves), or say
    why it will not serve (it is then stopped and reaped)."""
    born = worker.tmp.last_update()
    deadline = time.monotonic() + arbiter.cfg.timeout
    while time.monotonic() < deadline:
        if not _reap(arbiter, pid) or pid not in arbiter.WORKERS:
            return "exited before it served"
        if worker.tmp.last_update() != born:
            return ""
        time.sleep(POLL_SECONDS)
    arbiter.kill_worker(pid, signal.SIGKILL)
    _wait_gone(arbiter, pid, 5)
    return f"did not serve within timeout ({arbiter.cfg.timeout}s)"


def _retire(arbiter: Any, pid: int, bound: float) -> None:
    """SIGTERM an old worker and wait (at most `bound` seconds) until it has
    left; one still draining then goes on doing so (its own bound is
    graceful_timeout, and gunicorn's reload waits for it after this hook)."""
    if pid not in arbiter.WORKERS:
        return
    arbiter.log.info("reload one at a time: stopping old worker %s", pid)
    arbiter.kill_worker(pid, signal.SIGTERM)
    if not _wait_gone(arbiter, pid, bound):
        arbiter.log.info("reload one at a time: old worker %s still draining after %ss; "
                         "it finishes beside the new ones", pid, bound)


def _wait_gone(arbiter: Any, pid: int, bound: float) -> bool:
    deadline = time.monotonic() + bound
    while pid in arbiter.WORKERS:
        _reap(arbiter, pid)
        if pid not in arbiter.WORKERS:
            break
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def _reap(arbiter: Any, pid: int) -> bool:
    """gunicorn's own reaping; False when it was `pid` that failed to boot
    (gunicorn would halt the whole server for that: here it only ends the roll)."""
    worker = arbiter.WORKERS.get(pid)
    try:
        arbiter.reap_workers()
    except HaltServer:
        if pid in arbiter.WORKERS or worker is None:
            raise  # another worker failed to boot: gunicorn's own verdict stands
        worker.tmp.close()
        return False
    return True
