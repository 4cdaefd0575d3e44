"""The dashboard's server: uvicorn on one daemon thread, started and stopped with the keeper.

The socket is bound in the caller's thread before the server thread starts, so "address in use"
is an error the caller sees at once, and port 0 gives a free port whose number is known
(:attr:`Dashboard.url`). Stopping first ends every open stream (an SSE response never ends by
itself), then asks uvicorn to exit and joins its thread against a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from watchkeeper.bind import Bind, check_exposure, parse_bind
from watchkeeper.errors import WatchkeeperError
from watchkeeper.runtime import error_text
from watchkeeper.web.stream import Broadcaster

if TYPE_CHECKING:
    import uvicorn

    from watchkeeper.keeper import Keeper

log = logging.getLogger("watchkeeper")


def _nothing() -> None:
    """No supervisor told yet."""


class DashboardError(WatchkeeperError):
    """The dashboard cannot start (address in use, no token off loopback, ...)."""


def serve_dashboard(
    keeper: Keeper,
    bind: str = "127.0.0.1:8470",
    token: str | None = None,
    required: bool = True,
    tls: tuple[Path, Path] | None = None,
) -> Dashboard:
    """Serve the dashboard (pages, API, stream, /metrics) while ``keeper`` runs.

    Before ``keeper.start()`` it starts with the keeper; after, at once. ``bind`` may use port 0;
    the returned Dashboard's ``url`` has the real port once started. Off loopback a ``token`` is
    required. ``required=False``: a busy address is a warning, not an error. ``tls``: the
    (certificate, key) PEM files to serve HTTPS with. The keeper only knows it as a
    :class:`~watchkeeper.keeper.Companion`: the core never imports the web stack.
    """
    if any(isinstance(c, Dashboard) for c in keeper.companions):
        raise RuntimeError("this keeper already serves a dashboard")
    dashboard = Dashboard(keeper, bind, token, required=required, tls=tls)
    keeper.attach(dashboard)
    return dashboard


class Dashboard:
    """Serves the dashboard for a keeper; :func:`serve_dashboard` attaches one to a keeper."""

    def __init__(
        self,
        keeper: Keeper,
        bind: str | Bind = "127.0.0.1:8470",
        token: str | None = None,
        required: bool = True,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        try:
            self.bind = parse_bind(bind) if isinstance(bind, str) else bind
            check_exposure(self.bind, token)
        except ValueError as exc:
            raise DashboardError(str(exc)) from exc
        self.tls = tls
        self.keeper = keeper
        self.token = token or None
        self.required = required
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._broadcaster: Broadcaster | None = None
        self.failure: str | None = None
        """Why the server thread ended when nothing asked it to (for the supervisor)."""
        self.ended: Callable[[], None] = _nothing
        self._stopped = False

    kind = "dashboard"
    """What the supervisor's health report calls it."""

    @property
    def name(self) -> str:
        """The server thread's name, as the supervisor reports it."""
        return "watchkeeper:dashboard"

    def healthy(self) -> bool:
        """True while it serves, or after it was stopped on purpose."""
        return self._stopped or self.running

    def revive(self) -> None:
        """Serve again on the same address after the server thread ended by itself."""
        self.stop()
        self._stopped = False
        self.failure = None
        if self.port is not None:
            self.bind = Bind(self.bind.host, self.port)
        if not self.prepare():
            raise DashboardError(f"dashboard: cannot listen on {self.url} again")
        self.serve()

    @property
    def url(self) -> str:
        """``http://host:port`` with the real port once started."""
        return self.bind.url(self.port, tls=self.tls is not None)

    @property
    def running(self) -> bool:
        """True while the server thread serves."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> str | None:
        """Bind, serve on a daemon thread, return the URL once uvicorn accepts connections.

        When the address is busy: DashboardError, or (``required=False``) a warning and None.
        """
        if not self.prepare():
            return None
        return self.serve(timeout)

    def prepare(self) -> bool:
        """Claim the address and build the app; False when it is busy and not required.

        The keeper calls this before its watchers start (a busy address then fails the start
        before anything ran) and :meth:`serve` after (so the first checks do not wait for it).
        """
        family = socket.AF_INET6 if ":" in self.bind.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind.host, self.bind.port))
        except OSError as exc:
            sock.close()
            message = (
                f"dashboard: cannot listen on {self.bind.host}:{self.bind.port}: {exc.strerror}"
            )
            if self.required:
                raise DashboardError(message) from exc
            log.warning("%s; running without it (set [keeper] dashboard to choose)", message)
            return False
        self._sock = sock
        self.port = sock.getsockname()[1]
        return True

    def serve(self, timeout: float = 10.0) -> str:
        """Serve on a daemon thread; return the URL once uvicorn accepts connections."""
        # Imported here, after the watchers started: the web stack takes a while to import.
        import uvicorn

        from watchkeeper.web.app import build_app
        from watchkeeper.web.limits import (
            KEEP_ALIVE,
            MAX_HEADER_BYTES,
            GuardedH11Protocol,
            accept_batch,
            connection_limit,
        )

        sock, store = self._sock, self.keeper.store
        if sock is None or store is None:
            raise DashboardError("dashboard: start the keeper (which binds the address) first")
        app = build_app(self.keeper, store, self.token, self.bind)
        self._broadcaster = app.state.wk.broadcaster
        limit = connection_limit()
        protocol = type("Protocol", (GuardedH11Protocol,), {"limit": limit})
        config = uvicorn.Config(
            app,
            log_level="warning",
            log_config=None,  # uvicorn's records go through the agent's handler and format
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            http=protocol,
            backlog=accept_batch(limit),
            timeout_keep_alive=int(KEEP_ALIVE),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            ssl_certfile=self.tls[0] if self.tls else None,
            ssl_keyfile=self.tls[1] if self.tls else None,
        )
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
                if not server.should_exit:
                    self.failure = "the server ended by itself"
            except BaseException as exc:
                self.failure = error_text(exc)
                log.exception("dashboard server failed")
            finally:
                sock.close()
                self.ended()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise DashboardError(f"dashboard: the server at {self.url} did not start")
            time.sleep(0.01)
        log.info("dashboard at %s", self.url)
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        """End open streams, stop uvicorn, join its thread."""
        self._stopped = True
        if self._broadcaster is not None:
            self._broadcaster.close_all()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("dashboard thread did not stop within %.0fs", timeout)
        elif self._sock is not None:  # bound, never served
            self._sock.close()
        self._thread = None
        self._server = None
        self._sock = None
