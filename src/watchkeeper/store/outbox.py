"""The outbox: deliveries due, handed to dispatchers, marked sent, retried or failed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from watchkeeper import tallies
from watchkeeper.errors import StoreError
from watchkeeper.store.backend import Row
from watchkeeper.store.core import StoreCore
from watchkeeper.store.records import Delivery, deliveries

_SENT = "status = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL"
"""What :meth:`Store.mark_sent` sets."""
_DELIVERY = (
    "d.id AS delivery_id, d.notifier, d.attempts, a.* FROM deliveries d "
    "JOIN alerts a ON a.id = d.alert_id"
)
"""A delivery read with its alert: what :func:`~watchkeeper.store.records.deliveries` takes."""
CLAIM_TIMEOUT = 300.0
"""Seconds a claimed delivery stays its agent's before another may take it (PostgreSQL)."""
MARK_CHUNK = 5000
"""Deliveries marked per transaction: a digest of 100,000 alerts never holds the writer long."""


class Outbox(StoreCore):
    """One delivery row per (alert, notifier), drained by the dispatchers."""

    def due(
        self,
        notifier: str,
        now: float,
        limit: int = 100,
        agent: str | None = None,
        claim_for: float = CLAIM_TIMEOUT,
    ) -> list[Delivery]:
        """Pending deliveries to one notifier whose next try has come, in due order.

        They are read from the pending index in its order (next try, then id), so the cost is
        that of ``limit`` rows however long the backlog is. Deliveries sent but not yet marked
        (the store could not take the mark) are not due: they are marked first if the store
        takes it now, and never handed out again.

        Where agents share the outbox (PostgreSQL), the rows are claimed for ``agent`` (default:
        the agent this store was claimed for) for
        ``claim_for`` seconds of the database's clock, in the transaction that picks them with
        ``FOR UPDATE SKIP LOCKED``: two agents never get the same row; a mark ends the claim,
        and a claim never marked (its agent died) makes the row due again when it runs out.
        """
        with self._lock:
            unmarked = self._try_unmarked()
            wanted = limit + len(unmarked)
            if self._db.claims_deliveries:
                claimer = agent or self.agent or "?"
                rows = self._claim_due(notifier, now, wanted, claimer, claim_for)
            else:
                rows = self._read(
                    f"SELECT {_DELIVERY} WHERE d.notifier = ? AND d.status = 'pending' "
                    "AND d.next_try <= ? ORDER BY d.next_try, d.id LIMIT ?",
                    (notifier, now, wanted),
                )
        return [d for d in deliveries(rows) if d.id not in unmarked][:limit]

    def _claim_due(
        self, notifier: str, now: float, limit: int, agent: str, claim_for: float
    ) -> list[Row]:
        """Claim up to ``limit`` due, unclaimed (or claim-expired) rows; them with their alerts."""
        clock = self._db.dialect.now
        with self.transaction() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "WITH picked AS (SELECT id FROM deliveries WHERE notifier = ? "
                    "AND status = 'pending' AND next_try <= ? "
                    f"AND (claim_until IS NULL OR claim_until < {clock}) "
                    "ORDER BY next_try, id LIMIT ? FOR UPDATE SKIP LOCKED) "
                    f"UPDATE deliveries SET claimed_by = ?, claim_until = {clock} + ? "
                    "FROM picked WHERE deliveries.id = picked.id RETURNING deliveries.id",
                    (notifier, now, limit, agent, claim_for),
                ).fetchall()
            ]
            if not ids:
                return []
            rows: list[Row] = conn.execute(
                f"SELECT {_DELIVERY} WHERE d.id IN ({','.join('?' * len(ids))}) "
                "ORDER BY d.next_try, d.id",
                ids,
            ).fetchall()
            return rows

    def _try_unmarked(self) -> set[int]:
        """Write the sent marks kept in memory if the store takes them now; the ids still kept
        (call with the lock held)."""
        if self._unmarked:
            with contextlib.suppress(StoreError):
                self._mark_unmarked()
        return set(self._unmarked)

    def pending_after(
        self, notifier: str, cursor: int | None, limit: int = 1000
    ) -> tuple[list[Delivery], int]:
        """Pending deliveries to one notifier added after ``cursor``, in order, and the new cursor.

        For a dispatcher that holds pending deliveries in memory (grouped notifiers) and so must
        see each one once, whatever its next try. ``cursor`` None starts from the oldest pending
        one. The cursor also moves past deliveries to other notifiers, so a notifier that gets
        few alerts never reads the others' backlog twice. Sent deliveries whose marks the store
        could not take yet are left out, as by :meth:`due`.
        """
        if cursor is None:  # before the oldest pending one, or (none) after everything there is
            cursor = int(
                self._read(  # one statement, one state: a commit cannot fall in between
                    "SELECT COALESCE((SELECT MIN(id) - 1 FROM deliveries WHERE notifier = ? "
                    "AND status = 'pending'), (SELECT MAX(id) FROM deliveries), 0)",
                    (notifier,),
                )[0][0]
            )
        with self._lock:  # the reads see one state: nothing commits in between
            unmarked = self._try_unmarked()
            top = self._read("SELECT MAX(id) FROM deliveries")[0][0] or 0
            rows = self._read(
                "SELECT d.id AS delivery_id, d.notifier, d.attempts, a.* FROM deliveries d "
                f"{self._db.dialect.no_index} JOIN alerts a ON a.id = d.alert_id "
                "WHERE d.id > ? AND d.id <= ? AND d.notifier = ? AND d.status = 'pending' "
                "ORDER BY d.id LIMIT ?",
                (cursor, top, notifier, limit),
            )
        found = deliveries(rows)
        cursor = found[-1].id if len(found) >= limit else int(top)
        return [d for d in found if d.id not in unmarked], cursor

    def next_try(self, notifier: str) -> float | None:
        """When the earliest pending delivery to this notifier is due, or None if none is."""
        rows = self._read(
            "SELECT MIN(next_try) FROM deliveries WHERE notifier = ? AND status = 'pending'",
            (notifier,),
        )
        value = rows[0][0]
        return float(value) if value is not None else None

    def reschedule_pending(self, notifier: str, now: float) -> int:
        """Make every pending delivery to a notifier due now: a new start retries at once."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET next_try = ? WHERE notifier = ? AND status = 'pending' "
                "AND next_try > ?",
                (now, notifier, now),
            )
            return cursor.rowcount

    def mark_sent(self, delivery_ids: Sequence[int], now: float) -> None:
        """Record deliveries as done.

        If the store cannot take it (disk full, I/O error), the marks are kept in memory, the
        deliveries are never due again in this process, and the marks are written with the
        next :meth:`due`, :meth:`mark_sent` or :meth:`flush_marks` that gets through; then the
        StoreError is raised, so the caller knows the store is in trouble.
        """
        with self._lock:
            self._unmarked.update(dict.fromkeys(delivery_ids, now))
            self._mark_unmarked()

    def flush_marks(self, wait: bool = True) -> int:
        """Write the sent marks kept in memory; how many are still waiting (StoreError kept).

        ``wait=False``: while another thread holds the writer's lock, only count them.
        """
        if not self._lock.acquire(blocking=wait):
            return len(self._unmarked)
        try:
            return len(self._try_unmarked())
        finally:
            self._lock.release()

    def _mark_unmarked(self) -> None:
        """Write the kept sent marks, a transaction per :data:`MARK_CHUNK` (counted as they go)."""
        by_time: dict[float, list[int]] = {}
        for delivery_id, sent_at in self._unmarked.items():
            by_time.setdefault(sent_at, []).append(delivery_id)
        for sent_at, ids in by_time.items():
            for start in range(0, len(ids), MARK_CHUNK):
                chunk = ids[start : start + MARK_CHUNK]
                self._mark(_SENT, (sent_at,), chunk, "sent")
                for delivery_id in chunk:
                    self._unmarked.pop(delivery_id, None)

    def mark_retry(self, delivery_ids: Sequence[int], error: str, next_try: float) -> None:
        """Record a failed try; the deliveries stay pending until ``next_try``."""
        self._mark(
            "attempts = attempts + 1, last_error = ?, next_try = ?",
            (error, next_try),
            delivery_ids,
            None,
        )

    def mark_failed(self, delivery_ids: Sequence[int], error: str) -> None:
        """Record deliveries that cannot succeed; they stay visible in status and the API."""
        self._mark(
            "status = 'failed', attempts = attempts + 1, last_error = ?",
            (error,),
            delivery_ids,
            "failed",
        )

    def _mark(
        self, assignments: str, values: tuple[Any, ...], ids: Sequence[int], to: str | None
    ) -> None:
        """One UPDATE for many pending deliveries, counted (``to``: their new status): a
        transaction per :data:`MARK_CHUNK`, so marking a digest of 100,000 alerts never holds
        the writer long. A delivery no longer pending is left alone: a mark is idempotent."""
        sql = (
            f"UPDATE deliveries SET {assignments}, claimed_by = NULL, claim_until = NULL "
            "WHERE id = ? AND status = 'pending'"
        )
        for start in range(0, len(ids), MARK_CHUNK):
            chunk = ids[start : start + MARK_CHUNK]
            with self.transaction() as conn:
                counts = conn.execute(
                    f"SELECT notifier, COUNT(*) FROM deliveries WHERE id IN "
                    f"({','.join('?' * len(chunk))}) AND status = 'pending' GROUP BY notifier "
                    "ORDER BY notifier",
                    chunk,
                ).fetchall()
                conn.executemany(sql, [(*values, i) for i in chunk])
                for notifier, count in counts:
                    tallies.tried(conn, notifier, count)
                    if to is not None:
                        tallies.moved(conn, notifier, "pending", to, count)

    def retry_failed(self, notifier: str | None = None) -> int:
        """Put failed deliveries back in the queue (after fixing a notifier's config)."""
        where, which = (
            ("status = 'failed'", [])
            if notifier is None
            else (
                "status = 'failed' AND notifier = ?",
                [notifier],
            )
        )
        with self.transaction() as conn:
            counts = conn.execute(
                f"SELECT notifier, COUNT(*) FROM deliveries WHERE {where} GROUP BY notifier "
                "ORDER BY notifier",
                which,
            ).fetchall()
            cursor = conn.execute(
                f"UPDATE deliveries SET status = 'pending', next_try = ? WHERE {where}",
                [time.time(), *which],
            )
            for name, count in counts:
                tallies.moved(conn, name, "failed", "pending", count)
            notices = self._announce(conn, [name for name, _ in counts])
        self._heard(notices)
        return cursor.rowcount

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """{notifier: {status: count}} for status pages, from the counters (no scan).

        ``sent`` and ``failed`` count every delivery that ended, also those of alerts that
        retention has deleted since; statuses with no delivery are left out.
        """
        counts: dict[str, dict[str, int]] = {}
        for row in self._read(
            "SELECT notifier, status, count FROM delivery_totals WHERE count != 0 "
            "AND status IN ('pending', 'sent', 'failed')"
        ):
            counts.setdefault(row[0], {})[row[1]] = row[2]
        return counts

    def delivery_attempts(self) -> dict[str, int]:
        """{notifier: tries to deliver, failed ones included}, from the counters."""
        rows = self._read("SELECT notifier, count FROM delivery_totals WHERE status = 'attempts'")
        return {r[0]: r[1] for r in rows}

    def last_delivery_errors(self) -> dict[str, str]:
        """{notifier: the most recent error of a pending or failed delivery}.

        Read through the pending and failed indexes: as costly as the deliveries not sent.
        """
        rows = [
            row
            for status in ("'pending'", "'failed'")  # literals: only they match partial indexes
            for row in self._read(
                "SELECT id, notifier, last_error FROM deliveries WHERE status = "
                f"{status} AND last_error IS NOT NULL"
            )
        ]
        return {r[1]: r[2] for r in sorted(rows, key=lambda r: int(r[0]))}
