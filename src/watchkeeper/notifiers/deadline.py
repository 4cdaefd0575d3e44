"""An overall deadline for one delivery attempt, over every socket step it takes.

Socket timeouts (smtplib's, httpx's) bound each step: a server that drips a byte a second never
trips them and holds a notifier (and the alerts behind it) for as long as it likes. Here the
attempt sets a deadline for its thread (:func:`attempt`), and every read and write of its
sockets is given what is left of it, or fails with :class:`TimeoutError` once it has passed.

SMTP's sockets are made :class:`DeadlineSocket` / :class:`DeadlineSSLSocket`; the webhook's
httpcore streams are wrapped in :mod:`watchkeeper.notifiers.httpdeadline`. The deadline is
per thread: a dispatcher's thread, or the supervisor's when it sends a health alert directly.
"""

from __future__ import annotations

import math
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, overload

_local = threading.local()


@contextmanager
def attempt(seconds: float) -> Iterator[None]:
    """Every socket step on this thread inside the block shares ``seconds`` in all."""
    outer = getattr(_local, "until", math.inf)
    _local.until = min(outer, time.monotonic() + seconds)
    try:
        yield
    finally:
        _local.until = outer


@overload
def left(step: float) -> float: ...


@overload
def left(step: None) -> float | None: ...


def left(step: float | None) -> float | None:
    """The timeout for the next socket step: ``step`` cut to what is left of the deadline.

    Raises TimeoutError when the deadline has passed.
    """
    until: float = getattr(_local, "until", math.inf)
    if until == math.inf:
        return step
    remaining = until - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return remaining if step is None else min(step, remaining)


class _Bounded:
    """Reads and writes that first cut the socket's timeout to the deadline."""

    step: float | None = None

    def _bound(self) -> None:
        timeout = left(self.step)
        socket.socket.settimeout(self, timeout)  # type: ignore[arg-type]

    def settimeout(self, value: float | None) -> None:
        """Remember the per-step timeout; the deadline may cut it shorter."""
        self.step = value
        socket.socket.settimeout(self, value)  # type: ignore[arg-type]

    def recv(self, *args: Any) -> Any:
        self._bound()
        return super().recv(*args)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> Any:
        self._bound()
        return super().recv_into(*args)  # type: ignore[misc]

    def send(self, *args: Any) -> Any:
        self._bound()
        return super().send(*args)  # type: ignore[misc]

    def sendall(self, *args: Any) -> Any:
        self._bound()
        return super().sendall(*args)  # type: ignore[misc]


class DeadlineSocket(_Bounded, socket.socket):
    """A plain socket that keeps the thread's deadline."""

    @classmethod
    def adopt(cls, sock: socket.socket) -> DeadlineSocket:
        """The same connection as ``sock`` (which is detached), keeping its timeout."""
        timeout = sock.gettimeout()
        made = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        made.settimeout(timeout)
        return made


class DeadlineSSLSocket(_Bounded, ssl.SSLSocket):
    """A TLS socket that keeps the thread's deadline (set as a context's ``sslsocket_class``)."""

    def read(self, *args: Any) -> Any:
        """SSL reads go through here as well as recv_into."""
        self._bound()
        return super().read(*args)

    def write(self, *args: Any) -> Any:
        """SSL writes go through here as well as sendall."""
        self._bound()
        return super().write(*args)
