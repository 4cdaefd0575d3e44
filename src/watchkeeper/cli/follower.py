"""The client behind ``watchkeeper follow``: print an agent's alerts as they happen, like
``journalctl -f``.

The daemon-thread pattern of a chat client: a reader thread holds the SSE connection (httpx +
httpx-sse) and puts what arrives on a queue; the main thread prints, so Ctrl-C reaches it at once
and ends the program cleanly (the reader is a daemon and never holds the process open). When the
connection drops, the reader reconnects with exponential backoff and sends ``Last-Event-ID``, so
the agent replays exactly the alerts missed in between: none lost, none printed twice.

Alert text comes from logs and scraped pages: it is printed through rich ``Text`` with control
characters escaped (:func:`~watchkeeper.textsafe.terminal_safe`), so it cannot move the
cursor or recolour the terminal; ``--json`` output escapes them.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse
from rich.console import Console
from rich.text import Text

from watchkeeper.alerts import Alert, Severity
from watchkeeper.notifiers.console import alert_text
from watchkeeper.textsafe import terminal_safe

BACKOFF_MIN = 0.5
BACKOFF_MAX = 15.0
READ_TIMEOUT = 45.0
"""The agent sends a keepalive every 15 s; three missed ones mean the connection is dead."""


@dataclass(frozen=True)
class Notice:
    """A message about the connection for stderr; ``fatal`` ends ``follow`` with status 1."""

    message: str
    fatal: bool = False


class Follower:
    """Reads the agent's alert stream on a daemon thread; items arrive on :attr:`items`.

    Items are alert dicts (the API's JSON form) and :class:`Notice` objects.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        after_id: int | None = None,
        severity: Severity = Severity.DEBUG,
        watcher: str | None = None,
        since: str | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/api/stream"
        self.token = token
        self.last_id = after_id
        # Replay from this duration or time first; once connected, the agent's cursor rules.
        self.since = since
        self.params = {"severity": str(severity)} | ({"watcher": watcher} if watcher else {})
        self.items: queue.Queue[dict[str, Any] | Notice] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watchkeeper:follow", daemon=True)

    def start(self) -> None:
        """Start the reader thread."""
        self.thread.start()

    def stop(self) -> None:
        """Ask the reader to end (it ends at the next event or keepalive)."""
        self.stopping.set()

    def _run(self) -> None:
        delay = BACKOFF_MIN
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
        with httpx.Client(timeout=timeout) as client:
            while not self.stopping.is_set():
                try:
                    if self._read(client):
                        delay = BACKOFF_MIN
                except (httpx.HTTPError, SSEError) as exc:
                    where = (
                        "" if self.last_id is None else f"; will resume after alert {self.last_id}"
                    )
                    self.items.put(
                        Notice(f"{self.url}: {describe(exc)}; retrying in {delay:g}s{where}")
                    )
                except Fatal as exc:
                    self.items.put(Notice(str(exc), fatal=True))
                    return
                if self.stopping.wait(delay):
                    return
                delay = min(delay * 2, BACKOFF_MAX)

    def _read(self, client: httpx.Client) -> bool:
        """One connection; True when it was established (the backoff starts over)."""
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        params = dict(self.params)
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        elif self.since is not None:
            params["since"] = self.since
        with connect_sse(client, "GET", self.url, params=params, headers=headers) as source:
            status = source.response.status_code
            if status == 401:
                raise Fatal(f"{self.url}: 401 unauthorized; pass --token (or WATCHKEEPER_TOKEN)")
            if status in (404, 405):
                raise Fatal(f"{self.url}: {status}; is this a watchkeeper dashboard?")
            if status in (400, 403):  # a bad request or a refused host stays so: do not retry
                detail = source.response.read().decode(errors="replace")[:200]
                raise Fatal(f"{self.url}: {status} {detail}")
            source.response.raise_for_status()
            self.items.put(Notice(f"following {self.url}"))
            for event in source.iter_sse():
                if self.stopping.is_set():
                    break
                if event.event == "alert":
                    self.items.put(event.json())
                if event.id and event.id.isdigit():
                    self.last_id = int(event.id)
            else:
                raise httpx.RemoteProtocolError("the agent closed the stream")
        return True


class Fatal(Exception):
    """A reply that retrying cannot fix."""


def describe(exc: Exception) -> str:
    """A short reason for a lost connection."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    return str(exc) or type(exc).__name__


def alert_from_doc(doc: dict[str, Any]) -> Alert:
    """An Alert from the API's JSON form (for the console line)."""
    created = doc.get("created_at")
    return Alert(
        id=doc.get("id"),
        uid=str(doc.get("uid", "")),
        watcher=str(doc.get("watcher", "?")),
        kind=str(doc.get("kind", "?")),
        severity=Severity.parse(doc.get("severity", "warning")),
        status="resolved" if doc.get("status") == "resolved" else "firing",
        key=str(doc.get("key", "")),
        title=str(doc.get("title", "")),
        body=str(doc.get("body", "")),
        created_at=datetime.fromisoformat(created).timestamp() if created else 0.0,
    )


def print_alerts(follower: Follower, out: Console, err: Console, as_json: bool = False) -> int:
    """Start ``follower`` and print what it reads until Ctrl-C (0) or a fatal reply (1)."""
    follower.start()
    try:
        while True:
            try:
                item = follower.items.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, Notice):
                style = "red" if item.fatal else "dim"
                err.print(Text(terminal_safe(item.message), style=style))
                if item.fatal:
                    return 1
            elif as_json:
                sys.stdout.write(json.dumps(item, ensure_ascii=True) + "\n")
                sys.stdout.flush()
            else:
                line = alert_text(alert_from_doc(item))
                line.append(f"  #{item.get('id')}", style="dim")
                out.print(line, soft_wrap=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `follow | head -3`: the reader has had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush cannot fail again
        return 0
    finally:
        follower.stop()
