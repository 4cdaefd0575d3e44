"""Keeper: builds the watchers and notifiers, supervises their daemon threads, stops them well.

``start()`` returns at once and nothing it starts holds the interpreter open. ``stop()`` (also run
by an ``atexit`` hook, while daemon threads are still alive) stops the watchers, then lets every
notifier's dispatcher deliver what is pending until ``shutdown_timeout``; whatever is left stays
in the outbox and goes out at the next start against the same state file.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, overload

from watchkeeper.alerts import Alert
from watchkeeper.config import (
    Config,
    default_state_path,
    load_config,
    notifier_config,
    watcher_config,
)
from watchkeeper.errors import ConfigError, StoreError
from watchkeeper.notifiers import NOTIFIERS, Notifier, NotifierConfig
from watchkeeper.pool import WatcherPool
from watchkeeper.quantities import parse_duration
from watchkeeper.reload import ReloadPlan, plan
from watchkeeper.runtime import (
    Dispatcher,
    WatcherRun,
    WatcherThread,
    close_watcher,
)
from watchkeeper.store import Route, Store
from watchkeeper.supervisor import Revivable, Supervisor
from watchkeeper.watchers import WATCHERS, Watcher, WatcherConfig
from watchkeeper.watchers.custom import CheckFunction, CustomConfig, CustomWatcher

log = logging.getLogger("watchkeeper")

NotifierSpec = Mapping[str, Any] | NotifierConfig | Notifier


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
    ) -> None:
        self.state_path = Path(state) if state is not None else default_state_path()
        self.shutdown_timeout = parse_duration(shutdown_timeout)
        self.notifiers: list[Notifier] = [
            build_notifier(spec, f"notify[{i}]") for i, spec in enumerate(notify)
        ]
        _unique([n.name for n in self.notifiers], "notifier")
        self.watchers: list[Watcher] = []
        for watcher in watchers:
            self.add(watcher)
        self.store: Store | None = None
        self._runs: dict[str, WatcherRun] = {}
        self._supervisor: Supervisor | None = None
        self._retired: list[WatcherThread | WatcherPool | Dispatcher] = []
        """Drivers a reload replaced that had not ended yet: stop still waits for them."""
        self._listeners: list[Callable[[list[Alert]], None]] = []
        self._lock = threading.Lock()
        self._started = False
        self._companions: list[Companion] = []
        self._stopped_clean = True
        self._reload_lock = threading.Lock()
        self.loaded_at = time.time()
        """When the running config was loaded (start, or the last reload that applied)."""

    @classmethod
    def from_config(cls, path: str | Path | Config, state: str | Path | None = None) -> Keeper:
        """Build a keeper from an agent config file (or an already loaded Config)."""
        config = path if isinstance(path, Config) else load_config(path)
        notifiers, watchers = build_from_config(config)
        return cls(
            state=state or config.keeper.state,
            notify=notifiers,
            shutdown_timeout=config.keeper.shutdown_timeout,
            watchers=watchers,
        )

    # -- adding watchers ----------------------------------------------------------------------

    def add(self, watcher: Watcher | WatcherConfig) -> Watcher:
        """Add a watcher (or build one from its config); before ``start()`` only."""
        if getattr(self, "_started", False):
            raise RuntimeError("add watchers before keeper.start()")
        if isinstance(watcher, WatcherConfig):
            watcher = build_watcher(watcher)
        if any(w.name == watcher.name for w in self.watchers):
            raise ConfigError(f"watcher name {watcher.name!r} is used twice; names must be unique")
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
            store = Store(self.state_path)
            try:
                store.claim()
                supervisor = Supervisor(store, self.notifiers, self.routes, self._committed)
                for notifier in self.notifiers:
                    supervisor.watch_driver(Dispatcher(notifier, store))
                self._runs = {
                    w.name: WatcherRun(w, store, self.routes, self._committed)
                    for w in self.watchers
                }
                for driver in _drivers(list(self._runs.values())):
                    supervisor.watch_driver(driver)
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
            for driver in supervisor.drivers("dispatcher", "watcher", "pool"):
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
            "keeper started: %d watchers, %d notifiers, state %s",
            len(self.watchers),
            len(self.notifiers),
            self.state_path,
        )
        return self

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
        retired = self._retired
        watching: list[WatcherThread | WatcherPool] = supervisor.drivers("watcher", "pool")
        watching += [d for d in retired if not isinstance(d, Dispatcher)]
        dispatchers: list[Dispatcher] = supervisor.drivers("dispatcher")
        dispatchers += [d for d in retired if isinstance(d, Dispatcher)]
        for driver in watching:
            driver.stop()
        # Watchers get half the budget to finish a check in progress (and commit its alerts).
        half = time.monotonic() + budget / 2
        for driver in watching:
            if driver is not me:
                driver.join(max(0.0, half - time.monotonic()))
            if isinstance(driver, WatcherThread) and not driver.is_alive():
                _close_crashed(driver)
        wall_deadline = time.time() + max(0.0, deadline - time.monotonic())
        for dispatcher in dispatchers:
            dispatcher.flush(wall_deadline, at_exit=at_exit)
        for dispatcher in dispatchers:
            if dispatcher.is_alive():
                dispatcher.join(max(0.0, deadline - time.monotonic()))
        drivers = [*watching, *dispatchers, supervisor]
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

    def reload(self, config: Config, timeout: float = 30.0) -> ReloadPlan:
        """Run ``config`` from now on, without a restart; return what changed.

        The whole config is built first: if anything in it is wrong, ConfigError is raised and
        nothing changed. Then watchers added start, removed ones stop (their stored state stays,
        for history), changed ones stop and start again from their stored checkpoint, and
        notifiers are swapped by name, their pending deliveries kept. A part stops before its
        replacement starts, so no check runs twice at once and nothing is produced twice; a
        watcher whose check does not end within ``timeout`` is left stopping and not replaced
        (RuntimeError says which). The dashboard's address and token need a restart.
        """
        notifiers, watchers = build_from_config(config)
        _unique([n.name for n in notifiers], "notifier")
        with self._reload_lock:
            store = self.store
            if not self._started or store is None:
                _close_all(notifiers, watchers)
                raise RuntimeError("reload a running keeper; build a new one instead")
            changes = plan((self.watchers, watchers), (self.notifiers, notifiers))
            self.shutdown_timeout = config.keeper.shutdown_timeout
            self.loaded_at = time.time()
            if changes.empty:
                _close_all(notifiers, watchers)
                return changes
            supervisor = self._supervisor
            assert supervisor is not None
            with supervisor.holding():  # no restart swaps a driver under the reload's feet
                stuck = self._swap_watchers(changes, watchers, store, timeout)
                self._swap_notifiers(changes, notifiers, store, timeout)
        for line in changes.describe():
            log.info("reload: %s", line)
        if stuck:
            raise RuntimeError(f"reload: still stopping, not restarted: {', '.join(stuck)}")
        return changes

    def _swap_watchers(
        self, changes: ReloadPlan, watchers: list[Watcher], store: Store, timeout: float
    ) -> list[str]:
        """Stop the drivers the plan touches, start their replacements; return the stuck."""
        pooled = changes.pools
        restart = changes.watchers.stopping | {w.name for w in self.watchers if w.kind in pooled}
        supervisor = self._supervisor
        assert supervisor is not None
        running: list[WatcherThread | WatcherPool] = supervisor.drivers("watcher", "pool")
        ending = [d for d in running if any(r.name in restart for r in _runs_of(d))]
        for driver in ending:
            supervisor.unwatch(driver)  # ending on purpose: not a crash to restart
            driver.stop()
        deadline = time.monotonic() + timeout
        for driver in ending:
            driver.join(max(0.0, deadline - time.monotonic()))
        stuck = {run.name for d in ending if d.is_alive() for run in _runs_of(d)}
        keep = {w.name: w for w in self.watchers if w.name not in restart}
        starting = changes.watchers.starting | {w.name for w in watchers if w.kind in pooled}
        fresh = {w.name: w for w in watchers if w.name in starting - stuck}
        for unused in watchers:
            if unused.name not in fresh:
                close_watcher(unused)
        self.watchers = [
            keep.get(w.name) or fresh[w.name] for w in watchers if w.name in keep | fresh
        ]
        runs = {n: WatcherRun(w, store, self.routes, self._committed) for n, w in fresh.items()}
        self._runs = {n: r for n, r in self._runs.items() if n in keep} | runs
        started = _drivers(list(runs.values()))
        self._retired += [d for d in ending if d.is_alive()]
        for driver in started:
            supervisor.watch_driver(driver)
        for driver in started:
            driver.start()
        return sorted(stuck)

    def _swap_notifiers(
        self, changes: ReloadPlan, notifiers: list[Notifier], store: Store, timeout: float
    ) -> None:
        """Replace the dispatchers of changed and removed notifiers; start the added ones."""
        stopping = changes.notifiers.stopping
        supervisor = self._supervisor
        assert supervisor is not None
        dispatchers: list[Dispatcher] = supervisor.drivers("dispatcher")
        ending = [d for d in dispatchers if d.notifier.name in stopping]
        for dispatcher in ending:
            supervisor.unwatch(dispatcher)  # ending on purpose: not a crash to restart
            dispatcher.flush(time.time())  # ends after the send in progress; the rest waits
        deadline = time.monotonic() + timeout
        for dispatcher in ending:
            dispatcher.join(max(0.0, deadline - time.monotonic()))
            dispatcher.notifier.close()
        starting = changes.notifiers.starting
        kept = {n.name: n for n in self.notifiers if n.name not in stopping}
        for unused in notifiers:
            if unused.name not in starting:
                unused.close()
        self.notifiers = [kept.get(n.name, n) for n in notifiers]
        supervisor.notifiers = list(self.notifiers)
        added = [Dispatcher(n, store) for n in self.notifiers if n.name in starting]
        self._retired += [d for d in ending if d.is_alive()]
        for dispatcher in added:
            supervisor.watch_driver(dispatcher)
            dispatcher.start()

    def healthy(self) -> bool:
        """The keeper runs, its supervisor too, and every thread it watches is alive, none of
        them waiting for a restart (systemd's watchdog asks: a crash loop ends in a restart of
        the whole process)."""
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

    def pause(self, name: str) -> None:
        """Pause a watcher (kept across restarts)."""
        run = self._run(name)
        assert self.store is not None
        self.store.set_paused(name, True)
        run.paused = True

    def resume(self, name: str) -> None:
        """Resume a paused watcher and check at once."""
        run = self._run(name)
        assert self.store is not None
        self.store.set_paused(name, False)
        run.paused = False
        run.wake()

    def mute(self, name: str, duration: float | str | None) -> None:
        """Record but do not deliver a watcher's alerts for a while (None: unmute)."""
        run = self._run(name)
        until = None if duration is None else time.time() + parse_duration(duration)
        assert self.store is not None
        self.store.set_muted_until(name, until)
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
        return self._supervisor.health()

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


def _close_crashed(thread: WatcherThread) -> None:
    """A watcher whose thread crashed is closed at stop (a stopped thread closes its own)."""
    if thread.failure is not None:
        close_watcher(thread.watcher_run.watcher)


def _runs_of(driver: WatcherThread | WatcherPool) -> list[WatcherRun]:
    return driver.runs if isinstance(driver, WatcherPool) else [driver.watcher_run]


def _close_all(notifiers: Sequence[Notifier], watchers: Sequence[Watcher]) -> None:
    """Close parts built for a reload that will not run."""
    for notifier in notifiers:
        notifier.close()
    for watcher in watchers:
        close_watcher(watcher)


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


def build_notifier(spec: NotifierSpec, where: str = "notify") -> Notifier:
    """A notifier from a dict (as in TOML), a validated config, or a ready instance."""
    if isinstance(spec, Notifier):
        return spec
    config = spec if isinstance(spec, NotifierConfig) else notifier_config(spec, where)
    assert config is not None
    return NOTIFIERS[config.kind](config)


def build_from_config(config: Config) -> tuple[list[Notifier], list[Watcher]]:
    """Every notifier and watcher of a config, or one ConfigError listing every problem.

    Building can fail beyond validation (a ``call`` that does not import, a notifier's library
    missing); each message names the file and the table, like validation errors do.
    """
    problems: list[str] = []
    notifiers: list[Notifier] = []
    watchers: list[Watcher] = []
    source = Path(config.source)
    if source.is_file():  # `call = "checks:fn"` may name a module next to the config file
        folder = str(source.resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
    for spec in config.notify:
        try:
            notifiers.append(build_notifier(spec))
        except ConfigError as exc:
            problems += [
                f"{config.source}: [[notify]] (name {spec.name!r}): {e}" for e in exc.errors
            ]
    for table in config.watchers:
        kind = table.table_kind or getattr(WATCHERS.for_model(type(table)), "kind", "?")
        try:
            watchers.append(build_watcher(table))
        except ConfigError as exc:
            where = f"{config.source}: [[{kind}]] (name {table.name!r})"
            problems += [f"{where}: {e}" for e in exc.errors]
    if problems:
        for built in notifiers:
            built.close()
        raise ConfigError(problems)
    return notifiers, watchers


def build_watcher(config: WatcherConfig) -> Watcher:
    """A watcher from its validated config: the class of its table's kind, else of its model."""
    kind = config.table_kind
    cls = WATCHERS[kind] if kind is not None else WATCHERS.for_model(type(config))
    if cls is None:
        raise ConfigError(f"no watcher kind takes a {type(config).__name__}")
    return cls(config)


def _unique(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{what} name {name!r} is used twice; give each a distinct name")
        seen.add(name)
