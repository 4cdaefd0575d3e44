"""Polite HTTP fetching shared by every page watcher: one pooled client, limits per host.

Each page watcher runs in its own daemon thread, but all of them fetch through one
:class:`Fetcher` (a sync ``httpx.Client`` is thread-safe and pools connections). Around it:

- **per-host and global concurrency**: a request waits while ``max_per_host`` requests to the
  same host (its own setting) or :data:`MAX_TOTAL` requests in all are in flight, so a thousand
  pages on one site never hit it a thousand at a time (neither urlwatch nor changedetection.io
  limits this);
- **conditional GET**: the ETag and Last-Modified of the last answer are sent back; a 304 skips
  download and parsing;
- **Retry-After** on 429/503: the host is left alone until then (page watchers wait for it);
- **bounded replies**: at most :data:`MAX_REDIRECTS` redirects, a total deadline (httpx's
  timeouts are per read, so a server trickling bytes would otherwise hold a thread forever) and
  a body cut off at ``max_bytes`` (after decompression, so a gzip bomb is cut off too).

Failures are raised as :class:`~watchkeeper.errors.CheckError` with the URL and what happened.
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from watchkeeper.errors import CheckError
from watchkeeper.units import format_duration

MAX_TOTAL = 64
"""Requests in flight at once over all hosts, whatever the pages' own limits."""
MAX_REDIRECTS = 5
"""Redirects followed before a fetch fails."""
RETRY_AFTER_CAP = 86400.0
"""A Retry-After longer than this (a day) is taken as this."""
USER_AGENT = f"watchkeeper/{importlib.metadata.version('watchkeeper')}"
"""Sent unless a page's ``headers`` set their own; add a contact there, as polite bots do."""


@dataclass
class Reply:
    """What one fetch returned. ``not_modified`` replies have no body."""

    url: str
    status: int
    headers: dict[str, str]
    content: bytes = b""
    truncated: bool = False
    not_modified: bool = False
    elapsed: float = 0.0

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower case (``text/html``)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        """The charset parameter of Content-Type, if any."""
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                return value.strip().strip("\"'")
        return None


@dataclass
class _Gate:
    """Counts requests in flight per host and in all; a Condition makes waiters take turns."""

    total: int = 0
    per_host: dict[str, int] = field(default_factory=dict)
    not_before: dict[str, float] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def acquire(self, host: str, limit: int, deadline: float, url: str) -> None:
        with self.cond:
            while self.total >= MAX_TOTAL or self.per_host.get(host, 0) >= limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CheckError(
                        f"GET {url}: timed out waiting for a free slot "
                        f"({self.per_host.get(host, 0)} requests to {host} in flight)"
                    )
                self.cond.wait(remaining)
            self.total += 1
            self.per_host[host] = self.per_host.get(host, 0) + 1

    def release(self, host: str) -> None:
        with self.cond:
            self.total -= 1
            self.per_host[host] -= 1
            if not self.per_host[host]:
                del self.per_host[host]
            self.cond.notify_all()


def host_of(url: str) -> str:
    """``host:port`` of a URL: the unit the per-host limit and Retry-After apply to."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(moment.timestamp() - now, 0.0), RETRY_AFTER_CAP)


class Fetcher:
    """One pooled client plus the gate; use :func:`shared` rather than making your own."""

    def __init__(self) -> None:
        self.client = httpx.Client(
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            limits=httpx.Limits(max_connections=MAX_TOTAL, max_keepalive_connections=MAX_TOTAL),
            headers={"User-Agent": USER_AGENT},
        )
        self.gate = _Gate()
        self.users = 0

    def wait_hint(self, url: str) -> float:
        """Seconds until the host of ``url`` may be asked again (Retry-After), else 0."""
        until = self.gate.not_before.get(host_of(url))
        return 0.0 if until is None else max(until - time.time(), 0.0)

    def slot(self, url: str, max_per_host: int, timeout: float) -> _Slot:
        """A context manager holding one request slot for the host of ``url``."""
        return _Slot(self.gate, host_of(url), max_per_host, time.monotonic() + timeout, url)

    def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        max_bytes: int = 5_000_000,
        max_per_host: int = 2,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> Reply:
        """GET ``url`` politely; raise CheckError for anything but a 2xx or 304 reply."""
        sent = dict(headers or {})
        if etag:
            sent["If-None-Match"] = etag
        if last_modified:
            sent["If-Modified-Since"] = last_modified
        started = time.monotonic()
        with self.slot(url, max_per_host, timeout):
            try:
                return self._get(url, sent, timeout, max_bytes, started)
            except httpx.TimeoutException as exc:
                raise CheckError(f"GET {url}: timed out after {format_duration(timeout)}") from exc
            except httpx.TooManyRedirects as exc:
                raise CheckError(f"GET {url}: more than {MAX_REDIRECTS} redirects") from exc
            except httpx.HTTPError as exc:
                raise CheckError(f"GET {url}: {type(exc).__name__}: {exc}") from exc

    def _get(
        self, url: str, headers: dict[str, str], timeout: float, max_bytes: int, started: float
    ) -> Reply:
        deadline = started + timeout
        with self.client.stream("GET", url, headers=headers, timeout=timeout) as response:
            reply = Reply(
                url=str(response.url),
                status=response.status_code,
                headers={k.lower(): v for k, v in response.headers.items()},
            )
            if response.status_code == 304:
                reply.not_modified = True
                reply.elapsed = time.monotonic() - started
                return reply
            if response.status_code >= 400:
                self._note_retry_after(reply)
                reason = response.reason_phrase or ""
                raise CheckError(f"GET {url}: HTTP {response.status_code} {reason}".rstrip())
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                if time.monotonic() > deadline:
                    raise CheckError(
                        f"GET {url}: timed out after {format_duration(timeout)} ({size} bytes read)"
                    )
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    reply.truncated = True
                    break
            reply.content = b"".join(chunks)[:max_bytes]
            reply.elapsed = time.monotonic() - started
            return reply

    def _note_retry_after(self, reply: Reply) -> None:
        if reply.status not in (429, 503):
            return
        now = time.time()
        seconds = retry_after_seconds(reply.headers.get("retry-after"), now)
        if seconds:
            with self.gate.cond:
                self.gate.not_before[host_of(reply.url)] = now + seconds


class _Slot:
    """Holds a gate slot for the duration of a ``with`` block."""

    def __init__(self, gate: _Gate, host: str, limit: int, deadline: float, url: str) -> None:
        self.gate, self.host, self.limit, self.deadline, self.url = gate, host, limit, deadline, url

    def __enter__(self) -> None:
        self.gate.acquire(self.host, self.limit, self.deadline, self.url)

    def __exit__(self, *exc_info: Any) -> None:
        self.gate.release(self.host)


_shared: dict[str, Fetcher] = {}  # a dict, not a global statement: ruff's PLW0603
_shared_lock = threading.Lock()


def shared() -> Fetcher:
    """The process-wide fetcher, created on first use; pair with :func:`release`."""
    with _shared_lock:
        fetcher = _shared.get("fetcher")
        if fetcher is None:
            fetcher = _shared["fetcher"] = Fetcher()
        fetcher.users += 1
        return fetcher


def release(fetcher: Fetcher) -> None:
    """One user is done; the last one closes the pooled connections."""
    with _shared_lock:
        fetcher.users -= 1
        if fetcher.users <= 0 and _shared.get("fetcher") is fetcher:
            fetcher.client.close()
            del _shared["fetcher"]
