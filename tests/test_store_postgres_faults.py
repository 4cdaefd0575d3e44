"""Faults a shared PostgreSQL store must survive without losing or repeating an alert: text
PostgreSQL cannot hold, claims that strand or spin a dispatcher, a COMMIT whose answer never
comes, the server away and back. Where SQLite meets the same input, the same body runs on it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import read_jsonl, wait_until
from watchkeeper import Keeper


def test_nul_in_a_checks_output_or_error_neither_wedges_it_nor_loses_the_alert(
    state: str | Path, tmp_path: Path
) -> None:
    """PostgreSQL refuses NUL in text: the commit failed on every redo, for ever."""
    jsonl = tmp_path / "alerts.jsonl"
    keeper = Keeper(state=state, notify=[{"kind": "jsonl", "path": str(jsonl)}])

    def broken() -> None:
        raise RuntimeError("command printed \x00\x00")

    keeper.every(0.05, lambda: "backup failed: tar: \x00 in name", name="said")
    keeper.every(0.05, broken, name="broken", fail_after=1)
    with keeper:

        def checked(name: str) -> int:
            record = keeper.store.watcher(name)
            return 0 if record is None else record.checks

        wait_until(lambda: checked("said") >= 3 and checked("broken") >= 3)
        wait_until(lambda: {r["watcher"] for r in read_jsonl(jsonl)} == {"said", "broken"})
        assert keeper.store.fault is None
    by_watcher = {r["watcher"]: r["title"] for r in read_jsonl(jsonl)}
    assert "in name" in by_watcher["said"]
    assert "command printed" in by_watcher["broken"]
    assert len(read_jsonl(jsonl)) == 2  # each once
