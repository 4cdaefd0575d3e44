"""The rules, driven with a plain number for a clock: throttle, for_cycles, recovery, fail_after."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchkeeper.alerts import Alert, Observation, RuleEngine, Rules, Severity


class Clocked:
    """Feeds checks to a RuleEngine at chosen times, carrying the state like the runtime does."""

    def __init__(self, **rules: Any) -> None:
        self.engine = RuleEngine("w", "custom", Rules(**rules))
        self.state: dict[str, Any] = {}

    def check(self, now: float, *observations: Observation) -> list[Alert]:
        verdict = self.engine.evaluate(observations, self.state, now)
        self.state = verdict.state
        return verdict.alerts

    def fail(self, now: float, error: str = "boom") -> list[Alert]:
        verdict = self.engine.failed(error, self.state, now)
        self.state = verdict.state
        return verdict.alerts


HIGH = Observation("queue depth 106 > 100", severity="error", key="queue")


def test_condition_alerts_once_while_it_holds_then_recovers() -> None:
    rules = Clocked()
    assert [a.title for a in rules.check(0, HIGH)] == ["queue depth 106 > 100"]
    assert rules.check(10, HIGH) == []
    assert rules.check(20, HIGH) == []
    (recovery,) = rules.check(30)
    assert recovery.status == "resolved"
    assert recovery.severity is Severity.ERROR
    assert recovery.title == "queue: recovered (was: queue depth 106 > 100)"
    assert recovery.key == "queue"
    assert rules.check(40) == []


def test_a_recovery_is_titled_by_what_recovered() -> None:
    """Not "Recovered: <the firing title>": what it is about, then what it last was."""
    rules = Clocked()
    disk = Observation("disk full")
    later = Observation("queue depth 120 > 100", severity="error", key="queue")
    port = Observation(
        "127.0.0.1:22 (ssh) is closed, expected open", key="expect:22", subject="127.0.0.1:22 (ssh)"
    )
    alerts = rules.check(0, disk, HIGH, port) + rules.check(1, disk, later, port) + rules.check(2)
    titles = sorted(a.title for a in alerts if a.status == "resolved")
    assert titles == [
        "127.0.0.1:22 (ssh): recovered (was: 127.0.0.1:22 (ssh) is closed, expected open)",
        "disk full: recovered",
        "queue: recovered (was: queue depth 120 > 100)",
    ]


def test_recovery_can_be_turned_off() -> None:
    rules = Clocked(recovery=False)
    assert len(rules.check(0, HIGH)) == 1
    assert rules.check(1) == []
    assert len(rules.check(2, HIGH)) == 1  # a new episode alerts again


def test_for_cycles_needs_consecutive_checks() -> None:
    rules = Clocked(for_cycles=3)
    assert rules.check(0, HIGH) == []
    assert rules.check(1, HIGH) == []
    assert rules.check(2) == []  # the streak breaks, nothing was sent, so no recovery either
    assert rules.check(3, HIGH) == []
    assert rules.check(4, HIGH) == []
    assert len(rules.check(5, HIGH)) == 1
    assert rules.check(6, HIGH) == []


def test_n_times_within_m_cycles() -> None:
    rules = Clocked(for_cycles=2, within_cycles=4)
    assert rules.check(0, HIGH) == []
    assert rules.check(1) == []
    assert rules.check(2) == []
    assert len(rules.check(3, HIGH)) == 1  # 2 of the last 4


def test_throttle_counts_repeats_and_reports_them_with_the_next_alert() -> None:
    rules = Clocked(throttle=60)
    event = Observation("disk error", key="disk", event=True)
    assert len(rules.check(0, event)) == 1
    assert rules.check(10, event, event) == []
    assert rules.check(59, event) == []
    (alert,) = rules.check(61, event)
    assert alert.data["suppressed"] == 3
    assert "3 more like this were suppressed" in alert.body
    (alert,) = rules.check(200, event)
    assert "suppressed" not in alert.data


def test_a_throttle_window_that_held_repeats_closes_with_a_summary() -> None:
    rules = Clocked(throttle=60)
    event = Observation("disk error", key="disk", severity="error", event=True)
    assert len(rules.check(0, event)) == 1
    assert rules.check(10, event, event) == []
    assert rules.check(30) == []
    (summary,) = rules.check(70)  # the key never came back: the count is not lost
    assert summary.title == "disk error (repeated 2 more times)"
    assert summary.severity is Severity.ERROR
    assert summary.data == {"suppressed": 2, "summary": True}
    assert rules.state["throttle"] == {}
    assert rules.check(80) == []


def test_throttle_state_stays_small_with_many_keys() -> None:
    rules = Clocked(throttle=60)
    for t in range(0, 5000, 10):
        rules.check(t, *[Observation(f"k{t}-{i}", event=True) for i in range(10)])
    assert len(rules.state["throttle"]) <= 60


def test_throttle_is_per_key() -> None:
    rules = Clocked(throttle=60)
    a = Observation("a", event=True)
    b = Observation("b", event=True)
    assert len(rules.check(0, a, b)) == 2
    assert rules.check(1, a, b) == []


def test_events_without_throttle_alert_every_time() -> None:
    rules = Clocked()
    event = Observation("line matched", event=True)
    assert len(rules.check(0, event, event)) == 2


def test_throttle_holds_back_a_flapping_condition() -> None:
    rules = Clocked(throttle=300)
    assert len(rules.check(0, HIGH)) == 1
    assert len(rules.check(10)) == 1  # recovery
    assert rules.check(20, HIGH) == []  # flapped back within the window: counted, not sent
    assert rules.check(30) == []  # its recovery is not sent either: its alert never was
    (again,) = rules.check(400, HIGH)
    assert again.data["suppressed"] == 1


def test_remind_while_a_condition_holds() -> None:
    rules = Clocked(remind=100)
    assert len(rules.check(0, HIGH)) == 1
    assert rules.check(50, HIGH) == []
    (reminder,) = rules.check(100, HIGH)
    assert reminder.data["reminder"] is True
    assert "Still true, for 1m40s" in reminder.body
    assert rules.check(150, HIGH) == []
    assert len(rules.check(200, HIGH)) == 1


def test_fail_after_alerts_once_and_recovers() -> None:
    rules = Clocked(fail_after=3)
    assert rules.fail(0) == []
    assert rules.fail(1) == []
    (alert,) = rules.fail(2, "ConnectionError: refused")
    assert alert.title == "check failing: ConnectionError: refused"
    assert alert.severity is Severity.ERROR
    assert rules.fail(3) == []
    assert rules.fail(4) == []
    (recovery,) = rules.check(5)
    assert recovery.status == "resolved"
    assert recovery.title == "check passes again (was: boom)"
    assert recovery.key == alert.key
    assert rules.check(6) == []


def test_failures_below_fail_after_reset_on_success() -> None:
    rules = Clocked(fail_after=2)
    assert rules.fail(0) == []
    assert rules.check(1) == []
    assert rules.fail(2) == []  # the count started again
    assert len(rules.fail(3)) == 1


def test_a_failed_check_keeps_conditions_firing() -> None:
    rules = Clocked(fail_after=5)
    assert len(rules.check(0, HIGH)) == 1
    rules.fail(1)
    assert rules.check(2, HIGH) == []  # still the same episode


def test_state_survives_a_json_round_trip() -> None:
    """The runtime stores the state as JSON; a restart must continue the same episode."""
    import json

    rules = Clocked(for_cycles=2, throttle=60)
    rules.check(0, HIGH)
    rules.check(1, HIGH)
    rules.state = json.loads(json.dumps(rules.state))
    assert rules.check(2, HIGH) == []
    assert len(rules.check(3)) == 1


def test_rules_validation() -> None:
    with pytest.raises(ValueError, match="within_cycles must be at least for_cycles"):
        Rules(for_cycles=3, within_cycles=2)
    with pytest.raises(ValueError, match="longer than 0s"):
        Rules(throttle="0s")
    assert Rules(throttle="5m").throttle == 300


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 4))
def test_firing_and_recovery_alternate(pattern: list[bool], for_cycles: int) -> None:
    """Whatever the sequence, alerts alternate firing/resolved, starting with firing."""
    rules = Clocked(for_cycles=for_cycles)
    statuses = []
    for t, present in enumerate(pattern):
        statuses += [a.status for a in rules.check(t, *([HIGH] if present else []))]
    assert statuses == ["firing", "resolved"] * (len(statuses) // 2) + ["firing"] * (
        len(statuses) % 2
    )


def test_severity_parsing() -> None:
    assert Severity.parse("WARN") is Severity.WARNING
    assert Severity.parse("critical") > Severity.parse("error")
    with pytest.raises(ValueError, match="unknown severity 'loud'"):
        Severity.parse("loud")
