"""The supervisor: every thread the keeper starts is watched, so nothing dies unseen.

Watcher threads, watcher pools, dispatchers and the dashboard are *units*. A unit that stops
running while the keeper is not stopping has crashed: its thread logged the traceback as it
ended (:class:`~watchkeeper.runtime.GuardedThread`), the supervisor marks it ``crashed`` with the
error, sends a health alert, and restarts it after a backoff (0.5 s, doubling, at most a
minute). Once restarted it is ``restarting`` until it has run for :data:`STABLE_AFTER`, then
``running`` again and its crash streak is forgotten.

The store is watched too: while writes fail (disk full, I/O error, a read-only file system)
its error is kept in memory and shown in the health report; one lasting :data:`FAULT_ALERT_AFTER`
is alerted straight through the notifiers, since the outbox cannot take the alert, and its end
is alerted through the outbox. Sent marks the store could not take are retried here too.

The health report is what ``/api/health``, ``/metrics`` and ``watchkeeper status`` show; the
last reads it from ``<state>.health.json`` (another process cannot see this one's memory), which
is rewritten in place when the report changes, so a full disk does not hide itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from watchkeeper.alerts import Alert, Severity
from watchkeeper.dispatch import Dispatcher
from watchkeeper.errors import StoreError
from watchkeeper.notifiers.base import Notifier
from watchkeeper.pool import WatcherPool
from watchkeeper.runtime import GuardedThread, WatcherThread, backoff, error_text
from watchkeeper.store import Route, Store

log = logging.getLogger("watchkeeper")

RESTART_BASE = 0.5
"""The first restart of a crashed unit waits this long; doubling per crash in a row."""
RESTART_CAP = 60.0
"""A unit that keeps crashing is restarted at least this often."""
STABLE_AFTER = 60.0
"""A restarted unit that has run this long is ``running`` again, its crash streak forgotten."""
POLL = 1.0
"""The supervisor looks at every unit at least this often (a crash wakes it at once)."""
HEALTH_SIZE = 64 * 1024
"""Bytes of the health file, always: rewritten in place, it needs no new disk blocks."""
FAULT_ALERT_AFTER = 10.0
"""A store fault lasting this long is alerted (a single busy moment is not)."""


@runtime_checkable
class Supervised(Protocol):
    """What the supervisor needs of a unit: a thread, a pool of them, or the dashboard."""

    @property
    def name(self) -> str:
        """The thread's (or pool's) name, as logs and the health report show it."""
        ...

    failure: str | None
    ended: Callable[[], None]

    def healthy(self) -> bool:
        """True while it runs as it should."""
        ...


@runtime_checkable
class Revivable(Supervised, Protocol):
    """A companion (the dashboard) that can serve again after it ended by itself."""

    kind: str
    """What the health report calls it."""

    def revive(self) -> None:
        """Serve again, or raise."""
        ...


@dataclass(eq=False)
class Unit:
    """One supervised unit and what the supervisor knows of it (compared by identity)."""

    kind: str
    """``watcher``, ``pool``, ``dispatcher`` or ``dashboard``."""
    current: Supervised
    restart: Callable[[Supervised], Supervised]
    """Given the dead one, returns a running replacement (or raises)."""
    watchers: tuple[str, ...] = ()
    """The watchers it drives, whose status shows its state."""
    state: str = "running"
    error: str | None = None
    crashes: int = 0
    restarts: int = 0
    due: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def doc(self) -> dict[str, Any]:
        """The unit as the health report shows it."""
        return {
            "name": self.current.name,
            "kind": self.kind,
            "state": self.state,
            "error": self.error,
            "restarts": self.restarts,
            "watchers": list(self.watchers),
        }


class Supervisor(GuardedThread):
    """Watches the keeper's units and store; restarts, reports and records what goes wrong."""

    def __init__(
        self,
        store: Store,
        notifiers: Sequence[Notifier],
        routes: Callable[[], Sequence[Route]],
        on_commit: Callable[[list[Alert]], None],
    ) -> None:
        super().__init__("watchkeeper:supervisor")
        self.store = store
        self.notifiers = list(notifiers)
        self.routes = routes
        self.on_commit = on_commit
        self.health_path = health_path(store.path)
        self.fault_alert_after = FAULT_ALERT_AFTER
        self._units: list[Unit] = []
        self._lock = threading.Lock()
        self._restarts = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._fault_alerted: str | None = None  # the store fault a health alert went out for
        self._written: str | None = None  # the health file's last content
        self._write_failed = False

    # -- the keeper's side ----------------------------------------------------------------------

    def watch(
        self,
        kind: str,
        driver: Supervised,
        restart: Callable[[Supervised], Supervised],
        watchers: Sequence[str] = (),
    ) -> None:
        """Supervise ``driver``, started (or to be started before this supervisor starts);
        ``restart`` replaces it after a crash."""
        driver.ended = self._wake.set
        with self._lock:
            self._units.append(Unit(kind, driver, restart, tuple(watchers)))
        self._wake.set()

    def watch_driver(self, driver: WatcherThread | WatcherPool | Dispatcher) -> None:
        """Supervise one of the keeper's drivers, restarted as its kind needs."""
        if isinstance(driver, WatcherPool):
            self.watch("pool", driver, _renewed_pool, [run.name for run in driver.runs])
        elif isinstance(driver, Dispatcher):
            self.watch("dispatcher", driver, _new_dispatcher)
        else:
            self.watch("watcher", driver, _new_watcher_thread, [driver.watcher_run.name])

    def watch_companion(self, companion: Revivable) -> None:
        """Supervise a served companion (the dashboard): revived in place after a crash."""
        self.watch(companion.kind, companion, _revived)

    def unwatch(self, driver: object) -> None:
        """Stop supervising ``driver``, which is about to be ended on purpose (a reload)."""
        with self._lock:
            self._units = [u for u in self._units if u.current is not driver]

    def holding(self) -> threading.Lock:
        """Held, no unit is restarted: a reload swapping drivers holds it while it does."""
        return self._restarts

    def all_running(self) -> bool:
        """True when every unit runs (none crashed and waiting for its restart)."""
        with self._lock:
            units = list(self._units)
        return all(u.current.healthy() for u in units)

    def drivers(self, *kinds: str) -> list[Any]:
        """The current drivers of these kinds (replacements included), in the order watched."""
        with self._lock:
            return [u.current for u in self._units if u.kind in kinds]

    def stop(self) -> None:
        """No more restarts: the keeper is stopping its units itself."""
        self._stopping.set()
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """Every unit's state, and the store's, as ``/api/health`` shows it."""
        with self._lock:
            threads = [u.doc() for u in self._units]
        store = self.store
        # Never waits for the writer's lock: a page asking for health must not hang on a write.
        pending_marks = store.flush_marks(wait=False) if not self._stopping.is_set() else 0
        return {
            "pid": os.getpid(),
            "threads": threads,
            "store": {
                "state": "failing" if store.fault else "ok",
                "error": store.fault,
                "since": store.fault_since,
                "unmarked_sends": pending_marks,
            },
        }

    # -- the thread -----------------------------------------------------------------------------

    def loop(self) -> None:
        """Look at everything, sleep until a crash or the next restart is due; until stopped."""
        while not self._stopping.is_set():
            self._wake.clear()
            timeout = POLL
            try:
                timeout = self._pass()
            except BaseException:  # a bug of ours (or a restart's) must not end the supervision
                log.exception("supervisor: internal error")
            self._wake.wait(timeout)
        with contextlib.suppress(OSError):
            self.health_path.unlink(missing_ok=True)

    def _pass(self) -> float:
        """One look at every unit and the store; returns how long to sleep."""
        timeout = POLL
        now = time.monotonic()
        with self._lock:
            units = list(self._units)
        for unit in units:
            with self._restarts:
                if self._stopping.is_set():
                    return 0.0
                with self._lock:
                    if unit not in self._units:  # a reload took it away meanwhile
                        continue
                wait = self._look(unit, now)
            if wait is not None:
                timeout = min(timeout, wait)
        self._watch_store()
        self._write_health()
        return max(timeout, 0.0)

    def _look(self, unit: Unit, now: float) -> float | None:
        """Handle one unit; the seconds until it needs another look, if soon."""
        if unit.current.healthy():
            if unit.state == "restarting" and now - unit.since >= STABLE_AFTER:
                unit.state, unit.error, unit.crashes = "running", None, 0
            return None
        if unit.state != "crashed":
            unit.crashes += 1
            unit.state = "crashed"
            unit.error = unit.current.failure or "the thread ended without an error"
            unit.due = now + backoff(RESTART_BASE, unit.crashes, RESTART_CAP)
            log.error(
                "%s crashed (%d in a row): %s; restarting",
                unit.current.name,
                unit.crashes,
                unit.error,
            )
            if unit.crashes == 1:  # a crash loop is one alert, not one a minute
                self._alert(crash_alert(unit))
        if now < unit.due:
            return unit.due - now
        try:
            replacement = unit.restart(unit.current)
        except BaseException as exc:
            unit.crashes += 1
            unit.due = now + backoff(RESTART_BASE, unit.crashes, RESTART_CAP)
            log.exception("%s: cannot restart it; trying again", unit.current.name)
            unit.error = f"cannot restart: {error_text(exc)}"
            return unit.due - now
        replacement.ended = self._wake.set
        unit.current = replacement
        unit.state = "restarting"
        unit.restarts += 1
        unit.since = time.monotonic()
        log.warning("%s restarted", replacement.name)
        return None

    def _watch_store(self) -> None:
        """Alert a lasting store fault straight through the notifiers, and its end."""
        store = self.store
        store.flush_marks()
        fault, since = store.fault, store.fault_since
        if fault and since is not None and time.time() - since >= self.fault_alert_after:
            if self._fault_alerted is None:
                self._fault_alerted = fault
                self._send_directly(store_alert(fault, "firing"))
        elif not fault and self._fault_alerted is not None:
            self._alert(store_alert(self._fault_alerted, "resolved"))
            self._fault_alerted = None

    def _alert(self, alert: Alert) -> None:
        """Into the outbox like any alert; straight to the notifiers if the store cannot take it."""
        try:
            self.store.add_alerts([alert], self.routes(), time.time())
        except StoreError as exc:
            log.warning("cannot record the health alert (%s); sending it directly", exc)
            self._send_directly(alert)
            return
        self.on_commit([alert])

    def _send_directly(self, alert: Alert) -> None:
        """Best effort, on this thread: each notifier that can, without the outbox."""
        for notifier in self.notifiers:
            if alert.severity < notifier.config.min_severity:
                continue
            try:
                notifier.send(alert)
            except BaseException as exc:
                log.warning("notifier %s: cannot send the health alert: %s", notifier.name, exc)

    def _write_health(self) -> None:
        """Rewrite ``<state>.health.json`` when the report changed (tried again while it fails).

        The file has a fixed size (:data:`HEALTH_SIZE`, the JSON padded with spaces) and is
        rewritten in place: that takes no new disk blocks, so a full disk, the very fault to
        report, does not stop the report. Only its first writing makes a file (and renames it
        into place, so no reader sees half of one).
        """
        report = self.health()
        text = json.dumps(report, sort_keys=True)
        if len(text) > HEALTH_SIZE:  # thousands of units: the ones in trouble are what matter
            troubled = [u for u in report["threads"] if u["state"] != "running"]
            text = json.dumps({**report, "threads": troubled[:100]}, sort_keys=True)
        if text == self._written:
            return
        padded = text.encode().ljust(HEALTH_SIZE)
        try:
            _overwrite(self.health_path, padded)
        except OSError as exc:
            if not self._write_failed:
                log.warning("cannot write %s: %s", self.health_path, exc)
            self._write_failed = True
            return
        self._write_failed = False
        self._written = text


def _overwrite(path: Path, data: bytes) -> None:
    """Write ``data`` over a file of the same size in place, or make the file (atomically)."""
    with contextlib.suppress(FileNotFoundError):  # no file yet: made below
        if path.stat().st_size == len(data):
            descriptor = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(descriptor, data, 0)
            finally:
                os.close(descriptor)
            return
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def _new_dispatcher(old: Supervised) -> Dispatcher:
    """A crashed dispatcher's replacement, started."""
    assert isinstance(old, Dispatcher)
    dispatcher = Dispatcher(old.notifier, old.store, old.clock, old.agent)
    dispatcher.turn = old.turn
    dispatcher.start()
    return dispatcher


def _new_watcher_thread(old: Supervised) -> WatcherThread:
    """A crashed watcher thread's replacement, started; the watcher and its run are kept."""
    assert isinstance(old, WatcherThread)
    thread = WatcherThread(old.watcher_run)
    thread.start()
    return thread


def _renewed_pool(old: Supervised) -> WatcherPool:
    """A pool whose scheduler or processing thread crashed, renewed."""
    assert isinstance(old, WatcherPool)
    return old.renewed()


def _revived(old: Supervised) -> Supervised:
    """A companion (the dashboard), serving again."""
    assert isinstance(old, Revivable)
    old.revive()
    return old


def crash_alert(unit: Unit) -> Alert:
    """The health alert for a unit's crash."""
    name = unit.current.name
    return Alert(
        watcher="watchkeeper",
        kind="health",
        severity=Severity.ERROR,
        title=f"{name} crashed and is being restarted: {unit.error}",
        key=f"crash:{name}",
        data={"thread": name, "unit": unit.kind, "watchers": list(unit.watchers)},
    )


def store_alert(fault: str, status: str) -> Alert:
    """The health alert for a store that cannot be written (``firing``) or can again."""
    if status == "firing":
        title = f"alerts cannot be recorded: {fault}"
    else:
        title = "the state file takes writes again; recorded alerts go out"
    return Alert(
        watcher="watchkeeper",
        kind="health",
        severity=Severity.CRITICAL if status == "firing" else Severity.INFO,
        title=title,
        key="store",
        status="firing" if status == "firing" else "resolved",
    )


def health_path(state: Path) -> Path:
    """Where a running keeper keeps its health report for other processes."""
    return state.with_name(state.name + ".health.json")


def read_health(state: Path) -> dict[str, Any] | None:
    """The health report of the keeper running on ``state``, or None if none runs (or left one).

    A report left by a process that no longer holds the state file (killed before it could
    remove it) is ignored: the state file's lock says who runs (:meth:`Store.holder`).
    """
    for _ in range(3):  # a read during an in-place rewrite may see half of each; read again
        try:
            report = json.loads(health_path(state).read_bytes())
            break
        except ValueError:
            continue
        except OSError:
            return None
    else:
        return None
    if not isinstance(report, dict) or Store.holder(state) != report.get("pid"):
        return None
    return report


def watcher_health(report: dict[str, Any] | None) -> dict[str, tuple[str, str | None]]:
    """{watcher: (state, error)} for watchers whose thread is not simply running."""
    found: dict[str, tuple[str, str | None]] = {}
    for unit in (report or {}).get("threads", []):
        if unit.get("state") in ("crashed", "restarting"):
            for name in unit.get("watchers", []):
                found[name] = (unit["state"], unit.get("error"))
    return found
