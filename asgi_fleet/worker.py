"""A Gunicorn UvicornWorker that drains instead of dropping connections.

asgi-fleet copies this file, as a single module, into each host's virtualenv
(``site-packages/asgi_fleet_worker.py``) and configures
``worker_class = "asgi_fleet_worker.DrainingUvicornWorker"``. It imports only the
standard library, gunicorn, uvicorn and uvicorn_worker.

What goes wrong in the stock worker
-----------------------------------
A worker leaves on SIGTERM (old workers after a HUP, every worker on
``systemctl restart``) and also by itself after ``max_requests``. Uvicorn's
``Server.shutdown()`` then stops accepting and calls ``shutdown()`` on every
HTTP connection it holds. ``HttpToolsProtocol.shutdown()`` (and
``H11Protocol.shutdown()``) close the transport at once when the connection
has no request in progress, i.e. ``cycle is None`` or
``cycle.response_complete``. Two kinds of connection fall in that case:

* connections the worker has *accepted* (the event loop accepts eagerly)
  whose request bytes were not read yet: they are in the kernel buffer or
  still on the wire. Closing a socket with unread data sends an RST; without
  data the client reads EOF. Either way a request that reached the server is
  lost ("connection reset by peer" / "EOF" under ``hey
  -disable-keepalive``).
* idle keep-alive connections: the client may have sent its next request
  already. Many clients (Go's net/http, which ``hey`` uses) silently retry an
  idempotent request on a reused connection, which hides this case; a POST
  or a client without retries sees the error.

How this worker fixes it
------------------------
Stopping the accept is kept as it is (the listening socket is shared with
the master, the other workers and systemd, so connections not yet accepted
stay in the kernel backlog for the other/new workers). What changes is the
fate of connections the worker already owns: shutdown marks them *draining*
instead of closing them.

* no request yet: the connection stays open for one request, bounded by the
  keep-alive timeout (``keepalive``); a client that sends nothing in that
  time is closed as any idle connection is;
* idle keep-alive: it stays open until its normal keep-alive timer fires;
* a request in progress: as before, the response ends the connection.

Every request that a draining connection still receives (including pipelined
ones) is answered with ``connection: close`` and the connection is then
closed, so the worker ends as soon as its connections are done. Connections
whose ``connection_made`` runs after shutdown started are marked too.

The only close left that can race a client is the keep-alive timer itself,
which is the same race the server has at every keep-alive timeout in steady
state (HTTP/1.1 leaves it to the client to retry idempotent requests).

Bounds: a drain lasts at most the keep-alive timeout longer than the
in-flight requests, and never longer than ``graceful_timeout`` minus one
second: the worker sets uvicorn's ``timeout_graceful_shutdown`` (unset in the
stock worker, which waits until Gunicorn SIGKILLs it: at ``graceful_timeout``
on stop, at ``timeout`` on HUP), then cancels what is left and runs the
lifespan shutdown.

WebSockets
----------
Uvicorn closes every open WebSocket at once on shutdown, with close code
1012 ("service restart"), so each reload cuts every session. This worker
lets an open WebSocket go on for up to ``$ASGI_FLEET_WEBSOCKET_DRAIN_SECONDS``
(gunicorn.conf.py sets it from the ``websocket_drain_seconds`` setting,
below ``graceful_timeout``): a session that ends by then ends as its client
meant; one still open is closed with 1012 as before, and its client
reconnects to a new worker. A handshake not completed yet is refused at
once, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import uvicorn_worker
from gunicorn.arbiter import Arbiter
from uvicorn.config import HTTP_PROTOCOLS, WS_PROTOCOLS
from uvicorn.importer import import_from_string
from uvicorn.server import Server

__all__ = ["DrainingServer", "DrainingUvicornH11Worker", "DrainingUvicornWorker", "draining_protocol",
           "draining_websocket_protocol"]

# Set on uvicorn's shared ServerState once shutdown has begun.
_DRAINING = "asgi_fleet_draining"


class _DrainingHTTPMixin:
    """Mixed in before uvicorn's HttpToolsProtocol / H11Protocol."""

    _asgi_fleet_draining = False
    _asgi_fleet_cycle: Any = None

    # Both implementations assign `self.cycle = RequestResponseCycle(...)`
    # for every request they parse (also pipelined ones), before its task
    # runs: once draining, every new cycle ends the connection.
    @property
    def cycle(self) -> Any:
        return self._asgi_fleet_cycle

    @cycle.setter
    def cycle(self, cycle: Any) -> None:
        if cycle is not None and self._asgi_fleet_draining:
            cycle.keep_alive = False
        self._asgi_fleet_cycle = cycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if getattr(self.server_state, _DRAINING, False):  # type: ignore[attr-defined]
            self.shutdown()

    def shutdown(self) -> None:
        """Called by the server on graceful shutdown: drain, don't drop."""
        if self._asgi_fleet_draining:
            return
        self._asgi_fleet_draining = True
        transport = self.transport  # type: ignore[attr-defined]
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None:
            # Accepted, request not read yet: wait for it, but not forever.
            if self.timeout_keep_alive_task is None:  # type: ignore[attr-defined]
                self.timeout_keep_alive_task = self.loop.call_later(  # type: ignore[attr-defined]
                    self.timeout_keep_alive,  # type: ignore[attr-defined]
                    self.timeout_keep_alive_handler,  # type: ignore[attr-defined]
                )
        elif not cycle.response_complete:
            cycle.keep_alive = False
        # else: idle keep-alive connection; its keep-alive timer is armed and
        # a request arriving before it fires gets a `connection: close` reply.


_PROTOCOL_CACHE: dict[type, type] = {}


def draining_protocol(protocol_class: type) -> type:
    """Return `protocol_class` with draining shutdown, if it is one we know.

    Only uvicorn's HttpToolsProtocol and H11Protocol (and their subclasses)
    are wrapped; anything else is returned unchanged.
    """
    known: list[type] = []
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        known.append(H11Protocol)
    except ImportError:  # pragma: no cover - h11 is a uvicorn dependency
        pass
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        known.append(HttpToolsProtocol)
    except ImportError:  # pragma: no cover - httptools not installed
        pass
    if issubclass(protocol_class, _DrainingHTTPMixin) or not issubclass(protocol_class, tuple(known)):
        return protocol_class
    if protocol_class not in _PROTOCOL_CACHE:
        _PROTOCOL_CACHE[protocol_class] = type(
            "Draining" + protocol_class.__name__,
            (_DrainingHTTPMixin, protocol_class),
            {"__module__": __name__},
        )
    return _PROTOCOL_CACHE[protocol_class]


WEBSOCKET_DRAIN = "ASGI_FLEET_WEBSOCKET_DRAIN_SECONDS"


class _DrainingWebSocketMixin:
    """Mixed in before uvicorn's WebSocket protocols (websockets, its sans-io
    flavour, wsproto): shutdown waits for the client, up to the drain bound."""

    _asgi_fleet_close_later: Any = None

    def _asgi_fleet_open(self) -> bool:
        if hasattr(self, "handshake_completed_event"):  # websockets_impl
            return self.handshake_completed_event.is_set()
        return bool(getattr(self, "handshake_complete", False))  # wsproto, websockets-sansio

    def shutdown(self) -> None:
        if self._asgi_fleet_close_later is not None:
            return
        transport = self.transport  # type: ignore[attr-defined]
        bound = float(os.environ.get(WEBSOCKET_DRAIN, "0") or 0)
        if bound <= 0 or transport is None or transport.is_closing() or not self._asgi_fleet_open():
            super().shutdown()  # type: ignore[misc]
            return
        self._asgi_fleet_close_later = asyncio.get_running_loop().call_later(bound, self._asgi_fleet_close)

    def _asgi_fleet_close(self) -> None:
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            super().shutdown()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._asgi_fleet_close_later is not None:
            self._asgi_fleet_close_later.cancel()
        super().connection_lost(exc)  # type: ignore[misc]


def draining_websocket_protocol(protocol_class: type | None) -> type | None:
    """`protocol_class` (one of uvicorn's WebSocket protocols) with a bounded drain."""
    if protocol_class is None or issubclass(protocol_class, _DrainingWebSocketMixin):
        return protocol_class
    if protocol_class not in _PROTOCOL_CACHE:
        _PROTOCOL_CACHE[protocol_class] = type(
            "Draining" + protocol_class.__name__, (_DrainingWebSocketMixin, protocol_class),
            {"__module__": __name__})
    return _PROTOCOL_CACHE[protocol_class]


class DrainingServer(Server):
    """uvicorn Server that flags the drain before it stops accepting."""

    async def shutdown(self, sockets: Any = None) -> None:
        setattr(self.server_state, _DRAINING, True)
        await super().shutdown(sockets=sockets)


class DrainingUvicornWorker(uvicorn_worker.UvicornWorker):
    """uvicorn_worker.UvicornWorker that serves, on shutdown, every connection
    it already accepted (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        http = self.config.http
        if isinstance(http, str):
            http = import_from_string(HTTP_PROTOCOLS.get(http, http))
        self.config.http = draining_protocol(http)
        ws = self.config.ws
        if isinstance(ws, str):
            ws = WS_PROTOCOLS.get(ws, ws)
            ws = import_from_string(ws) if ws else None
        self.config.ws = draining_websocket_protocol(ws) or "none"
        # Stock uvicorn waits for connections without a limit and relies on
        # Gunicorn's SIGKILL; end the drain ourselves just before
        # graceful_timeout so the app's lifespan shutdown still runs (also on
        # HUP, where the arbiter only kills at `timeout`).
        if self.config.timeout_graceful_shutdown is None:
            self.config.timeout_graceful_shutdown = max(0.5, self.cfg.graceful_timeout - 1)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class DrainingUvicornH11Worker(DrainingUvicornWorker):
    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}
