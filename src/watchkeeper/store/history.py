"""The alert history: reading it, its counters, and retention (pruning old alerts)."""

from __future__ import annotations

import time
from typing import Any

from watchkeeper import tallies
from watchkeeper.alerts import Alert, Severity
from watchkeeper.store.core import StoreCore
from watchkeeper.store.records import alert_from_row

PRUNE_STEP = 500
"""Alerts deleted per transaction by :meth:`Store.prune`."""


class History(StoreCore):
    """Alerts as they were committed, counted, and pruned within retention."""

    def alert_totals(self) -> list[tuple[str, Severity, int]]:
        """(watcher, severity, alerts ever committed), from the counters."""
        rows = self._read("SELECT watcher, severity, count FROM alert_totals ORDER BY 1, 2")
        return [(r[0], Severity(r[1]), r[2]) for r in rows]

    def recent_alert_counts(self, since: float) -> dict[str, int]:
        """{watcher: alerts committed since ``since``}, counted by the hour (the hour that holds
        ``since`` counts whole), from the counters."""
        rows = self._read(
            "SELECT watcher, CAST(SUM(count) AS BIGINT) FROM alert_hours WHERE hour >= ? "
            "GROUP BY watcher",
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
        old = self._read(  # through the time index
            f"SELECT MAX(id) FROM alerts {self._db.dialect.by_created} WHERE created_at < ?",
            (before,),
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
                    ).fetchall()
                ]
                if ids:
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
        clauses = ["id > ?", "severity >= ?"]
        params: list[Any] = [since_id, int(min_severity)]
        if since_time is not None:
            clauses.append("created_at >= ?")
            params.append(since_time)
        if watcher is not None:
            clauses.append("watcher = ?")
            params.append(watcher)
        rows = self._read(
            f"SELECT * FROM alerts WHERE {' AND '.join(clauses)} ORDER BY id {order} LIMIT ?",
            [*params, limit],
        )
        return [alert_from_row(r) for r in rows]
