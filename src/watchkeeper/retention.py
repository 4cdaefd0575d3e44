"""The history's end: a daemon thread that prunes old alerts now and then.

fail2ban purges its database after a day and journald bounds its disk use; a keeper that runs for
years must too. Every :data:`PRUNE_EVERY` (and soon after start) the pruner asks the store to
delete alerts older than ``retention`` or beyond the newest ``max_alerts``, in small steps that
never hold the writer long, and to give the space back. Alerts with a pending or failed delivery
are never deleted: the store checks that in the same transaction as each delete.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from watchkeeper.errors import StoreError
from watchkeeper.store import Store

log = logging.getLogger("watchkeeper")

PRUNE_EVERY = 600.0
"""Seconds between prunes."""
FIRST_PRUNE = 5.0
"""Seconds after start of the first prune: the first checks and deliveries go first."""


class Pruner(threading.Thread):
    """Prunes one store's history on a daemon thread until stopped."""

    def __init__(
        self,
        store: Store,
        retention: float,
        max_alerts: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="watchkeeper:prune", daemon=True)
        self.store = store
        self.retention = retention
        self.max_alerts = max_alerts
        self.clock = clock
        self.stopping = threading.Event()

    def stop(self) -> None:
        """End the loop (a prune in progress finishes its current step first)."""
        self.stopping.set()

    def prune(self) -> int:
        """One prune now; returns how many alerts went."""
        deleted = self.store.prune(self.clock() - self.retention, self.max_alerts)
        if deleted:
            log.info("pruned %d alerts from the history", deleted)
        return deleted

    def run(self) -> None:
        """Prune, wait, again; a store error is logged and retried at the next turn."""
        delay = FIRST_PRUNE
        while not self.stopping.wait(delay):
            try:
                self.prune()
            except StoreError:
                log.exception("cannot prune the history; will try again")
            delay = PRUNE_EVERY
