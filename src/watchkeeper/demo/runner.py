"""``watchkeeper demo``: a self-contained world on loopback that shows watchkeeper working.

It needs nothing from the machine: a temporary folder holds the state and the demo inbox, an
in-process SMTP sink receives the emails, and every alert also prints live in the terminal.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import webbrowser
from collections import Counter
from pathlib import Path
from typing import Protocol

from rich.console import Console

from watchkeeper.alerts import Observation
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.demo.world import FlappingPort, LogWriter, Shop
from watchkeeper.foreground import run_until_signal
from watchkeeper.keeper import Keeper
from watchkeeper.store import Store
from watchkeeper.web import serve_dashboard

console = Console(stderr=True, highlight=False, soft_wrap=True)


class Stoppable(Protocol):
    """A part of the demo world."""

    def stop(self) -> None:
        """Stop it."""


class QueueSimulation:
    """A job queue whose depth swings up and down, so its alert fires and recovers."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def depth(self) -> int:
        """Depth over time: a slow sine wave peaking above the alert threshold."""
        elapsed = time.monotonic() - self.started
        return int(60 + 70 * math.sin(elapsed / 3.0))

    def check(self) -> Observation | None:
        """Alert while the queue is deeper than 100 jobs."""
        depth = self.depth()
        if depth > 100:
            return Observation(
                title=f"queue depth {depth} > 100",
                severity="error",
                key="queue-depth",
                body="Workers are falling behind.",
                data={"depth": depth},
            )
        return None


def build_keeper(world: Path, sink: SmtpSink) -> tuple[Keeper, list[Stoppable]]:
    """The demo's keeper, watching the demo world with every watcher kind."""
    shop = Shop(every=4.0).start()
    log_writer = LogWriter(world / "logs" / "app.log", rotate_every=15.0).start()
    port = FlappingPort(period=8.0).start()
    queue = QueueSimulation()
    keeper = Keeper(
        state=world / "state.db",
        notify=[
            {"kind": "console"},
            {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": sink.port,
                "sender": "watchkeeper@demo.localhost",
                "to": ["you@demo.localhost"],
                "min_severity": "warning",
            },
            {"kind": "jsonl", "path": str(world / "alerts.jsonl")},
        ],
        shutdown_timeout=3.0,
    )
    keeper.log(
        str(world / "logs" / "*.log"),
        rules=[
            {"match": "CRITICAL", "severity": "critical"},
            {
                "match": r"Traceback \(most recent call last\)",
                "severity": "error",
                "block": "python",
            },
        ],
        name="app-log",
        start_at="beginning",
    )
    keeper.page(f"{shop.url}/new", items="li.product", title="h2", every="2s", name="shop-html")
    keeper.page(
        f"{shop.url}/api/items",
        items="items",
        format="json",
        every="3s",
        name="shop-api",
        severity="warning",
    )
    keeper.page(f"{shop.url}/feed.xml", format="feed", every="3s", name="shop-feed")
    keeper.ports("127.0.0.1", ports=[port.port], every="2s", name="port", timeout="500ms")
    keeper.every("1s", queue.check, name="queue", for_cycles=2)
    return keeper, [shop, log_writer, port]


def run_demo(duration: float, open_browser: bool = True) -> None:
    """Run the demo for ``duration`` seconds (or until Ctrl-C) and print a summary."""
    world = Path(tempfile.mkdtemp(prefix="watchkeeper-demo-"))
    inbox = world / "inbox"
    sink = SmtpSink(inbox).start()
    keeper, world_parts = build_keeper(world, sink)
    console.print(f"[bold]watchkeeper demo[/] — a small world on 127.0.0.1, in {world}")
    console.print("  a shop adds an item every 4 s (HTML, JSON API, RSS); an app log gets")
    console.print("  CRITICAL lines and tracebacks and is rotated; a TCP port opens and closes.")
    console.print(f"  demo inbox (emails as .eml): {inbox}")
    console.print(f"  alerts as JSON lines: {world / 'alerts.jsonl'}")
    console.print(f"  running for {duration:.0f}s; Ctrl-C ends it sooner.")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")

    def show_dashboard() -> None:
        console.print(f"  dashboard: {dashboard.url}  (watchkeeper follow --url {dashboard.url})\n")
        # Only with a graphical session: on a bare terminal webbrowser may start a text browser.
        graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        if open_browser and (graphical or sys.platform in ("darwin", "win32")):
            webbrowser.open(dashboard.url)

    try:
        run_until_signal(keeper, duration, started=show_dashboard)
    finally:
        for part in world_parts:
            part.stop()
        sink.stop()
    with Store(world / "state.db", readonly=True) as store:
        alerts = store.alerts(limit=100_000)
    by_watcher = Counter((a.kind, a.watcher) for a in alerts)
    console.print("\n[bold]summary[/]")
    for (kind, watcher), count in sorted(by_watcher.items()):
        console.print(f"  alerts from {kind} watcher {watcher}: {count}")
    console.print(f"  emails received: {len(sink.messages)} (in {inbox})")
