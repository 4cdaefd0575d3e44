"""When a grouped notifier sends: Alertmanager's group_wait, group_interval, and a message cap.

A :class:`Grouper` holds a notifier's pending alerts in groups (by ``group_by``) and decides when
each group goes out, with a clock passed in (tests drive it with plain numbers):

- a group with no message in the last ``group_interval`` is *new*: it goes out ``group_wait``
  after its first alert (default 0: at once, so the first of a storm is never late);
- after a message, a group's next alerts wait until ``group_interval`` has passed since it, and
  then go out together, counted;
- a message carries every group that is due, and those due within :data:`ALIGN` of it, so groups
  that started together stay together instead of each sending on its own schedule;
- ``max_per_interval`` caps the messages in any ``group_interval``; groups wait for room.

A message that fails is retried as it was, with its id, after the dispatcher's backoff; alerts
that come meanwhile wait for the next one. Alerts stay pending in the store until their message
is sent: a crash loses no alert, and the next start groups them again.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass

from watchkeeper.notifiers.digest import Digest, Group, group_key
from watchkeeper.store import Delivery

ALIGN = 0.1
"""Groups due within this fraction of ``group_interval`` of a message (at most
:data:`ALIGN_CAP` seconds) go out with it."""
ALIGN_CAP = 10.0


@dataclass(frozen=True)
class GroupPolicy:
    """A notifier's grouping settings, in seconds."""

    group_by: tuple[str, ...]
    wait: float
    interval: float
    max_per_interval: int | None = None


class Grouper:
    """The pending alerts of one notifier in groups, and when each group is due."""

    def __init__(self, policy: GroupPolicy) -> None:
        self.policy = policy
        self.held: dict[tuple[str, ...], Group] = {}
        self._since: dict[tuple[str, ...], float] = {}  # when a held group's first alert came
        self._sent: dict[tuple[str, ...], float] = {}  # when each group last went out
        self._messages: collections.deque[float] = collections.deque()  # recent message times
        self.retrying: Digest | None = None  # a message that failed, to be sent again as it was
        self.retry_at: float | None = None

    def add(self, deliveries: Iterable[Delivery], now: float) -> None:
        """Hold newly pending alerts in their groups."""
        for delivery in deliveries:
            key = group_key(delivery.alert, self.policy.group_by)
            group = self.held.get(key)
            if group is None:
                group = self.held[key] = Group(key)
                self._since[key] = now
            group.add(delivery.id, delivery.alert, delivery.attempts)

    def _due(self, key: tuple[str, ...]) -> float:
        since = self._since[key] + self.policy.wait
        sent = self._sent.get(key)
        return since if sent is None else max(since, sent + self.policy.interval)

    def _room_at(self, now: float) -> float:
        """When the message cap lets the next message go (``now`` when it does already)."""
        cap = self.policy.max_per_interval
        while self._messages and self._messages[0] <= now - self.policy.interval:
            self._messages.popleft()
        if cap is None or len(self._messages) < cap:
            return now
        return self._messages[0] + self.policy.interval

    def due_at(self, now: float) -> float | None:
        """When the next message is due (None: nothing held)."""
        if self.retrying is not None:
            return self.retry_at
        if not self.held:
            return None
        due = min(self._due(k) for k in self.held)
        return max(due, self._room_at(now)) if due <= now else due

    def take(self, now: float, everything: bool = False) -> Digest | None:
        """The message due now, or None: a failed one to retry first, as it was (same alerts,
        same id), else the groups due (all held ones when ``everything``). They leave ``held``
        until :meth:`sent` or :meth:`failed` says how their message went."""
        if self.retrying is not None:
            if not everything and (self.retry_at or 0.0) > now:
                return None
            digest, self.retrying = self.retrying, None
            return digest
        if not everything:
            due = self.due_at(now)
            if due is None or due > now:
                return None
            align = min(self.policy.interval * ALIGN, ALIGN_CAP)
            keys = [k for k in self.held if self._due(k) <= now + align]
        else:
            keys = list(self.held)
        if not keys:
            return None
        return Digest([self.held.pop(k) for k in keys])

    def sent(self, digest: Digest, now: float) -> None:
        """The message went out: its groups start their interval now."""
        self.retry_at = None
        self._messages.append(now)
        for group in digest.groups:
            self._sent[group.key] = now
            self._settled(group.key)
        self._forget(now)

    def failed(self, digest: Digest, retry_at: float | None) -> None:
        """The message did not go out: it is retried as it was at ``retry_at`` (alerts that
        came since wait for the next message, so a receiver that did get it can tell a repeat
        by its id); None: given up, its groups are dropped."""
        self.retry_at = retry_at
        if retry_at is not None:
            self.retrying = digest
            return
        for group in digest.groups:
            self._settled(group.key)

    def _settled(self, key: tuple[str, ...]) -> None:
        """A group's message is done with: forget when it began, unless more are held."""
        if key not in self.held:
            self._since.pop(key, None)

    def _forget(self, now: float) -> None:
        """Drop the send times of groups quiet for a whole interval: they are new again."""
        quiet = now - self.policy.interval
        for key in [k for k, t in self._sent.items() if t <= quiet and k not in self.held]:
            del self._sent[key]
