"""The verification suite's reading of live processes, on captured samples."""

import pytest

from asgi_fleet.verify import (
    fast_stack, journal_alarms, module_file_patterns, recognised_worker, seconds, worker_in_stack,
)

SITE = "/srv/hello/venvs/39443187d4c5/lib/python3.11/site-packages"


def stack(defining, path, instance):
    """A worker's stack as `py-spy dump --locals --full-filenames` prints it."""
    return f"""\
Process 12364: gunicorn: worker [hello]
Python v3.11.2 (/usr/bin/python3.11)

Thread 12364 (idle): "MainThread"
    Runner.run (/usr/lib/python3.11/asyncio/runners.py:118)
        Arguments:
            self: <Runner at 0x7f4f35182390>
    {defining}.run ({SITE}/{path}:126)
        Arguments:
            self: <{instance} at 0x7f4f34eb6290>
    Worker.init_process ({SITE}/gunicorn/workers/base.py:146)
        Arguments:
            self: <cell at 0x7f4f34e8e260>
"""


UVICORN_WORKER_STACK = stack("UvicornWorker", "uvicorn_worker/_workers.py", "UvicornWorker")
DRAINING_STACK = stack("UvicornWorker", "uvicorn_worker/_workers.py", "DrainingUvicornWorker")
SYNC_STACK = stack("SyncWorker", "gunicorn/workers/sync.py", "SyncWorker")
DEPRECATED_STACK = stack("UvicornWorker", "uvicorn/workers.py", "UvicornWorker")

MAPS_FAST = """\
7f1c1e000000-7f1c1e0a0000 r--p 00000000 fd:01 1 /srv/hello/venvs/x/lib/python3.11/site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so
7f1c1f000000-7f1c1f010000 r--p 00000000 fd:01 2 /srv/hello/venvs/x/lib/python3.11/site-packages/httptools/parser/parser.cpython-311-x86_64-linux-gnu.so
"""


def test_module_file_patterns():
    assert module_file_patterns("uvicorn_worker.UvicornWorker") == ("/uvicorn_worker.py", "/uvicorn_worker/")
    assert module_file_patterns("uvicorn.workers.UvicornWorker") == ("/uvicorn/workers.py", "/uvicorn/workers/")


@pytest.mark.parametrize("dump, configured, runs_it", [
    (UVICORN_WORKER_STACK, "uvicorn_worker.UvicornWorker", True),
    (DRAINING_STACK, "asgi_fleet_worker.DrainingUvicornWorker", True),
    (DRAINING_STACK, "uvicorn_worker.UvicornWorker", False),
    (UVICORN_WORKER_STACK, "asgi_fleet_worker.DrainingUvicornWorker", False),
    (SYNC_STACK, "asgi_fleet_worker.DrainingUvicornWorker", False),
    (DEPRECATED_STACK, "uvicorn_worker.UvicornWorker", False),  # same class name, other module
    (DEPRECATED_STACK, "uvicorn.workers.UvicornWorker", True),
    ("Error: no such process", "uvicorn_worker.UvicornWorker", False),
])
def test_the_configured_worker_is_found_in_the_live_stack(dump, configured, runs_it):
    assert worker_in_stack(dump, configured) is runs_it


@pytest.mark.parametrize("dump, name", [
    (UVICORN_WORKER_STACK, "UvicornWorker (run() from uvicorn_worker/_workers.py)"),
    (DRAINING_STACK, "DrainingUvicornWorker (run() from uvicorn_worker/_workers.py)"),
    (SYNC_STACK, "gunicorn's sync worker"),
    (DEPRECATED_STACK, "the deprecated uvicorn.workers.UvicornWorker"),
    ("nothing useful", "an unrecognised worker"),
])
def test_recognised_worker(dump, name):
    assert recognised_worker(dump) == name


def test_fast_stack_reads_the_extensions_in_memory_maps():
    assert fast_stack(MAPS_FAST) == {"uvloop": True, "httptools": True}
    only_loop = MAPS_FAST.splitlines()[0]
    assert fast_stack(only_loop) == {"uvloop": True, "httptools": False}
    assert fast_stack("") == {"uvloop": False, "httptools": False}


def test_journal_alarms():
    journal = ("[2026-11-26 15:00:00 +0000] [12] [CRITICAL] WORKER TIMEOUT (pid:13)\n"
               "[INFO] Booting worker with pid: 14\n"
               "RuntimeWarning: coroutine 'handler' was never awaited\n")
    assert set(journal_alarms(journal)) == {"WORKER TIMEOUT", "was never awaited"}
    assert journal_alarms("[INFO] Listening at: unix:/run/x (12)\n") == {}


@pytest.mark.parametrize("text, value", [("40s", 40), ("1min 30s", 90), ("500ms", 0.5), ("infinity", float("inf"))])
def test_systemd_durations(text, value):
    assert seconds(text) == value
