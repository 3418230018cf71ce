"""The verification suite's reading of live processes, on captured samples."""

import pytest

from asgi_fleet.verify import (
    fast_stack, journal_alarms, module_file_patterns, recognised_worker, seconds, worker_in_stack,
)

UVICORN_WORKER_STACK = """\
Process 2201: gunicorn: worker [hello]
Python v3.11.2 (/usr/bin/python3.11)

Thread 2201 (idle): "MainThread"
    run (/srv/hello/venvs/39443187d4c5/lib/python3.11/site-packages/uvicorn/server.py:67)
    run (/usr/lib/python3.11/asyncio/runners.py:118)
    run (/srv/hello/venvs/39443187d4c5/lib/python3.11/site-packages/uvicorn_worker/_workers.py:122)
    init_process (/srv/hello/venvs/39443187d4c5/lib/python3.11/site-packages/gunicorn/workers/base.py:150)
"""

SYNC_STACK = """\
Thread 2301 (idle): "MainThread"
    wait (/srv/hello/venvs/x/lib/python3.11/site-packages/gunicorn/workers/sync.py:37)
    run_for_one (/srv/hello/venvs/x/lib/python3.11/site-packages/gunicorn/workers/sync.py:79)
"""

DEPRECATED_STACK = """\
    run (/srv/hello/venvs/x/lib/python3.11/site-packages/uvicorn/workers.py:106)
"""

MAPS_FAST = """\
7f1c1e000000-7f1c1e0a0000 r--p 00000000 fd:01 1 /srv/hello/venvs/x/lib/python3.11/site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so
7f1c1f000000-7f1c1f010000 r--p 00000000 fd:01 2 /srv/hello/venvs/x/lib/python3.11/site-packages/httptools/parser/parser.cpython-311-x86_64-linux-gnu.so
"""


def test_module_file_patterns():
    assert module_file_patterns("uvicorn_worker.UvicornWorker") == ("/uvicorn_worker.py", "/uvicorn_worker/")
    assert module_file_patterns("uvicorn.workers.UvicornWorker") == ("/uvicorn/workers.py", "/uvicorn/workers/")


def test_the_configured_worker_is_found_in_its_stack():
    assert worker_in_stack(UVICORN_WORKER_STACK, "uvicorn_worker.UvicornWorker")
    assert not worker_in_stack(SYNC_STACK, "uvicorn_worker.UvicornWorker")
    assert not worker_in_stack(DEPRECATED_STACK, "uvicorn_worker.UvicornWorker")
    assert worker_in_stack(DEPRECATED_STACK, "uvicorn.workers.UvicornWorker")


@pytest.mark.parametrize("stack, name", [
    (UVICORN_WORKER_STACK, "uvicorn_worker.UvicornWorker"),
    (SYNC_STACK, "gunicorn's sync worker"),
    (DEPRECATED_STACK, "the deprecated uvicorn.workers.UvicornWorker"),
    ("nothing useful", "an unrecognised worker"),
])
def test_recognised_worker(stack, name):
    assert recognised_worker(stack) == name


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
