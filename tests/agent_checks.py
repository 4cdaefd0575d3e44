"""Check functions that `watchkeeper run` subprocesses in the tests call (``call = "..."``).

``fire`` turns each JSON file a test drops into ``$WK_FIRE_DIR`` into one event alert, in file
name order, so a test decides exactly which alerts a real running agent makes and when.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from watchkeeper import Observation


def fire() -> list[Observation]:
    """One event observation per ``*.json`` file, consumed as read."""
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
