"""The store: checkpoints, rule state, alert history, the outbox of deliveries, and (for fleets)
agents and leases, on SQLite (one agent, the default) or PostgreSQL (many agents).

:meth:`Store.commit_check` writes a watcher's new checkpoint, its rule state, its alerts and one
delivery row per (alert, notifier) in one transaction: a crash before the commit means the check
is redone from the old checkpoint, a crash after it means the alerts are safe in the outbox.

The package is split by concern: ``core`` (opening a state, transactions, reads, faults,
change notices) over a ``backend`` (``sqlite`` or ``postgres``, migrations from ``schema``);
``watchers`` (watchers' rows, the commit of a check), ``outbox`` (deliveries), ``history``
(alerts, counters, retention), ``fleet`` (agents, leases) and ``records`` (what they hand out).
Nothing above the store knows which database it runs on. This module is the one face callers
import.
"""

from __future__ import annotations

from watchkeeper.errors import LeaseLost, StoreError
from watchkeeper.store.fleet import LEASE, Fleet, default_agent
from watchkeeper.store.history import History
from watchkeeper.store.outbox import CLAIM_TIMEOUT, Outbox
from watchkeeper.store.records import (
    AgentRecord,
    Delivery,
    LeaseRecord,
    Route,
    WatcherRecord,
    alert_from_row,
)
from watchkeeper.store.watchers import WatcherStore

__all__ = [
    "CLAIM_TIMEOUT",
    "LEASE",
    "AgentRecord",
    "Delivery",
    "LeaseLost",
    "LeaseRecord",
    "Route",
    "Store",
    "StoreError",
    "WatcherRecord",
    "alert_from_row",
    "default_agent",
]


class Store(WatcherStore, Outbox, History, Fleet):
    """A state, safe to use from many threads: ``Store(state)`` or ``Store.open(state)``, where
    ``state`` is a path or ``sqlite:///path`` (SQLite) or ``postgresql://…`` (``${VAR}`` taken
    from the environment). ``backend`` says which; ``fleet_capable``, whether agents share it.

    On SQLite only one running keeper may write to a state file (:meth:`claim`); readers
    (``status``, ``alerts``, the dashboard) may open it at any time, also ``readonly``.
    """
