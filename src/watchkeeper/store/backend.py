"""What the store needs from a database: the contract its two backends (sqlite, postgres) keep.

The store's logic and its SQL are written once, with ``?`` placeholders and SQL both databases
read. A backend supplies only what differs: the connection (one SQLite connection under a lock,
or a pool of PostgreSQL connections), transactions and how their errors read, the few SQL
fragments that are one database's own (:class:`Dialect`), how a batch of alerts gets its ids,
the writer's claim, migrations, and the file-only chores (vacuum, size).

Every database error leaves a backend as a :class:`WriteFault` or a plain StoreError, already
saying what could not be done to which state; ``transient`` tells the callers that retry (the
runtime, the dispatcher, the supervisor) that trying again may work (a lost connection, a
serialization failure), as opposed to a schema or data problem.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from watchkeeper.errors import ConfigError, StoreError


class Row(Protocol):
    """A result row: by position or by column name (sqlite3.Row, or the postgres backend's)."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def keys(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


class Cursor(Protocol):
    """What a statement run in a transaction gives back."""

    @property
    def rowcount(self) -> int: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class Tx(Protocol):
    """A transaction in progress: statements with ``?`` placeholders (sqlite3.Connection is one)."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> object: ...


class WriteFault(StoreError):
    """The database refused or failed a statement: the store's fault, as status shows it."""


@dataclass(frozen=True)
class Dialect:
    """SQL fragments that only one database reads, spliced into the shared statements."""

    now: str
    """An expression for the database's clock, in seconds since 1970 (float)."""
    for_update: str = ""
    """Locks the rows a SELECT in a transaction reads (SQLite's writer holds the whole file)."""
    by_created: str = ""
    """Makes the oldest-alert lookup use the time index (SQLite otherwise walks ids down)."""
    no_index: str = ""
    """Keeps a cursor's read off the pending index (SQLite picks it and then sorts)."""


class Backend(ABC):
    """One database behind a store; see the module docstring for what it owns."""

    name: str
    """``"sqlite"`` or ``"postgres"``."""
    fleet_capable: bool
    """Whether several agents may share it (leases, claimed deliveries, NOTIFY)."""
    claims_deliveries: bool
    """Whether :meth:`Store.due` claims the rows it hands out (several agents dispatch)."""
    dialect: Dialect
    path: Path
    """The state file; for a server database, a local file name for this agent's own notes."""
    where: str
    """How messages name this state: ``state file /x.db`` or ``database postgresql://h/db``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        """Held while a store's in-memory state must agree with what it reads (and, on SQLite,
        around every use of the one connection)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]:
        """BEGIN ... COMMIT, rolled back on any exception; database errors as WriteFault."""

    @abstractmethod
    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of one read-only statement, outside any transaction."""

    @abstractmethod
    def insert_alerts(self, tx: Tx, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert alert rows with ``sql`` in ``tx``; their ids, in order. Ids only grow in commit
        order, so a reader's cursor over ids never skips a row committed later."""

    @abstractmethod
    def prepare(self, readonly: bool) -> None:
        """Migrate the schema to this version (or, read-only, check that it is at it)."""

    @abstractmethod
    def notify(self, tx: Tx, payloads: Iterable[str]) -> None:
        """Tell other agents' listeners, when ``tx`` commits, what changed."""

    @abstractmethod
    def listen(self, heard: Callable[[list[str]], None]) -> None:
        """Pass other agents' notices to ``heard`` from now on (once; a no-op where there are
        no other agents)."""

    @abstractmethod
    def claim(self) -> None:
        """Become this state's one writer (SQLite) or do nothing (fleet databases)."""

    @abstractmethod
    def vacuum(self) -> None:
        """Give the space pruned history took back to the file system, where that applies."""

    @abstractmethod
    def size(self) -> int:
        """Bytes the state takes on disk (0 where the store cannot know)."""

    @abstractmethod
    def close(self) -> None:
        """Close connections and release the claim; further use raises StoreError."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def local_path(state: str | Path) -> Path:
    """The local file an agent keeps its own notes beside (``<it>.health.json``, the agent
    note): the state file itself; for a database, a file under the default state folder named
    after the server and the database (never the password)."""
    if not isinstance(state, str) or not state.startswith(("sqlite://", *POSTGRES_SCHEMES)):
        return Path(state)
    if state.startswith("sqlite://"):
        return Path(state[len("sqlite://") :])
    parts = urlsplit(state)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha256(mask(state).encode()).hexdigest()[:8]
    database = (parts.path or "/").strip("/") or "postgres"
    return Path(base) / "watchkeeper" / f"{parts.hostname or 'local'}-{database}-{digest}.pg"


def expand(url: str) -> str:
    """``${VAR}`` in a state URL replaced from the environment (a password kept out of config)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"state {mask(url)}: environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _VAR.sub(value, url)


def mask(url: str) -> str:
    """A URL fit for messages and logs: its password (if any) replaced by ``***``."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^@]*@", r"\1:***@", url)
