"""Counters kept as alerts commit and deliveries end, so that what pages show costs no scan.

Counting 24 hours of alerts per watcher over a table of five million rows took seconds; adding a
few to a counter in the transaction that commits them takes microseconds, and reading the counters
costs as much with five million alerts as with five. Three tables (schema 3):

- ``alert_totals (watcher, severity, count)``: every alert ever committed (``/metrics``'s counter:
  it never goes down, not even when retention deletes old alerts);
- ``alert_hours (watcher, hour, count)``: alerts per watcher per hour since 1970, for "alerts in
  the last 24 hours" (counted by the hour); hours older than two days are dropped by the pruner;
- ``delivery_totals (notifier, status, count)``: deliveries by status (``pending``, ``sent``,
  ``failed``) and the tries made (``attempts``). ``sent`` and ``failed`` count every delivery
  that ended, also those whose alerts retention deleted since.

Every function that writes takes a transaction in progress (either backend's): the counts move in
the same commit as the rows they count, so a crash never leaves them apart.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from watchkeeper.alerts import Alert

if TYPE_CHECKING:
    from watchkeeper.store.backend import Tx

SCHEMA = """
CREATE TABLE alert_totals (
    watcher TEXT NOT NULL, severity INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (watcher, severity)
) WITHOUT ROWID;
CREATE TABLE alert_hours (
    watcher TEXT NOT NULL, hour INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (watcher, hour)
) WITHOUT ROWID;
CREATE TABLE delivery_totals (
    notifier TEXT NOT NULL, status TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (notifier, status)
) WITHOUT ROWID;
INSERT INTO alert_totals SELECT watcher, severity, COUNT(*) FROM alerts GROUP BY 1, 2;
INSERT INTO alert_hours SELECT watcher, CAST(created_at / 3600 AS INTEGER), COUNT(*) FROM alerts
    WHERE created_at >= CAST(strftime('%s', 'now') AS INTEGER) - 172800 GROUP BY 1, 2;
INSERT INTO delivery_totals SELECT notifier, status, COUNT(*) FROM deliveries GROUP BY 1, 2;
INSERT INTO delivery_totals SELECT notifier, 'attempts', SUM(attempts) FROM deliveries GROUP BY 1
"""
"""The tables, filled from the history a file already has (once, when it is migrated)."""

HOUR = 3600
KEEP_HOURS = 48
"""Hourly counts older than this many hours are dropped."""

_ADD = {
    "alert_totals": "INSERT INTO alert_totals VALUES (?, ?, ?) ON CONFLICT (watcher, severity) "
    "DO UPDATE SET count = alert_totals.count + excluded.count",
    "alert_hours": "INSERT INTO alert_hours VALUES (?, ?, ?) ON CONFLICT (watcher, hour) "
    "DO UPDATE SET count = alert_hours.count + excluded.count",
    "delivery_totals": "INSERT INTO delivery_totals VALUES (?, ?, ?) ON CONFLICT (notifier, "
    "status) DO UPDATE SET count = delivery_totals.count + excluded.count",
}


def committed(conn: Tx, alerts: Iterable[Alert], routed: Sequence[str]) -> None:
    """Count newly committed alerts, and their deliveries (``routed``: one notifier name each)."""
    totals: collections.Counter[tuple[str, int]] = collections.Counter()
    hours: collections.Counter[tuple[str, int]] = collections.Counter()
    for alert in alerts:
        totals[alert.watcher, int(alert.severity)] += 1
        hours[alert.watcher, int(alert.created_at // HOUR)] += 1
    # In key order: transactions of several agents (PostgreSQL) lock the rows in one order.
    conn.executemany(_ADD["alert_totals"], [(*k, n) for k, n in sorted(totals.items())])
    conn.executemany(_ADD["alert_hours"], [(*k, n) for k, n in sorted(hours.items())])
    pending = collections.Counter(routed)
    conn.executemany(
        _ADD["delivery_totals"], [(k, "pending", n) for k, n in sorted(pending.items())]
    )


def moved(conn: Tx, notifier: str, before: str, after: str, count: int) -> None:
    """``count`` deliveries to ``notifier`` went from status ``before`` to ``after``."""
    if count:
        conn.executemany(
            _ADD["delivery_totals"], [(notifier, before, -count), (notifier, after, count)]
        )


def tried(conn: Tx, notifier: str, count: int) -> None:
    """``count`` more tries to deliver to ``notifier``."""
    if count:
        conn.execute(_ADD["delivery_totals"], (notifier, "attempts", count))


def drop_old_hours(conn: Tx, now: float) -> None:
    """Forget hourly counts older than :data:`KEEP_HOURS`."""
    conn.execute("DELETE FROM alert_hours WHERE hour < ?", (int(now // HOUR) - KEEP_HOURS,))
