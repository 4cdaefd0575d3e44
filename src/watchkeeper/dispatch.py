"""The dispatcher: one daemon thread per notifier that drains its deliveries from the outbox.

It sleeps on an event with a timeout (a commit wakes it), never ``time.sleep``, and in the stop
path starts no thread: like every thread in :mod:`watchkeeper.runtime`, whose backoff and retry
delays it shares.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

from watchkeeper.errors import PermanentDeliveryError, StoreError, TransientDeliveryError
from watchkeeper.grouping import Grouper, GroupPolicy
from watchkeeper.notifiers.base import Notifier
from watchkeeper.runtime import IDLE_POLL, STORE_RETRY, GuardedThread, backoff, retry_delay
from watchkeeper.store import Delivery, Store

log = logging.getLogger("watchkeeper")

BATCH = 1000
"""Deliveries a dispatcher reads from the outbox at once (and marks in one transaction)."""


def _always() -> bool:
    """A dispatcher's turn outside a fleet: always."""
    return True


class Dispatcher(GuardedThread):
    """Drains one notifier's deliveries from the outbox: in batches, or grouped into digests.

    A notifier that groups (see :mod:`watchkeeper.grouping`) reads each pending delivery once
    into its groups and sends a group when it is due; one that does not takes due deliveries from
    the outbox in order, :data:`BATCH` at a time, and when it takes batches (a file, a terminal)
    gives them to it in one call and marks them in one transaction.

    A store error is retried with backoff while it lasts. A delivery sent whose ``sent`` mark
    the store could not take is remembered by the store (:meth:`Store.mark_sent`) and never
    handed out again by this process, also not to the dispatcher that replaces a crashed one.
    """

    def __init__(
        self,
        notifier: Notifier,
        store: Store,
        clock: Callable[[], float] = time.time,
        agent: str | None = None,
    ):
        """``agent``: in a fleet, the agent that claims the deliveries it takes (see
        :meth:`Store.due`), so two agents running one notifier never send the same alert."""
        super().__init__(f"watchkeeper:notify:{notifier.name}")
        self.notifier = notifier
        self.store = store
        self.clock = clock
        self.agent = agent
        self.turn: Callable[[], bool] = _always
        """Whether this dispatcher may send now. A grouped notifier in a fleet sends from one
        agent at a time (its digests are built from what it holds in memory): the keeper makes
        this the fleet's :meth:`~watchkeeper.fleet.Fleet.holds` of the notifier's lease."""
        self.wake = threading.Event()
        self._flush_by: float | None = None
        self._at_exit = False
        config = notifier.config
        grouping = config.grouping()
        self.policy = (
            None
            if grouping is None
            else GroupPolicy(*grouping, max_per_interval=config.max_per_interval)
        )
        self.grouper = None if self.policy is None else Grouper(self.policy)
        self._cursor: int | None = None  # grouped: the last delivery read into the groups
        self._failures = 0  # grouped: messages failed in a row, for the backoff
        self._down_until = 0.0
        """After a send failed in a way that may pass: no other alert is tried before this
        (the notifier is down; each try could cost a whole timeout), unless flushing."""

    def flush(self, deadline: float, at_exit: bool = False) -> None:
        """Deliver what is due now, send every group held, then end the thread."""
        self._at_exit = at_exit
        self._flush_by = deadline
        self.wake.set()

    def loop(self) -> None:
        """Loop until flushed; a store error is logged and retried with backoff, never fatal."""
        name = self.notifier.name
        try:
            self.store.reschedule_pending(name, self.clock())
        except StoreError as exc:
            log.error("notifier %s: cannot reschedule the outbox: %s", name, exc)
        errors = 0
        while True:
            try:
                if not self._step():
                    return
                errors = 0
            except StoreError as exc:
                if self._flush_by is not None:
                    return
                errors += 1
                delay = backoff(STORE_RETRY, errors, IDLE_POLL)
                log.warning("notifier %s: outbox error; retry in %.1fs: %s", name, delay, exc)
                self._sleep(delay)

    def _out_of_time(self) -> bool:
        return self._flush_by is not None and self.clock() >= self._flush_by

    def _step(self) -> bool:
        """One pass over the outbox; False when the thread should end."""
        # Cleared before the pass, not after its sleep: a commit's wake-up that comes in between
        # is then never lost (it used to wait out IDLE_POLL).
        self.wake.clear()
        flushing = self._flush_by is not None
        if flushing and (self._at_exit and not self.notifier.exit_safe):
            return False
        if self._out_of_time():
            return False
        if self.grouper is not None:
            return self._grouped_step(self.grouper, flushing)
        now = self.clock()
        if now < self._down_until and not flushing:
            self._sleep(min(self._down_until - now, IDLE_POLL))
            return True
        due = self.store.due(self.notifier.name, now, limit=BATCH, agent=self.agent)
        if not due:
            if flushing:
                return False
            self._idle(now)
            return True
        if self.notifier.batches:
            send = functools.partial(self.notifier.send_batch, [d.alert for d in due])
            ids = [d.id for d in due]
            if self._attempt(send, ids, max(d.attempts for d in due) + 1)[0] == "sent":
                self.store.mark_sent(ids, self.clock())
        else:
            width = max(1, self.notifier.concurrency)
            for start in range(0, len(due), width):
                if self._out_of_time():
                    return False
                retry_at = self._deliver_each(due[start : start + width])
                if retry_at is not None:  # the notifier is down: do not spend a timeout on
                    self._down_until = retry_at  # every alert; the next pass waits for it
                    return True
        # A short batch was all that was due when it was read; unless a commit woke us since
        # (the wake was cleared before the read), another read now would find nothing: sleep
        # as that empty pass would. One query fewer per alert when alerts come one by one.
        if len(due) < BATCH and not flushing and not self.wake.is_set():
            self._idle(self.clock())
        return True

    def _idle(self, now: float) -> None:
        """Nothing is due: sleep until the next retry (at most IDLE_POLL) or a commit's wake."""
        upcoming = self.store.next_try(self.notifier.name)
        self._sleep(IDLE_POLL if upcoming is None else min(max(upcoming - now, 0.0), IDLE_POLL))

    def _deliver_each(self, deliveries: list[Delivery]) -> float | None:
        """Each alert on its own, several at once where the notifier can (``concurrency``);
        the earliest retry time if any failed in a way that may pass, else None.

        Marked as soon as they are sent, not with the rest of the batch: a message takes far
        longer than a mark, and a crash then repeats only those in flight.
        """
        if len(deliveries) == 1:
            (one,) = deliveries
            send = functools.partial(self.notifier.send, one.alert)
            outcomes = [self._attempt(send, [one.id], one.attempts + 1)]
        else:
            errors = self._send_each(deliveries)
            outcomes = [  # every outcome recorded, not only those up to the first retry
                self._outcome([d.id], d.attempts + 1, e)
                for d, e in zip(deliveries, errors, strict=True)
            ]
        sent = [d.id for d, (o, _) in zip(deliveries, outcomes, strict=True) if o == "sent"]
        if sent:
            self.store.mark_sent(sent, self.clock())
        retries = [at for o, at in outcomes if o == "retry"]
        return min(retries) if retries else None

    def _send_each(self, deliveries: list[Delivery]) -> Sequence[BaseException | None]:
        """The notifier's outcome per alert; anything it raises, or an answer of the wrong
        length, is every alert's outcome (retried): a plugin's bug must not end this thread."""
        try:
            errors = self.notifier.send_each([d.alert for d in deliveries])
        except BaseException as exc:  # sorted by _outcome like a send's own error
            return [exc] * len(deliveries)
        if len(errors) != len(deliveries):
            wrong = RuntimeError(
                f"send_each answered {len(errors)} outcomes for {len(deliveries)} alerts"
            )
            return [wrong] * len(deliveries)
        return errors

    def _grouped_step(self, grouper: Grouper, flushing: bool) -> bool:
        """Read new pending deliveries into the groups; send the groups that are due."""
        if not self.turn():  # another agent sends this notifier's digests
            if flushing:
                return False
            if self._cursor is not None and self.policy is not None:  # read afresh when back
                self.grouper, self._cursor = Grouper(self.policy), None
            self._sleep(IDLE_POLL)
            return True
        now = self.clock()
        while True:
            found, self._cursor = self.store.pending_after(self.notifier.name, self._cursor, BATCH)
            grouper.add(found, now)
            if len(found) < BATCH:
                break
        if flushing and grouper.retry_at is not None:
            return False  # the notifier is failing: what it holds waits for the next start
        digest = grouper.take(now, everything=flushing)
        if digest is None:
            if flushing:
                return False
            due = grouper.due_at(now)
            self._sleep(IDLE_POLL if due is None else min(max(due - now, 0.0), IDLE_POLL))
            return True
        single = digest.single
        send = (
            functools.partial(self.notifier.send, single)
            if single is not None
            else functools.partial(self.notifier.send_digest, digest)
        )
        ids = digest.ids
        try:
            outcome, next_try = self._attempt(send, ids, self._failures + 1)
        except StoreError:  # the message failed and the store could not record it: hold it
            grouper.failed(digest, self.clock() + IDLE_POLL)
            raise
        if outcome == "sent":
            self._failures = 0
            grouper.sent(digest, self.clock())  # it went out, whatever the marks do next
            self.store.mark_sent(ids, self.clock())
        elif outcome == "failed":
            self._failures = 0
            grouper.failed(digest, None)
        else:
            self._failures += 1
            grouper.failed(digest, next_try)
        return True

    def _sleep(self, timeout: float) -> None:
        self.wake.wait(timeout)

    def _attempt(
        self, send: Callable[[], None], ids: Sequence[int], attempts: int
    ) -> tuple[str, float]:
        """Send, and sort the outcome (see :meth:`_outcome`)."""
        try:
            send()
        except BaseException as exc:  # sorted by _outcome: a bug must not lose alerts either
            return self._outcome(ids, attempts, exc)
        return self._outcome(ids, attempts, None)

    def _outcome(
        self, ids: Sequence[int], attempts: int, error: BaseException | None
    ) -> tuple[str, float]:
        """Record a failure in the store (a success is the caller's to record, with others in
        one transaction): ``"sent"``, ``"failed"`` (for good, marked failed) or ``"retry"``
        (may pass later: marked for a retry at its backoff), and the time of the next try."""
        name = self.notifier.name
        if error is None:
            return "sent", 0.0
        if isinstance(error, PermanentDeliveryError):
            log.error("notifier %s: giving up on %d alert(s): %s", name, len(ids), error)
            self.store.mark_failed(ids, str(error))
            return "failed", 0.0
        # Unexpected errors are retried too: a bug must not lose alerts.
        delay = retry_delay(attempts)
        if isinstance(error, TransientDeliveryError) and error.retry_after is not None:
            delay = max(delay, error.retry_after)  # the notifier capped it
        text = str(error) or type(error).__name__
        if isinstance(error, TransientDeliveryError):
            log.warning("notifier %s: %s; retry in %.0fs", name, text, delay)
        else:
            log.error(
                "notifier %s: unexpected error; retry in %.0fs",
                name,
                delay,
                exc_info=error if attempts == 1 else None,
            )
        next_try = self.clock() + delay
        self.store.mark_retry(ids, text, next_try)
        return "retry", next_try
