"""What the store hands out: watcher rows, deliveries, routes, and alerts read back from rows.

Kept apart from the store's SQL so readers (the dashboard, the CLI) can import the records without
the connection code, and so every backend builds the same objects from its rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from watchkeeper.alerts import Alert, Severity
from watchkeeper.errors import StoreError
from watchkeeper.store.backend import Row


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
    owner: str | None = None
    """The agent the watcher is pinned to; None: shared (run by whichever agent holds its
    lease)."""


@dataclass(frozen=True)
class AgentRecord:
    """An agent as the store knows it: when it started, when it was last heard from (both on
    the database's clock), and what it reported of itself (host, pid, version, watchers, ...).
    Whether it is alive is the caller's to judge: ``last_seen`` against :meth:`Store.db_now`."""

    name: str
    started_at: float
    last_seen: float
    info: dict[str, Any]
    stopped: bool = False
    """It stopped cleanly (:meth:`Store.close`): gone at once, whatever its last heartbeat."""

    def alive(self, now: float, lease: float) -> bool:
        """Running: not stopped, and heard from within ``lease`` before ``now`` (DB clock)."""
        return not self.stopped and now - self.last_seen < lease


@dataclass(frozen=True)
class LeaseRecord:
    """Who runs a shared watcher: the agent (None once released), its fencing token, and until
    when (the database's clock)."""

    watcher: str
    agent: str | None
    token: int
    expires_at: float


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


def deliveries(rows: Iterable[Row]) -> list[Delivery]:
    return [
        Delivery(r["delivery_id"], r["notifier"], r["attempts"], alert_from_row(r)) for r in rows
    ]


def alert_from_row(row: Row) -> Alert:
    """An Alert from a row of the alerts table (also for reports using :meth:`Store.query`).

    A row that does not read as one (edited by hand, a disk error) is a StoreError naming it.
    """
    try:
        return _alert(row)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StoreError(f"alert {_row_id(row)} in the state file cannot be read: {exc}") from exc


def _row_id(row: Row) -> str:
    keys = row.keys()
    return f"#{row['id']}" if "id" in keys else repr(row["name"]) if "name" in keys else "?"


def _alert(row: Row) -> Alert:
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


def watcher_record(row: Row) -> WatcherRecord:
    try:
        return _record(row)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StoreError(f"watcher {_row_id(row)} in the state file cannot be read: {exc}") from exc


def _record(row: Row) -> WatcherRecord:
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
        owner=row["owner"],
    )
