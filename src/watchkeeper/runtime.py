"""The daemon threads: one per watcher, one per notifier, and how they stop.

Every thread here is a daemon thread (it never holds the interpreter open) that owns a ``wake``
event and sleeps with ``wake.wait(timeout)``, never ``time.sleep``, so stop, "check now" and new
work all reach it at once. Nothing in the stop path starts a thread or an executor: at interpreter
exit ``concurrent.futures`` refuses work, and the atexit hook runs while these daemon threads are
still alive, so it only signals them and joins them against a deadline.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from watchkeeper.alerts import Alert, RuleEngine, Verdict
from watchkeeper.errors import PermanentDeliveryError, StoreError, TransientDeliveryError
from watchkeeper.notifiers.base import Notifier
from watchkeeper.store import Delivery, Route, Store
from watchkeeper.watchers.base import Watcher

log = logging.getLogger("watchkeeper")

RETRY_BASE = 2.0
"""First delivery retry after this many seconds; doubles per attempt."""
RETRY_CAP = 300.0
"""Delivery retries are never further apart than this."""
CHECK_BACKOFF_CAP = 300.0
"""A failing check is retried at least this often, however long its interval."""
IDLE_POLL = 5.0
"""A dispatcher looks at the outbox at least this often (other processes may add to it)."""


def backoff(base: float, attempts: int, cap: float) -> float:
    """``base`` doubled per attempt after the first, never above ``cap`` (and never overflowing)."""
    return float(min(cap, base * 2 ** min(max(attempts - 1, 0), 40)))


def retry_delay(attempts: int) -> float:
    """Delivery retries: 2 s, 4 s, 8 s … with ±20% jitter, never more than 5 min apart."""
    return min(RETRY_CAP, backoff(RETRY_BASE, attempts, RETRY_CAP) * random.uniform(0.8, 1.2))


class WatcherThread(threading.Thread):
    """Runs one watcher's check loop and commits each check with its alerts."""

    def __init__(
        self,
        watcher: Watcher,
        store: Store,
        routes: Callable[[], Sequence[Route]],
        on_commit: Callable[[list[Alert]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=f"watchkeeper:{watcher.name}", daemon=True)
        self.watcher = watcher
        self.store = store
        self.routes = routes
        self.on_commit = on_commit
        self.clock = clock
        self.engine = RuleEngine(watcher.name, watcher.kind, watcher.config.rules())
        self.wake = threading.Event()
        self.stopping = threading.Event()
        record = store.register_watcher(watcher.name, watcher.kind)
        self.checkpoint: Any = record.checkpoint
        if self.checkpoint is None:  # runs in keeper.start(), before anything else can happen
            try:
                self.checkpoint = watcher.initial_checkpoint()
            except Exception:
                log.exception("watcher %s: cannot take its starting point", watcher.name)
        self.rule_state: dict[str, Any] = record.rule_state
        self.failures = record.failures
        self.paused = record.paused
        self.muted_until = record.muted_until

    def stop(self) -> None:
        """Ask the loop to end after the current check."""
        self.stopping.set()
        self.wake.set()

    def check_now(self) -> None:
        """Run the next check at once."""
        self.wake.set()

    def run(self) -> None:
        """The loop: check, apply rules, commit, wait. Nothing may end it but ``stop()``."""
        name = self.watcher.name
        try:
            first_delay = self.watcher.first_delay()
            if first_delay > 0:
                self.wake.wait(first_delay)  # stop and check-now cut it short
            while not self.stopping.is_set():
                # Clear before the check, so a stop or check-now during it is not lost.
                self.wake.clear()
                if self.paused:
                    self.wake.wait()
                    continue
                try:
                    delay = self.cycle()
                except Exception:  # a bug of ours: log it, keep the thread, try again later
                    log.exception("watcher %s: internal error; retrying", name)
                    delay = min(self.watcher.config.every, CHECK_BACKOFF_CAP)
                if self.stopping.is_set():
                    break
                try:
                    self.watcher.wait(self.wake, delay)
                except Exception:
                    log.exception("watcher %s: waiting for changes failed; polling", name)
                    self.wake.wait(delay)
        finally:
            try:
                self.watcher.close()
            except Exception:
                log.exception("watcher %s: error while closing", self.watcher.name)

    def cycle(self) -> float:
        """One check and its commit; returns the delay before the next.

        Anything the check raises, and anything wrong with what it returned (an unknown
        severity, a checkpoint that is not JSON), counts as a failed check: recorded, alerted
        after ``fail_after``, retried with backoff. Only a store error is different: nothing
        was committed, so the same work is redone from the old checkpoint.
        """
        every = self.watcher.config.every
        now = self.clock()
        try:
            try:
                result = self.watcher.check(self.checkpoint)
                verdict = self.engine.evaluate(result.observations, self.rule_state, now)
                return self._commit(now, verdict, result.checkpoint, None, 0, every)
            except StoreError:
                raise
            except Exception as exc:
                error = "".join(traceback.format_exception_only(exc)).strip()
                failures = self.failures + 1
                log.warning(
                    "watcher %s: check failed (%d in a row): %s",
                    self.watcher.name,
                    failures,
                    error,
                    exc_info=failures == 1 and not isinstance(exc, OSError),
                )
                verdict = self.engine.failed(
                    error, self.rule_state, now, "".join(traceback.format_exception(exc))
                )
                delay = backoff(every, failures, max(every, CHECK_BACKOFF_CAP))
                return self._commit(now, verdict, self.checkpoint, error, failures, delay)
        except StoreError:
            log.exception("watcher %s: cannot commit the check; will redo it", self.watcher.name)
            return min(every, CHECK_BACKOFF_CAP)

    def _commit(
        self,
        now: float,
        verdict: Verdict,
        checkpoint: Any,
        error: str | None,
        failures: int,
        delay: float,
    ) -> float:
        muted = self.muted_until is not None and self.muted_until > now
        committed = self.store.commit_check(
            self.watcher.name,
            checkpoint=checkpoint,
            rule_state=verdict.state,
            alerts=verdict.alerts,
            routes=() if muted else self.routes(),
            now=now,
            next_check=now + delay,
            error=error,
        )
        self.checkpoint = checkpoint
        self.rule_state = verdict.state
        self.failures = failures
        if committed:
            self.on_commit(committed)
        return delay


class Dispatcher(threading.Thread):
    """Drains one notifier's deliveries from the outbox, with retries and optional digests."""

    def __init__(self, notifier: Notifier, store: Store, clock: Callable[[], float] = time.time):
        super().__init__(name=f"watchkeeper:notify:{notifier.name}", daemon=True)
        self.notifier = notifier
        self.store = store
        self.clock = clock
        self.wake = threading.Event()
        self._flush_by: float | None = None
        self._at_exit = False

    def flush(self, deadline: float, at_exit: bool = False) -> None:
        """Deliver what is due now, close any open digest window, then end the thread."""
        self._at_exit = at_exit
        self._flush_by = deadline
        self.wake.set()

    def run(self) -> None:
        """Loop until flushed; a store error is logged and retried, never fatal."""
        name = self.notifier.name
        try:
            self.store.reschedule_pending(name, self.clock())
        except StoreError:
            log.exception("notifier %s: cannot read the outbox", name)
        while True:
            try:
                if not self._step():
                    return
            except StoreError:
                if self._flush_by is not None:
                    return
                log.exception("notifier %s: outbox error; retrying", name)
                self.wake.wait(IDLE_POLL)
                self.wake.clear()

    def _step(self) -> bool:
        """One pass over the outbox; False when the thread should end."""
        flushing = self._flush_by is not None
        if flushing and (self._at_exit and not self.notifier.exit_safe):
            return False
        if flushing and self.clock() >= (self._flush_by or 0):
            return False
        now = self.clock()
        batch = self.notifier.config.batch
        due = self.store.due(self.notifier.name, now, limit=1000 if batch else 100)
        if due and batch and not flushing:
            opens = due[0].alert.created_at
            if now < opens + batch:
                self._sleep(opens + batch - now)
                return True
        if not due:
            if flushing:
                return False
            upcoming = self.store.next_try(self.notifier.name)
            timeout = IDLE_POLL if upcoming is None else min(max(upcoming - now, 0.0), IDLE_POLL)
            self._sleep(timeout)
            return True
        if batch and len(due) > 1:
            self._deliver(due, digest=True)
        else:
            for delivery in due:
                if self._flush_by is not None and self.clock() >= self._flush_by:
                    return False
                if not self._deliver([delivery], digest=False):
                    break  # the notifier is down: do not spend a timeout on every alert
        return True

    def _sleep(self, timeout: float) -> None:
        self.wake.wait(timeout)
        self.wake.clear()

    def _deliver(self, deliveries: list[Delivery], digest: bool) -> bool:
        """Send and record the outcome; False when the notifier failed in a way that may pass."""
        ids = [d.id for d in deliveries]
        alerts = [d.alert for d in deliveries]
        name = self.notifier.name
        try:
            if digest:
                self.notifier.send_digest(alerts)
            else:
                self.notifier.send(alerts[0])
        except PermanentDeliveryError as exc:
            log.error("notifier %s: giving up on alert %s: %s", name, alerts[0].id, exc)
            self.store.mark_failed(ids, str(exc))
            return True
        except Exception as exc:  # unexpected errors are retried too: a bug must not lose alerts
            attempts = max(d.attempts for d in deliveries) + 1
            delay = retry_delay(attempts)
            text = str(exc) or type(exc).__name__
            if isinstance(exc, TransientDeliveryError):
                log.warning("notifier %s: %s; retry in %.0fs", name, text, delay)
            else:
                log.error(
                    "notifier %s: unexpected error; retry in %.0fs",
                    name,
                    delay,
                    exc_info=attempts == 1,
                )
            self.store.mark_retry(ids, text, self.clock() + delay)
            return False
        self.store.mark_sent(ids, self.clock())
        return True
