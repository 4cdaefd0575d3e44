"""The Keeper end to end with custom watchers, real notifiers and real receivers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RecordingServer, read_jsonl, wait_until
from watchkeeper import (
    CheckResult,
    ConfigError,
    Keeper,
    Observation,
    StoreError,
    Watcher,
    WatcherConfig,
)
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.store import Store


def test_one_observation_reaches_smtp_jsonl_and_webhook_once(
    state: str | Path, tmp_path: Path, smtp_sink: SmtpSink, http_receiver: RecordingServer
) -> None:
    jsonl = tmp_path / "alerts.jsonl"
    keeper = Keeper(
        state=state,
        notify=[
            {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": smtp_sink.port,
                "sender": "wk@example.com",
                "to": ["ops@example.com"],
            },
            {"kind": "jsonl", "path": str(jsonl)},
            {"kind": "webhook", "url": http_receiver.url + "/hook"},
        ],
    )
    calls = []

    @keeper.every(0.05, name="queue")
    def check() -> Observation:
        calls.append(1)
        return Observation(
            title="queue depth 120", severity="error", key="queue-depth", body="120 jobs waiting"
        )

    with keeper:
        wait_until(lambda: len(calls) >= 5)  # the condition holds for several checks...
        messages = smtp_sink.wait_for(1, timeout=10)
        requests = http_receiver.wait_for(1)
        wait_until(lambda: jsonl.exists() and jsonl.read_text())
    # ...yet is alerted once, everywhere.
    assert len(smtp_sink.messages) == 1
    assert len(http_receiver.requests) == 1
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["title"] == "queue depth 120"
    assert record["severity"] == "error"
    assert record["watcher"] == "queue"
    assert record["kind"] == "custom"
    assert record["created_at"].endswith("Z")
    assert set(record) >= {
        "id",
        "watcher",
        "kind",
        "severity",
        "title",
        "body",
        "created_at",
        "data",
    }

    msg = messages[0]
    assert msg["Subject"] == "[ERROR] queue: queue depth 120"
    assert msg["Message-ID"] == f"<{record['uid']}@example.com>"
    assert "120 jobs waiting" in msg.get_content()
    assert smtp_sink.envelopes[0] == ("wk@example.com", ["ops@example.com"])

    hook = requests[0]
    assert hook.path == "/hook"
    assert hook.headers["Idempotency-Key"] == record["uid"]
    assert hook.json()["title"] == "queue depth 120"


def test_watcher_threads_are_daemons_and_stop_promptly(state: str | Path) -> None:
    keeper = Keeper(state=state)
    keeper.every(3600, lambda: None, name="slow")
    keeper.start()
    threads = [t for t in threading.enumerate() if t.name.startswith("watchkeeper:")]
    assert threads
    assert all(t.daemon for t in threads)
    assert keeper.stop(timeout=2)
    assert not any(t.is_alive() for t in threads)


def test_duplicate_names_are_refused(state: str | Path) -> None:
    keeper = Keeper(state=state)
    keeper.every(1, lambda: None, name="a")
    with pytest.raises(ConfigError, match="'a' is used twice"):
        keeper.every(1, lambda: None, name="a")


def test_bad_rule_in_every_names_the_watcher(state: str | Path) -> None:
    keeper = Keeper(state=state)
    with pytest.raises(
        ConfigError, match=r"keeper.every\('q'\): for_cycles: .*greater than or equal to 1"
    ):
        keeper.every(1, lambda: None, name="q", for_cycles=0)


def test_failing_check_alerts_once_after_fail_after_and_recovers(
    state: str | Path, tmp_path: Path
) -> None:
    jsonl = tmp_path / "alerts.jsonl"
    keeper = Keeper(state=state, notify=[{"kind": "jsonl", "path": str(jsonl)}])
    broken = threading.Event()
    broken.set()
    calls = []

    def check() -> None:
        calls.append(1)
        if broken.is_set():
            raise RuntimeError("database unreachable")

    keeper.every(0.01, check, name="db", fail_after=3)
    with keeper:
        wait_until(lambda: jsonl.exists() and "check failing" in jsonl.read_text())
        n = len(calls)
        wait_until(lambda: len(calls) >= n + 2, timeout=20)  # still failing, no new alert
        broken.clear()
        wait_until(lambda: "passes again" in jsonl.read_text(), timeout=20)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["status"] for r in records] == ["firing", "resolved"]
    assert "RuntimeError: database unreachable" in records[0]["title"]
    assert records[0]["severity"] == "error"


def test_pending_delivery_survives_to_the_next_keeper(
    state: str | Path, smtp_sink: SmtpSink
) -> None:
    dead = {
        "kind": "smtp",
        "name": "mail",
        "host": "127.0.0.1",
        "port": 9,
        "sender": "wk@example.com",
        "to": ["ops@example.com"],
        "timeout": "1s",
    }
    keeper = Keeper(state=state, notify=[dead])
    keeper.every(3600, lambda: Observation("disk full", severity="critical"), name="disk")
    keeper.start()
    store = Store(state)
    wait_until(lambda: store.delivery_counts().get("mail", {}).get("pending"))
    wait_until(lambda: store.last_delivery_errors().get("mail"))
    assert not keeper.stop(timeout=1)  # could not deliver: it stays pending
    assert store.delivery_counts()["mail"] == {"pending": 1}

    alive = {**dead, "port": smtp_sink.port}
    with Keeper(state=state, notify=[alive]):
        smtp_sink.wait_for(1, timeout=10)
        wait_until(lambda: store.delivery_counts()["mail"] == {"sent": 1})
    assert len(smtp_sink.messages) == 1
    assert "disk full" in smtp_sink.messages[0]["Subject"]
    store.close()


def test_a_second_keeper_on_the_same_state_is_refused(state: str | Path) -> None:
    """SQLite: one keeper per file (the flock). PostgreSQL: one live agent per name (both
    keepers here are the host's default agent)."""
    first = Keeper(state=state).start()
    second = Keeper(state=state)
    refused = r"in use by another running keeper \(pid \d+\)|agent '.+' is already running on"
    with pytest.raises(StoreError, match=refused):
        second.start()
    assert first.stop()
    with Keeper(state=state) as again:  # free again once the first one stopped
        assert again.store is not None


def test_a_check_returning_garbage_counts_as_a_failure_and_the_thread_lives(
    state: str | Path,
    tmp_path: Path,
) -> None:
    class Garbage(Watcher):
        kind = "garbage"
        config_model = WatcherConfig
        calls = 0

        def check(self, checkpoint: Any) -> CheckResult:
            Garbage.calls += 1
            if Garbage.calls == 1:
                return CheckResult([], checkpoint=object())  # not JSON
            return CheckResult([Observation("x", severity="loud")])  # raises in the check

    jsonl = tmp_path / "a.jsonl"
    keeper = Keeper(state=state, notify=[{"kind": "jsonl", "path": str(jsonl)}])
    keeper.add(Garbage(WatcherConfig(name="g", every=0.01, fail_after=2)))
    with keeper:
        wait_until(lambda: Garbage.calls >= 4)
        wait_until(lambda: jsonl.exists() and "check failing" in jsonl.read_text())
    text = jsonl.read_text()
    assert "unknown severity 'loud'" in text or "not JSON serializable" in text
    with Store(state) as store:
        record = store.watcher("g")
        assert record is not None
        assert record.failures >= 2
        assert record.checkpoint is None


def test_stop_from_inside_a_check(state: str | Path) -> None:
    keeper = Keeper(state=state)
    results: list[bool] = []
    keeper.every(3600, lambda: results.append(keeper.stop(timeout=1)), name="quitter")
    keeper.start()
    wait_until(lambda: results)
    assert results == [True]
    assert keeper.stop() is True  # and again: the same answer


def test_control_pause_resume_mute_check_now_and_subscribe(
    state: str | Path, tmp_path: Path
) -> None:
    jsonl = tmp_path / "a.jsonl"
    keeper = Keeper(state=state, notify=[{"kind": "jsonl", "path": str(jsonl)}])
    calls: list[int] = []
    seen: list[str] = []
    keeper.every(
        3600, lambda: calls.append(1) or Observation(f"n{len(calls)}", event=True), name="w"
    )
    keeper.subscribe(lambda alerts: seen.extend(a.title for a in alerts))
    with keeper:
        wait_until(lambda: len(calls) == 1)
        keeper.check_now("w")  # no waiting out the hour
        wait_until(lambda: len(calls) == 2)
        keeper.mute("w", "1h")
        keeper.check_now("w")
        wait_until(lambda: len(calls) == 3)
        keeper.pause("w")
        keeper.check_now("w")  # a paused watcher does not check
        keeper.mute("w", None)
        keeper.resume("w")  # resuming checks at once
        wait_until(lambda: len(calls) == 4)
        wait_until(lambda: len(seen) == 4)
        wait_until(lambda: len(read_jsonl(jsonl)) == 3)
        store = keeper.store
        assert store is not None
        record = store.watcher("w")
        assert record is not None
        assert not record.paused
    assert seen == ["n1", "n2", "n3", "n4"]  # every committed alert reaches listeners
    titles = [json.loads(x)["title"] for x in jsonl.read_text().splitlines()]
    assert titles == ["n1", "n2", "n4"]  # n3 was recorded while muted, not delivered
    with pytest.raises(KeyError, match="no running watcher named 'nope'"):
        keeper.pause("nope")


def test_a_hung_notifier_does_not_delay_another(
    state: str | Path, http_receiver: RecordingServer
) -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        keeper = Keeper(
            state=state,
            notify=[
                {
                    "kind": "smtp",
                    "host": "127.0.0.1",
                    "port": silent.getsockname()[1],
                    "timeout": "30s",
                    "sender": "wk@example.com",
                    "to": ["ops@example.com"],
                },
                {"kind": "webhook", "url": http_receiver.url},
            ],
        )
        count = iter(range(10**6))
        keeper.every(0.01, lambda: Observation(f"t{next(count)}", event=True), name="w")
        keeper.start()
        # Several alerts reach the webhook while the SMTP dispatcher is stuck on its first.
        http_receiver.wait_for(5, timeout=10)
        assert keeper.stop(timeout=0.5) is False  # the SMTP thread is still stuck
    # Closing the listener resets the connection; the stuck thread then ends on its own.
    with Store(state) as store:
        assert store.delivery_counts()["smtp"].get("sent", 0) == 0
    assert keeper.store is not None
    keeper.store.close()
