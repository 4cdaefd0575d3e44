"""The runnable examples in examples/ run and show what their docstrings promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    """Run an example as a user would; return what it printed."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_daemon_threads_example() -> None:
    stdout = run_example("daemon_threads.py")
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()[1:]}
    plain, daemon, keeper = rows["plain"], rows["daemon"], rows["keeper"]
    assert float(plain[1].rstrip("s")) > 2.0
    assert plain[2] == "yes"
    assert float(daemon[1].rstrip("s")) < 1.0
    assert daemon[2] == "NO"
    assert float(keeper[1].rstrip("s")) < 1.0
    assert keeper[2] == "yes"


def test_custom_watcher_example() -> None:
    stdout = run_example("custom_watcher.py")
    lines = stdout.splitlines()
    new_files = [line for line in lines if "new file job-" in line]
    assert len(new_files) == 5
    assert [line.split()[0] for line in lines if "spool-backlog" in line] == ["firing", "resolved"]


def test_log_monitor_example() -> None:
    lines = run_example("log_monitor.py").splitlines()
    assert lines[0].startswith("the log rotated ")
    assert int(lines[0].split()[3]) >= 2  # rotations happened while it watched
    alerts = lines[1:]
    assert sum("CRITICAL disk almost full" in line for line in alerts) == 3
    assert sum(line.lstrip().startswith("error") for line in alerts) == 1
    assert "KeyError: 'missing'" in alerts[-1] or any("KeyError" in a for a in alerts)


def test_embedded_scraper_example() -> None:
    out = run_example("embedded_scraper.py", "--seconds", "4")
    assert "average price:" in out
    subjects = [line.strip() for line in out.split("emails in", 1)[1].splitlines()[1:]]
    assert len(subjects) >= 2
    assert all(s.startswith("New: ") for s in subjects)
    assert len(set(subjects)) == len(subjects)  # each item emailed once


def test_full_example_config_checks(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    result = run_cli("check", "-c", str(EXAMPLES / "watchkeeper.toml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "6 watchers, 4 notifiers" in result.stdout
