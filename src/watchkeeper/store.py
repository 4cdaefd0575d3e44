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

from watchkeeper import tallies
from watchkeeper.alerts import Alert, Severity
from watchkeeper.errors import StoreError

SCHEMA_VERSION = 4

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
    # 3: fingerprints (grouping, throttles); due deliveries from a partial index in due order,
    # so taking the next ones never sorts the backlog and the index holds only pending rows;
    # failed ones in one too (status pages list their errors); counters (see tallies.py).
    3: """
    ALTER TABLE alerts ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    DROP INDEX deliveries_due;
    CREATE INDEX deliveries_pending ON deliveries (notifier, next_try, id)
        WHERE status = 'pending';
    CREATE INDEX deliveries_failed ON deliveries (notifier, id) WHERE status = 'failed';
    """
    + tallies.SCHEMA,
    # 4: a checkpoint's parts (see watchers.base.CheckResult.parts), one row each, so that a
    # check commits the parts it changed, not all of them.
    4: """
    CREATE TABLE checkpoint_parts (
        watcher         TEXT NOT NULL,
        part            TEXT NOT NULL,
        value           TEXT NOT NULL,      -- JSON
        PRIMARY KEY (watcher, part)
    ) WITHOUT ROWID;
    """,
}
WAL_LIMIT = 64 * 2**20
"""Bytes the write-ahead log is cut back to after a checkpoint."""
_SENT = "status = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL"
"""What :meth:`Store.mark_sent` sets."""
MARK_CHUNK = 5000
"""Deliveries marked per transaction: a digest of 100,000 alerts never holds the writer long."""
PRUNE_STEP = 500
"""Alerts deleted per transaction by :meth:`Store.prune`."""


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
                    # Only takes effect on a new file (before the first table): deleted history
                    # is then given back to the file system by incremental_vacuum (see prune).
                    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    conn.execute("PRAGMA journal_mode=WAL")
                    # A storm or a prune grows the write-ahead log; past this it is cut back
                    # at the next checkpoint instead of staying at its largest size for good.
                    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
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

    def reader(self) -> Store:
        """A read-only store on the same state with a connection of its own, for readers that
        must never wait for (or hold up) the writer: the dashboard, the API, /metrics."""
        return Store(self.path, readonly=True)

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
        if 0 < version < 3:
            self._convert_to_incremental_vacuum()

    def _convert_to_incremental_vacuum(self) -> None:
        """A file made before schema 3 is rewritten once so pruned history can shrink it: a full
        VACUUM, as long as copying the file takes (about a second per 100 MB), at this start."""
        with self._lock:
            conn = self._conn()
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")

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

    def checkpoint_parts(self, name: str) -> dict[str, Any]:
        """A watcher's checkpoint parts, by key (see :meth:`commit_check`)."""
        rows = self._read("SELECT part, value FROM checkpoint_parts WHERE watcher = ?", (name,))
        try:
            return {row[0]: json.loads(row[1]) for row in rows}
        except ValueError as exc:
            raise StoreError(f"watcher {name!r}: its checkpoint cannot be read: {exc}") from exc

    def watchers(self) -> list[WatcherRecord]:
        """Every watcher that ever ran against this state, by name."""
        return [_watcher_record(r) for r in self._read("SELECT * FROM watchers ORDER BY name")]

    def register_watcher(self, name: str, kind: str) -> WatcherRecord:
        """Make sure the watcher has a row (so status shows it before its first check)."""
        return self.register_watchers([(name, kind)])[name]

    def register_watchers(self, watchers: Sequence[tuple[str, str]]) -> dict[str, WatcherRecord]:
        """Rows for many (name, kind) watchers in one transaction, and their records by name:
        a keeper of 10,000 page watchers starts with one commit, not 10,000."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO watchers (name, kind) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET kind = excluded.kind",
                watchers,
            )
        wanted = {name for name, _ in watchers}
        if len(wanted) == 1:
            rows = self._read("SELECT * FROM watchers WHERE name = ?", (next(iter(wanted)),))
        else:
            rows = self._read("SELECT * FROM watchers")
        return {r["name"]: _watcher_record(r) for r in rows if r["name"] in wanted}

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
        parts: dict[str, Any] | None = None,
    ) -> list[Alert]:
        """Commit one check: checkpoint, rule state, alerts and their deliveries, atomically.

        Returns the alerts with their store ids set. ``error`` is the check's failure (None when
        it passed); ``failures`` counts consecutive ones. ``parts`` are the checkpoint's parts
        the check changed: key -> new value, or None to delete it (the others stay).
        """
        committed = list(alerts)
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
            if parts:
                self._write_parts(conn, name, parts)
            if committed:
                self._insert_alerts(conn, committed, routes, now)
        return committed

    @staticmethod
    def _write_parts(conn: sqlite3.Connection, name: str, parts: dict[str, Any]) -> None:
        conn.executemany(
            "INSERT INTO checkpoint_parts (watcher, part, value) VALUES (?, ?, ?) "
            "ON CONFLICT (watcher, part) DO UPDATE SET value = excluded.value",
            [(name, key, json.dumps(value)) for key, value in parts.items() if value is not None],
        )
        conn.executemany(
            "DELETE FROM checkpoint_parts WHERE watcher = ? AND part = ?",
            [(name, key) for key, value in parts.items() if value is None],
        )

    def add_alerts(self, alerts: Iterable[Alert], routes: Sequence[Route], now: float) -> None:
        """Alerts no watcher made (the keeper's own health) and their deliveries, atomically."""
        added = list(alerts)
        if added:
            with self.transaction() as conn:
                self._insert_alerts(conn, added, routes, now)

    @staticmethod
    def _insert_alerts(
        conn: sqlite3.Connection, alerts: list[Alert], routes: Sequence[Route], now: float
    ) -> None:
        """Insert alerts and their deliveries with two statements however many there are.

        The writer holds the transaction, so the new alerts' ids are consecutive and end at
        ``last_insert_rowid()``; the first one's uid is checked to be sure.
        """
        conn.executemany(
            "INSERT INTO alerts (uid, watcher, kind, severity, status, key, title, body, data, "
            "created_at, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
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
                    alert.fingerprint,
                )
                for alert in alerts
            ],
        )
        first = conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(alerts) + 1
        row = conn.execute("SELECT uid FROM alerts WHERE id = ?", (first,)).fetchone()
        if row is None or row[0] != alerts[0].uid:  # cannot happen with one writer: never guess
            raise sqlite3.IntegrityError("the new alerts' ids are not consecutive")
        for offset, alert in enumerate(alerts):
            alert.id = first + offset
        deliveries = [
            (alert.id, r.notifier, now)
            for alert in alerts
            for r in routes
            if alert.severity >= r.min_severity
        ]
        conn.executemany(
            "INSERT INTO deliveries (alert_id, notifier, next_try) VALUES (?, ?, ?)", deliveries
        )
        tallies.committed(conn, alerts, [d[1] for d in deliveries])

    # -- outbox -----------------------------------------------------------------------------

    def due(self, notifier: str, now: float, limit: int = 100) -> list[Delivery]:
        """Pending deliveries to one notifier whose next try has come, in due order.

        They are read from the pending index in its order (next try, then id), so the cost is
        that of ``limit`` rows however long the backlog is. Deliveries sent but not yet marked
        (the store could not take the mark) are not due: they are marked first if the store
        takes it now, and never handed out again.
        """
        with self._lock:
            unmarked = self._try_unmarked()
            rows = self._read(
                "SELECT d.id AS delivery_id, d.notifier, d.attempts, a.* FROM deliveries d "
                "JOIN alerts a ON a.id = d.alert_id WHERE d.notifier = ? AND d.status = 'pending' "
                "AND d.next_try <= ? ORDER BY d.next_try, d.id LIMIT ?",
                (notifier, now, limit + len(unmarked)),
            )
        return [d for d in _deliveries(rows) if d.id not in unmarked][:limit]

    def _try_unmarked(self) -> set[int]:
        """Write the sent marks kept in memory if the store takes them now; the ids still kept
        (call with the lock held)."""
        if self._unmarked:
            with contextlib.suppress(StoreError):
                self._mark_unmarked()
        return set(self._unmarked)

    def pending_after(
        self, notifier: str, cursor: int | None, limit: int = 1000
    ) -> tuple[list[Delivery], int]:
        """Pending deliveries to one notifier added after ``cursor``, in order, and the new cursor.

        For a dispatcher that holds pending deliveries in memory (grouped notifiers) and so must
        see each one once, whatever its next try. ``cursor`` None starts from the oldest pending
        one. The cursor also moves past deliveries to other notifiers, so a notifier that gets
        few alerts never reads the others' backlog twice. Sent deliveries whose marks the store
        could not take yet are left out, as by :meth:`due`.
        """
        if cursor is None:  # before the oldest pending one, or (none) after everything there is
            cursor = int(
                self._read(  # one statement, one state: a commit cannot fall in between
                    "SELECT COALESCE((SELECT MIN(id) - 1 FROM deliveries WHERE notifier = ? "
                    "AND status = 'pending'), (SELECT MAX(id) FROM deliveries), 0)",
                    (notifier,),
                )[0][0]
            )
        with self._lock:  # the reads see one state: nothing commits in between
            unmarked = self._try_unmarked()
            top = self._read("SELECT MAX(id) FROM deliveries")[0][0] or 0
            rows = self._read(
                "SELECT d.id AS delivery_id, d.notifier, d.attempts, a.* FROM deliveries d "
                "NOT INDEXED JOIN alerts a ON a.id = d.alert_id WHERE d.id > ? AND d.id <= ? "
                "AND d.notifier = ? AND d.status = 'pending' ORDER BY d.id LIMIT ?",
                (cursor, top, notifier, limit),
            )
        found = _deliveries(rows)
        cursor = found[-1].id if len(found) >= limit else int(top)
        return [d for d in found if d.id not in unmarked], cursor

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

    def flush_marks(self, wait: bool = True) -> int:
        """Write the sent marks kept in memory; how many are still waiting (StoreError kept).

        ``wait=False``: while another thread holds the writer's lock, only count them.
        """
        if not self._lock.acquire(blocking=wait):
            return len(self._unmarked)
        try:
            return len(self._try_unmarked())
        finally:
            self._lock.release()

    def _mark_unmarked(self) -> None:
        """Write the kept sent marks, a transaction per :data:`MARK_CHUNK` (counted as they go)."""
        by_time: dict[float, list[int]] = {}
        for delivery_id, sent_at in self._unmarked.items():
            by_time.setdefault(sent_at, []).append(delivery_id)
        for sent_at, ids in by_time.items():
            for start in range(0, len(ids), MARK_CHUNK):
                chunk = ids[start : start + MARK_CHUNK]
                self._mark(_SENT, (sent_at,), chunk, "sent")
                for delivery_id in chunk:
                    self._unmarked.pop(delivery_id, None)

    def mark_retry(self, delivery_ids: Sequence[int], error: str, next_try: float) -> None:
        """Record a failed try; the deliveries stay pending until ``next_try``."""
        self._mark(
            "attempts = attempts + 1, last_error = ?, next_try = ?",
            (error, next_try),
            delivery_ids,
            None,
        )

    def mark_failed(self, delivery_ids: Sequence[int], error: str) -> None:
        """Record deliveries that cannot succeed; they stay visible in status and the API."""
        self._mark(
            "status = 'failed', attempts = attempts + 1, last_error = ?",
            (error,),
            delivery_ids,
            "failed",
        )

    def _mark(
        self, assignments: str, values: tuple[Any, ...], ids: Sequence[int], to: str | None
    ) -> None:
        """One UPDATE for many pending deliveries, counted (``to``: their new status): a
        transaction per :data:`MARK_CHUNK`, so marking a digest of 100,000 alerts never holds
        the writer long. A delivery no longer pending is left alone: a mark is idempotent."""
        sql = f"UPDATE deliveries SET {assignments} WHERE id = ? AND status = 'pending'"
        for start in range(0, len(ids), MARK_CHUNK):
            chunk = ids[start : start + MARK_CHUNK]
            with self.transaction() as conn:
                counts = conn.execute(
                    f"SELECT notifier, COUNT(*) FROM deliveries WHERE id IN "
                    f"({','.join('?' * len(chunk))}) AND status = 'pending' GROUP BY notifier",
                    chunk,
                ).fetchall()
                conn.executemany(sql, [(*values, i) for i in chunk])
                for notifier, count in counts:
                    tallies.tried(conn, notifier, count)
                    if to is not None:
                        tallies.moved(conn, notifier, "pending", to, count)

    def retry_failed(self, notifier: str | None = None) -> int:
        """Put failed deliveries back in the queue (after fixing a notifier's config)."""
        where = "status = 'failed' AND (? IS NULL OR notifier = ?)"
        with self.transaction() as conn:
            counts = conn.execute(
                f"SELECT notifier, COUNT(*) FROM deliveries WHERE {where} GROUP BY notifier",
                (notifier, notifier),
            ).fetchall()
            cursor = conn.execute(
                f"UPDATE deliveries SET status = 'pending', next_try = ? WHERE {where}",
                (time.time(), notifier, notifier),
            )
            for name, count in counts:
                tallies.moved(conn, name, "failed", "pending", count)
            return cursor.rowcount

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """{notifier: {status: count}} for status pages, from the counters (no scan).

        ``sent`` and ``failed`` count every delivery that ended, also those of alerts that
        retention has deleted since; statuses with no delivery are left out.
        """
        counts: dict[str, dict[str, int]] = {}
        for row in self._read(
            "SELECT notifier, status, count FROM delivery_totals WHERE count != 0 "
            "AND status IN ('pending', 'sent', 'failed')"
        ):
            counts.setdefault(row[0], {})[row[1]] = row[2]
        return counts

    def delivery_attempts(self) -> dict[str, int]:
        """{notifier: tries to deliver, failed ones included}, from the counters."""
        rows = self._read("SELECT notifier, count FROM delivery_totals WHERE status = 'attempts'")
        return {r[0]: r[1] for r in rows}

    def last_delivery_errors(self) -> dict[str, str]:
        """{notifier: the most recent error of a pending or failed delivery}.

        Read through the pending and failed indexes: as costly as the deliveries not sent.
        """
        rows = [
            row
            for status in ("'pending'", "'failed'")  # literals: only they match partial indexes
            for row in self._read(
                "SELECT id, notifier, last_error FROM deliveries WHERE status = "
                f"{status} AND last_error IS NOT NULL"
            )
        ]
        return {r[1]: r[2] for r in sorted(rows, key=lambda r: int(r[0]))}

    # -- counts -------------------------------------------------------------------------------

    def alert_totals(self) -> list[tuple[str, Severity, int]]:
        """(watcher, severity, alerts ever committed), from the counters."""
        rows = self._read("SELECT watcher, severity, count FROM alert_totals ORDER BY 1, 2")
        return [(r[0], Severity(r[1]), r[2]) for r in rows]

    def recent_alert_counts(self, since: float) -> dict[str, int]:
        """{watcher: alerts committed since ``since``}, counted by the hour (the hour that holds
        ``since`` counts whole), from the counters."""
        rows = self._read(
            "SELECT watcher, SUM(count) FROM alert_hours WHERE hour >= ? GROUP BY watcher",
            (int(since // tallies.HOUR),),
        )
        return {r[0]: r[1] for r in rows}

    # -- history ----------------------------------------------------------------------------

    def prune(self, before: float, keep: int, step: int = PRUNE_STEP) -> int:
        """Delete alerts older than ``before`` or beyond the newest ``keep``, and give the space
        back; returns how many went.

        Only alerts whose every delivery is done (sent) go: a pending or failed delivery keeps
        its alert, however old. Each step of ``step`` alerts is its own short transaction, so the
        watchers' commits never wait long behind it.
        """
        with self.transaction() as conn:
            tallies.drop_old_hours(conn, time.time())
        # Ids are given in order and never reused, so the newest `keep` alerts ever made have ids
        # above this one: found without walking `keep` rows of the index.
        beyond = max(0, int(self._read("SELECT MAX(id) FROM alerts")[0][0] or 0) - keep)
        old = self._read(  # through the time index: left alone, SQLite walks every id down
            "SELECT MAX(id) FROM alerts INDEXED BY alerts_created WHERE created_at < ?", (before,)
        )[0][0]
        last = max(beyond, int(old or 0))  # no alert after this id is due to go
        deleted = cursor = 0
        while cursor < last:
            with self.transaction() as conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT a.id FROM alerts a WHERE a.id > ? AND a.id <= ? "
                        "AND (a.id <= ? OR a.created_at < ?) AND NOT EXISTS (SELECT 1 FROM "
                        "deliveries d WHERE d.alert_id = a.id AND d.status != 'sent') "
                        "ORDER BY a.id LIMIT ?",
                        (cursor, last, beyond, before, step),
                    )
                ]
                marks = ",".join("?" * len(ids))
                conn.execute(f"DELETE FROM deliveries WHERE alert_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM alerts WHERE id IN ({marks})", ids)
            deleted += len(ids)
            if len(ids) < step:
                break
            cursor = ids[-1]
        if deleted:
            self._vacuum()
        return deleted

    def _vacuum(self) -> None:
        """Return free pages to the file system, a few at a time (a no-op on files made before
        schema 3 that were never converted, whose pages stay free for reuse instead)."""
        try:
            while True:
                with self._lock:  # let commits in between the steps
                    conn = self._conn()
                    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                        return
                    if conn.execute("PRAGMA freelist_count").fetchone()[0] == 0:
                        return
                    conn.execute("PRAGMA incremental_vacuum(256)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot shrink state file {self.path}: {exc}") from exc

    def file_size(self) -> int:
        """Bytes the state takes on disk: the file and its write-ahead log."""
        return sum(
            p.stat().st_size
            for p in (self.path, self.path.with_name(self.path.name + "-wal"))
            if p.exists()
        )

    def oldest_alert(self) -> float | None:
        """When the oldest alert in history was made, or None when there is none."""
        rows = self._read("SELECT created_at FROM alerts ORDER BY id LIMIT 1")
        return float(rows[0][0]) if rows else None

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


def _deliveries(rows: Iterable[sqlite3.Row]) -> list[Delivery]:
    return [
        Delivery(r["delivery_id"], r["notifier"], r["attempts"], alert_from_row(r)) for r in rows
    ]


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
        fingerprint=row["fingerprint"],
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
