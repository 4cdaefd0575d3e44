"""The SQLite side of the store: the connection, transactions, the writer's claim, migrations.

Why SQLite in WAL mode: one file, no server, readers never block the writer, and a transaction is
the unit of the project's promise. ``synchronous=NORMAL`` keeps a committed transaction through a
process crash (SIGKILL); only an OS crash or power loss may lose the last few.

A store holds one connection, used by one thread at a time under a lock (see ``__init__`` for
why not one per thread); :meth:`StoreCore.close` closes it and releases the writer's claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TextIO

from watchkeeper.errors import StoreError
from watchkeeper.store.schema import MIGRATIONS, SCHEMA_VERSION

CLAIM_PATIENCE = 2.0
"""Seconds a start waits for a lock held only by a brief probe (see :meth:`Store.holder`)."""
WAL_LIMIT = 64 * 2**20
"""Bytes the write-ahead log is cut back to after a checkpoint."""


class StoreCore:
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

    def reader(self) -> Self:
        """A read-only store on the same state with a connection of its own, for readers that
        must never wait for (or hold up) the writer: the dashboard, the API, /metrics."""
        return type(self)(self.path, readonly=True)

    def __enter__(self) -> Self:
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
                for statement in MIGRATIONS[step].split(";"):
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


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is still open; a failed COMMIT may have ended the transaction already."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
