"""The webhook's overall deadline, kept by httpcore's network streams.

httpx's timeouts bound each socket step; a receiver that drips its headers a byte at a time
passes every one. :func:`bounded_transport` gives httpx a transport whose connections read and
write through :class:`DeadlineStream`, which cuts every step's timeout to what is left of the
thread's deadline (:func:`watchkeeper.notifiers.deadline.attempt`) and fails it once passed, as
the timeout it is. Imported with the webhook notifier, which already needs httpx.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from watchkeeper.notifiers.deadline import left


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the deadline, or ``error`` once it passed."""
    try:
        return left(timeout)
    except TimeoutError as exc:
        raise error(str(exc)) from exc


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write keeps the thread's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self.stream = stream
        self.backend = backend
        backend.opened(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read, within what is left of the deadline."""
        return self.stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write, within what is left of the deadline."""
        self.stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the connection."""
        self.backend.closed(self)
        self.stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """The TLS handshake, within the deadline; the TLS stream keeps it too."""
        upgraded = self.stream.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)
        )
        self.backend.closed(self)
        return DeadlineStream(upgraded, self.backend)

    def get_extra_info(self, info: str) -> Any:
        """As the wrapped stream."""
        return self.stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own synchronous backend, with connections that keep the deadline."""

    def __init__(self) -> None:
        self.backend = httpcore.SyncBackend()
        self._open: set[DeadlineStream] = set()
        self._lock = threading.Lock()

    def opened(self, stream: DeadlineStream) -> None:
        """A connection was made (kept for :meth:`abort`)."""
        with self._lock:
            self._open.add(stream)

    def closed(self, stream: DeadlineStream) -> None:
        """A connection was closed."""
        with self._lock:
            self._open.discard(stream)

    def abort(self) -> bool:
        """Shut every open connection down, from another thread: a request waiting on one
        fails at once (the keeper's stop ran out of time). True when there was one."""
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            sock = stream.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return bool(streams)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect within the deadline."""
        stream = self.backend.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        """As the wrapped backend."""
        self.backend.sleep(seconds)


def bounded_transport() -> tuple[httpx.HTTPTransport, DeadlineBackend]:
    """httpx's own transport, its connection pool using a :class:`DeadlineBackend` (returned
    too, for :meth:`DeadlineBackend.abort`).

    httpx offers no setting for the network backend; its pool keeps it in one attribute.
    """
    transport = httpx.HTTPTransport()
    backend = DeadlineBackend()
    transport._pool._network_backend = backend
    return transport, backend
