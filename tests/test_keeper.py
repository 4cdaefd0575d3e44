"""The Keeper end to end with custom watchers, real notifiers and real receivers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.conftest import RecordingServer, wait_until
from watchkeeper import ConfigError, Keeper, Observation
from watchkeeper.smtpsink import SmtpSink
from watchkeeper.store import Store


def test_one_observation_reaches_smtp_jsonl_and_webhook_once(
    tmp_path: Path, smtp_sink: SmtpSink, http_receiver: RecordingServer
) -> None:
    jsonl = tmp_path / "alerts.jsonl"
    keeper = Keeper(
        state=tmp_path / "wk.db",
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


def test_watcher_threads_are_daemons_and_stop_promptly(tmp_path: Path) -> None:
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(3600, lambda: None, name="slow")
    keeper.start()
    threads = [t for t in threading.enumerate() if t.name.startswith("watchkeeper:")]
    assert threads
    assert all(t.daemon for t in threads)
    assert keeper.stop(timeout=2)
    assert not any(t.is_alive() for t in threads)


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(1, lambda: None, name="a")
    with pytest.raises(ConfigError, match="'a' is used twice"):
        keeper.every(1, lambda: None, name="a")


def test_bad_rule_in_every_names_the_watcher(tmp_path: Path) -> None:
    keeper = Keeper(state=tmp_path / "wk.db")
    with pytest.raises(
        ConfigError, match=r"keeper.every\('q'\): for_cycles: .*greater than or equal to 1"
    ):
        keeper.every(1, lambda: None, name="q", for_cycles=0)


def test_failing_check_alerts_once_after_fail_after_and_recovers(tmp_path: Path) -> None:
    jsonl = tmp_path / "alerts.jsonl"
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "jsonl", "path": str(jsonl)}])
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


def test_pending_delivery_survives_to_the_next_keeper(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    state = tmp_path / "wk.db"
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
