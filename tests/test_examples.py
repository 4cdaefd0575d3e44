"""The runnable examples in examples/ run and show what their docstrings promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_daemon_threads_example() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "daemon_threads.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    plain, daemon, keeper = rows["plain"], rows["daemon"], rows["keeper"]
    assert float(plain[1].rstrip("s")) > 2.0
    assert plain[2] == "yes"
    assert float(daemon[1].rstrip("s")) < 1.0
    assert daemon[2] == "NO"
    assert float(keeper[1].rstrip("s")) < 1.0
    assert keeper[2] == "yes"


def test_custom_watcher_example() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "custom_watcher.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    new_files = [line for line in lines if "new file job-" in line]
    assert len(new_files) == 5
    assert [line.split()[0] for line in lines if "spool-backlog" in line] == ["firing", "resolved"]
