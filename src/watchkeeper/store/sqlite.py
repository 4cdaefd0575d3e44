"""The SQLite backend: one file, its connection, transactions, the writer's claim, migrations.

Why SQLite in WAL mode: one file, no server, readers never block the writer, and a transaction is
the unit of the project's promise. ``synchronous=NORMAL`` keeps a committed transaction through a
process crash (SIGKILL); only an OS crash or power loss may lose the last few.

A store holds one connection, used by one thread at a time under a lock (see ``__init__`` for
why not one per thread); :meth:`SqliteBackend.close` closes it and releases the writer's claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from watchkeeper.errors import StoreError
from watchkeeper.store.backend import Backend, Dialect, Row, Tx, WriteFault
from watchkeeper.store.schema import MIGRATIONS, SCHEMA_VERSION

CLAIM_PATIENCE = 2.0
"""Seconds a start waits for a lock held only by a brief probe (see :meth:`Store.holder`)."""
WAL_LIMIT = 64 * 2**20
"""Bytes the write-ahead log is cut back to after a checkpoint."""
DIALECT = Dialect(
    now="((julianday('now') - 2440587.5) * 86400.0)",
    by_created="INDEXED BY alerts_created",  # left alone, SQLite walks every id down
    no_index="NOT INDEXED",  # else it reads the pending index and sorts
)


class SqliteBackend(Backend):
    """A state file: safe to use from many threads and processes; one writer (:meth:`claim`)."""

    name = "sqlite"
    fleet_capable = False
    claims_deliveries = False
    dialect = DIALECT
    busy_timeout = 30.0
    """Seconds a statement waits for another writer's lock before SQLITE_BUSY."""

    def __init__(self, path: Path, readonly: bool) -> None:
        super().__init__()
        self.path = path
        self.where = f"state file {path}"
        self.readonly = readonly
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder for state file {self.path}: {exc}"
                ) from exc
        # One connection per store, used by one thread at a time: a thousand watcher threads
        # with a connection each would hold 3,000 file descriptors (db, -wal, -shm; past the
        # common limit of 1,024) and ~120 MB of SQLite caches. Writes serialize in SQLite
        # anyway, and every transaction here is a few statements.
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self._claim: TextIO | None = None

    def _conn(self) -> sqlite3.Connection:
        """The connection; call with ``self.lock`` held."""
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
    def transaction(self) -> Iterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

        Every sqlite3 error on the way (BEGIN, a statement, COMMIT, the ROLLBACK after them)
        comes out as a WriteFault. A failed COMMIT (disk full, I/O error) may already have
        rolled the transaction back, so the ROLLBACK only runs while one is still open.
        """
        with self.lock:
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

    def _fault(self, doing: str, exc: sqlite3.Error) -> WriteFault:
        # A busy file (another writer past busy_timeout) may pass; a full disk or a broken
        # file is retried too, but says so only by its message.
        busy = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
        return WriteFault(f"{doing} state file {self.path}: {exc}", transient=busy)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            with self.lock:
                rows: list[Row] = self._conn().execute(sql, params).fetchall()
                return rows
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state file {self.path}: {exc}") from exc

    def insert_alerts(self, tx: Tx, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """One executemany; the writer holds the file, so the ids are consecutive and end at
        ``last_insert_rowid()``; the first one's uid (column 0) is checked to be sure."""
        tx.executemany(sql, rows)
        first = int(tx.execute("SELECT last_insert_rowid()").fetchone()[0]) - len(rows) + 1
        row = tx.execute("SELECT uid FROM alerts WHERE id = ?", (first,)).fetchone()
        if row is None or row[0] != rows[0][0]:  # cannot happen with one writer: never guess
            raise sqlite3.IntegrityError("the new alerts' ids are not consecutive")
        return list(range(first, first + len(rows)))

    def notify(self, tx: Tx, payloads: Iterable[str]) -> None:
        """Nothing to do: one agent per file, and it hears its own commits directly."""

    def listen(self, heard: Callable[[list[str]], None]) -> None:
        """Nothing to do: no other agent writes this file."""

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
        with self.lock:
            if self._claim is not None:
                self._claim.close()
                self._claim = None
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def prepare(self, readonly: bool) -> None:
        if readonly:
            self._check_version()
        else:
            self._migrate()

    def _check_version(self) -> None:
        if not self.path.exists():
            raise StoreError(f"no state file at {self.path}")
        version = self.read("PRAGMA user_version")[0][0]
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
        with self.lock:
            conn = self._conn()
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")

    def vacuum(self) -> None:
        """Return free pages to the file system, a few at a time (a no-op on files made before
        schema 3 that were never converted, whose pages stay free for reuse instead)."""
        try:
            while True:
                with self.lock:  # let commits in between the steps
                    conn = self._conn()
                    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                        return
                    if conn.execute("PRAGMA freelist_count").fetchone()[0] == 0:
                        return
                    conn.execute("PRAGMA incremental_vacuum(256)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot shrink state file {self.path}: {exc}") from exc

    def size(self) -> int:
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
