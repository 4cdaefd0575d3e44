"""What the pages, the JSON API and the live stream show, read from the store.

One place shapes a watcher row or a page of alerts, so the HTML, ``/api/...`` and the ``watcher``
events of the stream always agree. Everything here reads the store only: the keeper's threads own
the writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from watchkeeper.alerts import Alert, Severity
from watchkeeper.quantities import iso_utc
from watchkeeper.store import Store, WatcherRecord, alert_from_row
from watchkeeper.watchers.logrotated import lost_totals

if TYPE_CHECKING:
    from watchkeeper.keeper import Keeper

DAY = 86400.0


def watcher_state(record: WatcherRecord) -> str:
    """``paused``, ``failing`` (the last check raised) or ``ok``, as ``watchkeeper status``."""
    return "paused" if record.paused else "failing" if record.failures else "ok"


def alerts_per_watcher(store: Store, since: float) -> dict[str, int]:
    """{watcher: number of alerts created since ``since``}, counted by the hour (no scan)."""
    return store.recent_alert_counts(since)


def watcher_doc(
    record: WatcherRecord,
    alerts_24h: int,
    now: float,
    thread: tuple[str, str | None] | None = None,
    agent: str | None = None,
) -> dict[str, Any]:
    """A watcher as JSON: the API's row and the stream's ``watcher`` event.

    ``thread`` is the supervisor's word on its thread when that is ``crashed`` or
    ``restarting``: then it is the state, and its error the last error. ``agent``: the agent
    running it now (see :func:`watchkeeper.fleet.runners`), None when none does.
    """
    muted = record.muted_until if record.muted_until and record.muted_until > now else None
    return {
        "name": record.name,
        "kind": record.kind,
        "agent": agent,
        "state": thread[0] if thread else watcher_state(record),
        "paused": record.paused,
        "muted_until": iso_utc(muted) if muted else None,
        "last_check": iso_utc(record.last_check) if record.last_check else None,
        "next_check": iso_utc(record.next_check) if record.next_check else None,
        "checks": record.checks,
        "failures": record.failures,
        "failures_total": record.failures_total,
        "last_error": thread[1] if thread else record.last_error,
        "alerts_24h": alerts_24h,
        "log_lost": lost_totals(record.checkpoint),
    }


def watcher_docs(
    store: Store,
    threads: Mapping[str, tuple[str, str | None]] | None = None,
    running: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every watcher in the store, by name; ``threads`` as :func:`supervisor.watcher_health`,
    ``running`` {watcher: agent} as :func:`watchkeeper.fleet.runners`."""
    now = time.time()
    counts = alerts_per_watcher(store, now - DAY)
    threads = threads or {}
    running = running or {}
    return [
        watcher_doc(r, counts.get(r.name, 0), now, threads.get(r.name), running.get(r.name))
        for r in store.watchers()
    ]


@dataclass(frozen=True)
class AlertQuery:
    """The alerts page's filters; every one is optional."""

    watcher: str | None = None
    min_severity: Severity = Severity.DEBUG
    since: float | None = None
    q: str | None = None
    before_id: int | None = None
    since_id: int = 0
    limit: int = 50


def find_alerts(store: Store, query: AlertQuery, newest_first: bool = True) -> list[Alert]:
    """One page of alerts matching ``query``; text search looks in title, body and key."""
    clauses = ["id > ?", "severity >= ?"]
    params: list[Any] = [query.since_id, int(query.min_severity)]
    if query.watcher:
        clauses.append("watcher = ?")
        params.append(query.watcher)
    if query.since is not None:
        clauses.append("created_at >= ?")
        params.append(query.since)
    if query.before_id is not None:
        clauses.append("id < ?")
        params.append(query.before_id)
    if query.q:
        text = query.q.lower()
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # LOWER on both sides: SQLite's LIKE ignores case, PostgreSQL's does not.
        clauses.append(
            "(LOWER(title) LIKE ? ESCAPE '\\' OR LOWER(body) LIKE ? ESCAPE '\\' "
            "OR LOWER(key) LIKE ? ESCAPE '\\')"
        )
        params += [pattern, pattern, pattern]
    order = "DESC" if newest_first else "ASC"
    rows = store.query(
        f"SELECT * FROM alerts WHERE {' AND '.join(clauses)} ORDER BY id {order} LIMIT ?",
        [*params, query.limit],
    )
    return [alert_from_row(r) for r in rows]


def last_alert_id(store: Store) -> int:
    """The newest alert's id (0 when there is none): where a live-only stream starts."""
    value = store.query("SELECT MAX(id) FROM alerts")[0][0]
    return int(value or 0)


def first_alert_since(store: Store, moment: float) -> int:
    """The id of the first alert made at or after ``moment``; past the newest when there is none.

    The newest id is read first: an alert committed between the two reads is then either found
    by the second or newer than the answer, so a stream that starts after it misses nothing.
    """
    newest = last_alert_id(store)
    found = store.query("SELECT MIN(id) FROM alerts WHERE created_at >= ?", [moment])[0][0]
    return int(found) if found is not None else newest + 1


def watcher_names(store: Store) -> list[str]:
    """Names that appear in the alert history or the watchers table, for filter menus."""
    rows = store.query("SELECT name FROM watchers UNION SELECT watcher FROM alert_totals")
    return sorted(r[0] for r in rows)


def notifier_docs(store: Store, keeper: Keeper) -> list[dict[str, Any]]:
    """Each notifier: kind, destination, deliveries by status and the last error."""
    counts = store.delivery_counts()
    errors = store.last_delivery_errors()
    configured = {n.name: n for n in keeper.notifiers}
    docs = []
    for name in sorted(set(counts) | set(configured)):
        notifier = configured.get(name)
        c = counts.get(name, {})
        docs.append(
            {
                "name": name,
                "kind": notifier.kind if notifier else None,
                "destination": notifier.describe() if notifier else None,
                "pending": c.get("pending", 0),
                "sent": c.get("sent", 0),
                "failed": c.get("failed", 0),
                "last_error": errors.get(name),
            }
        )
    return docs


def checkpoint_json(value: Any) -> str:
    """The checkpoint as indented JSON, for the raw view under the tree."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)
