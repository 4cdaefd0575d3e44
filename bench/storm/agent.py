"""What the storm benchmarks share: a real agent on one log file, and a history filled through
the store's own API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from watchkeeper.alerts import Alert, Severity
from watchkeeper.store import Route, Store


def start_agent(
    folder: Path, notify: str, keeper: str = "dashboard = false"
) -> subprocess.Popen[bytes]:
    """``watchkeeper run`` on folder/app.log with these [[notify]] tables and [keeper] lines;
    returns once its log watcher has committed its first check."""
    state = folder / "wk.db"
    config = folder / "watchkeeper.toml"
    (folder / "app.log").write_text("")
    config.write_text(
        f'[keeper]\nstate = "{state}"\nshutdown_timeout = "5s"\n{keeper}\n\n{notify}\n'
        f'[[log]]\nname = "app"\npaths = ["{folder / "app.log"}"]\n'
        'rules = [{match = "CRITICAL", severity = "critical"}]\n'
    )
    before = checks(state)
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)], stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while checks(state) <= before:
        if time.monotonic() > deadline:
            raise TimeoutError("watchkeeper did not start")
        time.sleep(0.005)
    return proc


TICKS = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def checks(state: Path) -> int:
    """How many checks the agent's log watcher has committed (0 before the state exists)."""
    if not state.exists():
        return 0
    try:
        with Store(state, readonly=True) as store:
            record = store.watcher("app")
            return record.checks if record else 0
    except Exception:  # not migrated yet by a starting agent
        return 0


def stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM, and how long the agent took to end."""
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.perf_counter() - started


def count_lines(path: Path) -> int:
    """Lines in a file (0 when it is not there yet)."""
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def fill(store: Store, count: int, title: str, spread: float = 0.0) -> None:
    """``count`` alerts with a jsonl delivery each, 1,000 per commit, through the store's API.

    ``title`` is formatted with the alert's number ``i``; ``spread``: seconds between the
    alerts' times, the last one now.
    """
    store.register_watcher("app", "log")
    now = time.time()
    for first in range(0, count, 1000):
        store.commit_check(
            "app",
            checkpoint={"offset": first},
            rule_state={},
            alerts=[
                Alert(
                    watcher="app",
                    kind="log",
                    severity=Severity.CRITICAL if i % 10 else Severity.ERROR,
                    title="app: " + title.format(i=i),
                    key="CRITICAL",
                    body=title.format(i=i),
                    data={"path": "/var/log/app.log", "offset": i * 60, "rule": 0},
                    created_at=now - (count - i) * spread,
                )
                for i in range(first, min(count, first + 1000))
            ],
            routes=[Route("jsonl")],
            now=now,
            next_check=None,
        )
