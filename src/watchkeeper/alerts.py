"""Observations, alerts, and the rules that turn one into the other.

A watcher's check returns *observations*. The rules decide which of them become *alerts*:

- An observation is either an **event** (a log line matched, an item appeared, a port opened:
  every occurrence counts) or a **condition** (a queue is too deep: it holds for as long as the
  check keeps returning it). Conditions alert once when they start, Monit-style after
  ``for_cycles`` consecutive checks (or ``for_cycles`` of the last ``within_cycles``), may
  ``remind`` while they hold, and send a *recovery* (status ``resolved``) when they stop.
- ``throttle``: repeats of one key within the window are counted, not sent; the count rides
  along with the next alert for that key.
- ``fail_after``: a check that raises that many times in a row produces one health alert, and a
  recovery when it passes again.

The rules are a pure function of (observations, previous rule state, now). The rule state is a
JSON document stored with the watcher's checkpoint and committed in the same transaction as the
alerts, so a crash and restart neither forgets a firing condition nor repeats its alert; and tests
drive the rules with a plain number for a clock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from watchkeeper.quantities import format_duration, iso_utc
from watchkeeper.units import Duration

HEALTH_KEY = "__health__"


class Severity(IntEnum):
    """Ordered severities; a notifier's ``min_severity`` compares with these."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        """Accept ``"warning"``, ``"WARNING"``, ``"warn"``, ``30`` or a Severity."""
        if isinstance(value, Severity):
            return value
        if isinstance(value, int):
            return cls(value)
        name = str(value).strip().upper()
        name = {"WARN": "WARNING", "ERR": "ERROR", "CRIT": "CRITICAL", "FATAL": "CRITICAL"}.get(
            name, name
        )
        try:
            return cls[name]
        except KeyError:
            choices = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {value!r}; choose one of {choices}") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Observation:
    """What a check saw. Return one, a list, or None (nothing to report) from a check.

    ``key`` identifies the thing observed (defaults to the title): it is what dedup, throttle and
    recovery track. ``event=True`` makes every occurrence its own alert; the default treats the
    observation as a condition that holds while the check keeps returning it. ``subject`` names
    what the condition is about for people, in its recovery's title (``"queue: recovered (was:
    queue depth 106 > 100)"``); it defaults to the key when one is given, else the title.
    """

    title: str
    severity: Severity | str = Severity.WARNING
    key: str | None = None
    body: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    event: bool = False
    subject: str | None = None

    def __post_init__(self) -> None:
        Severity.parse(self.severity)  # fail in the check that made it, not later

    @property
    def identity(self) -> str:
        """The key rules track this observation by."""
        return self.key if self.key is not None else self.title

    @property
    def about(self) -> str:
        """What a recovery says recovered: the subject, else the key, else the title."""
        return self.subject or self.identity

    @property
    def level(self) -> Severity:
        """The severity as a Severity, whatever form it was given in."""
        return Severity.parse(self.severity)


AlertStatus = Literal["firing", "resolved"]


@dataclass
class Alert:
    """One alert as stored in the outbox and handed to notifiers.

    ``uid`` is globally unique and stable: notifiers derive Message-IDs and idempotency keys from
    it, so a receiver can drop the rare repeat that at-least-once delivery allows. ``id`` is the
    store's sequence number (set once committed): ``follow`` and the API resume from it.
    """

    watcher: str
    kind: str
    severity: Severity
    title: str
    key: str
    body: str = ""
    status: AlertStatus = "firing"
    data: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by jsonl, webhooks, the API and the stream."""
        return {
            "id": self.id,
            "uid": self.uid,
            "watcher": self.watcher,
            "kind": self.kind,
            "severity": str(self.severity),
            "status": self.status,
            "key": self.key,
            "title": self.title,
            "body": self.body,
            "created_at": iso_utc(self.created_at),
            "data": self.data,
        }


class Rules(BaseModel):
    """The alerting rules every watcher accepts, in its config table or as keyword arguments."""

    model_config = ConfigDict(extra="forbid")

    throttle: Duration | None = Field(
        default=None, description="Repeats of one key within this window are counted, not sent."
    )
    for_cycles: int = Field(
        default=1, ge=1, description="A condition must hold this many checks before it alerts."
    )
    within_cycles: int | None = Field(
        default=None,
        ge=1,
        description="With for_cycles: alert when it held for_cycles times in the last "
        "within_cycles checks (Monit's 'N times within M cycles').",
    )
    recovery: bool = Field(default=True, description="Send a recovery when a condition stops.")
    remind: Duration | None = Field(
        default=None, description="Alert again this often while a condition holds."
    )
    fail_after: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed checks before a health alert (once; recovery follows).",
    )

    @field_validator("throttle", "remind")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _window_holds_count(self) -> Self:
        if self.within_cycles is not None and self.within_cycles < self.for_cycles:
            raise ValueError("within_cycles must be at least for_cycles")
        return self


RULE_FIELDS = frozenset(Rules.model_fields)


@dataclass
class Verdict:
    """What the rules made of one check: alerts to commit and the rule state to commit with them."""

    alerts: list[Alert]
    state: dict[str, Any]


class RuleEngine:
    """Applies one watcher's :class:`Rules`. Stateless: the state is passed in and returned."""

    def __init__(self, watcher: str, kind: str, rules: Rules) -> None:
        self.watcher = watcher
        self.kind = kind
        self.rules = rules

    def evaluate(
        self, observations: Iterable[Observation], state: Mapping[str, Any] | None, now: float
    ) -> Verdict:
        """Rules for a check that passed, returning these observations."""
        st = _copy_state(state)
        alerts: list[Alert] = []
        health = st["health"]
        if health.get("alerted") and self.rules.recovery:
            alerts.append(
                self._alert(
                    HEALTH_KEY,
                    Severity.parse(health.get("severity", "error")),
                    "check passes again"
                    + (
                        f" (was: {first_line(health['last_error'])})"
                        if health.get("last_error")
                        else ""
                    ),
                    f"The check passes again after {health.get('failures', 0)} failures.",
                    now,
                    status="resolved",
                )
            )
        st["health"] = {}
        conditions: dict[str, Observation] = {}
        for obs in observations:
            if obs.event:
                alert = self._throttled(st, obs, now)
                if alert is not None:
                    alerts.append(alert)
            else:
                conditions[obs.identity] = obs
        alerts.extend(self._conditions(st, conditions, now))
        alerts.extend(self._expired_throttles(st, now))
        return Verdict(alerts, st)

    def failed(
        self, error: str, state: Mapping[str, Any] | None, now: float, detail: str = ""
    ) -> Verdict:
        """Rules for a check that raised: count it, and alert once at ``fail_after``.

        ``error`` is the one-line summary (the title); ``detail`` the traceback (the body).
        """
        st = _copy_state(state)
        health = st["health"]
        health["failures"] = int(health.get("failures", 0)) + 1
        health["last_error"] = error
        alerts = []
        if health["failures"] >= self.rules.fail_after and not health.get("alerted"):
            health["alerted"] = True
            health["severity"] = "error"
            alerts.append(
                self._alert(
                    HEALTH_KEY,
                    Severity.ERROR,
                    f"check failing: {first_line(error)}",
                    f"The check failed {health['failures']} times in a row.\n\n{detail or error}",
                    now,
                )
            )
        return Verdict(alerts, st)

    def _throttled(self, st: dict[str, Any], obs: Observation, now: float) -> Alert | None:
        """One alert for an event, unless the key is inside its throttle window."""
        key = obs.identity
        window = self.rules.throttle
        slot = st["throttle"].get(key)
        if window is not None and slot is not None and now - slot["last_sent"] < window:
            slot["suppressed"] += 1
            return None
        suppressed = slot["suppressed"] if slot else 0
        if window is not None:
            st["throttle"][key] = {
                "last_sent": now,
                "suppressed": 0,
                "title": obs.title,
                "severity": str(obs.level),
            }
        alert = self._from_observation(obs, now)
        if suppressed:
            alert.data["suppressed"] = suppressed
            alert.body = (
                f"{alert.body}\n\n" if alert.body else ""
            ) + f"({suppressed} more like this were suppressed by the throttle.)"
        return alert

    def _expired_throttles(self, st: dict[str, Any], now: float) -> list[Alert]:
        """Close throttle windows that have passed.

        A window that held back repeats, and whose key has not alerted again since, ends with one
        summary alert carrying the count, so no count is lost; then its slot is dropped, which
        keeps the rule state as small as the keys alerting within one window.
        """
        window = self.rules.throttle
        alerts = []
        for key, slot in list(st["throttle"].items()):
            if window is not None and now - slot["last_sent"] < window:
                continue
            if slot["suppressed"]:
                title = slot.get("title", key)
                alerts.append(
                    self._alert(
                        key,
                        Severity.parse(slot.get("severity", "warning")),
                        f"{title} (repeated {slot['suppressed']} more times)",
                        f"{slot['suppressed']} more like this were suppressed by the throttle "
                        f"in the {format_duration(now - slot['last_sent'])} after it was sent.",
                        now,
                        data={"suppressed": slot["suppressed"], "summary": True},
                    )
                )
            del st["throttle"][key]
        return alerts

    def _conditions(
        self, st: dict[str, Any], present: dict[str, Observation], now: float
    ) -> list[Alert]:
        rules = self.rules
        window = rules.within_cycles or rules.for_cycles
        alerts: list[Alert] = []
        conds: dict[str, Any] = st["conditions"]
        for key in list(dict.fromkeys([*conds, *present])):
            obs = present.get(key)
            cond = conds.setdefault(key, {"history": [], "firing": False, "notified": False})
            cond["history"] = [*cond["history"], obs is not None][-window:]
            if obs is not None:
                cond["title"] = obs.title
                cond["about"] = obs.about
                cond["severity"] = str(obs.level)
            if obs is not None and not cond["firing"]:
                if sum(cond["history"]) >= rules.for_cycles:
                    cond["firing"] = True
                    cond["since"] = now
                    alert = self._throttled(st, obs, now)
                    cond["notified"] = alert is not None
                    if alert is not None:
                        cond["last_sent"] = now
                        alerts.append(alert)
            elif obs is not None and cond["firing"]:
                due = rules.remind is not None and now - cond.get("last_sent", now) >= rules.remind
                if due:
                    alert = self._from_observation(obs, now)
                    alert.data["reminder"] = True
                    alert.data["since"] = iso_utc(cond["since"])
                    alert.body = (f"{alert.body}\n\n" if alert.body else "") + (
                        f"(Still true, for {format_duration(now - cond['since'])}.)"
                    )
                    cond["last_sent"] = now
                    cond["notified"] = True
                    alerts.append(alert)
            elif obs is None and cond["firing"]:
                if cond["notified"] and rules.recovery:
                    alerts.append(
                        self._alert(
                            key,
                            Severity.parse(cond["severity"]),
                            recovery_title(cond.get("about", key), cond["title"]),
                            f"No longer true after {format_duration(now - cond['since'])}.",
                            now,
                            status="resolved",
                        )
                    )
                cond.update(firing=False, notified=False)
            if not cond["firing"] and not any(cond["history"]):
                del conds[key]
        return alerts

    def _from_observation(self, obs: Observation, now: float) -> Alert:
        return self._alert(obs.identity, obs.level, obs.title, obs.body, now, data=dict(obs.data))

    def _alert(
        self,
        key: str,
        severity: Severity,
        title: str,
        body: str,
        now: float,
        *,
        status: AlertStatus = "firing",
        data: dict[str, Any] | None = None,
    ) -> Alert:
        return Alert(
            watcher=self.watcher,
            kind=self.kind,
            severity=severity,
            title=title,
            key=key,
            body=body,
            status=status,
            data=data or {},
            created_at=now,
        )


def recovery_title(about: str, title: str) -> str:
    """``queue: recovered (was: queue depth 106 > 100)``, or ``disk full: recovered``."""
    return f"{about}: recovered" if about == title else f"{about}: recovered (was: {title})"


def first_line(text: str) -> str:
    """The first non-empty line, for titles built from multi-line text such as tracebacks."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def _copy_state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep-enough copy so that a failed commit leaves the caller's state untouched."""
    src = state or {}
    return {
        "conditions": {k: dict(v) for k, v in src.get("conditions", {}).items()},
        "throttle": {k: dict(v) for k, v in src.get("throttle", {}).items()},
        "health": dict(src.get("health", {})),
    }
