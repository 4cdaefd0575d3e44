"""The store: checkpoints, rule state, alert history and the outbox of deliveries.

:meth:`Store.commit_check` writes a watcher's new checkpoint, its rule state, its alerts and one
delivery row per (alert, notifier) in one transaction: a crash before the commit means the check
is redone from the old checkpoint, a crash after it means the alerts are safe in the outbox.

The package is split by concern: ``sqlite`` (the connection, transactions, the writer's claim,
migrations from ``schema``), ``watchers`` (watchers' rows and the commit of a check), ``outbox``
(deliveries), ``history`` (alerts, counters, retention) and ``records`` (what they hand out).
This module is the one face callers import.
"""

from __future__ import annotations

from watchkeeper.store.history import History
from watchkeeper.store.outbox import Outbox
from watchkeeper.store.records import Delivery, Route, WatcherRecord, alert_from_row
from watchkeeper.store.watchers import WatcherStore

__all__ = ["Delivery", "Route", "Store", "WatcherRecord", "alert_from_row"]


class Store(WatcherStore, Outbox, History):
    """The state file, safe to use from many threads and processes.

    Only one running keeper may write to a state file (:meth:`claim`); readers (``status``,
    ``alerts``, the dashboard) may open it at any time, also ``readonly``.
    """
