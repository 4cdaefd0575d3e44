"""The small world ``watchkeeper demo`` watches, all on loopback and in one temporary folder.

- :class:`Shop`: a local web shop that adds a new item every few seconds, as an HTML list, a JSON
  API and an RSS feed (with ETags, so conditional GETs answer 304 between changes).
- :class:`LogWriter`: an application log with INFO noise, an occasional CRITICAL line and a
  Python traceback, rotated like logrotate (rename, then create a new file).
- :class:`FlappingPort`: a TCP port that opens and closes.

Each runs on a daemon thread of its own with a stop event, so the demo ends cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not log each request to stderr (the demo prints alerts)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing; the standard handler writes every request to stderr."""


PRODUCTS = [
    "brass telescope",
    "ship's bell",
    "storm lantern",
    "sextant",
    "logbook",
    "sea chart",
    "spyglass",
    "compass rose",
    "rope ladder",
    "anchor charm",
    "barometer",
    "tide clock",
]


class Shop:
    """A shop on 127.0.0.1 whose catalogue grows by one item every ``every`` seconds."""

    def __init__(self, every: float = 4.0) -> None:
        self.every = every
        self.items: list[dict[str, Any]] = [self._item(i) for i in range(3)]
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        shop = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                body, content_type = shop.render(self.path)
                if body is None:
                    self.send_error(404)
                    return
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def _item(number: int) -> dict[str, Any]:
        name = PRODUCTS[number % len(PRODUCTS)]
        return {
            "id": number,
            "name": f"{name} #{number}",
            "price": 10 + number * 7 % 90,
            "url": f"/item/{number}",
        }

    def render(self, path: str) -> tuple[bytes | None, str]:
        """The page, API document or feed for a path (newest items first)."""
        with self.lock:
            items = list(reversed(self.items))
        if path.startswith("/new"):
            rows = "\n".join(
                f'<li class="product"><a href="{html.escape(i["url"])}"><h2>'
                f'{html.escape(i["name"])}</h2></a><span class="price">{i["price"]} €</span></li>'
                for i in items
            )
            page = (
                f"<!doctype html><html><head><title>The Chandlery</title></head><body>"
                f"<h1>New arrivals</h1><p>Served at {time.strftime('%H:%M:%S')}</p>"
                f"<ul>{rows}</ul></body></html>"
            )
            return page.encode(), "text/html; charset=utf-8"
        if path.startswith("/api/items"):
            return json.dumps({"items": items}).encode(), "application/json"
        if path.startswith("/feed"):
            entries = "".join(
                f"<item><title>{html.escape(i['name'])}</title><link>{self.url}{i['url']}</link>"
                f"<guid>{self.url}{i['url']}</guid></item>"
                for i in items
            )
            feed = (
                f'<?xml version="1.0"?><rss version="2.0"><channel><title>The Chandlery'
                f"</title><link>{self.url}/new</link><description>new arrivals</description>"
                f"{entries}</channel></rss>"
            )
            return feed.encode(), "application/rss+xml"
        return None, ""

    def _grow(self) -> None:
        while not self.stopped.wait(self.every):
            with self.lock:
                self.items.append(self._item(len(self.items)))

    def start(self) -> Shop:
        """Serve and grow, each on a daemon thread."""
        threading.Thread(
            target=self.server.serve_forever, args=(0.1,), daemon=True, name="demo:shop"
        ).start()
        threading.Thread(target=self._grow, daemon=True, name="demo:shop-grow").start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/orders.py", line 88, in settle
    charge(order)
  File "/srv/app/payments.py", line 21, in charge
    raise PaymentDeclined(order.id)
payments.PaymentDeclined: order {n}
"""


class LogWriter:
    """Writes an application log and rotates it like logrotate's default (rename + create)."""

    def __init__(self, path: Path, rotate_every: float = 15.0) -> None:
        self.path = path
        self.rotate_every = rotate_every
        self.stopped = threading.Event()
        self.lines = 0
        self.random = random.Random(1)

    def _write(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text)

    def _run(self) -> None:
        last_rotation = time.monotonic()
        tick = 0
        while not self.stopped.wait(0.25):
            tick += 1
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._write(f"{stamp} INFO request served in {self.random.randint(3, 90)}ms\n")
            if tick % 24 == 8:
                self._write(f"{stamp} CRITICAL disk /var/lib/app is 97% full\n")
            if tick % 40 == 20:
                self._write(f"{stamp} ERROR payment failed\n" + TRACEBACK.format(n=tick))
            self.lines += 1
            if time.monotonic() - last_rotation >= self.rotate_every:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
                self.path.touch()
                last_rotation = time.monotonic()

    def start(self) -> LogWriter:
        """Start writing on a daemon thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        threading.Thread(target=self._run, daemon=True, name="demo:log-writer").start()
        return self

    def stop(self) -> None:
        """Stop writing."""
        self.stopped.set()


class FlappingPort:
    """A TCP port on 127.0.0.1 that is open for ``period`` seconds, then closed as long."""

    def __init__(self, period: float = 10.0) -> None:
        self.period = period
        self.stopped = threading.Event()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]

    def _run(self) -> None:
        while not self.stopped.is_set():
            with socket.socket() as listener:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    listener.bind(("127.0.0.1", self.port))
                except OSError:
                    self.stopped.wait(1.0)
                    continue
                listener.listen(16)
                listener.settimeout(0.2)
                opened = time.monotonic()
                while not self.stopped.is_set() and time.monotonic() - opened < self.period:
                    with contextlib.suppress(TimeoutError):  # no one came: look at the clock
                        conn, _ = listener.accept()
                        conn.close()
            self.stopped.wait(self.period)

    def start(self) -> FlappingPort:
        """Start flapping on a daemon thread."""
        threading.Thread(target=self._run, daemon=True, name="demo:port").start()
        return self

    def stop(self) -> None:
        """Close the port for good."""
        self.stopped.set()
