"""The SQLite state: checkpoints, rule state, alert history and the outbox of deliveries.

Why SQLite in WAL mode: one file, no server, readers never block the writer, and a transaction is
the unit of the project's promise. :meth:`Store.commit_check` writes a watcher's new checkpoint,
its rule state, its alerts and one delivery row per (alert, notifier) in one transaction: a crash
before the commit means the check is redone from the old checkpoint, a crash after it means the
alerts are safe in the outbox. ``synchronous=NORMAL`` keeps a committed transaction through a
process crash (SIGKILL); only an OS crash or power loss may lose the last few.

A Store holds one connection, used by one thread at a time under a lock (see ``__init__`` for
why not one per thread); :meth:`Store.close` closes it and releases the writer's claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from watchkeeper.alerts import Alert, Severity
from watchkeeper.errors import StoreError

SCHEMA_VERSION = 2

CLAIM_PATIENCE = 2.0
"""Seconds a start waits for a lock held only by a brief probe (see :meth:`Store.holder`)."""

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE watchers (
        name            TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,
        checkpoint      TEXT,               -- JSON, watcher-specific
        rule_state      TEXT,               -- JSON, see alerts.RuleEngine
        failures        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        last_check      REAL,
        next_check      REAL,
        checks          INTEGER NOT NULL DEFAULT 0,
        paused          INTEGER NOT NULL DEFAULT 0,
        muted_until     REAL
    );
    CREATE TABLE alerts (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        uid             TEXT NOT NULL UNIQUE,
        watcher         TEXT NOT NULL,
        kind            TEXT NOT NULL,
        severity        INTEGER NOT NULL,
        status          TEXT NOT NULL,
        key             TEXT NOT NULL,
        title           TEXT NOT NULL,
        body            TEXT NOT NULL,
        data            TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE INDEX alerts_watcher ON alerts (watcher, id);
    CREATE INDEX alerts_created ON alerts (created_at);
    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_id        INTEGER NOT NULL REFERENCES alerts (id),
        notifier        TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | failed
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_try        REAL NOT NULL,
        last_error      TEXT,
        sent_at         REAL,
        UNIQUE (alert_id, notifier)
    );
    CREATE INDEX deliveries_due ON deliveries (notifier, status, next_try);
    """,
    # 2: a failure counter that never resets, for /metrics (``failures`` counts a streak).
    2: """
    ALTER TABLE watchers ADD COLUMN failures_total INTEGER NOT NULL DEFAULT 0;
    """,
}


@dataclass(frozen=True)
class WatcherRecord:
    """One row of the watchers table, as status pages and the runtime read it."""

    name: str
    kind: str
    checkpoint: Any
    rule_state: dict[str, Any]
    failures: int
    last_error: str | None
    last_check: float | None
    next_check: float | None
    checks: int
    paused: bool
    muted_until: float | None
    failures_total: int = 0


@dataclass(frozen=True)
class Delivery:
    """A pending delivery: which alert, to which notifier, how many tries so far."""

    id: int
    notifier: str
    attempts: int
    alert: Alert


@dataclass(frozen=True)
class Route:
    """Which notifier gets which alerts: those at or above ``min_severity``."""

    notifier: str
    min_severity: Severity = Severity.DEBUG


class Store:
    """The state file, safe to use from many threads and processes.

    Only one running keeper may write to a state file (:meth:`claim`); readers (``status``,
    ``alerts``, the dashboard) may open it at any time, also ``readonly``.
    """

    busy_timeout = 30.0
    """Seconds a statement waits for another writer's lock before SQLITE_BUSY."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder for state file {self.path}: {exc}"
                ) from exc
        self._connection: sqlite3.Connection | None = None
        # One connection per Store, used by one thread at a time: a thousand watcher threads
        # with a connection each would hold 3,000 file descriptors (db, -wal, -shm; past the
        # common limit of 1,024) and ~120 MB of SQLite caches. Writes serialize in SQLite
        # anyway, and every transaction here is a few statements.
        self._lock = threading.RLock()
        self._closed = False
        self._claim: TextIO | None = None
        self.fault: str | None = None
        """The last write error while writes keep failing (None when the last one worked)."""
        self.fault_since: float | None = None
        self._unmarked: dict[int, float] = {}
        """Deliveries sent whose ``sent`` mark could not be written yet: id -> when sent."""
        if readonly:
            self._check_version()
        else:
            self._migrate()

    # -- connections ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """The connection; call with ``self._lock`` held."""
        conn = self._connection
        if conn is None:
            if self._closed:
                raise StoreError(f"state file {self.path} is closed")
            try:
                if self.readonly:
                    conn = sqlite3.connect(
                        f"{self.path.resolve().as_uri()}?mode=ro",
                        uri=True,
                        timeout=self.busy_timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                else:
                    conn = sqlite3.connect(
                        self.path,
                        timeout=self.busy_timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open state file {self.path}: {exc}") from exc
            conn.row_factory = sqlite3.Row
            self._connection = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

        Every sqlite3 error on the way (BEGIN, a statement, COMMIT, the ROLLBACK after them)
        comes out as a StoreError. A failed COMMIT (disk full, I/O error) may already have
        rolled the transaction back, so the ROLLBACK only runs while one is still open.
        """
        with self._lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fault("cannot write", exc) from exc
            try:
                yield conn
            except sqlite3.Error as exc:
                _rollback(conn)
                raise self._fault("cannot write", exc) from exc
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise self._fault("cannot commit to", exc) from exc
            self._healthy()

    def _fault(self, doing: str, exc: sqlite3.Error) -> StoreError:
        """A StoreError for ``exc``, remembered (in memory) as the store's current fault."""
        message = f"{doing} state file {self.path}: {exc}"
        with self._lock:
            if self.fault is None:
                self.fault_since = time.time()
            self.fault = message
        return StoreError(message)

    def _healthy(self) -> None:
        """A write went through: the fault (if any) is over."""
        self.fault = None
        self.fault_since = None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            with self._lock:
                return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state file {self.path}: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read-only query, for reports that own their SQL (the dashboard, /metrics)."""
        return self._read(sql, params)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def claim(self) -> None:
        """Become the one writer of this state file, or raise StoreError naming the holder.

        Two keepers dispatching from one outbox would send every alert twice. The claim is an
        advisory ``flock`` on ``<state>.lock``: the kernel drops it when the process dies, even
        by SIGKILL, so a restart is never blocked by a stale lock.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = lock_path.open("a+")
        except OSError as exc:
            raise StoreError(f"cannot claim state file {self.path}: {exc}") from exc
        # `status` and `reload` probe the lock with a shared flock for an instant (holder()):
        # a start that meets such a probe tries again for a moment instead of failing.
        deadline = time.monotonic() + CLAIM_PATIENCE
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                handle.seek(0)
                holder = handle.read().strip() or "?"
                handle.close()
                raise StoreError(
                    f"state file {self.path} is in use by another running keeper (pid {holder}); "
                    "give each keeper its own state file"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._claim = handle

    @staticmethod
    def holder(path: str | Path) -> int | None:
        """The pid of the keeper that has claimed the state file at ``path``, or None.

        It asks the lock itself, not only the pid written in it: a pid left by a dead process
        (the kernel dropped its lock) is not a holder.
        """
        lock_path = Path(path).with_name(Path(path).name + ".lock")
        try:
            handle = lock_path.open("r")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(
                f"cannot read {lock_path}: {exc.strerror} (run this as the agent's user, or root)"
            ) from exc
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read().strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None

    def close(self) -> None:
        """Close the connection (after any transaction in progress) and release the claim."""
        with self._lock:
            if self._claim is not None:
                self._claim.close()
                self._claim = None
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _check_version(self) -> None:
        if not self.path.exists():
            raise StoreError(f"no state file at {self.path}")
        version = self._read("PRAGMA user_version")[0][0]
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"state file {self.path} has schema version {version}, this watchkeeper reads "
                f"{SCHEMA_VERSION}; run the agent with this watchkeeper once to migrate it"
            )

    def _migrate(self) -> None:
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"state file {self.path} has schema version {version}, newer than this "
                    f"watchkeeper understands ({SCHEMA_VERSION}); upgrade watchkeeper"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step}")

    # -- watchers ---------------------------------------------------------------------------

    def watcher(self, name: str) -> WatcherRecord | None:
        """The stored state of one watcher, or None if it never ran."""
        rows = self._read("SELECT * FROM watchers WHERE name = ?", (name,))
        return _watcher_record(rows[0]) if rows else None

    def checkpoint(self, name: str) -> Any:
        """A watcher's last committed checkpoint (None if it has none)."""
        rows = self._read("SELECT checkpoint FROM watchers WHERE name = ?", (name,))
        try:
            return json.loads(rows[0][0]) if rows and rows[0][0] else None
        except ValueError as exc:
            raise StoreError(f"watcher {name!r}: its checkpoint cannot be read: {exc}") from exc

    def watchers(self) -> list[WatcherRecord]:
        """Every watcher that ever ran against this state, by name."""
        return [_watcher_record(r) for r in self._read("SELECT * FROM watchers ORDER BY name")]

    def register_watcher(self, name: str, kind: str) -> WatcherRecord:
        """Make sure the watcher has a row (so status shows it before its first check)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO watchers (name, kind) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET kind = excluded.kind",
                (name, kind),
            )
        record = self.watcher(name)
        assert record is not None
        return record

    def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume a watcher; the flag survives restarts."""
        with self.transaction() as conn:
            conn.execute("UPDATE watchers SET paused = ? WHERE name = ?", (int(paused), name))

    def set_muted_until(self, name: str, until: float | None) -> None:
        """Mute a watcher's alerts until a time (None: unmute)."""
        with self.transaction() as conn:
            conn.execute("UPDATE watchers SET muted_until = ? WHERE name = ?", (until, name))

    def commit_check(
        self,
        name: str,
        *,
        checkpoint: Any,
        rule_state: dict[str, Any],
        alerts: Iterable[Alert],
        routes: Sequence[Route],
        now: float,
        next_check: float | None,
        error: str | None = None,
    ) -> list[Alert]:
        """Commit one check: checkpoint, rule state, alerts and their deliveries, atomically.

        Returns the alerts with their store ids set. ``error`` is the check's failure (None when
        it passed); ``failures`` counts consecutive ones.
        """
        committed = []
        with self.transaction() as conn:
            conn.execute(
                "UPDATE watchers SET checkpoint = ?, rule_state = ?, last_check = ?, "
                "next_check = ?, checks = checks + 1, last_error = ?, "
                "failures = CASE WHEN ? IS NULL THEN 0 ELSE failures + 1 END, "
                "failures_total = failures_total + (? IS NOT NULL) WHERE name = ?",
                (
                    json.dumps(checkpoint),
                    json.dumps(rule_state),
                    now,
                    next_check,
                    error,
                    error,
                    error,
                    name,
                ),
            )
            for alert in alerts:
                self._insert_alert(conn, alert, routes, now)
                committed.append(alert)
        return committed

    def add_alerts(self, alerts: Iterable[Alert], routes: Sequence[Route], now: float) -> None:
        """Alerts no watcher made (the keeper's own health) and their deliveries, atomically."""
        with self.transaction() as conn:
            for alert in alerts:
                self._insert_alert(conn, alert, routes, now)

    @staticmethod
    def _insert_alert(
        conn: sqlite3.Connection, alert: Alert, routes: Sequence[Route], now: float
    ) -> None:
        cursor = conn.execute(
            "INSERT INTO alerts (uid, watcher, kind, severity, status, key, title, body, data, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.uid,
                alert.watcher,
                alert.kind,
                int(alert.severity),
                alert.status,
                alert.key,
                alert.title,
                alert.body,
                json.dumps(alert.data, default=str),
                alert.created_at,
            ),
        )
        alert.id = cursor.lastrowid
        conn.executemany(
            "INSERT INTO deliveries (alert_id, notifier, next_try) VALUES (?, ?, ?)",
            [(alert.id, r.notifier, now) for r in routes if alert.severity >= r.min_severity],
        )

    # -- outbox -----------------------------------------------------------------------------

    def due(self, notifier: str, now: float, limit: int = 100) -> list[Delivery]:
        """Pending deliveries to one notifier whose next try has come, oldest first.

        Deliveries sent but not yet marked (the store could not take the mark) are not due:
        they are marked first if the store takes it now, and never handed out again.
        """
        with self._lock:
            if self._unmarked:
                with contextlib.suppress(StoreError):
                    self._mark_unmarked()
            unmarked = set(self._unmarked)
            rows = self._read(
                "SELECT d.id AS delivery_id, d.notifier, d.attempts, a.* FROM deliveries d "
                "JOIN alerts a ON a.id = d.alert_id WHERE d.notifier = ? "
                "AND d.status = 'pending' AND d.next_try <= ? ORDER BY d.id LIMIT ?",
                (notifier, now, limit + len(unmarked)),
            )
        return [
            Delivery(r["delivery_id"], r["notifier"], r["attempts"], alert_from_row(r))
            for r in rows
            if r["delivery_id"] not in unmarked
        ][:limit]

    def next_try(self, notifier: str) -> float | None:
        """When the earliest pending delivery to this notifier is due, or None if none is."""
        rows = self._read(
            "SELECT MIN(next_try) FROM deliveries WHERE notifier = ? AND status = 'pending'",
            (notifier,),
        )
        value = rows[0][0]
        return float(value) if value is not None else None

    def reschedule_pending(self, notifier: str, now: float) -> int:
        """Make every pending delivery to a notifier due now: a new start retries at once."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET next_try = ? WHERE notifier = ? AND status = 'pending' "
                "AND next_try > ?",
                (now, notifier, now),
            )
            return cursor.rowcount

    def mark_sent(self, delivery_ids: Sequence[int], now: float) -> None:
        """Record deliveries as done.

        If the store cannot take it (disk full, I/O error), the marks are kept in memory, the
        deliveries are never due again in this process, and the marks are written with the
        next :meth:`due`, :meth:`mark_sent` or :meth:`flush_marks` that gets through; then the
        StoreError is raised, so the caller knows the store is in trouble.
        """
        with self._lock:
            self._unmarked.update(dict.fromkeys(delivery_ids, now))
            self._mark_unmarked()

    def flush_marks(self) -> int:
        """Write the sent marks kept in memory; how many are still waiting (StoreError kept)."""
        with self._lock:
            if self._unmarked:
                with contextlib.suppress(StoreError):
                    self._mark_unmarked()
            return len(self._unmarked)

    def _mark_unmarked(self) -> None:
        marks = dict(self._unmarked)
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE deliveries SET status = 'sent', sent_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE id = ? AND status = 'pending'",
                [(sent_at, i) for i, sent_at in marks.items()],
            )
        for delivery_id in marks:
            self._unmarked.pop(delivery_id, None)

    def mark_retry(self, delivery_ids: Sequence[int], error: str, next_try: float) -> None:
        """Record a failed try; the deliveries stay pending until ``next_try``."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_try = ? "
                "WHERE id = ?",
                [(error, next_try, i) for i in delivery_ids],
            )

    def mark_failed(self, delivery_ids: Sequence[int], error: str) -> None:
        """Record deliveries that cannot succeed; they stay visible in status and the API."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE deliveries SET status = 'failed', attempts = attempts + 1, last_error = ? "
                "WHERE id = ?",
                [(error, i) for i in delivery_ids],
            )

    def retry_failed(self, notifier: str | None = None) -> int:
        """Put failed deliveries back in the queue (after fixing a notifier's config)."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET status = 'pending', next_try = ? WHERE status = 'failed' "
                "AND (? IS NULL OR notifier = ?)",
                (time.time(), notifier, notifier),
            )
            return cursor.rowcount

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """{notifier: {status: count}} for status pages."""
        counts: dict[str, dict[str, int]] = {}
        for row in self._read(
            "SELECT notifier, status, COUNT(*) FROM deliveries GROUP BY notifier, status"
        ):
            counts.setdefault(row[0], {})[row[1]] = row[2]
        return counts

    def last_delivery_errors(self) -> dict[str, str]:
        """{notifier: the most recent error of a pending or failed delivery}."""
        rows = self._read(
            "SELECT notifier, last_error FROM deliveries WHERE last_error IS NOT NULL "
            "AND status != 'sent' ORDER BY id"
        )
        return {r[0]: r[1] for r in rows}

    # -- history ----------------------------------------------------------------------------

    def count_alerts(self) -> int:
        """How many alerts the history holds."""
        return int(self._read("SELECT COUNT(*) FROM alerts")[0][0])

    def alerts(
        self,
        *,
        since_id: int = 0,
        since_time: float | None = None,
        min_severity: Severity = Severity.DEBUG,
        watcher: str | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[Alert]:
        """Alert history, filtered."""
        order = "DESC" if newest_first else "ASC"
        rows = self._read(
            "SELECT * FROM alerts WHERE id > ? AND (? IS NULL OR created_at >= ?) "
            f"AND severity >= ? AND (? IS NULL OR watcher = ?) ORDER BY id {order} LIMIT ?",
            (since_id, since_time, since_time, int(min_severity), watcher, watcher, limit),
        )
        return [alert_from_row(r) for r in rows]


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is still open; a failed COMMIT may have ended the transaction already."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def alert_from_row(row: sqlite3.Row) -> Alert:
    """An Alert from a row of the alerts table (also for reports using :meth:`Store.query`).

    A row that does not read as one (edited by hand, a disk error) is a StoreError naming it.
    """
    try:
        return _alert(row)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StoreError(f"alert {_row_id(row)} in the state file cannot be read: {exc}") from exc


def _row_id(row: sqlite3.Row) -> str:
    keys = row.keys()
    return f"#{row['id']}" if "id" in keys else repr(row["name"]) if "name" in keys else "?"


def _alert(row: sqlite3.Row) -> Alert:
    return Alert(
        id=row["id"],
        uid=row["uid"],
        watcher=row["watcher"],
        kind=row["kind"],
        severity=Severity(row["severity"]),
        status=row["status"],
        key=row["key"],
        title=row["title"],
        body=row["body"],
        data=json.loads(row["data"]),
        created_at=row["created_at"],
    )


def _watcher_record(row: sqlite3.Row) -> WatcherRecord:
    try:
        return _record(row)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StoreError(f"watcher {_row_id(row)} in the state file cannot be read: {exc}") from exc


def _record(row: sqlite3.Row) -> WatcherRecord:
    return WatcherRecord(
        name=row["name"],
        kind=row["kind"],
        checkpoint=json.loads(row["checkpoint"]) if row["checkpoint"] else None,
        rule_state=json.loads(row["rule_state"]) if row["rule_state"] else {},
        failures=row["failures"],
        last_error=row["last_error"],
        last_check=row["last_check"],
        next_check=row["next_check"],
        checks=row["checks"],
        paused=bool(row["paused"]),
        muted_until=row["muted_until"],
        failures_total=row["failures_total"],
    )
