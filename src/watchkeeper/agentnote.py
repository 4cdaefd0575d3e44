"""The running agent's note beside its state file: who it is, which config it runs, and how the
last reload went.

``watchkeeper status`` and ``watchkeeper reload`` run in other processes and cannot ask the agent;
they read this note (``<state>.agent.json``), which the agent rewrites atomically (a temporary
file renamed over it) at start and after every reload. It is not part of the state: losing it
loses nothing, and a note whose agent is gone is ignored (the state file's lock says who runs,
:meth:`watchkeeper.store.Store.holder`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AgentNote:
    """What the agent says about itself."""

    pid: int
    config: str
    started_at: float
    loaded_at: float
    """When the running config was loaded: the start, or the last reload that applied."""
    reload_at: float | None = None
    reload_ok: bool | None = None
    reload_lines: list[str] = field(default_factory=list)
    """What the last reload changed, or why it was refused (every config error)."""
    watchers: list[str] = field(default_factory=list)
    """The watchers the running config has: the state may remember others, removed since."""


def note_path(state: Path) -> Path:
    """Where the agent using ``state`` keeps its note."""
    return state.with_name(state.name + ".agent.json")


def write_note(state: Path, note: AgentNote) -> None:
    """Replace the note atomically; a failure is the caller's to log (the note is optional)."""
    path = note_path(state)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(asdict(note)), encoding="utf-8")
    temporary.replace(path)


def read_note(state: Path) -> AgentNote | None:
    """The note, or None when there is none or it cannot be read."""
    try:
        data: dict[str, Any] = json.loads(note_path(state).read_text(encoding="utf-8"))
        return AgentNote(**data)
    except (OSError, ValueError, TypeError):
        return None
