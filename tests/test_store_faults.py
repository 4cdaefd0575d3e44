"""Storage faults are survived: disk full (a real 2 MiB tmpfs), SQLITE_BUSY (a real second
writer), failed COMMITs and failed sent marks (errors injected into the SQLite connection).

Each fault must come out as a StoreError, show in the keeper's health while it lasts, and pass
by itself once the cause is gone, with every alert delivered exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RecordingServer, read_jsonl, run_cli, wait_until
from watchkeeper import Alert, Keeper, Observation, Severity, StoreError
from watchkeeper.build import build_notifier
from watchkeeper.errors import TransientDeliveryError
from watchkeeper.store import Store
from watchkeeper.store.sqlite import SqliteBackend


class FaultyConnection:
    """A real sqlite3 connection whose statements matching ``fail`` raise while it is set."""

    def __init__(self, real: sqlite3.Connection) -> None:
        object.__setattr__(self, "real", real)
        object.__setattr__(self, "fail", None)
        object.__setattr__(self, "error", "disk I/O error")
        object.__setattr__(self, "failed", 0)

    def _check(self, sql: str) -> None:
        pattern = self.fail
        if pattern is not None and re.search(pattern, sql):
            object.__setattr__(self, "failed", self.failed + 1)
            if sql == "COMMIT":  # as SQLite does when a COMMIT fails for want of space
                self.real.execute("ROLLBACK")
            raise sqlite3.OperationalError(self.error)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self.real.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self.real.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("fail", "error"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.real, name, value)


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> list[FaultyConnection]:
    """Every connection a Store opens from now on, made faulty (off until told)."""
    made: list[FaultyConnection] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        connection = FaultyConnection(real_connect(*args, **kwargs))
        made.append(connection)
        return connection

    monkeypatch.setattr("watchkeeper.store.sqlite.sqlite3.connect", connect)
    return made


def test_a_commit_failing_after_sqlite_rolled_back_is_a_store_error(
    tmp_path: Path, faulty: list[FaultyConnection]
) -> None:
    store = Store(tmp_path / "wk.db")
    store.register_watcher("w", "custom")
    (connection,) = faulty
    connection.fail = "^COMMIT$"
    connection.error = "database or disk is full"
    with pytest.raises(StoreError, match=r"cannot commit to state file .*disk is full"):
        store.set_paused("w", True)
    assert store.fault is not None
    assert "disk is full" in store.fault
    connection.fail = None
    store.set_paused("w", True)  # the connection is usable: nothing was left open
    assert store.fault is None
    record = store.watcher("w")
    assert record is not None
    assert record.paused
    store.close()


def test_a_delivery_sent_but_not_marked_is_marked_later_and_never_sent_again(
    tmp_path: Path, http_receiver: RecordingServer, faulty: list[FaultyConnection]
) -> None:
    keeper = Keeper(
        state=tmp_path / "wk.db", notify=[{"kind": "webhook", "url": http_receiver.url}]
    )
    fire = threading.Event()

    def check() -> Observation | None:
        if not fire.is_set():
            return None
        fire.clear()  # one alert, whatever the timing
        return Observation("sent once", event=True)

    keeper.every(0.01, check)
    with keeper:
        connection = faulty[-1]
        connection.fail = r"SET status = 'sent'"
        fire.set()
        wait_until(lambda: http_receiver.requests)
        wait_until(lambda: connection.failed >= 3)  # the mark was retried and failed again
        health = keeper.health()
        assert health["store"]["state"] == "failing"
        assert health["store"]["unmarked_sends"] >= 1
        assert len(http_receiver.requests) == 1  # and the dispatcher did not send it again
        connection.fail = None
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts()["webhook"].get("sent", 0) >= 1)
        assert keeper.health()["store"] == {
            "state": "ok",
            "error": None,
            "since": None,
            "unmarked_sends": 0,
        }
    titles = [r.json()["title"] for r in http_receiver.requests]
    assert titles.count("sent once") == 1


def numbered_lines(start: int, count: int, width: int) -> str:
    """``line N`` padded to ``width`` bytes, one per line."""
    return "".join(f"line {n} ".ljust(width, "x") + "\n" for n in range(start, start + count))


class LineWriter:
    """Appends numbered lines to a log, counting them (the next number is ``written``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0

    def write(self, count: int, width: int) -> None:
        with self.path.open("a") as out:
            out.write(numbered_lines(self.written, count, width))
        self.written += count


def delivered(receiver: RecordingServer) -> list[int]:
    """The line numbers the receiver got, in arrival order."""
    found = []
    for request in receiver.requests:
        match = re.search(r"\bline (\d+) ", request.json()["title"])
        if match:
            found.append(int(match.group(1)))
    return found


def log_keeper(state: Path, log: Path, receiver: RecordingServer) -> Keeper:
    """A keeper following ``log`` (every line alerts) and posting each alert to ``receiver``
    (no grouping: the tests count every line)."""
    hook = {"kind": "webhook", "url": receiver.url, "group_interval": "0s"}
    keeper = Keeper(state=state, notify=[hook])
    keeper.log(log, [{"match": "line", "severity": "error"}], name="app", every="0.2s")
    return keeper


def test_sqlite_busy_is_waited_out_and_nothing_is_lost_or_repeated(
    tmp_path: Path, http_receiver: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqliteBackend, "busy_timeout", 0.05)
    log = tmp_path / "app.log"
    log.write_text("")
    state = tmp_path / "wk.db"
    keeper = log_keeper(state, log, http_receiver)
    with keeper:
        with log.open("a") as out:
            out.write(numbered_lines(0, 20, 100))
        wait_until(lambda: len(http_receiver.requests) >= 20)
        other = sqlite3.connect(state, isolation_level=None)  # another writer holds the lock
        other.execute("BEGIN IMMEDIATE")
        with log.open("a") as out:
            out.write(numbered_lines(20, 30, 100))
        wait_until(lambda: keeper.health()["store"]["state"] == "failing")
        assert "database is locked" in keeper.health()["store"]["error"]
        other.execute("ROLLBACK")
        other.close()
        wait_until(lambda: len(http_receiver.requests) >= 50)
        wait_until(lambda: keeper.health()["store"]["state"] == "ok")
    assert sorted(delivered(http_receiver)) == list(range(50))


def mounted_tmpfs(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)


def resize(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root and mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    try:
        mounted_tmpfs(folder, "2m")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield folder
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_stops_nothing_and_everything_goes_out_once_after(
    tmp_path: Path,
    small_disk: Path,
    http_receiver: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("watchkeeper.supervisor.FAULT_ALERT_AFTER", 0.5)
    log = tmp_path / "app.log"
    log.write_text("")
    keeper = log_keeper(small_disk / "wk.db", log, http_receiver)
    total = 300
    with keeper:
        written = 0
        while written < total:  # 20 KB alerts, ten at a time, until the disk is full
            with log.open("a") as out:
                out.write(numbered_lines(written, 10, 20_000))
            written += 10
            if wait_until(lambda: keeper.health()["store"]["state"] == "failing", 0.5, must=False):
                break
        with log.open("a") as out:
            out.write(numbered_lines(written, total - written, 20_000))
        store_health = wait_until(lambda: (h := keeper.health()["store"])["error"] and h)
        assert "full" in store_health["error"]
        # The agent says so through a notifier that needs no disk.
        wait_until(
            lambda: any("cannot be recorded" in r.json()["title"] for r in http_receiver.requests)
        )
        assert all(u["state"] == "running" for u in keeper.health()["threads"])  # nothing died
        # Another process sees it too, though the disk cannot take a byte more.
        shown = wait_until(
            lambda: (
                (
                    r := run_cli("status", "--state", str(small_disk / "wk.db"), cwd=tmp_path)
                ).returncode
                == 0
                and "state file failing" in r.stdout
                and r
            )
        )
        assert "full" in shown.stdout
        resize(small_disk, "64m")
        wait_until(lambda: len(delivered(http_receiver)) >= total, timeout=60)
        wait_until(lambda: keeper.health()["store"]["state"] == "ok")
        wait_until(
            lambda: any("takes writes again" in r.json()["title"] for r in http_receiver.requests)
        )
        store = keeper.store
        assert store is not None
        wait_until(lambda: not store.delivery_counts()["webhook"].get("pending"))
    numbers = delivered(http_receiver)
    assert sorted(numbers) == list(range(total))  # none lost, none twice


@pytest.mark.parametrize(
    "error", ["attempt to write a readonly database", "disk I/O error", "database is locked"]
)
def test_a_store_refusing_every_write_is_survived(
    tmp_path: Path, http_receiver: RecordingServer, faulty: list[FaultyConnection], error: str
) -> None:
    """EROFS, SQLITE_IOERR, SQLITE_BUSY as SQLite reports them (a tmpfs cannot be remounted
    read-only under a writer, so the error is injected)."""
    log = tmp_path / "app.log"
    log.write_text("")
    keeper = log_keeper(tmp_path / "wk.db", log, http_receiver)
    with keeper:
        with log.open("a") as out:
            out.write(numbered_lines(0, 5, 100))
        wait_until(lambda: len(delivered(http_receiver)) >= 5)
        connection = faulty[-1]
        connection.error = error
        connection.fail = "^BEGIN IMMEDIATE$"
        with log.open("a") as out:
            out.write(numbered_lines(5, 5, 100))
        wait_until(lambda: connection.failed >= 3)
        assert error in keeper.health()["store"]["error"]
        assert all(u["state"] == "running" for u in keeper.health()["threads"])
        connection.fail = None
        wait_until(lambda: len(delivered(http_receiver)) >= 10)
        wait_until(lambda: keeper.health()["store"]["state"] == "ok")
    assert sorted(delivered(http_receiver)) == list(range(10))


def test_the_agent_through_a_full_disk_a_busy_store_and_a_crashing_dispatcher(
    tmp_path: Path,
    small_disk: Path,
    http_receiver: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The three faults in a row on one keeper: every line alerted and delivered exactly once."""
    from watchkeeper.dispatch import Dispatcher

    monkeypatch.setattr(SqliteBackend, "busy_timeout", 0.05)
    crash = threading.Event()
    real_step = Dispatcher._step

    def step(self: Dispatcher) -> bool:
        if crash.is_set():
            crash.clear()
            raise RuntimeError("injected dispatcher crash")
        return real_step(self)

    monkeypatch.setattr(Dispatcher, "_step", step)
    log = tmp_path / "app.log"
    log.write_text("")
    state = small_disk / "wk.db"
    keeper = log_keeper(state, log, http_receiver)
    writer = LineWriter(log)

    with keeper:
        # 1. The disk fills up, then gets space.
        while not keeper.health()["store"]["error"]:
            writer.write(10, 20_000)
            wait_until(lambda: keeper.health()["store"]["error"], 0.5, must=False)
        writer.write(20, 20_000)
        resize(small_disk, "64m")
        wait_until(lambda: len(delivered(http_receiver)) >= writer.written, timeout=60)
        # 2. Another writer holds the lock for a while.
        other = sqlite3.connect(state, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        writer.write(30, 100)
        wait_until(lambda: "locked" in (keeper.health()["store"]["error"] or ""))
        other.execute("ROLLBACK")
        other.close()
        wait_until(lambda: len(delivered(http_receiver)) >= writer.written, timeout=30)
        # 3. The dispatcher crashes with deliveries pending.
        crash.set()
        writer.write(30, 100)
        wait_until(lambda: any(u["restarts"] for u in keeper.health()["threads"]))
        wait_until(lambda: len(delivered(http_receiver)) >= writer.written, timeout=30)
        store = keeper.store
        assert store is not None
        wait_until(lambda: not store.delivery_counts()["webhook"].get("pending"))
    assert sorted(delivered(http_receiver)) == list(range(writer.written))
    with Store(state, readonly=True) as store:
        assert store.count_alerts() - len(store.alerts(watcher="watchkeeper")) == writer.written


def test_the_real_agent_through_a_full_disk_and_a_crashing_dispatcher(
    tmp_path: Path, small_disk: Path, http_receiver: RecordingServer
) -> None:
    """`watchkeeper run` in its own process, its state on the 2 MiB tmpfs: seen from outside
    (`watchkeeper status`) while it lasts, every line delivered exactly once in the end."""
    import json
    import signal
    import subprocess
    import sys

    log = tmp_path / "app.log"
    log.write_text("")
    fire = tmp_path / "fire"
    fire.mkdir()
    state = small_disk / "wk.db"
    (tmp_path / "wk.toml").write_text(
        f"""
[keeper]
state = "{state}"
dashboard = false

[[notify]]
kind = "webhook"
url = "{http_receiver.url}"
group_interval = "0s"

[[log]]
name = "app"
paths = ["{log}"]
every = "0.2s"
rules = [{{ match = "line", severity = "error" }}]

[[custom]]
name = "injector"
call = "tests.agent_checks:crash_dispatcher_on_flag"
every = "0.1s"
"""
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "WK_FIRE_DIR": str(fire)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", "wk.toml"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    def status() -> dict[str, Any]:
        shown = run_cli("status", "--json", "--state", str(state), cwd=tmp_path)
        return json.loads(shown.stdout) if shown.returncode == 0 else {}

    writer = LineWriter(log)

    try:
        wait_until(lambda: (status().get("keeper") or {}).get("threads"), timeout=30)
        # 1. The disk fills up: the agent says so (from outside), then gets space.
        while not ((status().get("keeper") or {}).get("store") or {}).get("error"):
            writer.write(10, 20_000)
        writer.write(20, 20_000)
        resize(small_disk, "64m")
        wait_until(lambda: len(delivered(http_receiver)) >= writer.written, timeout=60)
        # 2. A dispatcher crashes from inside its loop with deliveries pending.
        (fire / "crash-dispatcher").touch()
        wait_until(lambda: not (fire / "crash-dispatcher").exists())
        writer.write(30, 100)

        def dispatcher_restarted() -> bool:
            threads = (status().get("keeper") or {}).get("threads", [])
            return any(u["kind"] == "dispatcher" and u["restarts"] for u in threads)

        wait_until(dispatcher_restarted, timeout=30)
        wait_until(lambda: len(delivered(http_receiver)) >= writer.written, timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, errors = agent.communicate(timeout=30)
    assert agent.returncode == 0, errors
    assert "injected dispatcher crash" in errors  # logged with its traceback
    assert sorted(delivered(http_receiver)) == list(range(writer.written))  # none lost, none twice


def test_a_jsonl_batch_torn_by_a_full_disk_leaves_no_half_record(small_disk: Path) -> None:
    """The disk takes the head of a batch and then refuses: the file keeps whole records only,
    and once there is room the retry appends the batch exactly once."""
    out = small_disk / "alerts.jsonl"
    notifier = build_notifier({"kind": "jsonl", "path": str(out)})
    notifier.send(
        Alert(watcher="w", kind="custom", severity=Severity.ERROR, title="first", key="0")
    )
    ballast = small_disk / "ballast"
    with contextlib.suppress(OSError), ballast.open("wb") as fill:
        while True:  # leave less room than the batch needs
            fill.write(b"\0" * 4096)
            fill.flush()
    body = "x" * 3000
    batch = [
        Alert(
            watcher="w",
            kind="custom",
            severity=Severity.ERROR,
            title=f"t{i}",
            key=str(i),
            body=body,
        )
        for i in range(1, 40)
    ]
    before = out.read_bytes()
    with pytest.raises(TransientDeliveryError, match="cannot append"):
        notifier.send_batch(batch)
    assert out.read_bytes() == before  # not a torn head ending mid-record
    ballast.unlink()
    notifier.send_batch(batch)
    assert [a["title"] for a in read_jsonl(out)] == ["first"] + [f"t{i}" for i in range(1, 40)]
    assert out.read_bytes().endswith(b"\n")
