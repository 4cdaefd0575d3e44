"""`watchkeeper demo` end to end, as a newcomer runs it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_cli


def test_demo_shows_every_watcher_kind_and_sends_email(tmp_path: Path) -> None:
    result = run_cli("demo", "--duration", "20s", "--no-browser", cwd=tmp_path, timeout=90)
    assert result.returncode == 0, result.stderr
    summary = result.stderr.split("summary", 1)[1]
    counts = {
        kind: sum(int(n) for n in re.findall(rf"alerts from {kind} watcher \S+: (\d+)", summary))
        for kind in ("log", "page", "ports", "custom")
    }
    assert all(counts[kind] > 0 for kind in ("log", "page", "ports")), summary
    emails = int(re.search(r"emails received: (\d+)", summary).group(1))  # type: ignore[union-attr]
    assert emails > 0
    inbox = Path(re.search(r"emails received: \d+ \(in (\S+)\)", summary).group(1))  # type: ignore[union-attr]
    assert len(list(inbox.glob("*.eml"))) == emails
    assert "dashboard: http://127.0.0.1:" in result.stderr
