"""The Watcher contract, its config base and the registry by kind (see registry.py).

A watcher is a *check* the runtime calls once per cycle, with the checkpoint it returned last
time (None on the very first run). The check returns observations plus the new checkpoint that
covers them; the runtime commits both, with the alerts the rules make, in one transaction. A
watcher therefore keeps no state of its own that the store does not also hold, which is what lets
a restart continue exactly where the last committed check ended.

A checkpoint may also have *parts* (see :attr:`Watcher.parted`): many small entries, one per
followed file say, committed one by one, so that a check that changed two of 10,000 writes two.

Watchers that learn about work from the OS (inotify for logs) override :meth:`Watcher.wait`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from watchkeeper.alerts import Observation, Rules
from watchkeeper.registry import Registry
from watchkeeper.units import Duration

MIN_EVERY = 0.01
"""The shortest ``every``: 100 checks a second per watcher is plenty; 1ns meant 10,000 commits."""


class WatcherConfig(Rules):
    """Settings every watcher has: a name, how often it checks, and the alerting rules."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Unique name; alerts and state are filed under it.")
    every: Duration = Field(default=60.0, description="Time between checks.")
    agent: str | None = Field(
        default=None,
        min_length=1,
        description="In a fleet: the one agent that runs this watcher (pinned). Default: log "
        "watchers are pinned to the agent whose config lists them, other kinds are shared "
        "(any live agent runs them, one at a time). See docs/fleet.md.",
    )

    @field_validator("every")
    @classmethod
    def _every_sane(cls, value: float) -> float:
        if value < MIN_EVERY:
            raise ValueError(
                f"must be at least {MIN_EVERY * 1000:.0f}ms: each check is a commit to the "
                "state file, and faster checking would only wear it out"
            )
        return value

    _table_kind: str | None = PrivateAttr(default=None)

    @property
    def table_kind(self) -> str | None:
        """The kind of the ``[[kind]]`` table (or keeper method) this was validated for.

        It picks the watcher class when two kinds share a config model (a third-party kind that
        reuses ``PageConfig``); a config built by hand has none, and goes by its model.
        """
        return self._table_kind

    def for_kind(self, kind: str) -> Self:
        """Record the kind this config was validated for (see :attr:`table_kind`)."""
        self._table_kind = kind
        return self


@dataclass
class CheckResult:
    """What one check produced: observations and the checkpoint that covers them."""

    observations: list[Observation] = field(default_factory=list)
    checkpoint: Any = None
    parts: dict[str, Any] | None = None
    """A parted watcher's changes to its parts: key -> new JSON value, or None to delete it."""


PARTS = "parts"
"""The key under which a parted watcher's check finds all its parts (read-only) in the
checkpoint it is given; its own checkpoint never holds that key."""


def apply_parts(parts: dict[str, Any], changes: dict[str, Any] | None) -> None:
    """Apply a check's changes to ``parts``, in place: only once they are committed (a commit
    that fails redoes the check from the parts as they were)."""
    for key, value in (changes or {}).items():
        if value is None:
            parts.pop(key, None)
        else:
            parts[key] = value


class Watcher(ABC):
    """One thing to keep watch over. Subclasses set ``kind`` and ``config_model``."""

    kind: ClassVar[str]
    config_model: ClassVar[type[WatcherConfig]]
    pool_size: ClassVar[int] = 0
    """0: each watcher of this kind runs on a thread of its own. N: all of them share a pool of
    at most N threads, for kinds that come in hundreds and whose checks are short waits on the
    network. Such a kind must not override :meth:`wait`; it plans with :meth:`next_delay`."""
    local: ClassVar[bool] = False
    """True when a check reads this host (log files): such a watcher is pinned to the agent whose
    config lists it, never shared across a fleet (another host has other files)."""
    shape_titles: ClassVar[bool] = False
    parted: ClassVar[bool] = False
    """The checkpoint has parts (see :class:`CheckResult`): the runtime loads them at start,
    hands them to each check under :data:`PARTS`, and commits only the parts a check changed,
    so that the cost of a commit follows what changed, not how much is kept."""
    """True when titles are free text with variable parts (log lines): alerts are then grouped
    and throttled by the title's shape (see :mod:`watchkeeper.fingerprint`), not by the key."""

    def __init__(self, config: WatcherConfig) -> None:
        self.config = config

    def warnings(self) -> list[str]:
        """Settings that load but deserve a second look; ``watchkeeper check`` prints them."""
        return []

    @property
    def name(self) -> str:
        """The configured name."""
        return self.config.name

    def owner(self, agent: str) -> str | None:
        """The agent that runs this watcher, given the agent asking (``[keeper] agent``); None
        when it is shared: any live agent may run it, one at a time, under a lease."""
        if self.config.agent is not None:
            return self.config.agent
        return agent if self.local else None

    def initial_checkpoint(self) -> Any:
        """The checkpoint to start from when the store has none, taken as the keeper starts.

        None (the default) lets the first check decide. A watcher that must not miss what
        happens between ``keeper.start()`` and its first check (which runs a moment later, on
        its own thread) records where it stands here instead.
        """
        return None

    @abstractmethod
    def check(self, checkpoint: Any) -> CheckResult:
        """Look once. Raise on failure: the runtime records it, backs off and retries."""

    def prepare(self, checkpoint: Any) -> None:
        """Pooled kinds: the waiting part of the next check (a fetch), done on a pool worker.

        The check itself then runs on the pool's one processing thread and uses what this kept;
        whatever went wrong here is kept too, for the check to raise. Must not raise. The
        default does nothing, and :meth:`check` must also work when this was not called.
        """

    def pool_slot(self) -> tuple[str, int] | None:
        """Pooled kinds: ``(key, limit)``, at most ``limit`` prepares with one key at once
        (pages: the host and ``max_per_host``). Runs past the limit wait in line without taking a
        worker, so one slow host cannot occupy the whole pool. None: no such limit."""
        return None

    def rest(self) -> float:
        """Pooled kinds: seconds before this watcher's source may be asked again (a host's
        Retry-After). A run that falls due sooner goes back to wait instead of being fetched."""
        return 0.0

    def first_delay(self) -> float:
        """Seconds to wait before the first check; watchers that come in hundreds stagger."""
        return 0.0

    def next_delay(self, delay: float) -> float:
        """Seconds until the next check, given the runtime's plan (``every`` or a backoff)."""
        return delay

    def wait(self, wake: threading.Event, timeout: float) -> None:
        """Block until the next check is due or ``wake`` is set (stop, check-now, resume)."""
        wake.wait(self.next_delay(timeout))

    def gathering(self) -> bool:
        """Whether changes it was told of wait for a check (a log watcher's ``linger``): the
        stop runs that check, so they alert now rather than at the next start."""
        return False

    def close(self) -> None:
        """Release files, sockets and clients. Called once, from the thread that ran the checks
        (for a pooled kind, the pool's last thread to end), before the keeper's stop returns."""


WATCHERS: Registry[type[Watcher]] = Registry(
    "watcher",
    {kind: f"watchkeeper.watchers.{kind}" for kind in ("custom", "log", "page", "ports")},
)
"""Kind -> watcher class; a built-in kind's module is imported when the kind is looked up."""

W = TypeVar("W", bound=type[Watcher])


def register(cls: W) -> W:
    """Class decorator: make a watcher available to config files as ``[[kind]]`` tables."""
    WATCHERS.register(cls)
    return cls
