"""Running a keeper in the foreground until SIGTERM or SIGINT: ``watchkeeper run``, ``tail`` and
the demo share this.

Signals can only be handled in the main thread, so this is where agent mode turns them into
actions: SIGTERM and SIGINT into the same graceful stop the embedded atexit hook performs, SIGHUP
into a reload (when the caller gives one). The handlers only set flags; the work happens in the
main loop, never inside a signal handler. Under systemd the loop also reports readiness,
reloads and the stop (:mod:`watchkeeper.sdnotify`) and pings the watchdog while the keeper's
threads are alive, so a keeper that is wedged is restarted by systemd.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from watchkeeper import sdnotify

if TYPE_CHECKING:
    from watchkeeper.keeper import Keeper

TICK = 1.0
"""The main loop's longest sleep: how late a duration's end may be noticed."""


def run_until_signal(
    keeper: Keeper,
    duration: float | None = None,
    started: Callable[[], None] | None = None,
    reload: Callable[[], None] | None = None,
) -> None:
    """Start a keeper and hold the main thread until SIGTERM/SIGINT (or ``duration``), then stop.

    With ``reload``, SIGHUP calls it from this loop (it reports its own errors; one that raises
    is a bug and ends the agent like any other).
    """
    stop = threading.Event()
    hangup = threading.Event()
    wake = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        hangup.set()
        wake.set()

    handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: on_stop,
        signal.SIGINT: on_stop,
    }
    if reload is not None:
        handlers[signal.SIGHUP] = on_hangup
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    watchdog = sdnotify.watchdog_interval()
    try:
        keeper.start()
        if started is not None:
            started()
        sdnotify.notify("READY=1", f"STATUS=watching: {len(keeper.watchers)} watchers")
        ends = None if duration is None else time.monotonic() + duration
        pinged = 0.0
        while True:
            wake.clear()
            if stop.is_set():
                break
            if hangup.is_set():
                hangup.clear()
                _reload(reload)
            if stop.is_set():
                break
            now = time.monotonic()
            if watchdog is not None and now - pinged >= watchdog and keeper.healthy():
                sdnotify.notify("WATCHDOG=1")
                pinged = now
            remaining = None if ends is None else ends - now
            if remaining is not None and remaining <= 0:
                break
            tick = TICK if watchdog is None else min(TICK, watchdog)
            wake.wait(tick if remaining is None else min(tick, remaining))
    finally:
        sdnotify.notify("STOPPING=1")
        try:
            keeper.stop()  # our handlers stay: a SIGHUP or a second Ctrl-C now only sets a flag
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _reload(reload: Callable[[], None] | None) -> None:
    if reload is None:
        return
    # MONOTONIC_USEC lets systemd (253+) match the READY=1 that ends this reload.
    stamp = f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    sdnotify.notify("RELOADING=1", stamp)
    try:
        reload()
    finally:
        sdnotify.notify("READY=1")
