"""Polite HTTP fetching shared by every page watcher: one pooled client, limits per host.

Each page watcher runs in its own daemon thread, but all of them fetch through one
:class:`Fetcher` (a urllib3 ``PoolManager``: thread-safe, keeps connections open per host).
Around it:

- **per-host and global concurrency**: a request waits while ``max_per_host`` requests to the
  same host (its own setting) or :data:`MAX_TOTAL` requests in all are in flight, so a thousand
  pages on one site never hit it a thousand at a time (neither urlwatch nor changedetection.io
  limits this);
- **conditional GET**: the ETag and Last-Modified of the last answer are sent back; a 304 skips
  download and parsing;
- **Retry-After** on 429/503: the host is left alone until then (page watchers wait for it);
- **bounded replies**: at most :data:`MAX_REDIRECTS` redirects, a total deadline (urllib3's
  timeouts are per read, so a server trickling bytes would otherwise hold a thread forever) and
  a body cut off at ``max_bytes`` (after decompression, so a gzip bomb is cut off too).

Failures are raised as :class:`PageError` with the URL and what happened.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

from watchkeeper import __version__
from watchkeeper.errors import WatchkeeperError
from watchkeeper.quantities import format_duration, retry_after_seconds


class PageError(WatchkeeperError):
    """A page could not be read: fetch, reply or content. The message names the URL and why."""


MAX_TOTAL = 100
"""Requests in flight at once over all hosts, whatever the pages' own limits."""
SLOT_WAIT = 300.0
"""Longest wait for a request slot before the fetch fails (apart from the request's timeout)."""
MAX_REDIRECTS = 5
"""Redirects followed before a fetch fails."""
MAX_PER_HOST_CAP = 16
"""The most connections kept open to one host (and the highest ``max_per_host``)."""
POOLS = 1024
"""Hosts whose connections are kept open at once (least recently used go first)."""
CHUNK = 65536
_RETRIES = urllib3.Retry(
    total=None,
    connect=0,
    read=0,
    status=0,
    other=0,
    redirect=MAX_REDIRECTS,
    raise_on_status=False,
    respect_retry_after_header=False,
)
"""Follow redirects, nothing else: a failed check is retried by the runtime, with backoff."""
USER_AGENT = f"watchkeeper/{__version__}"
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
class _Host:
    """Requests in flight to one host; its own Condition wakes only that host's waiters."""

    active: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)


class _Gate:
    """Per-host and global request slots.

    One Condition per host (not one for all) matters with many watchers: a thousand threads
    waiting on a single Condition would all wake at every release, only to sleep again.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hosts: dict[str, _Host] = {}
        self.total = threading.BoundedSemaphore(MAX_TOTAL)
        self.not_before: dict[str, float] = {}

    def _host(self, host: str) -> _Host:
        with self.lock:
            return self.hosts.setdefault(host, _Host())

    def acquire(self, host: str, limit: int, deadline: float, url: str) -> None:
        slot = self._host(host)
        with slot.cond:
            while slot.active >= limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PageError(
                        f"GET {url}: timed out waiting for a free slot "
                        f"({slot.active} requests to {host} in flight)"
                    )
                slot.cond.wait(remaining)
            slot.active += 1
        if not self.total.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            self._leave(slot)
            raise PageError(f"GET {url}: timed out waiting for a free slot ({MAX_TOTAL} in flight)")

    def release(self, host: str) -> None:
        self.total.release()
        self._leave(self.hosts[host])

    @staticmethod
    def _leave(slot: _Host) -> None:
        with slot.cond:
            slot.active -= 1
            slot.cond.notify_all()


def host_of(url: str) -> str:
    """``host:port`` of a URL: the unit the per-host limit and Retry-After apply to."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


class Fetcher:
    """One pooled client plus the gate; use :func:`shared` rather than making your own.

    urllib3 rather than httpx (which the webhook notifier uses): in the 1,000-page benchmark a
    request through httpx cost three times the CPU of one through urllib3, and a page watcher's
    work is mostly requests.
    """

    def __init__(self) -> None:
        self.pool = urllib3.PoolManager(
            num_pools=POOLS,
            maxsize=MAX_PER_HOST_CAP,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
        )
        self.gate = _Gate()
        self.users = 0

    def close(self) -> None:
        """Close every kept-alive connection now (urllib3's clear() leaves that to the GC)."""
        for key in self.pool.pools.keys():  # noqa: SIM118 (it refuses plain iteration)
            pool = self.pool.pools.get(key)
            if pool is not None:
                pool.close()
        self.pool.clear()

    def wait_hint(self, url: str) -> float:
        """Seconds until the host of ``url`` may be asked again (Retry-After), else 0."""
        until = self.gate.not_before.get(host_of(url))
        return 0.0 if until is None else max(until - time.time(), 0.0)

    def slot(self, url: str, max_per_host: int) -> _Slot:
        """A context manager holding one request slot for the host of ``url``.

        Waiting for it is not part of a request's ``timeout`` (that is the server's time), only
        of :data:`SLOT_WAIT`: the page pool lines pages up per host before they ask, so a wait
        here means another keeper in this process asks the same host, or 100 are in flight.
        """
        return _Slot(self.gate, host_of(url), max_per_host, time.monotonic() + SLOT_WAIT, url)

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
        """GET ``url`` politely; raise PageError for anything but a 2xx or 304 reply."""
        sent = {**self.pool.headers, **(headers or {})}
        if etag:
            sent["If-None-Match"] = etag
        if last_modified:
            sent["If-Modified-Since"] = last_modified
        with self.slot(url, max_per_host):
            started = time.monotonic()
            try:
                return self._get(url, sent, timeout, max_bytes, started)
            except urllib3.exceptions.HTTPError as exc:
                raise PageError(f"GET {url}: {_describe(exc, timeout)}") from exc

    def _get(
        self, url: str, headers: dict[str, str], timeout: float, max_bytes: int, started: float
    ) -> Reply:
        deadline = started + timeout
        response = self.pool.request(
            "GET",
            url,
            headers=headers,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=_RETRIES,
            preload_content=False,
        )
        clean = False
        try:
            reply = Reply(
                url=_final_url(url, response),
                status=response.status,
                headers={k.lower(): v for k, v in response.headers.items()},
            )
            if response.status == 304:
                reply.not_modified = True
            elif response.status >= 400:
                self._note_retry_after(reply)
                reason = response.reason or ""
                raise PageError(f"GET {url}: HTTP {response.status} {reason}".rstrip())
            else:
                reply.content, reply.truncated = _read(response, url, max_bytes, deadline, timeout)
            clean = not reply.truncated
            return reply
        finally:
            if not clean:
                response.close()  # unread bytes would poison the kept-alive connection
            response.release_conn()

    def _note_retry_after(self, reply: Reply) -> None:
        if reply.status not in (429, 503):
            return
        now = time.time()
        seconds = retry_after_seconds(reply.headers.get("retry-after"), now)
        if seconds:
            with self.gate.lock:
                self.gate.not_before[host_of(reply.url)] = now + seconds


def _final_url(url: str, response: urllib3.BaseHTTPResponse) -> str:
    """Where the redirects ended (``response.url`` holds only the path), for relative links."""
    history = response.retries.history if response.retries is not None else ()
    last = next((h.redirect_location for h in reversed(history) if h.redirect_location), None)
    return urljoin(url, last) if last else url


def _read(
    response: urllib3.BaseHTTPResponse, url: str, max_bytes: int, deadline: float, timeout: float
) -> tuple[bytes, bool]:
    """The decoded body, cut off after ``max_bytes``, within the whole-request deadline.

    ``read1`` returns whatever has arrived (``stream`` would wait for a whole chunk), so a server
    that drips a byte at a time still meets the deadline between two reads.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise PageError(
                f"GET {url}: timed out after {format_duration(timeout)} ({size} bytes read)"
            )
        chunk = response.read1(CHUNK, decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False


def _describe(exc: urllib3.exceptions.HTTPError, timeout: float) -> str:
    """A one-line reason from urllib3's exception (the cause inside MaxRetryError)."""
    reason: BaseException = exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    if isinstance(reason, urllib3.exceptions.ResponseError) and "redirect" in str(reason):
        return f"more than {MAX_REDIRECTS} redirects"
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return f"cannot resolve the host name ({reason.conn.host})"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return f"cannot connect: {str(reason).rpartition(': ')[2]}"
    if isinstance(reason, urllib3.exceptions.TimeoutError):  # NewConnectionError is one too
        return f"timed out after {format_duration(timeout)}"
    return f"{type(reason).__name__}: {reason}"


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


def wait_hint(url: str) -> float:
    """:meth:`Fetcher.wait_hint` of the shared fetcher; 0 while there is none."""
    fetcher = _shared.get("fetcher")
    return 0.0 if fetcher is None else fetcher.wait_hint(url)


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
            fetcher.close()
            del _shared["fetcher"]
