"""Grouped notifications: Alertmanager's timing with a fake clock, exact digest counts over
random storms, bounded message sizes, and a real storm through a keeper to an SMTP server."""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import RecordingServer, wait_until
from watchkeeper import Keeper, Observation
from watchkeeper.alerts import Alert, Severity
from watchkeeper.build import build_notifier
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.grouping import ALIGN, Grouper, GroupPolicy
from watchkeeper.notifiers.digest import Digest
from watchkeeper.store import Delivery, Store

_ids = itertools.count(1)


def delivery(title: str, at: float, watcher: str = "app", severity: int = 50) -> Delivery:
    alert = Alert(
        watcher=watcher,
        kind="log",
        severity=Severity(severity),
        title=title,
        key="CRITICAL",
        created_at=at,
        fingerprint=title.split(" ", maxsplit=1)[0],
    )
    number = next(_ids)
    alert.id = number
    return Delivery(number, "mail", 0, alert)


def policy(**kw: Any) -> GroupPolicy:
    return GroupPolicy(
        **{"group_by": ("watcher", "fingerprint"), "wait": 0.0, "interval": 300.0, **kw}
    )


def test_a_new_group_goes_at_once_then_waits_its_interval() -> None:
    grouper = Grouper(policy())
    grouper.add([delivery("db 1", 0)], 0)
    first = grouper.take(0)
    assert first is not None
    assert first.single is not None
    grouper.sent(first, 0)
    for t in range(1, 300):
        grouper.add([delivery(f"db {t}", t)], t)
        assert grouper.take(t) is None
    assert grouper.due_at(299) == 300
    second = grouper.take(300)
    assert second is not None
    assert second.total == 299
    assert len(second.groups) == 1
    grouper.sent(second, 300)
    assert grouper.take(599) is None
    assert grouper.due_at(599) is None
    grouper.add([delivery("db again", 1000)], 1000)  # quiet for an interval: new again
    assert grouper.take(1000) is not None


def test_group_wait_collects_a_new_group_before_it_goes() -> None:
    grouper = Grouper(policy(wait=30.0))
    grouper.add([delivery("db 1", 0)], 0)
    grouper.add([delivery("db 2", 10), delivery("disk 1", 10)], 10)
    assert grouper.take(29) is None
    digest = grouper.take(30)  # db is due; disk (due at 40) is within the alignment: it joins
    assert digest is not None
    assert {g.key: g.count for g in digest.groups} == {("app", "db"): 2, ("app", "disk"): 1}


def test_groups_started_together_stay_together() -> None:
    grouper = Grouper(policy())
    for t, title in ((0.0, "db 1"), (0.2, "disk 1"), (0.4, "cpu 1")):
        grouper.add([delivery(title, t)], t)
        digest = grouper.take(t)
        assert digest is not None
        grouper.sent(digest, t)
    for t in range(1, 300):
        grouper.add([delivery(f"{w} {t}", t) for w in ("db", "disk", "cpu")], t)
    digest = grouper.take(300)  # db is due; disk and cpu, due 0.2 s and 0.4 s later, join it
    assert digest is not None
    assert digest.total == 3 * 299
    assert len(digest.groups) == 3


def test_max_per_interval_holds_messages_back() -> None:
    grouper = Grouper(policy(max_per_interval=2))
    sent = []
    for t in range(0, 600, 50):  # a new message each 50 s, each a group of its own
        grouper.add([delivery(f"m{t} x", t)], t)
        digest = grouper.take(t)
        if digest is not None:
            grouper.sent(digest, t)
            sent.append(t)
    assert sent == [0, 50, 300, 350]


def test_a_failed_message_is_retried_as_it_was_and_what_came_since_waits() -> None:
    grouper = Grouper(policy())
    grouper.add([delivery("db 1", 0), delivery("db 2", 0)], 0)
    digest = grouper.take(0)
    assert digest is not None
    grouper.failed(digest, retry_at=5.0)
    grouper.add([delivery("db 3", 1)], 1)
    assert grouper.take(4) is None
    again = grouper.take(5)
    assert again is digest  # the same alerts, so the same id: a receiver can drop a repeat
    assert again.alert().uid == digest.alert().uid
    grouper.sent(again, 5)
    assert grouper.take(6) is None  # "db 3" waits for the group's interval
    rest = grouper.take(305)
    assert rest is not None
    assert [a.title for a in rest.groups[0].examples] == ["db 3"]


events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2000, allow_nan=False),
        st.sampled_from(["db", "disk", "cpu", "net", "auth"]),
        st.sampled_from(["app", "web"]),
        st.sampled_from([30, 40, 50]),
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(
    storm=events,
    wait=st.sampled_from([0.0, 5.0, 30.0]),
    interval=st.sampled_from([60.0, 300.0]),
    cap=st.sampled_from([None, 1, 3]),
    fail_every=st.sampled_from([0, 3]),
)
def test_digest_counts_add_up_over_random_storms(
    storm: list[tuple[float, str, str, int]],
    wait: float,
    interval: float,
    cap: int | None,
    fail_every: int,
) -> None:
    """Every alert is counted in exactly one sent message, in its own group; no group is sent
    again before its interval (less the alignment); every message stays small."""
    grouper = Grouper(policy(wait=wait, interval=interval, max_per_interval=cap))
    storm = sorted(storm)
    made: dict[int, tuple[str, str]] = {}
    counted: collections.Counter[tuple[str, ...]] = collections.Counter()
    seen_ids: list[int] = []
    last_sent: dict[tuple[str, ...], float] = {}
    attempts = 0

    def send(digest: Digest, now: float) -> None:
        nonlocal attempts
        attempts += 1
        if fail_every and attempts % fail_every == 0:
            grouper.failed(digest, retry_at=now + 2.0)
            return
        message = digest.alert() if digest.single is None else digest.single
        assert len(json.dumps(message.to_dict()).encode()) < 100_000
        if digest.single is None:
            assert message.data["count"] == digest.total
            shown = sum(g["count"] for g in message.data["groups"])
            assert shown + message.data["more_alerts"] == digest.total
        for group in digest.groups:
            assert group.count == len(group.ids) > 0
            if group.key in last_sent:
                assert now - last_sent[group.key] >= interval * (1 - ALIGN) - 1e-6
            last_sent[group.key] = now
            counted[group.key] += group.count
            seen_ids.extend(group.ids)
        grouper.sent(digest, now)

    now = 0.0
    pending = collections.deque(storm)
    while pending or grouper.held or grouper.retrying is not None:
        due = grouper.due_at(now)
        arrival = pending[0][0] if pending else None
        if arrival is not None and (due is None or arrival <= due):
            now = max(now, arrival)
            while pending and pending[0][0] <= now:
                at, fp, watcher, severity = pending.popleft()
                made_now = delivery(f"{fp} {at}", at, watcher, severity)
                made[made_now.id] = (watcher, fp)
                grouper.add([made_now], now)
        else:
            assert due is not None
            now = max(now, due)
        digest = grouper.take(now)
        if digest is not None:
            send(digest, now)
    assert sorted(seen_ids) == sorted(made)  # each alert in exactly one sent message
    assert counted == collections.Counter(made.values())


def test_a_digest_of_many_groups_stays_under_100_kb_and_counts_the_rest() -> None:
    grouper = Grouper(policy(group_by=("fingerprint",)))
    huge = "é" * 5000
    for n in range(500):
        for k in range(n % 7 + 1):
            grouper.add([delivery(f"g{n} {huge} {k}", 0.0)], 0.0)
    digest = grouper.take(0.0)
    assert digest is not None
    message = digest.alert()
    assert len(json.dumps(message.to_dict(), ensure_ascii=False).encode()) < 100_000
    data = message.data
    assert data["count"] == digest.total == sum(n % 7 + 1 for n in range(500))
    assert len(data["groups"]) <= 50
    assert data["more_groups"] == 500 - len(data["groups"])
    assert sum(g["count"] for g in data["groups"]) + data["more_alerts"] == data["count"]
    counts = [g["count"] for g in data["groups"]]
    assert counts == sorted(counts, reverse=True)  # the biggest groups first (same severity)
    assert f"{data['more_groups']} more groups ({data['more_alerts']} alerts)" in message.body


def test_groups_are_sorted_by_severity_then_count() -> None:
    grouper = Grouper(policy())
    grouper.add([delivery("warn x", 0, severity=30)] * 1, 0)
    grouper.add([delivery(f"crit {i}", 0, severity=50) for i in range(2)], 0)
    grouper.add([delivery(f"err {i}", 0, severity=40) for i in range(5)], 0)
    grouper.add([delivery(f"crit2 {i}", 0, severity=50) for i in range(3)], 0)
    digest = grouper.take(0)
    assert digest is not None
    assert [g.key[1] for g in digest.groups] == ["crit2", "crit", "err", "warn"]


def test_group_by_must_name_an_alert_field() -> None:
    with pytest.raises(Exception, match="cannot group by 'host'"):
        build_notifier({"kind": "jsonl", "path": "x.jsonl", "group_by": ["host"]})


def counts_of(sink: SmtpSink) -> list[int]:
    return [int(m["X-Watchkeeper-Alerts"]) for m in sink.messages]


@pytest.mark.parametrize("lines", [3000])
def test_a_storm_reaches_people_as_a_few_digests_and_files_get_every_alert(
    tmp_path: Path, smtp_sink: SmtpSink, lines: int
) -> None:
    """A log storm of 3 distinct CRITICAL messages (numbers varying), default smtp notifier:
    the first email at once, a few digests in all, their counts adding up; jsonl gets each."""
    log = tmp_path / "app.log"
    log.write_text("")
    out = tmp_path / "all.jsonl"
    mail = {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": smtp_sink.port,
        "sender": "wk@example.com",
        "to": ["ops@example.com"],
    }
    keeper = Keeper(state=tmp_path / "wk.db", notify=[mail, {"kind": "jsonl", "path": str(out)}])
    keeper.log(log, [{"match": "CRITICAL", "severity": "critical"}], name="app", every="0.2s")
    messages = [
        "CRITICAL db timeout after {n} ms on db-{m}",
        "CRITICAL payment {n} declined by gateway 10.0.{m}.1",
        "CRITICAL worker {m} out of memory ({n} MB)",
    ]

    def write(numbers: range) -> None:
        with log.open("a") as handle:
            for i in numbers:
                handle.write(messages[i % 3].format(n=i * 7, m=i % 13) + "\n")

    def in_file() -> int:
        return len(out.read_text().splitlines()) if out.exists() else 0

    with keeper:
        wait_until(lambda: checked(keeper, "app"))
        write(range(3))  # the first of each message: out at once
        smtp_sink.wait_for(1, timeout=2)
        wait_until(lambda: sum(counts_of(smtp_sink)) == 3)
        first = len(smtp_sink.messages)
        write(range(3, lines))  # the storm: held for the groups' interval (5 minutes)
        wait_until(lambda: in_file() == lines, timeout=60)
        assert len(smtp_sink.messages) == first
    # Stopping sends what the groups held, as one digest.
    assert len(smtp_sink.messages) == first + 1
    assert sum(counts_of(smtp_sink)) == lines
    last = smtp_sink.messages[-1]
    body = last.get_content()
    assert f"{lines - 3} alerts in 3 groups" in body
    for shape in ("db timeout after", "payment", "out of memory"):
        assert shape in body
    assert len(last.as_bytes()) < 100_000
    titles = [json.loads(x)["title"] for x in out.read_text().splitlines()]
    assert len(titles) == len(set(titles)) == lines


def checked(keeper: Keeper, name: str) -> bool:
    """Whether the watcher's first check is committed (so it follows the file's end)."""
    record = keeper.store.watcher(name) if keeper.store is not None else None
    return record is not None and record.checks >= 1


def test_a_digest_that_fails_is_retried_as_it_was_and_nothing_is_counted_twice(
    tmp_path: Path, http_receiver: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook that answers 503: the digest stays pending, is retried with backoff under the
    same Idempotency-Key, and alerts that came meanwhile go in the next message, once."""
    monkeypatch.setattr("watchkeeper.runtime.RETRY_BASE", 0.05)
    http_receiver.status = 503
    batches = iter([10, 5])
    keeper = Keeper(
        state=tmp_path / "wk.db",
        notify=[{"kind": "webhook", "url": http_receiver.url, "group_by": ["watcher"]}],
    )
    keeper.every(
        0.05,
        lambda: [Observation(f"disk {i}", event=True) for i in range(next(batches, 0))],
        name="w",
    )
    with keeper:
        store = keeper.store
        assert store is not None
        http_receiver.wait_for(2)  # the first message failed, and its retry
        wait_until(lambda: store.delivery_counts().get("webhook", {}).get("pending") == 15)
        http_receiver.status = 200
        wait_until(lambda: store.delivery_counts()["webhook"] == {"sent": 10, "pending": 5})
    # Stopping sent the 5 that waited for the group's interval.
    with Store(tmp_path / "wk.db") as reopened:
        assert reopened.delivery_counts()["webhook"] == {"sent": 15}
    keys = [r.headers["Idempotency-Key"] for r in http_receiver.requests]
    first, last = http_receiver.requests[-2].json(), http_receiver.requests[-1].json()
    assert len(set(keys[:-1])) == 1  # every try of the first digest under one key
    assert first["data"]["count"] == 10
    assert last["data"]["count"] == 5
    assert keys[-1] != keys[0]
