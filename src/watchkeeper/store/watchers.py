"""Watchers' rows, and the commit of a check: checkpoint, rule state, alerts and deliveries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from watchkeeper import tallies
from watchkeeper.alerts import Alert
from watchkeeper.errors import LeaseLost, StoreError
from watchkeeper.store.backend import Tx
from watchkeeper.store.core import StoreCore
from watchkeeper.store.records import Route, WatcherRecord, watcher_record


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

    def checkpoint_parts(self, name: str) -> dict[str, Any]:
        """A watcher's checkpoint parts, by key (see :meth:`commit_check`)."""
        rows = self._read("SELECT part, value FROM checkpoint_parts WHERE watcher = ?", (name,))
        try:
            return {row[0]: json.loads(row[1]) for row in rows}
        except ValueError as exc:
            raise StoreError(f"watcher {name!r}: its checkpoint cannot be read: {exc}") from exc

    def watchers(self) -> list[WatcherRecord]:
        """Every watcher that ever ran against this state, by name."""
        return [watcher_record(r) for r in self._read("SELECT * FROM watchers ORDER BY name")]

    def controls(self) -> dict[str, tuple[bool, float | None]]:
        """Every watcher's (paused, muted_until), by name: what a lease round follows, without
        reading every checkpoint as :meth:`watchers` does."""
        rows = self._read("SELECT name, paused, muted_until FROM watchers")
        return {row[0]: (bool(row[1]), row[2]) for row in rows}

    def register_watcher(self, name: str, kind: str) -> WatcherRecord:
        """Make sure the watcher has a row (so status shows it before its first check)."""
        return self.register_watchers([(name, kind)])[name]

    def register_watchers(
        self, watchers: Sequence[tuple[str, str]], agent: str | None = None
    ) -> dict[str, WatcherRecord]:
        """Rows for many (name, kind) watchers in one transaction, and their records by name:
        a keeper of 10,000 page watchers starts with one commit, not 10,000.

        ``agent``: the agent these watchers are pinned to (their ``owner``); None registers
        them as shared (any live agent may run one, under a lease).
        """
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO watchers (name, kind, owner) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET kind = excluded.kind, owner = excluded.owner",
                [(name, kind, agent) for name, kind in watchers],
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
        fence: tuple[str, int] | None = None,
        parts: dict[str, Any] | None = None,
    ) -> list[Alert]:
        """Commit one check: checkpoint, rule state, alerts and their deliveries, atomically.

        Returns the alerts with their store ids set. ``error`` is the check's failure (None when
        it passed); ``failures`` counts consecutive ones. ``fence`` (agent, token): the check ran
        under that lease of this watcher; unless it is still held so (row-locked until this
        commits, unexpired on the database's clock) LeaseLost is raised and nothing commits.
        ``parts`` are the checkpoint's parts the check changed: key -> new value, or None to
        delete it (the others stay). ``next_check`` (the caller's clock, as ``now``) is stored
        on the database's clock: an agent taking the watcher over compares it with that clock,
        so agents whose clocks disagree still check it once a cycle.
        """
        committed = list(alerts)
        failed = int(error is not None)
        with self.transaction() as conn:
            if fence is not None:
                self._check_fence(conn, name, fence)
            conn.execute(
                "UPDATE watchers SET checkpoint = ?, rule_state = ?, last_check = ?, "
                f"next_check = {self._db.dialect.now} + ?, checks = checks + 1, "
                "last_error = ?, failures = (failures + 1) * ?, "
                "failures_total = failures_total + ? WHERE name = ?",
                (
                    json.dumps(checkpoint),
                    json.dumps(rule_state),
                    now,
                    None if next_check is None else next_check - now,
                    error,
                    failed,
                    failed,
                    name,
                ),
            )
            if parts:
                _write_parts(conn, name, parts)
            notices = self._insert_alerts(conn, committed, routes, now) if committed else []
        self._heard(notices)
        return committed

    def _check_fence(self, conn: Tx, name: str, fence: tuple[str, int]) -> None:
        """Raise LeaseLost unless ``fence`` still holds this watcher's lease (row locked)."""
        dialect = self._db.dialect
        row = conn.execute(
            f"SELECT agent, token, expires_at, {dialect.now} FROM leases WHERE watcher = ?"
            f"{dialect.for_update}",
            (name,),
        ).fetchone()
        agent, token = fence
        if row is None or row[0] != agent or row[1] != token:
            holder = f"{row[0]} (token {row[1]})" if row is not None and row[0] else "nobody"
            raise LeaseLost(
                f"watcher {name!r}: the check ran under {agent}'s lease (token {token}), now "
                f"held by {holder}; its commit is refused"
            )
        if row[2] <= row[3]:
            raise LeaseLost(
                f"watcher {name!r}: {agent}'s lease (token {token}) expired "
                f"{row[3] - row[2]:.1f} s before the commit; its commit is refused"
            )

    def add_alerts(self, alerts: Iterable[Alert], routes: Sequence[Route], now: float) -> None:
        """Alerts no watcher made (the keeper's own health) and their deliveries, atomically."""
        added = list(alerts)
        if added:
            with self.transaction() as conn:
                notices = self._insert_alerts(conn, added, routes, now)
            self._heard(notices)

    def _insert_alerts(
        self, conn: Tx, alerts: list[Alert], routes: Sequence[Route], now: float
    ) -> list[str]:
        """Insert alerts and their deliveries, a statement each however many there are (the
        backend gives the ids, see :meth:`Backend.insert_alerts`), count them, and announce them
        to other agents; the notices, for this process's listeners once committed."""
        ids = self._db.insert_alerts(
            conn,
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
        for alert, alert_id in zip(alerts, ids, strict=True):
            alert.id = alert_id
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
        return self._announce(conn, ["alerts", *(d[1] for d in deliveries)])


def _write_parts(conn: Tx, name: str, parts: dict[str, Any]) -> None:
    """Upsert the changed parts and delete the ones set to None, in the caller's transaction."""
    changed = [(name, key, json.dumps(value)) for key, value in parts.items() if value is not None]
    if changed:
        conn.executemany(
            "INSERT INTO checkpoint_parts (watcher, part, value) VALUES (?, ?, ?) "
            "ON CONFLICT (watcher, part) DO UPDATE SET value = excluded.value",
            changed,
        )
    deleted = [(name, key) for key, value in parts.items() if value is None]
    if deleted:
        conn.executemany("DELETE FROM checkpoint_parts WHERE watcher = ? AND part = ?", deleted)
