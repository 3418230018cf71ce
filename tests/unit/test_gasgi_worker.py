"""asgi_fleet/gasgi_worker.py: gunicorn's own ASGI worker, draining.

A real gunicorn master on a loopback port, one worker, and the race made
certain: a response has announced keep-alive when its worker is told to stop
(SIGTERM, what every old worker gets after a HUP), and the client sends its
next request on that connection as soon as the response ends.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from unit_helpers import free_port
from asgi_fleet import gasgi_worker

pytest.importorskip("uvloop")

APP = '''
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    if scope["path"] == "/slow":  # the headers go out with the first part of the body
        await send({"type": "http.response.body", "body": b"o", "more_body": True})
        await asyncio.sleep(1.0)  # the worker is told to stop meanwhile
        await send({"type": "http.response.body", "body": b"k"})
    else:
        await send({"type": "http.response.body", "body": b"ok"})
'''




@pytest.fixture
def serve(tmp_path):
    """serve(worker_class) -> (port, the worker's pid), a one-worker gunicorn."""
    (tmp_path / "app.py").write_text(APP)
    shutil.copy(gasgi_worker.__file__, tmp_path / "asgi_fleet_gasgi.py")  # its name on a host
    masters = []

    def start(worker_class: str) -> tuple[int, int]:
        port = free_port()
        master = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "1", "-k", worker_class, "--asgi-loop", "uvloop",
             "--keep-alive", "5", "--graceful-timeout", "10", "--no-control-socket",
             "-b", f"127.0.0.1:{port}", "app:app"],
            cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(tmp_path)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        masters.append(master)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    if children:
                        return port, int(children[0])
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn -k {worker_class} did not start")

    yield start
    for master in masters:
        master.terminate()
        master.wait(timeout=30)


def next_request_after_a_stop(port: int, worker: int) -> tuple[int | None, str | None, str | None]:
    """(status, Connection header) of the request sent on a connection whose
    keep-alive response was in flight when its worker got SIGTERM; or the
    error the client got instead."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/slow")
        first = conn.getresponse()
        os.kill(worker, signal.SIGTERM)
        assert first.read() == b"ok" and first.getheader("connection") is None  # keep-alive announced
        try:
            conn.request("GET", "/")
            second = conn.getresponse()
            second.read()
            return second.status, second.getheader("connection"), None
        except (http.client.RemoteDisconnected, ConnectionError) as error:
            return None, None, type(error).__name__
    finally:
        conn.close()


def test_the_stock_worker_closes_a_connection_that_was_promised_to_stay_open(serve):
    status, _, error = next_request_after_a_stop(*serve("asgi"))
    assert status is None and error, "gunicorn's ASGI worker no longer drops it: bench/peers.py should show 0"


def test_the_draining_worker_answers_the_next_request_and_closes_after_it(serve):
    assert next_request_after_a_stop(*serve("asgi_fleet_gasgi.DrainingASGIWorker")) == (200, "close", None)


def test_the_drain_is_bounded_by_the_keepalive_and_the_graceful_timeout():
    class Cfg:
        keepalive, graceful_timeout = 5, 25

    worker = gasgi_worker.DrainingASGIWorker.__new__(gasgi_worker.DrainingASGIWorker)
    worker.cfg = Cfg()
    assert worker.drain_seconds() == 6.0
    Cfg.graceful_timeout = 4
    assert worker.drain_seconds() == 3.0
