"""The lease loop: which shared watchers this agent runs, in a fleet of agents on one store.

A watcher is pinned (it runs on one agent: log watchers on the host whose files they read) or
shared (page, ports, custom: any live agent may run it, one at a time). Every agent builds every
shared watcher of its config, parked; this loop, every ``lease/3``:

1. sends the agent's heartbeat (what it runs, for the fleet view);
2. renews the leases it holds; one it lost (it was paused past its lease, the database was out of
   reach) parks the watcher at once: its commit would be refused anyway (fencing);
3. spreads the shared watchers over the live agents: while it holds fewer than its share
   (:func:`fair_share`) it takes free or expired leases; while it holds more than its share plus
   :func:`slack`, it gives idle ones back, never one no other live agent offers (and it takes
   those whatever its share: nobody else would run them). Three agents on 300 watchers hold
   about 100 each; when one dies, the others take its watchers once its leases expire (on the
   database's clock, never an agent's);
4. holds the *single* leases it can get: a grouped notifier's, whose digests one agent builds.

A watcher taken over resumes from the store (:meth:`WatcherRun.adopt`). Each of its commits
passes the lease's fencing token, so an agent that lost the lease meanwhile commits nothing
(:class:`~watchkeeper.store.LeaseLost`, counted in ``leases_lost``). On SQLite, one agent, every
lease is granted: the same path degenerates to running everything.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from watchkeeper.errors import StoreError
from watchkeeper.runtime import GuardedThread, WatcherRun
from watchkeeper.store import LEASE, AgentRecord, Store

log = logging.getLogger("watchkeeper")


def slack(share: int) -> int:
    """Leases an agent may hold beyond its share before it gives some back: enough that agents
    do not hand watchers back and forth over a rounding, few enough to stay near even."""
    return max(1, share // 20)


def offers(agents: list[AgentRecord]) -> collections.Counter[str]:
    """How many of ``agents`` have each shared watcher in their config (their heartbeats say)."""
    capable: collections.Counter[str] = collections.Counter()
    for agent in agents:
        offered = agent.info.get("shared") if isinstance(agent.info, dict) else None
        if isinstance(offered, dict):
            capable.update(offered.keys())
    return capable


def fair_share(shared: list[str], capable: Mapping[str, int]) -> int:
    """How many of ``shared`` this agent should run: each counts 1 / the live agents that have
    it in their config (``capable``, from :func:`offers`), so agents with different configs
    still cover every watcher, and agents with one shared file split it evenly."""
    return math.ceil(sum(1 / max(1, capable.get(name, 0)) for name in shared) - 1e-9)


def lease_of(agent: AgentRecord, default: float) -> float:
    """The lease an agent's heartbeat says it runs with (``default`` when it does not say)."""
    own = agent.info.get("lease") if isinstance(agent.info, dict) else None
    return float(own) if isinstance(own, int | float) and own > 0 else default


def live(agents: list[AgentRecord], now: float, lease: float) -> list[AgentRecord]:
    """The agents running: not stopped, their last heartbeat younger than their lease (on the
    database clock)."""
    return [a for a in agents if a.alive(now, lease_of(a, lease))]


def digest(run: WatcherRun) -> str:
    """A short fingerprint of a watcher's settings: agents compare their shared watchers by it
    (secrets are masked in the dump, so they never leave the agent, and do not count)."""
    dumped = run.watcher.config.model_dump_json(exclude={"agent"})
    return hashlib.sha256(f"{run.watcher.kind}:{dumped}".encode()).hexdigest()[:12]


def shared_offer(
    names: list[str], digests: Mapping[str, str], sources: Mapping[str, str]
) -> dict[str, Any]:
    """What a heartbeat says of the shared watchers an agent may run, for the others' share
    (:func:`fair_share`) and their conflict check (:func:`conflicts`): ``shared`` {name:
    [digest, index into files]} and ``files``, each file named once (a fleet's thousands of
    watchers mostly come from one shared file)."""
    files: dict[str, int] = {}
    shared = {
        name: [digests.get(name, ""), files.setdefault(sources.get(name, ""), len(files))]
        for name in names
    }
    return {"shared": shared, "files": list(files)}


def conflicts(
    store: Store, agent: str, runs: Mapping[str, WatcherRun], sources: Mapping[str, str]
) -> list[str]:
    """Shared watchers that a live agent defines differently from this one, each named with
    both files: one name is one shared watcher across a fleet."""
    mine = {name: digest(run) for name, run in runs.items() if run.shared}
    now = store.db_now()
    found = []
    for other in live(store.agents(), now, LEASE):
        info = other.info if isinstance(other.info, dict) else {}
        offered = info.get("shared")
        if other.name == agent or not isinstance(offered, dict):
            continue
        files = info.get("files")
        for name, theirs in offered.items():
            if name in mine and isinstance(theirs, list) and theirs and theirs[0] != mine[name]:
                where = "its config"
                index = theirs[1] if len(theirs) > 1 else None
                if isinstance(files, list) and isinstance(index, int) and 0 <= index < len(files):
                    where = str(files[index])
                found.append(
                    f"{sources.get(name, 'this config')}: watcher {name!r} is defined "
                    f"differently on live agent {other.name!r} ({where}); one name is one "
                    "shared watcher in a fleet: make the tables the same, or rename one"
                )
    return found


class Fleet(GuardedThread):
    """This agent's heartbeat and leases, renewed every ``lease / 3`` (see the module doc)."""

    def __init__(
        self,
        store: Store,
        agent: str,
        lease: float,
        runs: Callable[[], Mapping[str, WatcherRun]],
        info: Callable[[], dict[str, Any]],
        singles: Callable[[], list[str]] = list,
    ) -> None:
        """``singles``: names of leases only one agent may hold, not spread (a grouped
        notifier's: its digests are made by one agent, see :meth:`holds`)."""
        super().__init__("watchkeeper:fleet")
        self.store = store
        self.agent = agent
        self.lease = lease
        self.runs = runs
        self.info = info
        self.singles = singles
        self.held: dict[str, int] = {}
        """Shared watcher -> the fencing token of its lease, held by this agent."""
        self.single: dict[str, int] = {}
        """A single lease's name -> its token, held by this agent."""
        self.renewed_at = time.monotonic()
        """When the leases were last renewed (or taken): past a lease ago they are surely gone."""
        self.error: str | None = None
        """Why the last round failed (the database out of reach), None when it went through."""
        self._stopping = threading.Event()
        self._winding_down = threading.Event()
        self._rounds = threading.Lock()  # the loop's and a reload's (see Keeper) one at a time

    @property
    def interval(self) -> float:
        """How often the heartbeat goes and the leases are renewed."""
        return self.lease / 3

    def stop(self) -> None:
        """End the loop after the round in progress (the leases are released by :meth:`leave`)."""
        self._stopping.set()

    def wind_down(self) -> None:
        """From the next round on, only renew what is held: the keeper is stopping, and its
        dispatchers' flush may outlast a lease. A grouped notifier's single lease that ran out
        meanwhile would let another agent group the alerts of the digest in flight again."""
        self._winding_down.set()

    def loop(self) -> None:
        """A round every :attr:`interval` until stopped; a store error is logged, not fatal."""
        while not self._stopping.wait(self.interval):
            self.round()

    def renewed(self) -> Fleet:
        """A new loop with this one's leases, started (the supervisor's restart after a crash)."""
        fleet = Fleet(self.store, self.agent, self.lease, self.runs, self.info, self.singles)
        fleet.held, fleet.single, fleet.renewed_at = self.held, self.single, self.renewed_at
        fleet.ended = self.ended
        fleet.start()
        return fleet

    def round(self) -> None:
        """Heartbeat, renew, spread; when the store cannot be reached, park what may be lost.

        Also called by a reload, so the watchers it starts run at once, not a round later.
        """
        with self._rounds:
            self._guarded_round()

    def _guarded_round(self) -> None:
        try:
            if not self.store.heartbeat(self.agent, self.info()):
                self._displaced()
                return
            self._round()
        except StoreError as exc:
            if self.error is None:
                log.warning("fleet: cannot reach the store; checks wait: %s", exc)
            self.error = str(exc)
            if time.monotonic() - self.renewed_at >= self.lease:
                self._drop_all()
                self.single.clear()  # their leases have expired: another agent may run them
            return
        if self.error is not None:
            log.info("fleet: the store answers again")
        self.error = None

    def _displaced(self) -> None:
        """Another run took this agent's name (this one was paused past its lease): its leases
        are that run's now, so park every shared watcher and take no lease from here on."""
        error = (
            f"agent name {self.agent!r} was taken by another run while this one was paused "
            "past its lease; this run takes no shared watcher: stop it"
        )
        if self.error != error:
            log.error("fleet: %s", error)
        self.error = error
        self._drop_all()
        self.single.clear()

    def _round(self) -> None:
        """Renew and spread, once the heartbeat went through (see the module doc)."""
        store = self.store
        started = time.monotonic()
        runs = self.runs()
        shared = {name: run for name, run in runs.items() if run.shared}
        for name, token in list(self.held.items()):
            run = shared.get(name)
            if run is None:  # a reload removed it
                self._let_go(name, token)
            elif run.fence != (self.agent, token):  # a commit found the lease gone
                del self.held[name]
        for name in store.renew_leases(self.held, self.agent, self.lease):
            log.warning("fleet: lost the lease of %s to another agent", name)
            _park(shared[name])
            del self.held[name]
        self._follow_controls(store, shared)
        winding_down = self._winding_down.is_set()
        self._singles(take=not winding_down)
        self.renewed_at = started
        if winding_down:
            return
        now = store.db_now()
        capable = offers(live(store.agents(), now, self.lease))
        share = fair_share(list(shared), capable)
        if len(self.held) > share + slack(share):
            self._shed(shared, len(self.held) - share, capable)
        own = any(capable[name] <= 1 and name not in self.held for name in shared)
        if len(self.held) < share or own:
            self._take(shared, share - len(self.held), now, capable)

    def _follow_controls(self, store: Store, shared: Mapping[str, WatcherRun]) -> None:
        """Take up a pause, resume or mute of a held watcher that was made on another agent's
        dashboard or CLI (it is written to the store): within a round, not at the next takeover.

        Compare-and-set: a run whose pause or mute changed here while the store was read was
        changed after that read (this agent's controls write the store first), so the value
        read is older than the run's and is not written over it."""
        if not self.held or not store.fleet_capable:  # one agent: its controls are its own
            return
        before = {
            name: (shared[name].paused, shared[name].muted_until)
            for name in self.held
            if name in shared
        }
        for name, stored in store.controls().items():
            run = shared.get(name)
            if run is None or name not in before:
                continue
            with run.lease_lock:
                if (run.paused, run.muted_until) != before[name]:
                    continue
                resumed = run.paused and not stored[0]
                run.paused, run.muted_until = stored
            if resumed:
                run.wake()

    def holds(self, name: str) -> bool:
        """True while this agent holds the single lease ``name``."""
        return name in self.single

    def _singles(self, take: bool) -> None:
        """Renew the single leases held, let go of those no longer wanted, try the others
        (when ``take``)."""
        wanted = set(self.singles())
        for name, token in list(self.single.items()):
            if name not in wanted:
                del self.single[name]
                self.store.release_lease(name, self.agent, token)
            elif not self.store.renew_lease(name, self.agent, token, self.lease):
                del self.single[name]
        for name in sorted(wanted - set(self.single)) if take else []:
            taken = self.store.take_lease(name, self.agent, self.lease)
            if taken is not None:
                self.single[name] = taken

    def _take(
        self, shared: Mapping[str, WatcherRun], wanted: int, now: float, capable: Mapping[str, int]
    ) -> None:
        """Take up to ``wanted`` free or expired leases, in random order (agents taking at the
        same moment then rarely race for the same ones); and, whatever the share, every free
        one no other live agent offers: nobody else would ever run it."""
        leases = {record.watcher: record for record in self.store.leases()}
        free = [
            name
            for name in shared
            if name not in self.held
            and (
                name not in leases
                or leases[name].expires_at <= now
                or leases[name].agent == self.agent  # ours from before a restart or a reload
            )
        ]
        random.shuffle(free)
        only_ours = [name for name in free if capable.get(name, 0) <= 1]
        others = [name for name in free if capable.get(name, 0) > 1]
        wanted = max(0, wanted - len(only_ours))
        chosen = [*only_ours, *others[:wanted]]
        for name, token in self.store.take_leases(chosen, self.agent, self.lease).items():
            previous = leases.get(name)  # released (agent None) by one shedding it, too
            from_other = (
                self.store.fleet_capable and previous is not None and previous.agent != self.agent
            )
            record = self.store.watcher(name)
            due = record.next_check if record is not None else None  # on the database's clock
            due_in = max(0.0, due - now) if from_other and due is not None else 0.0
            shared[name].adopt(record, (self.agent, token), due_in=due_in)
            self.held[name] = token
            shared[name].wake()
        self.renewed_at = time.monotonic()

    def _shed(
        self, shared: Mapping[str, WatcherRun], extra: int, capable: Mapping[str, int]
    ) -> None:
        """Give back ``extra`` leases of watchers not in a check (one in a check keeps its
        lease until a later round: its commit must not be refused for a move). Never one no
        other live agent offers (nobody would take it back); those most agents offer first
        (the likeliest to be taken at once, and not by one agent that is then over its share)."""
        going: dict[str, int] = {}
        movable = [name for name in self.held if capable.get(name, 0) > 1]
        for name in sorted(movable, key=lambda name: (-capable[name], name)):
            if len(going) >= extra:
                break
            if shared[name].release():
                going[name] = self.held.pop(name)
        self.store.release_leases(going, self.agent)

    def _let_go(self, name: str, token: int) -> None:
        del self.held[name]
        self.store.release_lease(name, self.agent, token)

    def _drop_all(self) -> None:
        """Park every shared watcher: this agent can no longer know it holds their leases."""
        runs = self.runs()
        for name in list(self.held):
            run = runs.get(name)
            if run is not None:
                _park(run)
        self.held.clear()

    def leave(self) -> None:
        """Release every lease held (a clean stop: the others take over at once, not after the
        lease); what cannot be released now expires by itself."""
        try:
            self.store.release_leases({**self.held, **self.single}, self.agent)
        except StoreError as exc:
            log.warning("fleet: cannot release the leases; they expire by themselves: %s", exc)
        self.held.clear()
        self.single.clear()

    def running(self) -> list[str]:
        """The watchers this agent runs now: its pinned ones and the shared ones it holds."""
        return sorted(name for name, run in self.runs().items() if not run.idle)


def _park(run: WatcherRun) -> None:
    """Park a run whose lease is gone even while its check is under way: that check's commit
    is refused by the fence, and nothing starts after it."""
    with run.lease_lock:
        run.fence = None
