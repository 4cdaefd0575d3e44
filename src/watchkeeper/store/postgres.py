"""The PostgreSQL backend: one database shared by a fleet of agents (psycopg 3 and its pool).

Why PostgreSQL for fleets: the database people already run, with the patterns job queues built
on it use (``FOR UPDATE SKIP LOCKED`` to claim work, row locks for leases, ``LISTEN/NOTIFY`` to
wake). Each store has a small pool of autocommit connections: reads are single statements,
writes are explicit transactions (READ COMMITTED), so many watcher threads commit at once.

Alert ids grow in commit order: every transaction that inserts alerts (and their deliveries)
first takes one transaction-scoped advisory lock, so a reader's cursor over ids (the live stream,
a grouped dispatcher) never moves past an id whose row commits later. Only alert-producing
commits wait on it; checks without alerts never do.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pgerrors

from watchkeeper.errors import StoreError
from watchkeeper.store.backend import Backend, Dialect, Row, Tx, WriteFault, local_path, mask
from watchkeeper.store.schema import POSTGRES_BASE, POSTGRES_MIGRATIONS, SCHEMA_VERSION

CHANNEL = "watchkeeper"
"""The NOTIFY channel every agent listens on."""
ALERTS_LOCK = 0x77_6B_61_6C  # "wkal"
"""The advisory lock that orders alert inserts (see the module docstring)."""
MIGRATE_LOCK = 0x77_6B_6D_69  # "wkmi"
"""The advisory lock three agents starting at once migrate under, one after the other."""
POOL_SIZE = 8
"""Connections a writer's pool may open; watcher threads beyond it wait their turn."""
READER_POOL_SIZE = 3
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection (the server is down: a transient StoreError after this)."""
LISTEN_POLL = 0.5
"""Seconds the listener thread waits for notices before it checks whether it must stop."""
DIALECT = Dialect(
    now="CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)", for_update=" FOR UPDATE"
)
TRANSIENT = (
    psycopg.OperationalError,  # the connection was lost, the server shuts down, pool timeout
    psycopg.InterfaceError,  # the connection was closed under us
    pgerrors.SerializationFailure,
    pgerrors.DeadlockDetected,
)


@lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled). Our
    statements never hold a ``?`` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgRow:
    """A row readable by position and by column name, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = tuple(values)

    def __getitem__(self, key: int | str, /) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


def _rows(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgRow]:
    """psycopg's row factory for :class:`PgRow`."""
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: PgRow(index, values)


class PgTx:
    """A transaction on one pooled connection, speaking the shared SQL's placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        cursor = self.conn.cursor(row_factory=_rows)
        return cursor.execute(placeholders(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> object:
        with self.conn.cursor() as cursor:
            cursor.executemany(placeholders(sql), list(rows))
        return None


class PostgresBackend(Backend):
    """A PostgreSQL database shared by agents; see the module docstring."""

    name = "postgres"
    fleet_capable = True
    claims_deliveries = True
    dialect = DIALECT

    def __init__(self, url: str, readonly: bool) -> None:
        super().__init__()
        self.url = url
        self.where = f"database {mask(url)}"
        self.path = local_path(url)
        with contextlib.suppress(OSError):  # the notes are optional; the database is not
            self.path.parent.mkdir(parents=True, exist_ok=True)
        options = "-c default_transaction_read_only=on" if readonly else ""
        self._connect_args: dict[str, Any] = {"autocommit": True, "options": options}
        self._closed = False
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._heard: Callable[[list[str]], None] | None = None
        try:
            self.pool = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=READER_POOL_SIZE if readonly else POOL_SIZE,
                kwargs=self._connect_args,
                timeout=CONNECT_TIMEOUT,
                open=False,
                name="watchkeeper",
            )
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            with contextlib.suppress(Exception):
                self.pool.close()
            raise StoreError(f"cannot reach {self.where}: {_reason(exc)}", transient=True) from exc

    # -- transactions and reads ---------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """BEGIN ... COMMIT on a pooled connection; database errors as WriteFault (transient when
        the connection was lost or the transaction lost a conflict)."""
        self._check_open()
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield PgTx(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise WriteFault(
                f"cannot write {self.where}: {_reason(exc)}", transient=isinstance(exc, TRANSIENT)
            ) from exc

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._check_open()
        try:
            with self.pool.connection() as conn:
                rows: list[Row] = PgTx(conn).execute(sql, params).fetchall()
                return rows
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(
                f"cannot read {self.where}: {_reason(exc)}", transient=isinstance(exc, TRANSIENT)
            ) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.where} is closed")

    def insert_alerts(self, tx: Tx, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """Under the alerts lock, one INSERT … RETURNING per row, pipelined by psycopg."""
        assert isinstance(tx, PgTx)
        tx.execute("SELECT pg_advisory_xact_lock(?)", (ALERTS_LOCK,))
        ids: list[int] = []
        with tx.conn.cursor() as cursor:
            cursor.executemany(placeholders(sql) + " RETURNING id", rows, returning=True)
            while True:
                ids.append(int(cursor.fetchone()[0]))  # type: ignore[index]
                if not cursor.nextset():
                    break
        return ids

    # -- notices ------------------------------------------------------------------------------

    def notify(self, tx: Tx, payloads: Iterable[str]) -> None:
        for payload in payloads:
            tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    def listen(self, heard: Callable[[list[str]], None]) -> None:
        """Start the listener thread (once): ``LISTEN`` on a connection of its own, reconnecting
        while the server is away, until :meth:`close`."""
        with self.lock:
            if self._listener is not None or self._closed:
                return
            self._heard = heard
            self._listener = threading.Thread(
                target=self._listen, name="watchkeeper:store-listen", daemon=True
            )
            self._listener.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    assert self._heard is not None
                    self._heard(["reconnected"])  # what was said while away is not replayed
                    while not self._stop.is_set():
                        payloads = [n.payload for n in conn.notifies(timeout=LISTEN_POLL)]
                        if payloads:
                            self._heard(payloads)
            except psycopg.Error:
                self._stop.wait(LISTEN_POLL)

    # -- claim, schema, chores ----------------------------------------------------------------

    def claim(self) -> None:
        """Nothing here: agents register by name (see ``Store.claim``), many share the database."""

    def prepare(self, readonly: bool) -> None:
        if readonly:
            version = self._version()
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} has schema version {version}, this watchkeeper reads "
                    f"{SCHEMA_VERSION}; run an agent with this watchkeeper once to migrate it"
                )
            return
        with self.transaction() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
            tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = tx.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = int(row[0] or 0)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} has schema version {version}, newer than this watchkeeper "
                    f"understands ({SCHEMA_VERSION}); upgrade watchkeeper"
                )
            steps = [POSTGRES_BASE] if version == 0 else []
            steps += range(max(version, POSTGRES_BASE) + 1, SCHEMA_VERSION + 1)
            for step in steps:
                for statement in POSTGRES_MIGRATIONS[step].split(";"):
                    if statement.strip():
                        tx.execute(statement)
            if steps:
                tx.execute("DELETE FROM schema_version")
                tx.execute("INSERT INTO schema_version VALUES (?)", (steps[-1],))

    def _version(self) -> int:
        rows = self.read("SELECT to_regclass('schema_version') IS NOT NULL")
        if not rows[0][0]:
            return 0
        return int(self.read("SELECT MAX(version) FROM schema_version")[0][0] or 0)

    def vacuum(self) -> None:
        """Nothing: PostgreSQL's autovacuum reuses the space of deleted rows."""

    def size(self) -> int:
        """0: the database's size is its server's business (``pg_database_size`` needs rights
        an agent's role may not have, and the files are not this host's)."""
        return 0

    def close(self) -> None:
        with self.lock:
            self._closed = True
            listener, self._listener = self._listener, None
        self._stop.set()
        if listener is not None:
            listener.join(LISTEN_POLL * 4 + 5)
        self.pool.close()


def _reason(exc: BaseException) -> str:
    """psycopg's message, on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
