"""Keeper.reload in the test's process, where a test can hold a check or a send in progress: the
handovers wait for the old part and never run one watcher or notifier twice at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import agent_checks
from tests.conftest import RecordingServer, wait_until
from watchkeeper import Keeper
from watchkeeper.config import Config, parse_config
from watchkeeper.reload import ReloadBusy


@pytest.fixture
def held() -> Iterator[None]:
    agent_checks.release.clear()
    agent_checks.held_counts["most_at_once"] = 0
    yield
    agent_checks.release.set()  # whatever the test did, no check stays held


def held_config(every: str, *more: dict[str, Any]) -> Config:
    slow = {"name": "slow", "every": every, "call": "tests.agent_checks:held"}
    return parse_config({"custom": [slow, *more]})


def test_a_changed_watcher_waits_for_its_check_and_never_runs_twice(
    tmp_path: Path, held: None
) -> None:
    keeper = Keeper.from_config(held_config("50ms"), state=tmp_path / "wk.db")
    with keeper:
        wait_until(lambda: agent_checks.held_counts["running"] == 1)  # held in progress
        result = keeper.reload(held_config("60ms"), wait=0.2)
        assert result.describe() == [
            "changed watcher 'slow'",
            "waiting for the check or send in progress to end: 'slow'",
        ]
        assert keeper.healthy()  # a part being replaced is not a dead thread
        with pytest.raises(ReloadBusy, match=r"still waits for .* slow"):
            keeper.reload(held_config("70ms"))
        agent_checks.release.set()
        wait_until(lambda: keeper.store is not None and keeper.store.watcher("slow").checks >= 3)
        assert agent_checks.held_counts["most_at_once"] == 1
        assert keeper.reload(held_config("70ms")).waiting == []  # no longer busy
        assert [w.name for w in keeper.watchers] == ["slow"]
        alerts = keeper.store.alerts() if keeper.store else []
    assert len(alerts) == 1  # one condition, alerted once
    assert "disk full" in alerts[0].title


def test_stop_during_a_waiting_reload_leaves_no_thread_and_starts_nothing(
    tmp_path: Path, held: None
) -> None:
    keeper = Keeper.from_config(held_config("50ms"), state=tmp_path / "wk.db")
    keeper.start()
    wait_until(lambda: agent_checks.held_counts["running"] == 1)
    other = {"name": "other", "every": "50ms", "call": "tests.agent_checks:tick"}
    result = keeper.reload(held_config("60ms", other), wait=0.1)
    assert result.waiting == ["slow"]
    stopping = threading.Thread(target=keeper.stop, args=(5.0,))
    stopping.start()
    agent_checks.release.set()  # the held check ends during the stop
    stopping.join(10)
    assert not stopping.is_alive()
    # The autouse thread-leak check fails the test if a handover started anything after stop.
    assert not keeper.healthy()


def test_a_notifier_swap_waits_for_the_send_in_progress_and_sends_nothing_twice(
    tmp_path: Path, http_receiver: RecordingServer
) -> None:
    def config(timeout: str) -> Config:
        hook = {"kind": "webhook", "name": "hook", "url": http_receiver.url, "timeout": timeout}
        events = {"name": "events", "every": "50ms", "call": "tests.agent_checks:queued"}
        return parse_config({"notify": [hook], "custom": [events]})

    http_receiver.delay = 1.0  # each send is in progress for a second
    agent_checks.queue.clear()
    with Keeper.from_config(config("10s"), state=tmp_path / "wk.db") as keeper:
        agent_checks.queue.append("first")
        with http_receiver.changed:
            http_receiver.changed.wait_for(lambda: http_receiver.arrived == 1, 10)
        result = keeper.reload(config("9s"), wait=0)
        assert result.describe() == [
            "changed notifier 'hook'",
            "waiting for the check or send in progress to end: 'hook'",
        ]
        agent_checks.queue.append("second")
        http_receiver.wait_for(2)
    titles = [r.json()["title"] for r in http_receiver.requests]
    assert len(titles) == 2
    assert "first" in titles[0]
    assert "second" in titles[1]
