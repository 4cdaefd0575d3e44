"""Crash test: ``watchkeeper run`` is SIGKILLed at random moments, at least 20 times, while a real
writer process writes numbered lines and rotates its file; afterwards every CRITICAL line has
exactly one alert in the store and in the jsonl output (deduplicated by alert uid), and no other
line has one."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import read_jsonl, wait_until
from watchkeeper.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LINES = 6000
EVERY = 5  # every 5th line is CRITICAL

WRITER = """
import sys, time
from collections.abc import Callable
from pathlib import Path
folder, lines, rotate_every = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
log = folder / "app.log"
out = log.open("a")
for i in range(1, lines + 1):
    level = "CRITICAL" if i % 5 == 0 else "INFO"
    out.write(f"{i} {level} payload {'x' * (i % 50)}\\n")
    out.flush()
    if i % rotate_every == 0:
        out.close()
        log.rename(folder / f"app.log.{i // rotate_every}")
        out = log.open("a")
    if i % 25 == 0:
        time.sleep(0.033)  # pace: about 750 lines a second, so the kills overlap the writing
out.close()
"""


def number(line: str) -> int:
    """The line number of a written line, checking that the line came through whole."""
    n = int(line.split(" ", 1)[0])
    assert line == f"{n} CRITICAL payload {'x' * (n % 50)}"
    return n


def checked(state: Path) -> bool:
    if not state.exists():
        return False
    with Store(state) as store:
        record = store.watcher("app")
        return record is not None and record.checks >= 1


def agent(config: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config), "-v"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if log is None else log.open("ab"),
    )


def agent_config(tmp_path: Path, paths: str, log: str = "", notify: str = "") -> Path:
    """A config for ``watchkeeper run``: jsonl alerts, one log watcher named app."""
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        f"""
[keeper]
state = "{tmp_path / "wk.db"}"
dashboard = false

[[notify]]
kind = "jsonl"
path = "{tmp_path / "alerts.jsonl"}"
{notify}
[[log]]
name = "app"
paths = ["{paths}"]
start_at = "beginning"
rules = [{{ match = "CRITICAL", severity = "critical" }}]
{log}
"""
    )
    return config


def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").touch()
    out = tmp_path / "alerts.jsonl"
    config = agent_config(tmp_path, str(logs / "app.log"))
    rng = random.Random(3)
    first = agent(config)
    try:  # the first check sets where reading starts; from then on nothing may be missed
        wait_until(lambda: checked(tmp_path / "wk.db"), timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(logs), str(LINES), "700"], env=ENV)
    kills = during = 0
    try:
        while kills < 20 or writer.poll() is None:
            proc = agent(config)
            # A random moment: during start-up, mid-check, mid-commit or mid-delivery (the wait
            # ends early only if the agent dies by itself, which the asserts below would show).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=rng.uniform(0.05, 0.9))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            during += writer.poll() is None
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    expected = list(range(EVERY, LINES + 1, EVERY))

    def delivered() -> dict[str, str]:
        return {a["uid"]: a["data"]["line"] for a in read_jsonl(out)}

    def stored() -> list[int]:
        with Store(tmp_path / "wk.db") as store:
            return sorted(number(a.data["line"]) for a in store.alerts(limit=100_000))

    final = agent(config, tmp_path / "final.log")
    try:
        wait_until(lambda: len(stored()) >= len(expected), timeout=30, must=False)
        wait_until(lambda: len(delivered()) >= len(stored()), timeout=30, must=False)
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(timeout=30)
    assert kills >= 20
    assert during >= 10, "the kills must fall while the writer writes and rotates"
    assert stored() == expected
    assert sorted(number(line) for line in delivered().values()) == expected
