"""What the dashboard grants a network client, and no more: bytes, seconds, sockets, guesses.

- **Bodies** are capped at :data:`MAX_BODY` (every POST, ``/login`` included): a declared
  ``Content-Length`` over it is answered 413 before a byte is read, and a chunked body is cut off
  at the limit, so nothing is ever buffered past it. A body must also arrive within
  :data:`BODY_TIMEOUT` (408 otherwise), so a client cannot hold a request open by trickling it.
- **Connections**: a client gets :data:`HEADER_TIMEOUT` to send a request's headers (uvicorn has
  no such timeout: a socket that never finishes its headers would be held for ever), an idle
  keep-alive connection :data:`KEEP_ALIVE` seconds, and at most :func:`connection_limit`
  connections are held at once; more are closed as they come, and at most :func:`accept_batch`
  are accepted in one go. The limit is a quarter of the process's descriptors, so however many
  sockets a network opens, the watchers keep theirs.
- **Guesses**: ``/login`` takes :data:`LOGIN_FAILURES` wrong tokens per client within
  :data:`LOGIN_WINDOW`, then answers 429 with Retry-After until the window has passed.
"""

from __future__ import annotations

import asyncio
import collections
import resource
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_BODY = 64 * 1024
"""Largest request body any route takes (forms are a few hundred bytes)."""
BODY_TIMEOUT = 10.0
"""Seconds a request's whole body may take to arrive."""
HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's headers, on a new or a kept-alive connection."""
KEEP_ALIVE = 5.0
"""Seconds an idle keep-alive connection is kept."""
MAX_CONNECTIONS = 256
"""Connections held at once, at most (and at most a quarter of the process's descriptors)."""
MAX_HEADER_BYTES = 16 * 1024
"""A request whose headers are larger is refused (h11's incomplete-event limit)."""
LOGIN_FAILURES = 5
"""Wrong tokens a client may send within LOGIN_WINDOW before it must wait."""
LOGIN_WINDOW = 60.0
LOGIN_CLIENTS = 10_000
"""Clients remembered by the login limit at most (the oldest are forgotten first)."""


def connection_limit() -> int:
    """:data:`MAX_CONNECTIONS`, or a quarter of the open-file limit if that is less."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 4))


def accept_batch(limit: int) -> int:
    """The listen backlog, which asyncio also takes as how many sockets to accept in one go.

    Every socket accepted holds a descriptor until the protocol closes it (past the limit: on
    the next turn of the loop), so uvicorn's default of 2,048 in one go could take every
    descriptor the process has for a moment, and a watcher opening a file then fails.
    """
    return min(64, max(8, limit // 4))


class BodyLimitMiddleware:
    """Answers 413 to a body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit
        self.timeout = BODY_TIMEOUT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _refuse(413, f"request body over {self.limit} bytes", send)
            return
        seen = 0
        started = False
        complete = False  # the body is in: later receives wait for a disconnect (streams)
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
                complete = not message.get("more_body", False)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await _refuse(413, f"request body over {self.limit} bytes", send)
        except _TooSlow:
            if not started:
                await _refuse(408, f"request body not sent within {self.timeout:.0f}s", send)


async def _refuse(status: int, error: str, send: Send) -> None:
    """Answer ``status`` with a JSON error and close the connection."""
    response = JSONResponse({"error": error}, status_code=status, headers={"Connection": "close"})
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    """A request whose body is not read (any more)."""
    return {"type": "http.disconnect"}


class _TooLarge(Exception):
    """A streamed body went over the limit."""


class _TooSlow(Exception):
    """A body did not arrive in time."""


class LoginLimiter:
    """Counts wrong tokens per client; says how long one must wait, if it must."""

    def __init__(
        self, failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW, clock: Any = None
    ) -> None:
        self.failures = failures
        self.window = window
        self.clock = clock or time.monotonic
        self._seen: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def wait(self, client: str) -> float:
        """Seconds ``client`` must wait before its next try (0: it may try now)."""
        recent = self._recent(client)
        if recent is None or len(recent) < self.failures:
            return 0.0
        return max(recent[0] + self.window - self.clock(), 0.0)

    def failed(self, client: str) -> None:
        """Count a wrong token from ``client``."""
        recent = self._recent(client)
        if recent is None:
            recent = self._seen[client] = collections.deque(maxlen=self.failures)
            while len(self._seen) > LOGIN_CLIENTS:
                self._seen.popitem(last=False)
        recent.append(self.clock())
        self._seen.move_to_end(client)

    def _recent(self, client: str) -> collections.deque[float] | None:
        recent = self._seen.get(client)
        if recent is None:
            return None
        while recent and recent[0] < self.clock() - self.window:
            recent.popleft()
        return recent


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a cap on connections held at once."""

    limit = MAX_CONNECTIONS
    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Close at once past the limit; else give the client its time to send headers."""
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limit:
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        """A request whose headers arrived stops the header clock."""
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:
            self._disarm()

    def on_response_complete(self) -> None:
        """The next request on this connection gets its own time for its headers."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """No timer outlives its connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
