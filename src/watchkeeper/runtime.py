"""The daemon threads: one per watcher, and how they stop; the dispatchers' in dispatch.py.

Kinds whose checks mostly wait share a pool of threads instead (:mod:`watchkeeper.pool`).

Every thread here is a daemon thread (it never holds the interpreter open) that sleeps on an
event or a condition with a timeout, never ``time.sleep``, so stop, "check now" and new work all
reach it at once. Nothing in the stop path starts a thread or an executor: at interpreter
exit ``concurrent.futures`` refuses work, and the atexit hook runs while these daemon threads are
still alive, so it only signals them and joins them against a deadline.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from watchkeeper.alerts import Alert, RuleEngine, Verdict
from watchkeeper.errors import StoreError
from watchkeeper.store import LeaseLost, Route, Store, WatcherRecord
from watchkeeper.watchers.base import PARTS, Watcher, apply_parts

log = logging.getLogger("watchkeeper")

RETRY_BASE = 2.0
"""First delivery retry after this many seconds; doubles per attempt."""
RETRY_CAP = 300.0
"""Delivery retries are never further apart than this."""
CHECK_BACKOFF_CAP = 300.0
"""A failing check is retried at least this often, however long its interval."""
IDLE_POLL = 5.0
"""A dispatcher looks at the outbox at least this often (other processes may add to it)."""
STORE_RETRY = 0.2
"""A store error is retried after this long, doubling while it lasts, up to IDLE_POLL."""


def backoff(base: float, attempts: int, cap: float) -> float:
    """``base`` doubled per attempt after the first, never above ``cap`` (and never overflowing)."""
    return float(min(cap, base * 2 ** min(max(attempts - 1, 0), 40)))


def retry_delay(attempts: int) -> float:
    """Delivery retries: 2 s, 4 s, 8 s … with ±20% jitter, never more than 5 min apart."""
    return min(RETRY_CAP, backoff(RETRY_BASE, attempts, RETRY_CAP) * random.uniform(0.8, 1.2))


_NOTHING = object()
"""No checkpoint read yet (None is a checkpoint)."""
_UNREADABLE = object()
"""prepare() could not read the checkpoint: the check is skipped and redone later."""
_NOT_OURS = object()
"""prepare() found the run not due here (its lease not held, or its check not due yet)."""

Fence = tuple[str, int]
"""(agent, fencing token): the lease a shared watcher's commit must still hold."""


class WatcherRun:
    """One watcher's state between checks, and the step that checks it and commits the result.

    A run is driven either by a :class:`WatcherThread` of its own or, for watchers whose checks
    are short waits on the network (``Watcher.pool_size``), by a :class:`WatcherPool` shared by
    every watcher of that kind. Runs in a pool do not keep their checkpoint in memory between
    checks: it is read back from the store when the next check starts, so a thousand idle page
    watchers cost a heap entry each rather than a thread and a copy of every item they know.
    """

    def __init__(
        self,
        watcher: Watcher,
        store: Store,
        routes: Callable[[], Sequence[Route]],
        on_commit: Callable[[list[Alert]], None],
        clock: Callable[[], float] = time.time,
        record: WatcherRecord | None = None,
    ) -> None:
        """``record``: the watcher's registered row (see :meth:`Store.register_watchers`);
        registered here when not given."""
        self.watcher = watcher
        self.store = store
        self.routes = routes
        self.on_commit = on_commit
        self.clock = clock
        self.engine = RuleEngine(  # a watcher's config is a Rules
            watcher.name, watcher.kind, watcher.config, shape_titles=watcher.shape_titles
        )
        self.keeps_checkpoint = not watcher.pool_size
        self.wake: Callable[[], None] = _no_driver
        """Set by the driver: makes the next check happen at once."""
        if record is None:
            record = store.register_watcher(watcher.name, watcher.kind)
        self.checkpoint: Any = record.checkpoint
        if self.checkpoint is None:  # runs in keeper.start(), before anything else can happen
            try:
                self.checkpoint = watcher.initial_checkpoint()
            except Exception:
                log.exception("watcher %s: cannot take its starting point", watcher.name)
        elif not self.keeps_checkpoint:
            self.checkpoint = None
        self._stored = record.checkpoint is not None
        self.parts: dict[str, Any] = {}
        """A parted watcher's checkpoint parts as committed (see ``Watcher.parted``)."""
        if watcher.parted and self._stored and self.keeps_checkpoint:
            self.parts = store.checkpoint_parts(watcher.name)
        self._prepared_from: Any = _NOTHING  # the checkpoint prepare() read, for the check
        self.rule_state: dict[str, Any] = record.rule_state
        self.failures = record.failures
        self.paused = record.paused
        self.muted_until = record.muted_until
        self.store_errors = 0
        """Commits that failed in a row: the redo backs off while the store is in trouble."""
        self.shared = False
        """Run under a lease (a fleet's shared watcher): checked only while :attr:`fence` is
        set, each commit fenced by it. A pinned watcher (the default) always runs."""
        self.fence: Fence | None = None
        """The lease held now (set and cleared by the fleet's lease loop)."""
        self.leases_lost = 0
        """Commits refused because the lease had gone to another agent meanwhile."""
        self.lease_lock = threading.Lock()
        """Guards :attr:`fence` against a check starting: the lease loop sheds only idle runs."""
        self.busy = False
        """A check is under way (from its fetch to its commit)."""
        self._check_fence: Fence | None = None  # the lease the check under way started with
        self._not_before = 0.0  # adopted from another agent: its next check is due then

    @property
    def idle(self) -> bool:
        """Not to be checked now: paused, or a shared watcher whose lease another agent has."""
        return self.paused or (self.shared and self.fence is None)

    def adopt(self, record: WatcherRecord | None, fence: Fence, *, due_in: float) -> None:
        """Take over a shared watcher from the store, as the agent that last ran it left it:
        checkpoint, rule state, failures, pause and mute; and its next check ``due_in`` seconds
        from now (taken from another agent, when that agent planned it, reckoned on the
        database's clock: a failover or a move checks it when due, not twice in a cycle,
        however wrong either host's clock; 0 for this agent's own restart, which checks at
        once, as a single agent always did)."""
        with self.lease_lock:
            if record is not None:
                if record.checkpoint is not None:
                    self._stored = True
                    self.checkpoint = record.checkpoint if self.keeps_checkpoint else None
                    if self.watcher.parted and self.keeps_checkpoint:
                        self.parts = self.store.checkpoint_parts(self.watcher.name)
                self.rule_state = record.rule_state
                self.failures = record.failures
                self.paused = record.paused
                self.muted_until = record.muted_until
                self._not_before = self.clock() + due_in if due_in > 0 else 0.0
            self.fence = fence

    def release(self) -> bool:
        """Give up the lease unless a check is under way; True when given up."""
        with self.lease_lock:
            if self.busy:
                return False
            self.fence = None
            return True

    def _begin(self) -> float | None:
        """Start a check: the seconds to wait instead when it is not this agent's to do now."""
        with self.lease_lock:
            if self.shared:
                if self.fence is None:
                    return min(self.watcher.config.every, CHECK_BACKOFF_CAP)
                wait = self._not_before - self.clock()
                if wait > 0:
                    return wait
            self._check_fence = self.fence
            self.busy = True
            return None

    @property
    def name(self) -> str:
        """The watcher's name."""
        return self.watcher.name

    def cycle(self) -> float:
        """One check and its commit; returns the delay before the next.

        Anything the check raises (``SystemExit`` and other BaseExceptions included), and
        anything wrong with what it returned (an unknown severity, a checkpoint that is not
        JSON), counts as a failed check: recorded, alerted
        after ``fail_after``, retried with backoff. Only a store error is different: nothing
        was committed, so the same work is redone from the old checkpoint.
        """
        every = self.watcher.config.every
        checkpoint, self._prepared_from = self._prepared_from, _NOTHING
        if checkpoint is _NOTHING:
            wait = self._begin()
            if wait is not None:
                return wait
        try:
            return self._cycle(every, checkpoint)
        finally:
            self.busy = False

    def _cycle(self, every: float, checkpoint: Any) -> float:
        """:meth:`cycle` once the check is this agent's to do, from the prepared checkpoint."""
        now = self.clock()
        try:
            if checkpoint is _NOT_OURS:
                return max(self._begin() or 0.0, STORE_RETRY)
            if checkpoint is _UNREADABLE:  # (logged by prepare) nothing to check from
                return min(every, CHECK_BACKOFF_CAP)
            if checkpoint is _NOTHING:
                checkpoint = self._checkpoint()
            try:
                result = self.watcher.check(self._with_parts(checkpoint))
                verdict = self.engine.evaluate(result.observations, self.rule_state, now)
                return self._commit(now, verdict, result.checkpoint, None, 0, every, result.parts)
            except StoreError:
                raise
            except BaseException as exc:  # SystemExit from a check too: only stop ends a watcher
                error = error_text(exc)
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
                return self._commit(now, verdict, checkpoint, error, failures, delay)
        except LeaseLost as exc:
            with self.lease_lock:
                if self.fence == self._check_fence:  # not re-taken meanwhile
                    self.fence = None
            self.leases_lost += 1
            log.warning("watcher %s: not committed, another agent runs it now: %s", self.name, exc)
            return min(every, CHECK_BACKOFF_CAP)
        except StoreError as exc:
            self.store_errors += 1
            delay = min(every, backoff(STORE_RETRY, self.store_errors, CHECK_BACKOFF_CAP))
            log.warning(
                "watcher %s: cannot commit the check; will redo it in %.1fs: %s",
                self.watcher.name,
                delay,
                exc,
            )
            return delay

    def prepare(self) -> None:
        """The waiting part of the next check (a pooled kind's fetch), on a pool worker.

        It never raises: the watcher keeps what went wrong for its check to raise, so a failed
        fetch counts as a failed check like any other.
        """
        if self._begin() is not None:  # not ours now: cycle() says when to look again
            self._prepared_from = _NOT_OURS
            return
        try:
            self._prepared_from = self._checkpoint()
        except Exception:  # the check cannot start without it: skipped now, redone later
            self._prepared_from = _UNREADABLE
            log.exception("watcher %s: cannot read its checkpoint; will redo the check", self.name)
            return
        try:
            self.watcher.prepare(self._prepared_from)
        except BaseException:  # even a CancelledError: the worker is shared by every watcher
            log.exception("watcher %s: internal error while preparing; retrying", self.name)

    def safe_cycle(self) -> float:
        """:meth:`cycle`, with a bug of ours logged and retried later instead of raised."""
        try:
            return self.cycle()
        except Exception:
            log.exception("watcher %s: internal error; retrying", self.watcher.name)
            return min(self.watcher.config.every, CHECK_BACKOFF_CAP)

    def _checkpoint(self) -> Any:
        """The checkpoint the next check starts from: in memory, or read back from the store."""
        if self.keeps_checkpoint or not self._stored:
            return self.checkpoint
        if self.watcher.parted:
            self.parts = self.store.checkpoint_parts(self.watcher.name)
        return self.store.checkpoint(self.watcher.name)

    def _with_parts(self, checkpoint: Any) -> Any:
        """What a parted watcher's check is given: its checkpoint with all its parts."""
        if not self.watcher.parted or not isinstance(checkpoint, dict):
            return checkpoint
        return {**checkpoint, PARTS: self.parts}

    def _commit(
        self,
        now: float,
        verdict: Verdict,
        checkpoint: Any,
        error: str | None,
        failures: int,
        delay: float,
        parts: dict[str, Any] | None = None,
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
            parts=parts,
            fence=self._check_fence if self.shared else None,
        )
        apply_parts(self.parts, parts)
        self._stored = True
        self.store_errors = 0
        self.checkpoint = checkpoint if self.keeps_checkpoint else None
        self.rule_state = verdict.state
        self.failures = failures
        if committed:
            self.on_commit(committed)
        return delay


def _no_driver() -> None:
    """A run's ``wake`` before a driver takes it: nothing to wake yet."""


class GuardedThread(threading.Thread, metaclass=ABCMeta):
    """A daemon thread whose loop only ``stop`` should end: whatever else ends it is kept.

    What it raised is logged with its traceback and kept in :attr:`failure`, and ``ended`` is
    called (the supervisor's wake-up), so the supervisor restarts it and reports it at once.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.failure: str | None = None
        """What ended the loop when nothing asked it to (None while it runs, or after a stop)."""
        self.ended: Callable[[], None] = nothing

    @abstractmethod
    def loop(self) -> None:
        """The thread's work; returns only when asked to stop."""

    def run(self) -> None:
        """:meth:`loop`, with a crash kept for the supervisor."""
        try:
            self.loop()
        except BaseException as exc:
            self.failure = error_text(exc)
            log.error("thread %s crashed: %s", self.name, self.failure, exc_info=True)
        finally:
            self.ended()

    def healthy(self) -> bool:
        """True while the loop runs."""
        return self.is_alive()


def error_text(exc: BaseException) -> str:
    """``TypeError: bad thing``: an exception's one-line description."""
    return "".join(traceback.format_exception_only(exc)).strip()


def nothing() -> None:
    """A hook nobody set yet."""


class WatcherThread(GuardedThread):
    """Drives one watcher run on a daemon thread of its own: check, commit, wait, again."""

    def __init__(self, run: WatcherRun) -> None:
        super().__init__(f"watchkeeper:{run.name}")
        self.watcher_run = run
        self.wake = threading.Event()
        self.stopping = threading.Event()
        run.wake = self.wake.set

    def stop(self) -> None:
        """Ask the loop to end after the current check."""
        self.stopping.set()
        self.wake.set()

    def loop(self) -> None:
        """Check, apply rules, commit, wait. Nothing may end it but ``stop()``.

        The watcher is closed when the loop is stopped, not when it crashed: the supervisor
        starts a new thread for the same watcher.
        """
        watcher_run = self.watcher_run
        watcher = watcher_run.watcher
        try:
            first_delay = watcher.first_delay()
            if first_delay > 0:
                self.wake.wait(first_delay)  # stop and check-now cut it short
            while not self.stopping.is_set():
                # Clear before the check, so a stop or check-now during it is not lost.
                self.wake.clear()
                if watcher_run.idle:  # paused, or its lease is another agent's
                    self.wake.wait()
                    continue
                delay = watcher_run.safe_cycle()
                if self.stopping.is_set():
                    break
                try:
                    watcher.wait(self.wake, delay)
                except Exception:
                    log.exception("watcher %s: waiting for changes failed; polling", watcher.name)
                    self.wake.wait(delay)
            if watcher.gathering() and not watcher_run.idle:
                watcher_run.safe_cycle()  # what it was gathering alerts now, not at next start
        finally:
            if self.stopping.is_set():
                close_watcher(watcher)


def close_watcher(watcher: Watcher) -> None:
    """Close a watcher, logging (never raising) what goes wrong: it runs on the way out."""
    try:
        watcher.close()
    except Exception:
        log.exception("watcher %s: error while closing", watcher.name)
