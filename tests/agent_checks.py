"""Check functions that agent subprocesses in the tests load through ``call = "..."``.

``fire`` turns each JSON file a test drops into ``$WK_FIRE_DIR`` into one event alert, in file
name order, so a test decides exactly which alerts a real running agent makes and when.
"""

from __future__ import annotations

import itertools
import json
import os
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
