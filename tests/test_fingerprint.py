"""Fingerprints: real-looking log lines, masked to their shape, the same in every process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_rules import Clocked
from watchkeeper.alerts import Alert, Observation, RuleEngine, Rules, Severity
from watchkeeper.fingerprint import of_key, of_line, shape


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "2026-11-30T16:04:53.123Z ERROR user 4711 timed out after 30s on 10.0.0.12:8080",
            "<time> ERROR user <num> timed out after <num> on <ip>",
        ),
        (
            "Nov 30 16:04:53 web1 sshd[1234]: Failed password for root from 192.168.1.5 port 52311",
            "<time> web1 sshd[<num>]: Failed password for root from <ip> port <num>",
        ),
        (
            'CRITICAL request 550e8400-e29b-41d4-a716-446655440000 failed: "connection reset" '
            "in /srv/app/db.py line 88",
            "CRITICAL request <uuid> failed: <str> in <path> line <num>",
        ),
        ("ERROR disk full on /var (98%)", "ERROR disk full on <path> (<num>)"),
        ("segfault at 0x7f3a2b1c, build deadbeefcafe1234", "segfault at <hex>, build <hex>"),
        ("GET https://shop.example.com/cart?id=9 took 512ms", "GET <url> took <num>"),
        (
            "mail to bob@example.com bounced from fe80::1ff:fe23:4567:890a",
            "mail to <email> bounced from <ip>",
        ),
        ("worker-3 crashed: 'queue.put' raised", "worker-<num> crashed: <str> raised"),
        ("std::vector overflow :: 12 items", "std::vector overflow :: <num> items"),
    ],
)
def test_shapes_of_real_looking_lines(line: str, expected: str) -> None:
    assert shape(line) == expected


def test_lines_alike_but_for_their_values_share_a_fingerprint_others_do_not() -> None:
    a = of_line("12:00:01 ERROR db timeout after 31 ms on host 7")
    b = of_line("12:00:09 ERROR db timeout after 2048 ms on host 12")
    c = of_line("12:00:09 ERROR disk full on host 12")
    assert a == b
    assert a != c
    assert of_line("worker2 stalled") == of_line("worker7 stalled")  # digits in words alike
    assert of_line("request 9f3c2a1b7e failed") == of_line("request 0a1b2c3d4e failed")
    assert of_key("k") != of_line("k")  # a key and a line never collide by construction


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=3, max_size=3))
def test_numbers_never_change_a_fingerprint(values: list[int]) -> None:
    x, y, z = values
    line = f"CRITICAL payment {x} failed after {y} ms (attempt {z})"
    assert of_line(line) == of_line("CRITICAL payment 1 failed after 2 ms (attempt 3)")


def test_a_fingerprint_is_the_same_in_another_process() -> None:
    line = "2026-11-30 10:00:00 ERROR user 42 timed out"
    code = f"from watchkeeper.fingerprint import of_line; print(of_line({line!r}))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == of_line(line)


def test_alerts_without_a_shape_are_fingerprinted_by_their_key() -> None:
    alert = Alert(watcher="w", kind="custom", severity=Severity.ERROR, title="t 1", key="disk")
    assert alert.fingerprint == of_key("disk")
    assert alert.to_dict()["fingerprint"] == alert.fingerprint


def shaped(**rules: float) -> Clocked:
    clocked = Clocked(**rules)
    clocked.engine = RuleEngine("app", "log", Rules(**rules), shape_titles=True)
    return clocked


def line(text: str) -> Observation:
    return Observation(f"app: {text}", severity="critical", key="CRITICAL", event=True)


def test_throttle_counts_per_message_so_two_errors_are_never_merged() -> None:
    rules = shaped(throttle=60)
    first = rules.check(0, line("CRITICAL db timeout after 3 ms"), line("CRITICAL disk full"))
    assert [a.title for a in first] == [
        "app: CRITICAL db timeout after 3 ms",
        "app: CRITICAL disk full",
    ]
    assert first[0].fingerprint != first[1].fingerprint
    flood = [line(f"CRITICAL db timeout after {n} ms") for n in range(1000)]
    assert rules.check(10, *flood) == []  # the same message, counted
    (other,) = rules.check(20, line("CRITICAL out of memory in worker 4"))  # a new one: sent
    assert other.title == "app: CRITICAL out of memory in worker 4"
    summaries = rules.check(70)
    (summary,) = [a for a in summaries if a.data.get("summary")]
    # The summary names the message it counted, not another one of the same rule.
    assert summary.title == "app: CRITICAL db timeout after 3 ms (repeated 1000 more times)"
    assert summary.fingerprint == first[0].fingerprint
    assert summary.key == "CRITICAL"
