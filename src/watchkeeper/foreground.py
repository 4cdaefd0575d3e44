"""Running a keeper in the foreground until SIGTERM or SIGINT: ``watchkeeper run``, ``tail`` and
the demo share this.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watchkeeper.keeper import Keeper


def run_until_signal(
    keeper: Keeper, duration: float | None = None, started: Callable[[], None] | None = None
) -> None:
    """Start a keeper and hold the main thread until SIGTERM/SIGINT (or ``duration``), then stop.

    Signals can only be handled in the main thread, so this is where agent mode turns them into
    the same graceful stop the embedded atexit hook performs.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        keeper.start()
        if started is not None:
            started()
        ends = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            remaining = None if ends is None else ends - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            stop.wait(1.0 if remaining is None else min(1.0, remaining))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        keeper.stop()
