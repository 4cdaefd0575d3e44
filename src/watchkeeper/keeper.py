"""Keeper: builds the watchers and notifiers, supervises their daemon threads, stops them well.

``start()`` returns at once and nothing it starts holds the interpreter open. ``stop()`` (also run
by an ``atexit`` hook, while daemon threads are still alive) stops the watchers, then lets every
notifier's dispatcher deliver what is pending until ``shutdown_timeout``; whatever is left stays
in the outbox and goes out at the next start against the same state file.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, overload

from watchkeeper.alerts import Alert
from watchkeeper.build import (
    NotifierSpec,
    build_from_config,
    build_notifier,
    build_watcher,
    close_all,
    unique_names,
)
from watchkeeper.config import Config, default_state_path, load_config, watcher_config
from watchkeeper.dispatch import Dispatcher
from watchkeeper.errors import ConfigError, StoreError
from watchkeeper.fleet import Fleet, conflicts, digest, shared_offer
from watchkeeper.notifiers import Notifier
from watchkeeper.pool import WatcherPool
from watchkeeper.quantities import parse_duration
from watchkeeper.reload import Handover, Handovers, Part, ReloadBusy, ReloadResult, plan
from watchkeeper.retention import Pruner
from watchkeeper.runtime import WatcherRun, WatcherThread, close_watcher
from watchkeeper.store import Route, Store
from watchkeeper.store.backend import local_path
from watchkeeper.supervisor import Revivable, Supervised, Supervisor
from watchkeeper.watchers import Watcher, WatcherConfig
from watchkeeper.watchers.custom import CheckFunction, CustomConfig, CustomWatcher

log = logging.getLogger("watchkeeper")

ABORT_GRACE = 1.0
"""Seconds a dispatcher has, after its notifier was told to abort, to record the retry."""


class Companion(Protocol):
    """A service that runs beside a keeper and reads its store: the dashboard is one.

    The core knows only this shape, never the web stack: whoever owns a screen builds the
    companion and :meth:`Keeper.attach` es it (``watchkeeper.web.serve_dashboard`` does).
    ``prepare`` runs before the watchers start, so a failure there (an address in use) fails the
    start before anything ran, and returns False to be skipped; ``serve`` runs once the watchers
    run (so the first checks do not wait for it); ``stop`` runs first when the keeper stops.
    """

    def prepare(self) -> bool: ...

    def serve(self) -> object: ...

    def stop(self) -> None: ...


class Keeper:
    """Keeps watch in the background. See the README for the tour."""

    def __init__(
        self,
        state: str | Path | None = None,
        notify: Iterable[NotifierSpec] = (),
        shutdown_timeout: float | str = 5.0,
        *,
        watchers: Iterable[Watcher | WatcherConfig] = (),
        retention: float | str = "30d",
        max_alerts: int = 1_000_000,
        agent: str | None = None,
        lease: float | str = 30.0,
    ) -> None:
        """``agent`` and ``lease``: this keeper's name in a fleet (default: the host name) and
        how long a shared watcher stays with it once it stops renewing (see docs/fleet.md)."""
        self.state: str | Path = state if state is not None else default_state_path()
        """A path, ``sqlite:///path`` or ``postgresql://…`` (see :class:`Store`)."""
        self.state_path = local_path(self.state)
        """The state file, or (for a database) the local file this agent's notes go beside."""
        self.agent = agent or socket.gethostname()
        self.lease = parse_duration(lease)
        self.advertised: dict[str, Any] = {}
        """What the heartbeat tells the fleet besides what this agent runs (the dashboard URL)."""
        self._fleet: Fleet | None = None
        self._digests: dict[str, str] = {}  # shared watcher -> its settings' fingerprint
        self.sources: dict[str, str] = {}
        """The file each watcher came from (the fleet's conflict errors name it)."""
        self.shutdown_timeout = parse_duration(shutdown_timeout)
        self.retention = parse_duration(retention)
        self.max_alerts = max_alerts
        self.notifiers: list[Notifier] = [
            build_notifier(spec, f"notify[{i}]") for i, spec in enumerate(notify)
        ]
        unique_names([n.name for n in self.notifiers], "notifier")
        self.watchers: list[Watcher] = []
        self._names: set[str] = set()  # of the watchers added: checking a list was quadratic
        for watcher in watchers:
            self.add(watcher)
        self.store: Store | None = None
        self._runs: dict[str, WatcherRun] = {}
        self._supervisor: Supervisor | None = None
        self._pruner: Pruner | None = None
        self._listeners: list[Callable[[list[Alert]], None]] = []
        self._lock = threading.Lock()
        self._started = False
        self._companions: list[Companion] = []
        self._stopped_clean = True
        self._reload_lock = threading.Lock()
        self._handovers: list[Handover] = []
        self._retiring: list[Part] = []
        self.loaded_at = time.time()
        """When the running config was loaded (start, or the last reload that applied)."""

    @classmethod
    def from_config(cls, path: str | Path | Config, state: str | Path | None = None) -> Keeper:
        """Build a keeper from an agent config file (or an already loaded Config)."""
        config = path if isinstance(path, Config) else load_config(path)
        notifiers, watchers = build_from_config(config)
        keeper = cls(
            state=state or config.keeper.state,
            notify=notifiers,
            shutdown_timeout=config.keeper.shutdown_timeout,
            watchers=watchers,
            retention=config.keeper.retention,
            max_alerts=config.keeper.max_alerts,
            agent=config.keeper.agent_name(),
            lease=config.keeper.lease,
        )
        keeper.sources = {w.name: config.source_of("watcher", w.name) for w in watchers}
        return keeper

    # -- adding watchers ----------------------------------------------------------------------

    def add(self, watcher: Watcher | WatcherConfig) -> Watcher:
        """Add a watcher (or build one from its config); before ``start()`` only."""
        if getattr(self, "_started", False):
            raise RuntimeError("add watchers before keeper.start()")
        if isinstance(watcher, WatcherConfig):
            watcher = build_watcher(watcher)
        if watcher.name in self._names:
            raise ConfigError(f"watcher name {watcher.name!r} is used twice; names must be unique")
        owner = watcher.owner(self.agent)
        if owner not in (None, self.agent):
            raise ConfigError(
                f"watcher {watcher.name!r} is pinned to agent {owner!r}, and this keeper is "
                f"agent {self.agent!r}"
            )
        self._names.add(watcher.name)
        self.watchers.append(watcher)
        return watcher

    @overload
    def every(
        self, interval: float | str, fn: None = None, *, name: str | None = None, **rules: Any
    ) -> Callable[[CheckFunction], CheckFunction]: ...

    @overload
    def every(
        self, interval: float | str, fn: CheckFunction, *, name: str | None = None, **rules: Any
    ) -> CheckFunction: ...

    def every(
        self,
        interval: float | str,
        fn: CheckFunction | None = None,
        *,
        name: str | None = None,
        **rules: Any,
    ) -> CheckFunction | Callable[[CheckFunction], CheckFunction]:
        """Run ``fn`` every ``interval`` (seconds or ``"30s"``); usable as a decorator.

        ``rules`` are the watcher rules: throttle, for_cycles, within_cycles, recovery, remind,
        fail_after.
        """

        def decorate(function: CheckFunction) -> CheckFunction:
            label = name or getattr(function, "__name__", "custom")
            table = {"name": label, "every": interval, **rules}
            config = watcher_config("custom", table, f"keeper.every({label!r})")
            assert isinstance(config, CustomConfig)
            self.add(CustomWatcher(config, function))
            return function

        return decorate if fn is None else decorate(fn)

    def page(
        self, url: str, items: str | None = None, *, name: str | None = None, **options: Any
    ) -> Watcher:
        """Alert on new items at ``url``: ``items`` is a CSS selector (HTML) or JMESPath (JSON).

        ``options`` are the ``[[page]]`` keys (key, title, format, alert, every, ...) and the
        rules; see docs/page.md.
        """
        table = {"name": name or url, "url": url, "items": items, **options}
        return self._add_table("page", table, f"keeper.page({url!r})")

    def ports(
        self,
        host: str,
        ports: str | Sequence[int] = "1-1024",
        *,
        name: str | None = None,
        every: float | str = "15m",
        **options: Any,
    ) -> Watcher:
        """Scan ``host``'s TCP ``ports`` every ``every`` and alert when the open set changes.

        ``options`` are the ``[[ports]]`` settings (expect_open, expect_closed, alert_on,
        timeout, concurrency, banner, ...) and the rules (for_cycles, throttle, ...).
        """
        label = name or f"ports:{host}"
        port_spec = ports if isinstance(ports, str) else list(ports)
        table = {"name": label, "host": host, "ports": port_spec, "every": every, **options}
        return self._add_table("ports", table, f"keeper.ports({host!r})")

    def log(
        self,
        paths: str | Path | Sequence[str | Path],
        rules: Sequence[Mapping[str, Any]],
        *,
        name: str | None = None,
        **options: Any,
    ) -> Watcher:
        """Follow log files (paths or globs) and alert on lines the ``rules`` match.

        ``rules`` are dicts like ``{"match": "CRITICAL", "severity": "critical"}``; ``options``
        are the other ``[[log]]`` settings (start_at, throttle, partial_timeout, ...).
        """
        listed = [paths] if isinstance(paths, str | Path) else list(paths)
        label = name or (f"log:{Path(listed[0]).name}" if listed else "log")
        table = {"name": label, "paths": [str(p) for p in listed], "rules": list(rules), **options}
        return self._add_table("log", table, f"keeper.log({label!r})")

    def _add_table(self, kind: str, table: dict[str, Any], where: str) -> Watcher:
        """Validate a watcher table as a config file would (errors name ``where``), then add it."""
        config = watcher_config(kind, table, where)
        assert config is not None  # watcher_config raises when it has no errors list to fill
        return self.add(config)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Open and claim the state, start every watcher and dispatcher thread, return at once."""
        with self._lock:
            if self._started or self.store is not None:
                raise RuntimeError("a keeper starts once; build a new one to start again")
            store = Store(self.state)
            try:
                store.claim(self.agent, self.lease)
                supervisor = Supervisor(store, self.notifiers, self.routes, self._committed)
                for notifier in self.notifiers:
                    supervisor.watch_driver(self._dispatcher(notifier, store))
                self._runs = self._new_runs(self.watchers, store)
                problems = conflicts(store, self.agent, self._runs, self.sources)
                if problems:
                    raise ConfigError(problems)
                fleet = Fleet(
                    store,
                    self.agent,
                    self.lease,
                    lambda: self._runs,
                    self._heartbeat,
                    lambda: [_single(n) for n in self.notifiers if n.config.grouping()],
                )
                self._fleet = fleet  # (its first heartbeat names what it runs)
                fleet.round()  # before the first checks: one agent (SQLite) then runs everything
                supervisor.watch("fleet", fleet, _renewed_fleet)
                for driver in _drivers(list(self._runs.values())):
                    supervisor.watch_driver(driver)
                store.listen(self._heard)  # another agent's deliveries (PostgreSQL) wake ours
                self._pruner = Pruner(store, self.retention, self.max_alerts)
                # A companion that cannot start (a busy address) stops the start before checks.
                serving = [c for c in self._companions if c.prepare()]
            except BaseException:
                for companion in self._companions:
                    companion.stop()
                store.close()
                raise
            self.store = store
            self._supervisor = supervisor
            self._started = True
            for driver in [
                *supervisor.drivers("dispatcher", "watcher", "pool", "fleet"),
                self._pruner,
            ]:
                driver.start()
            supervisor.start()
            atexit.register(self._at_exit)
        try:
            for companion in serving:
                companion.serve()
                self._supervise(companion)
        except BaseException:
            self.stop()
            raise
        log.info(
            "keeper started: %d watchers, %d notifiers, %s",
            len(self.watchers),
            len(self.notifiers),
            store.where,
        )
        return self

    def _new_runs(self, watchers: Sequence[Watcher], store: Store) -> dict[str, WatcherRun]:
        """A run per watcher, their rows registered in a transaction per owner; a shared one
        is parked until the lease loop takes its lease (see :mod:`watchkeeper.fleet`)."""
        records = {}
        for owner in (self.agent, None):
            mine = [(w.name, w.kind) for w in watchers if w.owner(self.agent) == owner]
            if mine:
                records.update(store.register_watchers(mine, agent=owner))
        runs = {}
        for w in watchers:
            run = WatcherRun(w, store, self.routes, self._committed, record=records[w.name])
            run.shared = w.owner(self.agent) is None
            if run.shared:
                self._digests[w.name] = digest(run)
            runs[w.name] = run
        return runs

    def _dispatcher(self, notifier: Notifier, store: Store) -> Dispatcher:
        """A notifier's dispatcher; a grouped one sends only while this agent holds its lease
        (one agent of a fleet builds its digests; on one agent, always)."""
        dispatcher = Dispatcher(notifier, store, agent=self.agent)
        if notifier.config.grouping():
            dispatcher.turn = functools.partial(self._holds, _single(notifier))
        return dispatcher

    def _heard(self, payload: str) -> None:
        """A change notice (``alerts`` or a notifier with new deliveries): wake its dispatcher."""
        for dispatcher in self._dispatchers:
            if payload in ("alerts", dispatcher.notifier.name):
                dispatcher.wake.set()

    def _holds(self, lease: str) -> bool:
        """True while this agent holds a single lease (see :class:`Fleet`)."""
        fleet = self._fleet_thread
        return fleet is not None and fleet.holds(lease)

    def _heartbeat(self) -> dict[str, Any]:
        """What this agent tells the fleet with each heartbeat (the fleet view shows it)."""
        from watchkeeper import __version__

        fleet = self._fleet_thread
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "state": self.state_path.name,
            "watchers": [] if fleet is None else fleet.running(),
            "leases_lost": sum(run.leases_lost for run in list(self._runs.values())),
            **shared_offer(  # what it may run, for the share and the others' conflict check
                [name for name, run in list(self._runs.items()) if run.shared],
                self._digests,
                self.sources,
            ),
            "lease": self.lease,
            **self.advertised,
        }

    def stop(self, timeout: float | None = None) -> bool:
        """Stop watchers, flush deliveries for at most ``timeout`` (default shutdown_timeout).

        Returns True when every thread ended in time and nothing due was left undelivered
        (later calls return the same). Deliveries not made stay in the outbox for the next start.
        """
        return self._stop(timeout, at_exit=False)

    def _at_exit(self) -> None:
        self._stop(None, at_exit=True)

    def _stop(self, timeout: float | None, at_exit: bool) -> bool:
        with self._lock:
            if not self._started or self.store is None:
                return self._stopped_clean
            self._started = False
            atexit.unregister(self._at_exit)
        log.info("keeper stopping: checks in progress end, then pending alerts are delivered")
        if self._supervisor is not None:
            self._supervisor.stop()  # no restarts from here on
        for companion in self._companions:
            companion.stop()
        self._stopped_clean = self._shutdown(timeout, at_exit, self.store)
        return self._stopped_clean

    def _shutdown(self, timeout: float | None, at_exit: bool, store: Store) -> bool:
        me = threading.current_thread()  # stop() may be called from inside a check
        budget = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        supervisor = self._supervisor
        assert supervisor is not None
        if supervisor is not me:
            supervisor.join(max(0.0, deadline - time.monotonic()))
        fleet = self._fleet_thread
        if fleet is not None:  # it renews what it holds until the flush has ended
            fleet.wind_down()
        watching: list[WatcherThread | WatcherPool | Pruner] = [
            *self._drivers,
            *([self._pruner] if self._pruner else []),
        ]
        dispatchers = self._dispatchers
        for driver in watching:
            driver.stop()
        # Watchers get half the budget to finish a check in progress (and commit its alerts);
        # parts a reload was replacing were told to stop already, and end within it too.
        half = time.monotonic() + budget / 2
        for part in [*watching, *self._retiring]:
            if part is not me:
                part.join(max(0.0, half - time.monotonic()))
            if isinstance(part, WatcherThread) and not part.is_alive():
                _close_crashed(part)
        wall_deadline = time.time() + max(0.0, deadline - time.monotonic())
        for dispatcher in dispatchers:
            dispatcher.flush(wall_deadline, at_exit=at_exit)
        for dispatcher in dispatchers:
            if dispatcher.is_alive():
                dispatcher.join(max(0.0, deadline - time.monotonic()))
        for sender in [*dispatchers, *self._retiring]:
            # Out of time: a send that would outlive the program is ended, and retried later.
            if isinstance(sender, Dispatcher) and sender.is_alive() and sender.notifier.abort():
                sender.join(ABORT_GRACE)
        for handover in self._handovers:
            handover.join(max(0.0, deadline - time.monotonic()))
        if fleet is not None:  # after the flush: a grouped notifier's digests went out
            fleet.stop()
            if fleet is not me:
                fleet.join(max(0.0, deadline - time.monotonic()))
            fleet.leave()  # the others take over now, not after the lease
        looping = [fleet] if fleet is not None else []
        drivers = [*watching, *looping, *dispatchers, *self._retiring, supervisor]
        alive = [d.name for d in drivers if d.is_alive() and d is not me]
        unmarked = store.flush_marks()
        if unmarked:
            log.warning(
                "%d deliveries were sent but the state file could not record it; "
                "they may be sent again at the next start",
                unmarked,
            )
        try:
            counts = store.delivery_counts()
        except StoreError as exc:
            log.warning("cannot count the deliveries left: %s", exc)
            counts = {}
        pending = sum(counts.get(n.name, {}).get("pending", 0) for n in self.notifiers)
        if alive:
            # A stuck thread may still write: keep the store (and its claim) open for it.
            log.warning("keeper stopped with threads still busy: %s", ", ".join(alive))
        else:
            for notifier in self.notifiers:
                notifier.close()
            store.close()
        if pending:
            log.warning("%d deliveries pending; they go out at the next start", pending)
        return not alive and not pending

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def companions(self) -> tuple[Companion, ...]:
        """What was attached to run beside the keeper (the dashboard)."""
        return tuple(self._companions)

    def attach(self, companion: Companion) -> None:
        """Run ``companion`` with the keeper: prepared and served with ``start()`` (at once when
        the keeper already runs), stopped first by ``stop()``."""
        with self._lock:
            self._companions.append(companion)
            running = self._started
        if running and companion.prepare():
            companion.serve()
            self._supervise(companion)

    def _supervise(self, companion: Companion) -> None:
        """Have the supervisor watch a served companion that can be revived."""
        if self._supervisor is not None and isinstance(companion, Revivable):
            self._supervisor.watch_companion(companion)

    # -- reload ---------------------------------------------------------------------------------

    def reload(self, config: Config, wait: float = 5.0) -> ReloadResult:
        """Run ``config`` from now on, without a restart; return what changed.

        The whole config is built first: if anything in it is wrong, ConfigError is raised and
        nothing changed. Then the new set of notifiers routes every alert committed from now on;
        watchers and notifiers added start; removed ones stop (their stored state stays);
        changed ones stop and their replacements start once they have ended, from the stored
        checkpoint, so no check runs twice at once and nothing is produced or sent twice. An old
        part ends after the check or send in progress: this waits up to ``wait`` seconds for the
        handovers, and the result names the ones still waiting (they complete by themselves).
        A reload while an earlier one still waits raises :class:`ReloadBusy`.
        """
        notifiers, watchers = build_from_config(config)
        try:
            unique_names([n.name for n in notifiers], "notifier")
            with self._reload_lock, self._no_restarts():
                handovers = self._begin_reload(config, notifiers, watchers)
        except BaseException:
            close_all(notifiers, watchers)
            raise
        deadline = time.monotonic() + wait
        for unit in handovers:
            unit.join(max(0.0, deadline - time.monotonic()))
        result = ReloadResult(handovers.plan, sorted(handovers.waiting()))
        for line in result.describe():
            log.info("reload: %s", line)
        return result

    def _begin_reload(
        self, config: Config, notifiers: list[Notifier], watchers: list[Watcher]
    ) -> Handovers:
        """Switch routing and stop the old parts now; hand the new ones to handover threads."""
        with self._lock:
            if not self._started or self.store is None:
                raise RuntimeError("reload a running keeper; build a new one instead")
            busy = sorted({n for h in self._handovers if h.is_alive() for n in h.names})
            if busy:
                raise ReloadBusy(
                    "an earlier reload still waits for the check or send in progress of "
                    f"{', '.join(busy)}; reload again when it has ended"
                )
            changes = plan((self.watchers, watchers), (self.notifiers, notifiers))
            self.shutdown_timeout = config.keeper.shutdown_timeout
            self.loaded_at = time.time()
            handovers = Handovers(changes)
            # Watchers: a thread each, or a whole pool per kind the plan touches.
            restart = changes.watchers.stopping | {
                w.name for w in self.watchers if w.kind in changes.pools
            }
            starting = changes.watchers.starting | {
                w.name for w in watchers if w.kind in changes.pools
            }
            new_watchers = {w.name: w for w in watchers}
            for driver in [d for d in self._drivers if any(r.name in restart for r in _runs_of(d))]:
                names = [r.name for r in _runs_of(driver)]
                if isinstance(driver, WatcherPool):  # the pool's kind: every new member
                    kind = driver.runs[0].watcher.kind
                    fresh = [w for w in watchers if w.kind == kind]
                else:
                    fresh = [new_watchers[n] for n in names if n in starting]
                label = f"driver:{driver.name}"
                handovers.add(Handover(label, names, [driver], fresh, [], [], names))
            started = {w.name for unit in handovers for w in unit.watchers}
            groups: dict[str, list[Watcher]] = {}  # added: one pool per new pooled kind
            for name in sorted(starting - started):
                watcher = new_watchers[name]
                groups.setdefault(watcher.kind if watcher.pool_size else name, []).append(watcher)
            for key, group in groups.items():
                names = [w.name for w in group]
                handovers.add(Handover(f"start:{key}", names, [], group, [], [], []))
            keep = {w.name: w for w in self.watchers if w.name not in restart}
            for unused in watchers:
                if unused.name in keep:
                    close_watcher(unused)
            self.watchers = [keep.get(w.name, w) for w in watchers]
            # Notifiers: routing changes at once; a dispatcher is replaced once it has ended.
            old_notifiers = {n.name: n for n in self.notifiers}
            dispatchers = {d.notifier.name: d for d in self._dispatchers}
            for name in changes.notifiers.stopping | changes.notifiers.starting:
                new = [
                    n for n in notifiers if n.name == name and name in changes.notifiers.starting
                ]
                old = dispatchers.get(name)
                old_parts = [] if old is None or name not in changes.notifiers.stopping else [old]
                closing = [old_notifiers[name]] if old_parts else []
                label = f"notifier:{name}"
                handovers.add(Handover(label, [name], old_parts, [], new, closing, []))
            kept = {n.name: n for n in self.notifiers if n.name not in changes.notifiers.stopping}
            for spare in notifiers:
                if spare.name in kept:
                    spare.close()
            self.notifiers = [kept.get(n.name, n) for n in notifiers]
            for unit in handovers:
                for part in unit.ending:
                    self._retire(part)
            for unit in handovers:
                thread = threading.Thread(
                    target=self._hand_over, args=(unit,), name=f"watchkeeper:reload:{unit.label}"
                )
                thread.daemon = True
                unit.thread = thread
                self._handovers.append(unit)
                thread.start()
            return handovers

    def _no_restarts(self) -> contextlib.AbstractContextManager[object]:
        """Held while a reload picks and retires drivers: no restart swaps one meanwhile."""
        supervisor = self._supervisor
        return contextlib.nullcontext() if supervisor is None else supervisor.holding()

    def _retire(self, part: Part) -> None:
        """Ask an old part to end after the check or send in progress (call with the lock)."""
        assert self._supervisor is not None
        self._supervisor.unwatch(part)  # it ends on purpose: not a crash to restart
        if isinstance(part, Dispatcher):
            part.flush(time.time())  # nothing more is taken from the outbox
        elif isinstance(part, WatcherThread | WatcherPool):
            part.stop()
        self._retiring.append(part)

    def _hand_over(self, unit: Handover) -> None:
        """Wait for a unit's old parts to end, then start its new ones (a handover thread)."""
        for part in unit.ending:
            part.join()
        with self._lock:
            self._retiring = [p for p in self._retiring if p.is_alive()]
            for notifier in unit.closing:
                notifier.close()
            store = self.store
            if not self._started or store is None:  # stopped meanwhile: start nothing
                close_all(unit.notifiers, unit.watchers)
                return
            for name in unit.replaces:
                self._runs.pop(name, None)
            new_runs = self._new_runs(unit.watchers, store)
            self._runs.update(new_runs)
            drivers = _drivers(list(new_runs.values()))
            dispatchers = [self._dispatcher(notifier, store) for notifier in unit.notifiers]
            assert self._supervisor is not None
            self._supervisor.notifiers = list(self.notifiers)
            fleet = self._fleet_thread
            if fleet is not None and any(run.shared for run in new_runs.values()):
                fleet.round()  # their leases now: they start checking at once, as before
            for part in [*dispatchers, *drivers]:
                part.start()  # then watched: a part not started yet would look crashed
                self._supervisor.watch_driver(part)

    @property
    def _drivers(self) -> list[WatcherThread | WatcherPool]:
        """The watcher threads and pools running now (the supervisor's, replacements included)."""
        return [] if self._supervisor is None else self._supervisor.drivers("watcher", "pool")

    @property
    def _fleet_thread(self) -> Fleet | None:
        """The lease loop running now (the supervisor's replacement after a crash included)."""
        current = [] if self._supervisor is None else self._supervisor.drivers("fleet")
        return current[0] if current else self._fleet

    @property
    def _dispatchers(self) -> list[Dispatcher]:
        """The dispatchers running now (the supervisor's, replacements included)."""
        return [] if self._supervisor is None else self._supervisor.drivers("dispatcher")

    def healthy(self) -> bool:
        """The keeper runs, its supervisor too, and every thread the supervisor watches is alive,
        none waiting for its restart (systemd's watchdog asks: a crash loop ends in a restart of
        the process; parts a reload is replacing do not count). The supervisor logs each crash."""
        with self._lock:
            supervisor = self._supervisor
            if not self._started or supervisor is None:
                return False
        return supervisor.is_alive() and supervisor.all_running()

    # -- control (dashboard, CLI) -------------------------------------------------------------

    def routes(self) -> Sequence[Route]:
        """Which notifiers get which alerts."""
        return [Route(n.name, n.config.min_severity) for n in self.notifiers]

    def subscribe(self, listener: Callable[[list[Alert]], None]) -> None:
        """Call ``listener(alerts)`` after each commit with alerts, from the thread that committed.

        That is the watcher's own thread, or for page watchers their pool's one processing
        thread, which every page check goes through: keep listeners quick (hand slow work to a
        queue of your own).
        """
        self._listeners.append(listener)

    def check_now(self, name: str) -> None:
        """Run a watcher's next check at once."""
        self._run(name).wake()

    # The controls hold the keeper's lock: a reload's handover makes a watcher's new run (which
    # reads paused and muted from the store) under the same lock, so no pause falls between.

    def pause(self, name: str) -> None:
        """Pause a watcher (kept across restarts)."""
        with self._lock:
            run = self._run(name)
            assert self.store is not None
            self.store.set_paused(name, True)
            with run.lease_lock:  # against the lease round's compare-and-set (Fleet)
                run.paused = True

    def resume(self, name: str) -> None:
        """Resume a paused watcher and check at once."""
        with self._lock:
            run = self._run(name)
            assert self.store is not None
            self.store.set_paused(name, False)
            with run.lease_lock:
                run.paused = False
        run.wake()

    def mute(self, name: str, duration: float | str | None) -> None:
        """Record but do not deliver a watcher's alerts for a while (None: unmute)."""
        until = None if duration is None else time.time() + parse_duration(duration)
        with self._lock:
            run = self._run(name)
            assert self.store is not None
            self.store.set_muted_until(name, until)
            with run.lease_lock:
                run.muted_until = until

    def _run(self, name: str) -> WatcherRun:
        try:
            return self._runs[name]
        except KeyError:
            raise KeyError(f"no running watcher named {name!r}") from None

    def health(self) -> dict[str, Any]:
        """The supervisor's report: each thread's state and the store's (see docs/dashboard.md).

        Empty lists while the keeper is not running.
        """
        if self._supervisor is None:
            return {"threads": [], "store": {"state": "ok", "error": None}}
        report = self._supervisor.health()
        fleet = self._fleet_thread
        error = None if fleet is None else fleet.error
        report["fleet"] = {"state": "ok" if error is None else "failing", "error": error}
        return report

    def _committed(self, alerts: list[Alert]) -> None:
        if self._supervisor is None:
            return
        for dispatcher in self._supervisor.drivers("dispatcher"):
            dispatcher.wake.set()
        for listener in self._listeners:
            try:
                listener(alerts)
            except Exception:
                log.exception("alert listener failed")


def _single(notifier: Notifier) -> str:
    """The name of the lease a grouped notifier's dispatcher needs in a fleet."""
    return f"notify:{notifier.name}"


def _renewed_fleet(old: Supervised) -> Fleet:
    """A crashed lease loop's replacement, started, with the leases it held."""
    assert isinstance(old, Fleet)
    return old.renewed()


def _close_crashed(thread: WatcherThread) -> None:
    """A watcher whose thread crashed is closed at stop (a stopped thread closes its own)."""
    if thread.failure is not None:
        close_watcher(thread.watcher_run.watcher)


def _runs_of(driver: WatcherThread | WatcherPool) -> list[WatcherRun]:
    return driver.runs if isinstance(driver, WatcherPool) else [driver.watcher_run]


def _drivers(runs: list[WatcherRun]) -> list[WatcherThread | WatcherPool]:
    """A thread for each run, except kinds that share a pool (one pool per such kind)."""
    drivers: list[WatcherThread | WatcherPool] = []
    pooled: dict[str, list[WatcherRun]] = {}
    for run in runs:
        if run.watcher.pool_size:
            if type(run.watcher).wait is not Watcher.wait:
                raise TypeError(f"{type(run.watcher).__name__} is pooled: plan with next_delay")
            pooled.setdefault(run.watcher.kind, []).append(run)
        else:
            drivers.append(WatcherThread(run))
    for kind, members in pooled.items():
        size = min(len(members), members[0].watcher.pool_size)
        drivers.append(WatcherPool(kind, members, size))
    return drivers
