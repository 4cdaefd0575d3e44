"""The live stream: Server-Sent Events of alerts (and watcher state), resumable by alert id.

Watcher threads call :meth:`Broadcaster.publish` after each commit; the event loop of the web
server owns one queue per connected client, so the hand-over is ``loop.call_soon_threadsafe``.

Neither missed nor repeated, across reconnects and out-of-order hand-overs: the store is the
source of truth and the live hand-over is only the fast path. Each client keeps a *cursor*: every
alert with an id at or below it has been sent or filtered out. A client subscribes *before* it
replays from the store, so nothing committed in between can slip past; a live batch that
continues the cursor exactly is sent as is; anything else (a gap because two watcher threads
committed in one order and called back in the other, or an alert another process added) makes
the client read the store from its cursor; ids at or below the cursor are dropped. Alert ids grow
by one per committed alert (SQLite AUTOINCREMENT; retention deletes only old ones), which is what
"continues exactly" relies on. A commit's alerts are serialised once, for every client.

Every alert event carries its id as the SSE ``id``, and the stream opens with a ``ready`` event
that carries the cursor, so a client that saw no alert yet still resumes from the right place
(``Last-Event-ID`` or ``?since=ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from watchkeeper.alerts import Alert, Severity
from watchkeeper.store import Store
from watchkeeper.web.data import AlertQuery, find_alerts, last_alert_id

KEEPALIVE = 15.0
"""Seconds between comment lines on an idle stream: proxies keep it open, clients see it alive."""
QUEUE_LIMIT = 1000
"""A client this far behind is disconnected; it reconnects and replays from the store."""
REPLAY_BATCH = 500
RETRY_MS = 2000

_CLOSE = object()
_WAKE = object()


@dataclass(eq=False)
class Client:
    """One connected stream: its queue lives on the server's event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False

    def offer(self, item: Any) -> None:
        """Runs on the loop: queue an item, or mark the client as too slow."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class Broadcaster:
    """Fans committed alerts and watcher changes out to every connected client."""

    def __init__(self) -> None:
        self._clients: set[Client] = set()
        self._lock = threading.Lock()
        self.newest = 0
        """The highest alert id handed over live (the store poller wakes clients beyond it)."""

    def add(self, loop: asyncio.AbstractEventLoop) -> Client:
        """Register a client (call from the loop, before replaying)."""
        client = Client(loop)
        with self._lock:
            self._clients.add(client)
        return client

    def remove(self, client: Client) -> None:
        """Forget a client that went away."""
        with self._lock:
            self._clients.discard(client)

    def publish_alerts(self, alerts: list[Alert]) -> None:
        """The keeper's listener: runs on the watcher thread that committed ``alerts``.

        Each alert is serialised here, once for every client (and not at all when none is
        connected): a hundred clients cost one ``json.dumps`` per alert, not a hundred.
        """
        with self._lock:
            self.newest = max([self.newest, *(a.id or 0 for a in alerts)])
            if not self._clients:
                return
        ordered = sorted(alerts, key=lambda a: a.id or 0)
        texts = [sse(a.to_dict(), "alert", a.id) for a in ordered]
        lowest = min(a.severity for a in ordered)
        self.publish(Batch(ordered, texts, "".join(texts).encode(), lowest))

    def wake(self, newest: int) -> None:
        """Alerts up to ``newest`` exist that were not handed over (another process made them)."""
        with self._lock:
            self.newest = max(self.newest, newest)
        self.publish(_WAKE)

    def publish(self, item: Any) -> None:
        """From any thread: hand ``item`` (alerts, a watcher document, a signal) to every client."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(RuntimeError):  # a closed loop: the server is stopping
                client.loop.call_soon_threadsafe(client.offer, item)

    def close_all(self) -> None:
        """Ask every open stream to end (the server is stopping)."""
        self.publish(_CLOSE)

    @property
    def count(self) -> int:
        """How many clients are connected."""
        with self._lock:
            return len(self._clients)


@dataclass(frozen=True)
class Batch:
    """Alerts one commit made, in id order, with their SSE messages made once for all clients:
    each one's text, and all of them as the bytes a client that takes them all is sent."""

    alerts: list[Alert]
    texts: list[str]
    data: bytes = b""
    lowest: Severity = Severity.DEBUG

    def for_client(self, selector: StreamFilter) -> str | bytes:
        """What a client with this filter is sent (the shared bytes when it takes every alert)."""
        if selector.watcher is None and self.lowest >= selector.min_severity:
            return self.data
        return "".join(
            text
            for alert, text in zip(self.alerts, self.texts, strict=True)
            if selector.accepts(alert)
        )


@dataclass(frozen=True)
class StreamFilter:
    """Which alerts a stream sends: at or above a severity, optionally of one watcher."""

    min_severity: Severity = Severity.DEBUG
    watcher: str | None = None

    def accepts(self, alert: Alert) -> bool:
        """True when the alert passes the filter."""
        return alert.severity >= self.min_severity and (
            self.watcher is None or alert.watcher == self.watcher
        )


def sse(data: dict[str, Any], event: str, event_id: int | None = None) -> str:
    """One SSE message; JSON keeps untrusted text on a single ``data:`` line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    text = json.dumps(data, ensure_ascii=False, default=str)  # live alerts hold raw check data
    return f"{head}event: {event}\ndata: {text}\n\n"


async def alert_events(
    broadcaster: Broadcaster,
    store: Store,
    since: int | None,
    selector: StreamFilter,
) -> AsyncIterator[str | bytes]:
    """The SSE body: ``ready``, the replay after ``since``, then live alerts until closed."""
    client = broadcaster.add(asyncio.get_running_loop())
    try:
        newest = last_alert_id(store)
        cursor = newest if since is None else max(since, 0)
        reset = cursor > newest  # a resume id from another (or a deleted) state file
        if reset:  # start over from the newest alert rather than drop alerts until ids catch up
            cursor = newest
        ready = {"cursor": cursor, "reset": True} if reset else {"cursor": cursor}
        yield f"retry: {RETRY_MS}\n" + sse(ready, "ready", cursor)
        more = True
        while more:
            cursor, texts, more = _from_store(store, cursor, selector)
            if texts:
                yield "".join(texts)
        while not client.overflowed:
            try:
                item = await asyncio.wait_for(client.queue.get(), KEEPALIVE)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if item is _CLOSE:
                break
            if isinstance(item, dict):
                yield sse(item, "watcher")
                continue
            batch = item if isinstance(item, Batch) else Batch([], [])
            alerts = batch.alerts
            if alerts and (alerts[-1].id or 0) <= cursor:
                continue
            if alerts and alerts[0].id == cursor + 1 and _contiguous(alerts):
                # One write per commit, not per alert: a storm's cost per client is a few
                # socket writes, not thousands.
                shown = batch.for_client(selector)
                if shown:
                    yield shown
                cursor = alerts[-1].id or cursor
            else:
                more = True
                while more:
                    cursor, texts, more = _from_store(store, cursor, selector)
                    if texts:
                        yield "".join(texts)
    finally:
        broadcaster.remove(client)


def _contiguous(alerts: list[Alert]) -> bool:
    return all((b.id or 0) == (a.id or 0) + 1 for a, b in itertools.pairwise(alerts))


def _from_store(store: Store, cursor: int, selector: StreamFilter) -> tuple[int, list[str], bool]:
    """Stored alerts after ``cursor`` (one batch): the new cursor, their events, more to read."""
    found = find_alerts(store, AlertQuery(since_id=cursor, limit=REPLAY_BATCH), newest_first=False)
    texts = [sse(a.to_dict(), "alert", a.id) for a in found if selector.accepts(a)]
    if found:
        cursor = found[-1].id or cursor
    return cursor, texts, len(found) == REPLAY_BATCH
