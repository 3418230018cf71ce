"""asgi_fleet/worker.py: the draining UvicornWorker shipped to hosts.

The shutdown tests run a real uvicorn server on a loopback port in-process and
reproduce the race deterministically: a connection the server has accepted,
but whose request it has not read, when shutdown begins.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import uvicorn_worker
from asgi_fleet import worker as fleet_worker
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server

WORKER_PY = Path(fleet_worker.__file__)


# -- shape -------------------------------------------------------------------


def test_subclasses_the_uvicorn_worker_package():
    assert issubclass(fleet_worker.DrainingUvicornWorker, uvicorn_worker.UvicornWorker)
    assert issubclass(fleet_worker.DrainingUvicornH11Worker, fleet_worker.DrainingUvicornWorker)
    assert fleet_worker.DrainingUvicornH11Worker.CONFIG_KWARGS["http"] == "h11"


def test_importable_under_its_host_name(tmp_path, monkeypatch):
    (tmp_path / "asgi_fleet_worker.py").write_text(WORKER_PY.read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("asgi_fleet_worker")
    try:
        assert issubclass(mod.DrainingUvicornWorker, uvicorn_worker.UvicornWorker)
    finally:
        import sys

        sys.modules.pop("asgi_fleet_worker", None)


@pytest.mark.parametrize("base", [HttpToolsProtocol, H11Protocol])
def test_draining_protocol_wraps_known_http_protocols(base):
    cls = fleet_worker.draining_protocol(base)
    assert issubclass(cls, base) and cls is not base
    assert fleet_worker.draining_protocol(base) is cls  # cached
    assert fleet_worker.draining_protocol(cls) is cls  # idempotent


def test_draining_protocol_leaves_unknown_protocols_alone():
    assert fleet_worker.draining_protocol(asyncio.Protocol) is asyncio.Protocol


def _make_worker(worker_class, **settings):
    from gunicorn.config import Config as GConfig
    from gunicorn.glogging import Logger

    cfg = GConfig()
    for k, v in settings.items():
        cfg.set(k, v)
    return worker_class(age=1, ppid=1, sockets=[], app=None, timeout=30, cfg=cfg, log=Logger(cfg))


@pytest.mark.parametrize(
    ("worker_class", "base"),
    [(fleet_worker.DrainingUvicornWorker, HttpToolsProtocol), (fleet_worker.DrainingUvicornH11Worker, H11Protocol)],
)
def test_worker_config_uses_draining_protocol(worker_class, base):
    w = _make_worker(worker_class, keepalive=7)
    assert isinstance(w.config.http, type)
    assert issubclass(w.config.http, base)
    assert issubclass(w.config.http, fleet_worker._DrainingHTTPMixin)
    assert w.config.timeout_keep_alive == 7
    w.config.load()
    assert w.config.http_protocol_class is w.config.http


def test_worker_bounds_the_drain_by_graceful_timeout():
    assert _make_worker(fleet_worker.DrainingUvicornWorker, graceful_timeout=25).config.timeout_graceful_shutdown == 24
    assert _make_worker(fleet_worker.DrainingUvicornWorker, graceful_timeout=1).config.timeout_graceful_shutdown == 0.5


# -- shutdown behaviour with a real server on loopback ------------------------


async def hello_app(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def _start(server_class, protocol, keep_alive=5.0, ws="auto"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = Config(app=hello_app, http=protocol, ws=ws, lifespan="off", log_config=None,
                    timeout_keep_alive=keep_alive)
    server = server_class(config=config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    return server, task, sock.getsockname()[1]


async def _wait_for(predicate, timeout=3.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def _read_all(reader, timeout=5.0):
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b"<reset>"


async def _request_after_shutdown(server, task, reader, writer):
    """Start the server's shutdown, then send a request on an open connection;
    return all the client reads until the server closes it."""
    server.should_exit = True
    await _wait_for(lambda: not server.servers[0].is_serving())
    await asyncio.sleep(0.2)  # past Server.shutdown()'s connection sweep
    try:
        writer.write(REQUEST)
        await writer.drain()
    except ConnectionError:
        pass
    data = await _read_all(reader)
    writer.close()
    await asyncio.wait_for(task, 10)
    return data


async def _accepted_then_shutdown(server_class, protocol):
    """Accept a connection, start shutdown, THEN send the request."""
    server, task, port = await _start(server_class, protocol)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _wait_for(lambda: len(server.server_state.connections) == 1)
    return await _request_after_shutdown(server, task, reader, writer)


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])
def test_stock_server_drops_an_accepted_unread_connection(protocol):
    """The bug, reproduced: the request never gets a response."""
    data = asyncio.run(_accepted_then_shutdown(Server, protocol))
    assert b"200" not in data


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])
def test_draining_server_serves_an_accepted_unread_connection(protocol):
    data = asyncio.run(_accepted_then_shutdown(fleet_worker.DrainingServer, fleet_worker.draining_protocol(protocol)))
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"hello")  # whole response, then the server closed (read() hit EOF)
    if protocol is HttpToolsProtocol:  # uvicorn's h11 path closes without announcing it
        assert b"connection: close" in data.lower()


async def _idle_keepalive_then_shutdown(server_class, protocol):
    """One request on a keep-alive connection, shutdown, then a second one."""
    server, task, port = await _start(server_class, protocol)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
    assert b"200" in first and b"connection: close" not in first.lower()
    return await _request_after_shutdown(server, task, reader, writer)


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])
def test_draining_server_answers_next_request_on_idle_keepalive(protocol):
    data = asyncio.run(
        _idle_keepalive_then_shutdown(fleet_worker.DrainingServer, fleet_worker.draining_protocol(protocol))
    )
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"hello")
    if protocol is HttpToolsProtocol:
        assert b"connection: close" in data.lower()


def test_stock_server_closes_idle_keepalive_at_shutdown():
    data = asyncio.run(_idle_keepalive_then_shutdown(Server, HttpToolsProtocol))
    assert b"200" not in data


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])
def test_silent_connection_is_closed_after_keepalive_timeout(protocol):
    """A connection that never sends anything cannot hold the worker up."""

    async def run():
        loop = asyncio.get_running_loop()
        server, task, port = await _start(
            fleet_worker.DrainingServer, fleet_worker.draining_protocol(protocol), keep_alive=0.5
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _wait_for(lambda: len(server.server_state.connections) == 1)
        t0 = loop.time()
        server.should_exit = True
        data = await _read_all(reader)
        await asyncio.wait_for(task, 10)
        writer.close()
        return data, loop.time() - t0

    data, elapsed = asyncio.run(run())
    assert data == b""
    assert 0.4 < elapsed < 3.0


def test_in_flight_request_completes_with_connection_close():
    async def run():
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow_app(scope, receive, send):
            started.set()
            await release.wait()
            await hello_app(scope, receive, send)

        server, task, port = await _start(fleet_worker.DrainingServer, fleet_worker.draining_protocol(HttpToolsProtocol))
        server.config.loaded_app = slow_app  # protocols read config.loaded_app per connection
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        await writer.drain()
        await asyncio.wait_for(started.wait(), 5)
        server.should_exit = True
        await _wait_for(lambda: not server.servers[0].is_serving())
        release.set()
        data = await _read_all(reader)
        writer.close()
        await asyncio.wait_for(task, 10)
        return data

    data = asyncio.run(run())
    assert data.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in data.lower()


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])
def test_websocket_still_upgrades_and_gets_1012_on_shutdown(protocol):
    """Upgrades go through the wrapped HTTP protocol; uvicorn's own
    WebSocket shutdown (close code 1012, service restart) is kept."""
    websockets_client = pytest.importorskip("websockets.asyncio.client")
    from websockets.exceptions import ConnectionClosed

    async def ws_app(scope, receive, send):
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": "pong"})

    async def run():
        server, task, port = await _start(fleet_worker.DrainingServer, fleet_worker.draining_protocol(protocol))
        server.config.loaded_app = ws_app
        async with websockets_client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), 5) == "pong"
            server.should_exit = True
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            code = closed.value.rcvd.code if closed.value.rcvd else None
        await asyncio.wait_for(task, 10)
        return code

    assert asyncio.run(run()) == 1012


async def ws_echo(scope, receive, send):
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "pong"})


@pytest.mark.parametrize("ws_impl", ["websockets", "websockets-sansio", "wsproto"])
def test_an_open_websocket_is_served_for_the_drain_bound_then_closed_with_1012(ws_impl, monkeypatch):
    """With the drain bound set (gunicorn.conf.py's raw_env), shutdown leaves
    an open WebSocket working until the bound, then closes it as uvicorn does;
    a session that ends first ends as its client meant."""
    from uvicorn.config import WS_PROTOCOLS
    from uvicorn.importer import import_from_string

    if ws_impl == "wsproto":
        pytest.importorskip("wsproto")
    websockets_client = pytest.importorskip("websockets.asyncio.client")
    from websockets.exceptions import ConnectionClosed

    monkeypatch.setenv(fleet_worker.WEBSOCKET_DRAIN, "1.5")
    ws_class = fleet_worker.draining_websocket_protocol(import_from_string(WS_PROTOCOLS[ws_impl]))

    async def run():
        server, task, port = await _start(fleet_worker.DrainingServer,
                                          fleet_worker.draining_protocol(HttpToolsProtocol), ws=ws_class)
        server.config.loaded_app = ws_echo
        loop = asyncio.get_running_loop()
        async with websockets_client.connect(f"ws://127.0.0.1:{port}/ws") as short, \
                websockets_client.connect(f"ws://127.0.0.1:{port}/ws") as long:
            for ws in (short, long):
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), 5) == "pong"
            server.should_exit = True
            began = loop.time()
            await asyncio.sleep(0.5)
            for ws in (short, long):  # both still served during the drain
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), 5) == "pong"
            await short.close()  # this session ends by itself: a normal close
            short_code = short.close_code
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(long.recv(), 5)
            waited = loop.time() - began
        await asyncio.wait_for(task, 10)
        return short_code, closed.value.rcvd.code if closed.value.rcvd else None, waited

    short_code, long_code, waited = asyncio.run(run())
    assert short_code == 1000 and long_code == 1012
    assert 1.4 <= waited < 4, waited  # the bound, then the close


def test_without_a_drain_bound_an_open_websocket_is_closed_at_once(monkeypatch):
    websockets_client = pytest.importorskip("websockets.asyncio.client")
    from websockets.exceptions import ConnectionClosed

    monkeypatch.delenv(fleet_worker.WEBSOCKET_DRAIN, raising=False)
    from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol

    async def run():
        server, task, port = await _start(fleet_worker.DrainingServer, fleet_worker.draining_protocol(HttpToolsProtocol),
                                          ws=fleet_worker.draining_websocket_protocol(WebSocketProtocol))
        server.config.loaded_app = ws_echo
        loop = asyncio.get_running_loop()
        async with websockets_client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            server.should_exit = True
            began = loop.time()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            waited = loop.time() - began
        await asyncio.wait_for(task, 10)
        return closed.value.rcvd.code, waited

    code, waited = asyncio.run(run())
    assert code == 1012 and waited < 1


def test_the_worker_wraps_the_websocket_protocol_it_would_use():
    w = _make_worker(fleet_worker.DrainingUvicornWorker)
    assert issubclass(w.config.ws, fleet_worker._DrainingWebSocketMixin)
    w.config.load()
    assert w.config.ws_protocol_class is w.config.ws
