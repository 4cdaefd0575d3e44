"""Check functions that agent subprocesses in the tests load through ``call = "..."``."""

from __future__ import annotations

import itertools

from watchkeeper import Observation

_ticks = itertools.count()


def tick() -> Observation:
    """A new event alert on every check."""
    return Observation(f"tick {next(_ticks)}", event=True)


def always() -> Observation:
    """A condition that always holds: one alert, ever, per state file."""
    return Observation("always on", severity="error", key="always")
