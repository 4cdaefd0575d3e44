"""A real HTTP site on 127.0.0.1 for the page watcher's tests: pages that change under test.

Each path serves a :class:`Page`. The site counts requests per path, the conditional ones (with
If-None-Match or If-Modified-Since) and the 304s it answered, and the most requests it had in
flight at once, so tests can assert what a polite client must do.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from watchkeeper.demo.world import QuietHandler


@dataclass
class Page:
    """What a path answers."""

    body: bytes | str = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    delay: float = 0.0
    drip: float = 0.0  # send the body a byte at a time, this many seconds apart


class Site:
    """The server and its counters; ``site.pages[path] = Page(...)`` changes what it serves."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.hits: Counter[str] = Counter()
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        """When each path was asked for (monotonic): how often a fleet checked a page."""
        self.conditional: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self.in_flight = 0
        self.active: Counter[str] = Counter()
        """Requests being answered now, per path."""
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="page-site", daemon=True
        )

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def html(self, path: str, items: list[str], **options: Any) -> str:
        """Serve a list page with one ``<li>`` per entry of ``items`` (raw inner HTML)."""
        inner = "\n".join(f"<li class='item'>{entry}</li>" for entry in items)
        body = f"<html><body><p>Updated {self.hits[path]}</p><ul>{inner}</ul></body></html>"
        self.pages[path] = Page(body, **options)
        return self.url(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path
                with site.lock:
                    site.hits[path] += 1
                    site.times[path].append(time.monotonic())
                    site.in_flight += 1
                    site.active[path] += 1
                    site.max_in_flight = max(site.max_in_flight, site.in_flight)
                try:
                    self._answer(path)
                finally:
                    with site.lock:
                        site.in_flight -= 1
                        site.active[path] -= 1

            def _answer(self, path: str) -> None:
                page = site.pages.get(path)
                if page is None:
                    self._send(404, b"not found", "text/plain", {})
                    return
                if page.delay:
                    site.closing.wait(page.delay)
                conditional = self.headers.get("If-None-Match")
                if conditional or self.headers.get("If-Modified-Since"):
                    site.conditional[path] += 1
                if page.etag and conditional == page.etag:
                    site.not_modified[path] += 1
                    self._send(304, b"", None, {"ETag": page.etag})
                    return
                body = page.body.encode() if isinstance(page.body, str) else page.body
                headers = dict(page.headers)
                if page.etag:
                    headers["ETag"] = page.etag
                self._send(page.status, body, page.content_type, headers, page.drip)

            def _send(
                self,
                status: int,
                body: bytes,
                ctype: str | None,
                headers: dict[str, str],
                drip: float = 0.0,
            ) -> None:
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (a timeout test)
                    if not drip:
                        self.wfile.write(body)
                    for byte in body if drip else b"":
                        if site.closing.wait(drip):
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()

        return Handler

    def start(self) -> Site:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def site() -> Iterator[Site]:
    """A page site on 127.0.0.1, port 0."""
    server = Site().start()
    yield server
    server.stop()
