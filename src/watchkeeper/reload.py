"""What a reload changes: the plan that compares a running keeper's parts with a new config's.

A watcher or notifier is *the same* when its name, class and validated config are equal: it keeps
running untouched (its thread, its in-memory rule state, its open files). Otherwise it is
*removed*, *added*, or *changed* (same name, something else differs): a changed watcher is
stopped and started again from its stored checkpoint, which is what makes a reload lose nothing
and repeat nothing; a changed notifier's dispatcher is replaced, and its pending deliveries,
being rows of the outbox under its name, go out through the new one.

Watchers of a pooled kind (pages) share one pool per kind; a pool cannot swap members while it
runs, so any change among them restarts that kind's whole pool, every member from its checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from watchkeeper.errors import WatchkeeperError
from watchkeeper.notifiers import Notifier
from watchkeeper.watchers import Watcher


class ReloadBusy(WatchkeeperError):
    """An earlier reload still waits for an old part to end; nothing was changed."""


@dataclass(frozen=True)
class Changes:
    """Names added, removed and changed, between an old and a new set of parts."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def stopping(self) -> set[str]:
        """Names whose old part stops."""
        return {*self.removed, *self.changed}

    @property
    def starting(self) -> set[str]:
        """Names whose new part starts."""
        return {*self.added, *self.changed}

    def describe(self, noun: str) -> list[str]:
        """``added watcher 'x'``-style lines, sorted."""
        return [
            f"{verb} {noun} {name!r}"
            for verb, names in (("added", self.added), ("changed", self.changed))
            for name in sorted(names)
        ] + [f"removed {noun} {name!r}" for name in sorted(self.removed)]


def compare(old: Sequence[Watcher | Notifier], new: Sequence[Watcher | Notifier]) -> Changes:
    """Which names were added, removed or changed between ``old`` and ``new``."""
    before = {part.name: part for part in old}
    after = {part.name: part for part in new}
    changed = [
        name
        for name, part in after.items()
        if name in before
        and (type(part) is not type(before[name]) or part.config != before[name].config)
    ]
    return Changes(
        added=[name for name in after if name not in before],
        removed=[name for name in before if name not in after],
        changed=changed,
    )


@dataclass(frozen=True)
class ReloadPlan:
    """What :meth:`Keeper.reload` does: the watcher and notifier changes, and the pools to
    restart whole (kinds with a pooled watcher among the changes)."""

    watchers: Changes
    notifiers: Changes
    pools: set[str]

    @property
    def empty(self) -> bool:
        """Nothing to do: the new config runs as the old one did."""
        return not (self.watchers.stopping or self.watchers.starting or self.notifiers.stopping)

    def describe(self) -> list[str]:
        """One line per change, for the log and ``watchkeeper reload``."""
        return self.watchers.describe("watcher") + self.notifiers.describe("notifier")


def plan(
    watchers: tuple[Sequence[Watcher], Sequence[Watcher]],
    notifiers: tuple[Sequence[Notifier], Sequence[Notifier]],
) -> ReloadPlan:
    """The plan from (old, new) watchers and (old, new) notifiers."""
    watcher_changes = compare(*watchers)
    touched = watcher_changes.stopping | watcher_changes.starting
    pools = {w.kind for side in watchers for w in side if w.pool_size and w.name in touched}
    return ReloadPlan(watcher_changes, compare(*notifiers), pools)


class Part(Protocol):
    """A running part a handover waits for: a watcher thread, a pool or a dispatcher."""

    name: str

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


@dataclass
class Handover:
    """One swap: wait for the ``ending`` parts (told to stop), then start the new watchers and
    notifiers, close the old notifiers in ``closing`` and drop the runs named in ``replaces``.
    Each runs on a thread of its own, so one slow check delays only its own replacement."""

    label: str
    names: list[str]
    ending: Sequence[Part]
    watchers: list[Watcher]
    notifiers: list[Notifier]
    closing: list[Notifier]
    replaces: list[str]
    thread: threading.Thread | None = None

    def is_alive(self) -> bool:
        """Still waiting (or starting)."""
        return self.thread is not None and self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the handover to end."""
        if self.thread is not None:
            self.thread.join(timeout)


@dataclass
class Handovers:
    """The handovers of one reload, and its plan."""

    plan: ReloadPlan
    units: list[Handover] = field(default_factory=list)

    def add(self, unit: Handover) -> None:
        """One more swap."""
        self.units.append(unit)

    def __iter__(self) -> Iterator[Handover]:
        return iter(self.units)

    def waiting(self) -> set[str]:
        """Names whose handover has not ended."""
        return {name for unit in self.units if unit.is_alive() for name in unit.names}


@dataclass(frozen=True)
class ReloadResult:
    """What a reload changed, and the names still waiting for their old part to end."""

    plan: ReloadPlan
    waiting: list[str]

    def describe(self) -> list[str]:
        """One line per change, then what is still waiting (it completes by itself)."""
        lines = self.plan.describe()
        if self.waiting:
            names = ", ".join(repr(name) for name in self.waiting)
            lines.append(f"waiting for the check or send in progress to end: {names}")
        return lines
