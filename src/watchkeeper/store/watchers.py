"""Watchers' rows, and the commit of a check: checkpoint, rule state, alerts and deliveries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from watchkeeper import tallies
from watchkeeper.alerts import Alert
from watchkeeper.errors import StoreError
from watchkeeper.store.records import Route, WatcherRecord, watcher_record
from watchkeeper.store.sqlite import StoreCore


class WatcherStore(StoreCore):
    """The watchers table and the one transaction a check commits in."""

    def watcher(self, name: str) -> WatcherRecord | None:
        """The stored state of one watcher, or None if it never ran."""
        rows = self._read("SELECT * FROM watchers WHERE name = ?", (name,))
        return watcher_record(rows[0]) if rows else None

    def checkpoint(self, name: str) -> Any:
        """A watcher's last committed checkpoint (None if it has none)."""
        rows = self._read("SELECT checkpoint FROM watchers WHERE name = ?", (name,))
        try:
            return json.loads(rows[0][0]) if rows and rows[0][0] else None
        except ValueError as exc:
            raise StoreError(f"watcher {name!r}: its checkpoint cannot be read: {exc}") from exc

    def watchers(self) -> list[WatcherRecord]:
        """Every watcher that ever ran against this state, by name."""
        return [watcher_record(r) for r in self._read("SELECT * FROM watchers ORDER BY name")]

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
        return {r["name"]: watcher_record(r) for r in rows if r["name"] in wanted}

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
            if committed:
                self._insert_alerts(conn, committed, routes, now)
        return committed

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
