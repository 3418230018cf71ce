"""gunicorn's own ASGI worker, draining instead of dropping on reload or restart.

asgi-fleet copies this file, as a single module, into each host's virtualenv
(``site-packages/asgi_fleet_gasgi.py``); ``worker_class =
"asgi_fleet_gasgi.DrainingASGIWorker"`` runs it. It imports only the standard
library and gunicorn (25.1 or later), so it needs neither uvicorn nor
httptools, as gunicorn's worker does not.

What goes wrong in the stock worker
-----------------------------------
On SIGTERM (every old worker after a HUP, every worker on ``systemctl
restart``) ``ASGIWorker`` sets ``alive = False``. A connection whose last
response announced keep-alive is then closed as soon as that response ends
(``keepalive_after_response`` and the connection loop both stop on ``not
worker.alive``): its client, told the connection stays open, may already
have sent its next request into it, and gets a reset or an empty answer
(``RemoteDisconnected``). bench/peers.py counts them: a few per HUP under
keep-alive load.

How this worker fixes it
------------------------
SIGTERM stops the accept at once (the listening socket stays with the master,
the other workers and systemd, so connections not accepted yet wait in the
backlog for the new workers) and starts a *drain* while ``alive`` stays
true: every response from then on announces ``Connection: close`` and ends
its connection, so a client learns of the close before it can reuse the
connection. An idle keep-alive connection stays open for the next request
(answered the same way) until its keep-alive timer closes it, as in steady
state. The drain ends when the worker holds no connection, or after the
keep-alive timeout plus a second (never past ``graceful_timeout`` minus one);
then ``alive`` goes false and gunicorn's own graceful shutdown runs (what is
still in flight gets the rest of ``graceful_timeout``). SIGINT and SIGQUIT
still stop at once.
"""

from __future__ import annotations

import asyncio

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

__all__ = ["DrainingASGIProtocol", "DrainingASGIWorker"]


class DrainingASGIProtocol(ASGIProtocol):
    """Every response of a draining worker closes its connection, and says so."""

    def _will_close(self, request, response_requires_close):
        return self.worker.asgi_fleet_draining or super()._will_close(request, response_requires_close)


class DrainingASGIWorker(gasgi.ASGIWorker):
    asgi_fleet_draining = False

    def init_process(self):
        # The worker builds each connection's protocol from this name in its module.
        gasgi.ASGIProtocol = DrainingASGIProtocol
        super().init_process()

    def drain_seconds(self) -> float:
        return max(1.0, min(self.cfg.keepalive + 1.0, self.cfg.graceful_timeout - 1.0))

    def handle_exit_signal(self):
        """SIGTERM: drain, then gunicorn's graceful shutdown."""
        if self.asgi_fleet_draining or not self.alive:
            return
        self.asgi_fleet_draining = True
        for server in self.servers:
            server.close()
        self.loop.create_task(self._drain())

    async def _drain(self):
        deadline = self.loop.time() + self.drain_seconds()
        while self.nr_conns > 0 and self.loop.time() < deadline and self.alive:
            await asyncio.sleep(0.05)
        self.alive = False
