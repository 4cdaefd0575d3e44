"""Check functions that agent subprocesses in the tests load through ``call = "..."``.

``fire`` turns each JSON file a test drops into ``$WK_FIRE_DIR`` into one event alert, in file
name order, so a test decides exactly which alerts a real running agent makes and when.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

from watchkeeper import Observation

_ticks = itertools.count()


def tick() -> Observation:
    """A new event alert on every check."""
    return Observation(f"tick {next(_ticks)}", event=True)


def always() -> Observation:
    """A condition that always holds: one alert, ever, per state file."""
    return Observation("always on", severity="error", key="always")


def fire() -> list[Observation]:
    """One event observation per ``*.json`` file in ``$WK_FIRE_DIR``, consumed as read."""
    folder = Path(os.environ["WK_FIRE_DIR"])
    found = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        path.unlink()
        found.append(
            Observation(
                title=doc["title"],
                severity=doc.get("severity", "warning"),
                key=path.stem,
                body=doc.get("body", ""),
                event=True,
            )
        )
    return found


def steady() -> None:
    """A second watcher that is always fine."""
    return None


def broken() -> None:
    """A check that always raises: the agent logs its traceback."""
    raise RuntimeError("no route to queue")


# For the reload tests, in the test's own process: a check that holds until released, counting
# how many run at once (a reload must never run one watcher's check twice at the same time).
release = threading.Event()
held_counts = {"running": 0, "most_at_once": 0}
_running_lock = threading.Lock()


def held() -> Observation:
    """Wait for ``release`` (at most 30 s), then report a condition."""
    with _running_lock:
        held_counts["running"] += 1
        held_counts["most_at_once"] = max(held_counts["most_at_once"], held_counts["running"])
    try:
        release.wait(30)
    finally:
        with _running_lock:
            held_counts["running"] -= 1
    return Observation("disk full", severity="error", key="disk")


def slow_stop() -> None:
    """A check that takes a second: an agent stopping during it waits for it."""
    time.sleep(1.0)  # the work of a slow check, not synchronisation


queue: list[str] = []
"""Titles the ``queued`` check turns into event alerts, one check later."""


def queued() -> list[Observation]:
    found = [Observation(title, event=True) for title in queue]
    queue.clear()
    return found


def crash_dispatcher_on_flag() -> None:
    """Fault injection in a real agent: when ``$WK_FIRE_DIR/crash-dispatcher`` appears, the
    next pass of a dispatcher's loop raises (once), as a bug in it would."""
    flag = Path(os.environ["WK_FIRE_DIR"]) / "crash-dispatcher"
    if not flag.exists():
        return
    flag.unlink()
    from watchkeeper.runtime import Dispatcher

    real_step = Dispatcher._step

    def step(self: Dispatcher) -> bool:
        Dispatcher._step = real_step  # type: ignore[method-assign]
        raise RuntimeError("injected dispatcher crash")

    Dispatcher._step = step  # type: ignore[method-assign]
