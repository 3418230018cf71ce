"""asgi_fleet/roll.py: a reload that replaces the workers one at a time.

A real gunicorn master on a loopback port with two of asgi-fleet's uvicorn
workers, its config setting `on_reload` as the template does. The app takes
0.3 s in its lifespan startup and leaves a mark when it is done, so the test
sees which workers serve; it is sampled every 10 ms while the master reloads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from unit_helpers import free_port
from asgi_fleet import roll, worker

WORKERS = 2

APP = '''
import asyncio, os, pathlib

VERSION = pathlib.Path("version.txt").read_text().strip()
if VERSION == "broken":
    raise RuntimeError("this release cannot start")
pathlib.Path(os.environ["MARKS"], f"nice-{os.getpid()}").write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))
import sys
pathlib.Path(os.environ["MARKS"], f"had-{os.getpid()}").write_text(" ".join(
    name for name in ("fractions",) if name in sys.modules))  # before the app imports it
import fractions  # a library the app uses
if VERSION == "slow-import":  # longer than a quarter of timeout
    import time
    time.sleep(1.5)
    pathlib.Path(os.environ["MARKS"], f"nice-after-{os.getpid()}").write_text(
        str(os.getpriority(os.PRIO_PROCESS, 0)))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(0.3)
                pathlib.Path(os.environ["MARKS"], str(os.getpid())).write_text(VERSION)
                await send({"type": "lifespan.startup.complete"})
            else:  # an old worker stays a moment: samples taken on a busy machine see it
                await asyncio.sleep(0.5)
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{VERSION} {os.getpid()} {os.getpriority(os.PRIO_PROCESS, 0)}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

CONFIG = '''
workers = {workers}
worker_class = "asgi_fleet_worker.DrainingUvicornWorker"
bind = ["127.0.0.1:{port}"]
timeout = {timeout}
graceful_timeout = 5
keepalive = 1
'''
ROLL = ("from asgi_fleet_roll import roll_workers as on_reload\n"
        "from asgi_fleet_roll import boot_behind_the_old as post_fork, serve_at_full_priority as post_worker_init\n")




class Master:
    def __init__(self, root: Path, one_at_a_time: bool, may_nice: bool = True, preload: tuple[str, ...] = ()):
        self.root, self.port, self.marks = root, free_port(), root / "marks"
        self.one_at_a_time, self.preload = one_at_a_time, preload
        self.marks.mkdir(parents=True)
        (root / "app.py").write_text(APP)
        (root / "version.txt").write_text("v1")
        shutil.copy(worker.__file__, root / "asgi_fleet_worker.py")  # their names on a host
        shutil.copy(roll.__file__, root / "asgi_fleet_roll.py")
        self.configure(WORKERS)
        # may_nice=False: without CAP_SYS_NICE, and RLIMIT_NICE as a unit without LimitNICE leaves it
        without = [] if may_nice else ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice"]
        self.process = subprocess.Popen(
            [*without, sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--no-control-socket",
             "app:app"],
            cwd=root, env=os.environ | {"PYTHONPATH": str(root), "MARKS": str(self.marks)},
            stdout=subprocess.DEVNULL, stderr=open(root / "gunicorn.log", "w"))
        self.wait_for(lambda: self.serving() == {"v1"} and len(self.workers()) == WORKERS, 30)

    def configure(self, workers: int, timeout: int = 20):
        (self.root / "gunicorn.conf.py").write_text(
            CONFIG.format(workers=workers, port=self.port, timeout=timeout)
            + (ROLL if self.one_at_a_time else "")
            + ("from asgi_fleet_roll import preload_libraries as _preload_libraries\n"
               f"_preload_libraries({list(self.preload)!r})\n" if self.preload else ""))

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def started(self, pid: int) -> str | None:
        try:
            return (self.marks / str(pid)).read_text()
        except FileNotFoundError:
            return None

    def import_nice(self, pid: int) -> str:
        return (self.marks / f"nice-{pid}").read_text()

    def had_loaded(self, pid: int) -> set[str]:
        """Which libraries the worker had when it began to import the app."""
        return set((self.marks / f"had-{pid}").read_text().split())

    def serving(self) -> set[str]:
        return {self.started(pid) for pid in self.workers()}

    def answer(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as response:
            return response.read().decode()

    def wait_for(self, done, bound: float):
        deadline = time.monotonic() + bound
        while not done():
            assert self.process.poll() is None, (self.root / "gunicorn.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (self.root / "gunicorn.log").read_text()[-3000:]
            time.sleep(0.05)

    def reload_to(self, version: str, until, bound: float = 30) -> list[tuple[int, int]]:
        """HUP onto `version`; every 10 ms until `until()` (at most `bound` s):
        (worker processes, of them started and serving)."""
        (self.root / "version.txt").write_text(version)
        self.process.send_signal(signal.SIGHUP)
        samples, deadline = [], time.monotonic() + bound
        while time.monotonic() < deadline:
            pids = self.workers()
            samples.append((len(pids), sum(self.started(pid) is not None for pid in pids)))
            if until():
                return samples
            time.sleep(0.01)
        raise AssertionError(f"not done within {bound}s: {samples[-5:]}\n"
                             + (self.root / "gunicorn.log").read_text()[-3000:])

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def master(tmp_path):
    started = []

    def start(one_at_a_time: bool, **options) -> Master:
        started.append(Master(tmp_path / str(len(started)), one_at_a_time, **options))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def on_v2(m: Master):
    return lambda: m.serving() == {"v2"} and len(m.workers()) == WORKERS


def test_one_at_a_time_keeps_n_workers_serving_and_never_more_than_n_plus_one(master):
    m = master(one_at_a_time=True)
    old = set(m.workers())
    samples = m.reload_to("v2", on_v2(m))
    assert max(count for count, _ in samples) == WORKERS + 1, samples  # it did start new ones
    assert min(count for count, _ in samples) >= WORKERS, samples
    assert min(serving for _, serving in samples) >= WORKERS, samples  # old ones stop after new ones serve
    assert not old & set(m.workers())
    assert m.answer().startswith("v2 ")
    # the reload is over, and the master rolls again on the next one
    m.reload_to("v3", lambda: m.serving() == {"v3"} and len(m.workers()) == WORKERS)


def test_all_at_once_is_gunicorns_own_reload(master):
    """The sampler sees gunicorn's own HUP for what it is: 2N workers at once."""
    m = master(one_at_a_time=False)
    samples = m.reload_to("v2", on_v2(m))
    assert max(count for count, _ in samples) == 2 * WORKERS, samples


def test_a_new_worker_that_cannot_boot_ends_the_roll_and_the_old_workers_keep_serving(master):
    m = master(one_at_a_time=True)
    old = set(m.workers())
    log = m.root / "gunicorn.log"
    m.reload_to("broken", lambda: "the roll stops after 0 of 2" in log.read_text())
    assert m.process.poll() is None  # a plain HUP halts gunicorn here: "Worker failed to boot"
    assert set(m.workers()) == old and m.serving() == {"v1"}
    assert {m.answer().split()[0] for _ in range(10)} == {"v1"}
    # fixed: the next reload rolls onto it
    m.reload_to("v2", on_v2(m))


@pytest.mark.parametrize("count", [WORKERS + 1, WORKERS - 1])
def test_a_new_worker_count_is_reached_one_worker_at_a_time(master, count):
    m = master(one_at_a_time=True)
    m.configure(count)
    samples = m.reload_to("v2", lambda: m.serving() == {"v2"} and len(m.workers()) == count)
    assert max(n for n, _ in samples) <= max(count, WORKERS) + 1, samples  # never two new ones at once
    assert min(serving for _, serving in samples) >= min(count, WORKERS), samples


@pytest.mark.skipif(os.geteuid() != 0, reason="CAP_SYS_NICE stands in for the unit's LimitNICE=+0")
@pytest.mark.parametrize("may_nice, import_nice", [(True, "19"), (False, "0")])
def test_a_rolled_worker_imports_the_app_behind_the_old_ones_and_serves_at_its_own_priority(
        master, may_nice, import_nice):
    """A new worker of a roll imports the app at nice 19 and serves at 0 where
    it may come back (the unit's LimitNICE=+0 on a host, CAP_SYS_NICE here);
    where it may not, it never leaves 0. The e2e test sees it on the fleet."""
    m = master(one_at_a_time=True, may_nice=may_nice)
    assert {m.import_nice(pid) for pid in m.workers()} == {"0"}  # a start is not a roll: nothing serves beside
    m.reload_to("v2", on_v2(m))
    assert {m.import_nice(pid) for pid in m.workers()} == {import_nice}
    for pid in m.workers():  # every thread of it (a priority is a thread's)
        for task in Path(f"/proc/{pid}/task").iterdir():
            assert (task / "stat").read_text().rsplit(")", 1)[1].split()[16] == "0", (pid, task.name)
    assert {m.answer().split()[2] for _ in range(6)} == {"0"}


@pytest.mark.skipif(os.geteuid() != 0, reason="CAP_SYS_NICE stands in for the unit's LimitNICE=+0")
def test_a_worker_is_behind_the_old_ones_for_at_most_a_quarter_of_timeout(master):
    """An import that takes longer (here 1.5 s, against a timeout of 4 s) goes
    on at the worker's own priority: on busy CPUs, nice 19 would get it almost
    no CPU, and the roll would end at `timeout`."""
    m = master(one_at_a_time=True)
    m.configure(WORKERS, timeout=4)
    m.reload_to("slow-import", lambda: m.serving() == {"slow-import"} and len(m.workers()) == WORKERS)
    for pid in m.workers():
        assert m.import_nice(pid) == "19"
        assert (m.marks / f"nice-after-{pid}").read_text() == "0"  # before post_worker_init


def test_preloaded_libraries_are_loaded_in_every_worker_before_it_imports_the_app(master):
    """The master imports them as it reads its config (at start and on every
    reload); the workers it forks have them. One not installed is skipped."""
    m = master(one_at_a_time=True, preload=("fractions", "not_installed_anywhere", "sys"))
    assert {frozenset(m.had_loaded(pid)) for pid in m.workers()} == {frozenset({"fractions"})}
    m.reload_to("v2", on_v2(m))
    assert {frozenset(m.had_loaded(pid)) for pid in m.workers()} == {frozenset({"fractions"})}
    plain = master(one_at_a_time=True)
    assert {frozenset(plain.had_loaded(pid)) for pid in plain.workers()} == {frozenset()}


def test_the_apps_own_code_is_never_preloaded(tmp_path):
    """A module of the release, imported by the master, would be served
    unchanged across every reload: the config that asks for it fails."""
    (tmp_path / "app.py").write_text("")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "asgi_fleet_roll.py").write_text(Path(roll.__file__).read_text())
    for names, found in ((["app"], tmp_path / "app.py"),
                         (["fractions", "shop.models"], tmp_path / "shop" / "__init__.py")):
        run = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom asgi_fleet_roll import preload_libraries as p\n"
                                   f"try:\n    p({names!r})\nexcept RuntimeError as e:\n    print(e, file=sys.stderr)\n"
                                   "print(sorted(m for m in ('app', 'shop') if m in sys.modules))"],
            cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=60)
        assert run.stdout == "[]\n", run.stderr  # refused before anything of the release was imported
        assert (f"preload_libraries: {names[-1]} is not a library installed in the virtualenv (it is {found}): "
                "the master would serve that code across reloads") in run.stderr
