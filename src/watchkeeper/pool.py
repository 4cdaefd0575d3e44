"""The watcher pool: many watcher runs on a few daemon threads, for kinds that mostly wait.

Split from :mod:`watchkeeper.runtime` (which drives one watcher per thread) because it is a
scheduler of its own: a heap of due times, workers that come and go, per-key slots.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from watchkeeper.quantities import MAX_DURATION
from watchkeeper.runtime import (
    CHECK_BACKOFF_CAP,
    WatcherRun,
    close_watcher,
    error_text,
    nothing,
)
from watchkeeper.watchers.base import Watcher

log = logging.getLogger("watchkeeper")

POOL_IDLE = 60.0
"""A pool worker with nothing to do for this long ends."""
POOL_BACKLOG = 8
"""Prepared checks (fetched pages) queued for a pool's processing thread: enough to keep it busy.
A worker with a reply waits for room, so at most ``size`` + 8 replies are held at once, not one
per worker plus a queue as long as the workers fill it while the processing thread parses."""
POOL_RETRY = 1.0
"""A pool that could not start a worker (out of threads) tries again this often."""


class WatcherPool:
    """Drives many watcher runs on a few daemon threads: the waiting on workers, the rest on one.

    A check of a pooled kind has two parts: :meth:`Watcher.prepare` waits on the network (many
    at once, on up to ``size`` worker threads), then :meth:`Watcher.check` parses what came back
    and the run commits it, always on the pool's one processing thread. That second part holds
    the GIL anyway, so one thread does it as fast as many, with no lock contention; and since
    glibc gives each thread that allocates its own malloc arena, keeping parse trees and SQLite
    work on one thread keeps a hundred arenas' worth of freed memory (~18 MiB for 1,000 pages)
    out of the process.

    A scheduler thread sleeps until the earliest due time, then hands each due run to the idle
    worker that went idle last, starting a worker when none is idle (up to ``size``). Workers
    idle for :data:`POOL_IDLE` end, so a burst (the first cycle, everything checked now) runs on
    many and a steady trickle of staggered checks on a few. Runs that share a
    :meth:`Watcher.pool_slot` key (pages on one host) take at most its limit of workers; the
    others wait in line without holding a worker, so one slow host cannot hold up the rest.
    A check-now during a check runs it again right after, as a thread of its own would.
    """

    def __init__(self, kind: str, runs: Sequence[WatcherRun], size: int) -> None:
        self.kind = kind
        self.name = f"watchkeeper:pool:{kind}"
        self.runs = list(runs)
        self.failure: str | None = None
        """What ended the scheduler or the processing thread when nothing asked it to."""
        self.ended: Callable[[], None] = nothing
        self._close_watchers = True
        self._roles: list[threading.Thread] = []  # the scheduler and the processing thread
        self.size = max(1, size)
        lock = threading.Lock()
        self._lock = lock
        self._tick = threading.Condition(lock)  # the scheduler: the earliest due time changed
        self._ready = threading.Condition(lock)  # the processing thread: a check is prepared
        self._room = threading.Condition(lock)  # workers: the prepared queue has room
        self._heap: list[tuple[float, int, WatcherRun]] = []
        self._entry: dict[str, int] = {}  # run name -> the live heap entry's sequence number
        self._sequence = itertools.count()
        self._slots = {run.name: _slot(run.watcher) for run in self.runs}
        self._in_slot: collections.Counter[str] = collections.Counter()  # prepares per key
        self._queued: dict[str, collections.deque[WatcherRun]] = {}  # due, their key is full
        self._todo: collections.deque[WatcherRun] = collections.deque()  # due, for a worker
        self._prepared: collections.deque[WatcherRun] = collections.deque()
        self._running: set[str] = set()  # due and not yet committed
        self._again: set[str] = set()
        self._threads: list[threading.Thread] = []  # scheduler, processing thread, workers
        self._workers = 0
        self._idle: list[threading.Event] = []  # idle workers' wake-ups, the latest idle last
        self._numbers = itertools.count(1)
        self._start_failed = False  # a worker could not be started: warned once, retried
        self._stopping = False
        for run in self.runs:
            run.wake = functools.partial(self._check_now, run)

    def start(self) -> None:
        """Schedule every run's first check; start the scheduler and the processing thread."""
        now = time.monotonic()
        with self._lock:
            for run in self.runs:
                self._schedule(run, now + _planned(run.watcher.first_delay, 0.0, run.name))
            for target, role in ((self._process, "process"), (self._plan, "schedule")):
                thread = threading.Thread(
                    target=self._guard, args=(target,), name=f"{self.name}:{role}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
                self._roles.append(thread)

    def healthy(self) -> bool:
        """True while the scheduler and the processing thread both run (workers come and go)."""
        return len(self._roles) == 2 and all(t.is_alive() for t in self._roles)

    def renewed(self, timeout: float = 5.0) -> WatcherPool:
        """A new pool for the same runs, started, after this one (half dead) is ended.

        The watchers stay open for the new pool; a worker of the old one still in a fetch is
        given ``timeout`` to finish it, so one watcher is not prepared by two threads at once.
        """
        self.stop(close=False)
        self.join(timeout)
        pool = WatcherPool(self.kind, self.runs, self.size)
        pool.ended = self.ended
        pool.start()
        return pool

    def stop(self, close: bool = True) -> None:
        """Ask every thread to end after the check it is in (prepared checks are dropped).

        ``close=False`` leaves the watchers open, for a pool that takes over.
        """
        with self._lock:
            self._stopping = True
            self._close_watchers = close
            for condition in (self._tick, self._ready, self._room):
                condition.notify_all()
            for idle in self._idle:
                idle.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads to end, at most ``timeout`` seconds in all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.current_thread()  # stop() may be called from inside a check
        while True:
            with self._lock:
                threads = [t for t in self._threads if t is not me]
            if not threads:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            threads[0].join(remaining)

    def is_alive(self) -> bool:
        """True while any thread (other than the calling one) still runs."""
        me = threading.current_thread()
        with self._lock:
            return any(t is not me for t in self._threads)

    # -- scheduling (callers hold the lock) -----------------------------------------------------

    def _schedule(self, run: WatcherRun, due: float) -> None:
        """(Re)place ``run``'s heap entry (a replaced one stays until popped or compacted)."""
        if len(self._heap) > 2 * len(self.runs) + 64:  # many check-nows of a long interval
            self._heap = [e for e in self._heap if self._entry.get(e[2].name) == e[1]]
            heapq.heapify(self._heap)
        number = next(self._sequence)
        self._entry[run.name] = number
        heapq.heappush(self._heap, (due, number, run))
        if self._heap[0][1] == number:  # a new earliest: the scheduler must look again
            self._tick.notify()

    def _check_now(self, run: WatcherRun) -> None:
        with self._lock:
            if self._stopping:
                return
            if run.name in self._running:
                self._again.add(run.name)
            else:
                self._schedule(run, time.monotonic())

    def _admit(self, run: WatcherRun) -> None:
        """A due run goes to the workers, waits in line while its slot key is full, or goes back
        on the heap while its source asked to be left alone (Retry-After)."""
        rest = _planned(run.watcher.rest, 0.0, run.name)
        if rest > 0:
            self._running.discard(run.name)
            self._again.discard(run.name)
            self._schedule(run, time.monotonic() + rest)
            return
        slot = self._slots[run.name]
        if slot is None or self._in_slot[slot[0]] < slot[1]:
            if slot is not None:
                self._in_slot[slot[0]] += 1
            self._todo.append(run)
        else:
            self._queued.setdefault(slot[0], collections.deque()).append(run)

    def _staff(self) -> bool:
        """Wake an idle worker per run to do, or start one; False if a start failed."""
        if self._stopping:  # nothing in the stop path starts a thread
            return True
        waiting = len(self._todo) - len(self._idle)
        for _ in range(min(len(self._todo), len(self._idle))):
            self._idle.pop().set()
        while waiting > 0 and self._workers < self.size:
            number = next(self._numbers)
            thread = threading.Thread(
                target=self._guard, args=(self._work,), name=f"{self.name}:{number}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # out of threads, or the interpreter is going down
                if not self._start_failed:
                    log.warning("%s: cannot start a worker (%s); retrying", self.name, exc)
                self._start_failed = True
                return False
            self._start_failed = False
            self._threads.append(thread)
            self._workers += 1
            waiting -= 1
        return True

    # -- the threads ------------------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> None:
        """Run a pool thread; the last one to end after stop() closes the watchers first.

        A thread that ends by an exception is logged; if it was the scheduler or the
        processing thread, the failure is kept and the supervisor told (it renews the pool).
        """
        me = threading.current_thread()
        try:
            target()
        except BaseException as exc:
            log.error("thread %s crashed: %s", me.name, error_text(exc), exc_info=True)
            if me in self._roles:
                self.failure = error_text(exc)
        finally:
            with self._lock:
                last = self._stopping and self._close_watchers
                last = last and all(t is me for t in self._threads)
                if not last:
                    self._threads.remove(me)
            if last:  # still listed, so join() and is_alive() wait for the closing too
                for run in self.runs:
                    close_watcher(run.watcher)
                with self._lock:
                    self._threads.remove(me)
            if me in self._roles and not self._stopping:
                self.ended()

    def _plan(self) -> None:
        """The scheduler: release due runs to the workers, sleep until the next is due."""
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, number, run = heapq.heappop(self._heap)
                    if self._entry.get(run.name) != number:
                        continue  # replaced by a later (re)schedule
                    del self._entry[run.name]
                    if run.idle:
                        continue  # parked until resumed or leased (its wake schedules it again)
                    self._running.add(run.name)
                    self._admit(run)
                timeout = self._heap[0][0] - now if self._heap else None
                if not self._staff():
                    timeout = min(timeout or POOL_RETRY, POOL_RETRY)
                self._tick.wait(timeout)

    def _work(self) -> None:
        """A worker: prepare runs from the to-do queue and pass them on; end when idle too long."""
        idle = threading.Event()
        try:
            while True:
                with self._lock:
                    run = self._next(idle)
                    if run is None:
                        return
                run.prepare()  # never raises
                with self._lock:
                    self._leave_slot(run)
                    while len(self._prepared) >= POOL_BACKLOG and not self._stopping:
                        self._room.wait()
                    if self._stopping:
                        return
                    self._prepared.append(run)
                    self._ready.notify()
        finally:
            with self._lock:
                self._workers -= 1
                if idle in self._idle:
                    self._idle.remove(idle)

    def _leave_slot(self, run: WatcherRun) -> None:
        """A prepare is done: its slot key has room for the next run in line."""
        slot = self._slots[run.name]
        if slot is None:
            return
        self._in_slot[slot[0]] -= 1
        line = self._queued.get(slot[0])
        if line and not self._stopping:
            self._admit(line.popleft())
            self._staff()

    def _next(self, idle: threading.Event) -> WatcherRun | None:
        """The next run to prepare, waiting idle for one; None when stopping or idle too long.

        Called and returning with the lock held. Idle workers are woken latest-idle first, so
        in a light load the same few do the work and the rest time out and end.
        """
        while not self._stopping:
            if self._todo:
                return self._todo.popleft()
            idle.clear()
            self._idle.append(idle)
            self._lock.release()
            try:
                idle.wait(POOL_IDLE)
            finally:
                self._lock.acquire()
            if idle in self._idle:  # nobody woke it: idle for POOL_IDLE
                self._idle.remove(idle)
                if not self._todo:
                    return None
        return None

    def _process(self) -> None:
        """The processing thread: finish prepared checks one by one, schedule their next."""
        while True:
            with self._lock:
                while not self._prepared and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                run = self._prepared.popleft()
                self._room.notify()
            try:
                delay = run.safe_cycle()
            except BaseException:  # even a CancelledError: this thread serves every watcher
                log.exception("watcher %s: internal error; retrying", run.name)
                delay = min(run.watcher.config.every, CHECK_BACKOFF_CAP)
            delay = _planned(functools.partial(run.watcher.next_delay, delay), delay, run.name)
            with self._lock:
                self._running.discard(run.name)
                if run.name in self._again:
                    self._again.discard(run.name)
                    delay = 0.0
                if not self._stopping:
                    self._schedule(run, time.monotonic() + delay)


def _slot(watcher: Watcher) -> tuple[str, int] | None:
    """A watcher's pool slot, with a limit of at least one (a 0 would keep its line forever)."""
    slot = watcher.pool_slot()
    return None if slot is None else (slot[0], max(1, slot[1]))


def _planned(plan: Callable[[], float], fallback: float, name: str) -> float:
    """A delay from a watcher's hook that a heap and a timed wait can take.

    The hook may raise, or return inf or nan (which would stop or spin the pool's scheduler):
    then ``fallback``, logged. A pool's threads are shared, so one watcher's bug must stay its own.
    """
    try:
        delay = float(plan())
    except Exception:
        log.exception("watcher %s: cannot plan its next check", name)
        return fallback
    if not math.isfinite(delay) or delay < 0:
        log.error("watcher %s: planned a delay of %r; using %.0fs", name, delay, fallback)
        return fallback
    return min(delay, MAX_DURATION)
