"""Digests: many alerts as one message people can read, whose counts add up exactly.

A digest holds *groups* of alerts (by default one per watcher and fingerprint, so one per distinct
message): each group once, with its count, first and last time and up to
:data:`EXAMPLES` examples, the groups sorted by severity then count, at most :data:`MAX_GROUPS`
of them and one line for the rest ("N more groups (M alerts)"). Its size is bounded whatever the
storm (titles and bodies are cut), so a digest of a million alerts is as short as one of fifty
groups. The counts are exact: every alert in a digest is counted in exactly one group.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from watchkeeper.alerts import Alert, Severity
from watchkeeper.quantities import iso_utc

EXAMPLES = 3
"""Examples kept per group."""
MAX_GROUPS = 50
"""Groups shown in one message; the rest are counted on one line."""
MAX_BYTES = 90_000
"""A digest alert's JSON (what a webhook gets; an email holds less) stays under this: when long
titles in many scripts would pass it, fewer groups are shown and more are counted."""
TITLE_CHARS = 160
"""An example's title is cut to this many characters."""
BODY_CHARS = 400
"""The first example's body is cut to this many characters."""
GROUP_FIELDS = ("watcher", "fingerprint", "severity", "kind", "key", "status")
"""The alert fields ``group_by`` may name."""


@dataclass
class Group:
    """The alerts of one group that one message carries (delivery ids kept for the marks)."""

    key: tuple[str, ...]
    ids: list[int] = field(default_factory=list)
    severity: Severity = Severity.DEBUG
    first: float = 0.0
    last: float = 0.0
    examples: list[Alert] = field(default_factory=list)
    attempts: int = 0

    @property
    def count(self) -> int:
        """How many alerts the group holds."""
        return len(self.ids)

    def add(self, delivery_id: int, alert: Alert, attempts: int) -> None:
        """Count one more alert in the group."""
        if not self.ids or alert.created_at < self.first:
            self.first = alert.created_at
        if not self.ids or alert.created_at > self.last:
            self.last = alert.created_at
        self.ids.append(delivery_id)
        self.severity = max(self.severity, alert.severity)
        self.attempts = max(self.attempts, attempts)
        if len(self.examples) < EXAMPLES:
            self.examples.append(alert)

    def to_dict(self) -> dict[str, Any]:
        """The group as a webhook's JSON (and the digest alert's ``data``) carries it."""
        head = self.examples[0]
        return {
            "watcher": head.watcher,
            "fingerprint": head.fingerprint,
            "severity": str(self.severity),
            "count": self.count,
            "first": iso_utc(self.first),
            "last": iso_utc(self.last),
            "title": _cut(head.title, TITLE_CHARS),
            "examples": [
                {"id": a.id, "uid": a.uid, "title": _cut(a.title, TITLE_CHARS)}
                | {"created_at": iso_utc(a.created_at)}
                for a in self.examples
            ],
        }


def group_key(alert: Alert, group_by: Sequence[str]) -> tuple[str, ...]:
    """The values of the ``group_by`` fields of an alert (an empty ``group_by``: one group)."""
    return tuple(str(getattr(alert, name)) for name in group_by)


@dataclass
class Digest:
    """The groups one message carries, in the order it shows them."""

    groups: list[Group]

    def __post_init__(self) -> None:
        self.groups.sort(key=lambda g: (-g.severity, -g.count, g.first))

    @property
    def total(self) -> int:
        """Alerts in the message, over every group (shown or counted on the last line)."""
        return sum(g.count for g in self.groups)

    @property
    def ids(self) -> list[int]:
        """Every delivery the message stands for."""
        return [i for g in self.groups for i in g.ids]

    @property
    def single(self) -> Alert | None:
        """The one alert, when the message carries only one: it is then sent as itself."""
        if len(self.groups) == 1 and self.groups[0].count == 1:
            return self.groups[0].examples[0]
        return None

    def alert(self) -> Alert:
        """The digest as one alert: a count title, a readable body, the groups in ``data``.

        Its uid is derived from the deliveries it stands for, so a retried digest keeps its
        Message-ID and idempotency key. Its JSON stays under :data:`MAX_BYTES`.
        """
        shown = MAX_GROUPS
        while True:
            made = self._alert(shown)
            size = len(json.dumps(made.to_dict(), ensure_ascii=False).encode())
            if size <= MAX_BYTES or shown == 1:
                return made
            shown = max(1, shown * MAX_BYTES // size - 1)

    def _alert(self, shown_groups: int) -> Alert:
        shown, rest = self.groups[:shown_groups], self.groups[shown_groups:]
        top = shown[0]
        watchers = sorted({g.examples[0].watcher for g in self.groups})
        named = ", ".join(watchers[:3]) + (
            f" and {len(watchers) - 3} more" if len(watchers) > 3 else ""
        )
        total = self.total
        lines = [
            f"{total} alerts in {len(self.groups)} group{'s' if len(self.groups) > 1 else ''}, "
            f"{iso_utc(min(g.first for g in self.groups))} to "
            f"{iso_utc(max(g.last for g in self.groups))}.",
        ]
        for group in shown:
            lines.append("")
            lines.extend(_group_lines(group))
        if rest:
            lines += ["", f"{len(rest)} more groups ({sum(g.count for g in rest)} alerts)."]
        digest = hashlib.sha256(",".join(map(str, sorted(self.ids))).encode()).hexdigest()[:32]
        return Alert(
            watcher=named,  # at most three names: it goes in subjects
            kind="digest",
            severity=top.severity,
            title=_cut(f"{total} alerts: {top.examples[0].title}", TITLE_CHARS)
            if len(self.groups) == 1
            else f"{total} alerts in {len(self.groups)} groups",  # `watcher` names the watchers
            key="digest",
            body="\n".join(lines),
            data={
                "count": total,
                "groups": [g.to_dict() for g in shown],
                "more_groups": len(rest),
                "more_alerts": sum(g.count for g in rest),
            },
            created_at=max(g.last for g in self.groups),
            uid=digest,
        )


def _group_lines(group: Group) -> list[str]:
    head = group.examples[0]
    times = iso_utc(group.first)
    if group.count > 1:
        times = f"first {times}, last {iso_utc(group.last)}"
    lines = [
        f"[{str(group.severity).upper()}] {group.count} x {_cut(head.title, TITLE_CHARS)}",
        f"    {times}, watcher {head.watcher}",
    ]
    if head.body.strip() and head.body.strip() not in head.title:  # a log line's title holds it
        lines += ["    " + line for line in _cut(head.body, BODY_CHARS).splitlines()[:10]]
    others = group.examples[1:]
    if others:
        lines.append("    also:")
        lines += [f"      {_cut(a.title, TITLE_CHARS)}" for a in others]
    return lines


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
