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

from rich.console import Console

from watchkeeper.alerts import Observation
from watchkeeper.keeper import Keeper
from watchkeeper.smtpsink import SmtpSink
from watchkeeper.store import Store

console = Console(stderr=True, highlight=False)


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


def run_demo(duration: float, open_browser: bool = True) -> None:
    """Run the demo for ``duration`` seconds (or until Ctrl-C) and print a summary."""
    from watchkeeper.cli import run_until_signal

    world = Path(tempfile.mkdtemp(prefix="watchkeeper-demo-"))
    inbox = world / "inbox"
    sink = SmtpSink(inbox).start()
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
            },
            {"kind": "jsonl", "path": str(world / "alerts.jsonl")},
        ],
        shutdown_timeout=3.0,
    )
    keeper.every("1s", queue.check, name="queue", for_cycles=2)
    console.print(f"[bold]watchkeeper demo[/] — a world in {world}")
    console.print(f"  demo inbox (emails as .eml): {inbox}")
    console.print(f"  state: {world / 'state.db'};  jsonl: {world / 'alerts.jsonl'}")
    console.print(f"  running for {duration:.0f}s; Ctrl-C ends it sooner.\n")
    dashboard = keeper.serve_dashboard("127.0.0.1:0")

    def show_dashboard() -> None:
        console.print(f"  dashboard: {dashboard.url}  (watchkeeper follow --url {dashboard.url})\n")
        # Only with a graphical session: on a bare terminal webbrowser may start a text browser.
        graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        if open_browser and (graphical or sys.platform in ("darwin", "win32")):
            webbrowser.open(dashboard.url)

    try:
        run_until_signal(keeper, duration, started=show_dashboard)
    finally:
        sink.stop()
    store = Store(world / "state.db")
    by_watcher = Counter(a.watcher for a in store.alerts())
    store.close()
    console.print("\n[bold]summary[/]")
    for watcher, count in sorted(by_watcher.items()):
        console.print(f"  alerts from {watcher}: {count}")
    console.print(f"  emails received: {len(sink.messages)} (in {inbox})")
