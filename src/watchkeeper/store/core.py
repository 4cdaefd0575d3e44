"""The store's core, whatever the database: opening a state, transactions, reads, faults, wakes.

A store is opened from a state (a path, ``sqlite:///path`` or ``postgresql://…``, see
:func:`open_backend`); everything above it (watchers, outbox,
history, fleet) uses only :meth:`StoreCore.transaction` and :meth:`StoreCore._read`, so it runs
unchanged on both backends.

Wakes: a commit that adds alerts or deliveries announces it (payload ``alerts`` and the names of
the notifiers with new deliveries). Callbacks given to :meth:`StoreCore.listen` and waiters in
:meth:`StoreCore.wait_changed` hear this process's commits at once; on PostgreSQL they also hear
every other agent's, through ``LISTEN watchkeeper`` on a connection of their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from watchkeeper.errors import ConfigError
from watchkeeper.store.backend import (
    POSTGRES_SCHEMES,
    Backend,
    Row,
    Tx,
    WriteFault,
    expand,
    mask,
)
from watchkeeper.store.sqlite import SqliteBackend

Listener = Callable[[str], None]
"""Called with each change notice's payload: ``alerts`` or a notifier's name."""


class StoreCore:
    """The state, safe to use from many threads; see the package docstring for what it holds."""

    agent: str | None = None
    """The agent this store was claimed for (``claim``), if any: whom ``due`` claims for."""

    def __init__(self, state: str | Path, readonly: bool = False) -> None:
        self.state = state
        self.readonly = readonly
        self._db: Backend = open_backend(state, readonly)
        self.backend = self._db.name
        """``"sqlite"`` or ``"postgres"``."""
        self.fleet_capable = self._db.fleet_capable
        """Whether several agents may share this state (PostgreSQL)."""
        self.path = self._db.path
        self._lock = self._db.lock
        self.fault: str | None = None
        """The last write error while writes keep failing (None when the last one worked)."""
        self.fault_since: float | None = None
        self._unmarked: dict[int, float] = {}
        """Deliveries sent whose ``sent`` mark could not be written yet: id -> when sent."""
        self._listeners: list[Listener] = []
        self._changes = threading.Condition()
        self._generation = 0
        try:
            self._db.prepare(readonly)
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, state: str | Path, *, readonly: bool = False) -> Self:
        """The store of ``state``: a path or ``sqlite:///path`` (SQLite), ``postgresql://…``."""
        return cls(state, readonly=readonly)

    @property
    def where(self) -> str:
        """How messages name this state (a database URL without its password)."""
        return self._db.where

    # -- transactions and reads ---------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """BEGIN ... COMMIT, rolled back on any exception; a database error is a StoreError and
        is remembered as the store's fault until a write goes through again."""
        try:
            with self._db.transaction() as tx:
                yield tx
        except WriteFault as exc:
            with self._lock:
                if self.fault is None:
                    self.fault_since = time.time()
                self.fault = str(exc)
            raise
        self.fault = None
        self.fault_since = None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.read(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read-only query, for reports that own their SQL (the dashboard, /metrics): ``?``
        placeholders, SQL both databases read."""
        return self._read(sql, params)

    def db_now(self) -> float:
        """The database's clock (seconds since 1970): what leases and heartbeats are measured
        on, so agents whose clocks disagree still agree on who is alive."""
        return float(self._read(f"SELECT {self._db.dialect.now}")[0][0])

    def reader(self) -> Self:
        """A read-only store on the same state with a connection of its own, for readers that
        must never wait for (or hold up) the writer: the dashboard, the API, /metrics."""
        return type(self)(self.state, readonly=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def holder(path: str | Path) -> int | None:
        """The pid of the keeper that has claimed the state file at ``path``, or None (always
        None for a database URL: agents there are seen through :meth:`agents`)."""
        return SqliteBackend.holder(path)

    def close(self) -> None:
        """Close the connections (after any transaction in progress) and release the claim."""
        self._db.close()

    # -- file chores --------------------------------------------------------------------------

    def _vacuum(self) -> None:
        self._db.vacuum()

    def file_size(self) -> int:
        """Bytes the state takes on disk: the file and its write-ahead log (0 on a server)."""
        return self._db.size()

    # -- change notices -----------------------------------------------------------------------

    def listen(self, callback: Listener) -> None:
        """Call ``callback(payload)`` on every change notice (see the module docstring), from
        the committing thread or the listener thread: it must be quick and never raise."""
        self._listeners.append(callback)
        self._db.listen(self._heard)

    def wait_changed(self, timeout: float) -> bool:
        """Block until a change notice comes or ``timeout`` passes; whether one came."""
        self._db.listen(self._heard)
        with self._changes:
            seen = self._generation
            return self._changes.wait_for(lambda: self._generation != seen, timeout)

    def _announce(self, tx: Tx, payloads: Iterable[str]) -> list[str]:
        """Queue notices for other agents in ``tx``; the payloads, for :meth:`_heard` after it
        commits."""
        sent = sorted(set(payloads))
        if sent:
            self._db.notify(tx, sent)
        return sent

    def _heard(self, payloads: Iterable[str]) -> None:
        """Notices arrived (this process's commits, or another agent's on PostgreSQL)."""
        payloads = list(payloads)
        if not payloads:
            return
        with self._changes:
            self._generation += 1
            self._changes.notify_all()
        for payload in payloads:
            for callback in list(self._listeners):
                callback(payload)


def open_backend(state: str | Path, readonly: bool) -> Backend:
    """The backend for a state: a path or ``sqlite:///path`` (SQLite), a ``postgresql://`` or
    ``postgres://`` URL (PostgreSQL, with the ``postgres`` extra installed)."""
    text = str(state)
    if isinstance(state, str) and state.startswith(POSTGRES_SCHEMES):
        try:
            from watchkeeper.store.postgres import PostgresBackend
        except ImportError as exc:
            raise ConfigError(
                f"state {mask(text)}: PostgreSQL needs psycopg 3 "
                f"(pip install 'watchkeeper[postgres]'): {exc}"
            ) from exc
        return PostgresBackend(expand(state), readonly)
    if isinstance(state, str) and state.startswith("sqlite://"):
        rest = expand(state)[len("sqlite://") :]
        if not rest.startswith("/"):
            raise ConfigError(f"state {text}: write sqlite:///absolute/path (three slashes)")
        return SqliteBackend(Path(rest), readonly)
    return SqliteBackend(Path(text), readonly)
