"""Watchers of a pooled kind (pages) share a few threads: waits on workers, checks on one thread.

The watchers here are a small real kind whose ``prepare`` blocks until the test lets it go, so
the tests can see how many run at once and on which threads; the pool, runs, store and keeper
are the real ones. Page watchers in a keeper go through the same pool (tests/test_page_keeper).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.conftest import wait_until
from watchkeeper import Keeper, pool
from watchkeeper.alerts import Observation
from watchkeeper.store import Store
from watchkeeper.watchers.base import CheckResult, Watcher, WatcherConfig


class Gate:
    """What the test watchers share: a gate their prepare waits at, and what happened."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.preparing = 0
        self.most_preparing = 0
        self.prepared: Counter[str] = Counter()
        self.checked: Counter[str] = Counter()
        self.check_threads: set[str] = set()
        self.closed: Counter[str] = Counter()


class Slow(Watcher):
    """A pooled kind: ``prepare`` waits at the gate (as a fetch waits on a server)."""

    kind: ClassVar[str] = "slow"
    config_model = WatcherConfig
    pool_size = 3

    def __init__(
        self,
        name: str,
        gate: Gate,
        every: float = 3600,
        *,
        hold: threading.Event | None = None,
        slot: tuple[str, int] | None = None,
        close_time: float = 0.0,
    ) -> None:
        super().__init__(WatcherConfig(name=name, every=every))
        self.gate = gate
        self.hold = hold or gate.open  # what prepare waits for
        self.slot = slot
        self.close_time = close_time

    def pool_slot(self) -> tuple[str, int] | None:
        return self.slot

    def prepare(self, checkpoint: Any) -> None:
        gate = self.gate
        with gate.lock:
            gate.preparing += 1
            gate.most_preparing = max(gate.most_preparing, gate.preparing)
        self.hold.wait(10)
        with gate.lock:
            gate.preparing -= 1
            gate.prepared[self.name] += 1

    def check(self, checkpoint: Any) -> CheckResult:
        with self.gate.lock:
            self.gate.checked[self.name] += 1
            self.gate.check_threads.add(threading.current_thread().name)
        seen = (checkpoint or 0) + 1
        return CheckResult([Observation(f"{self.name} #{seen}", event=True)], seen)

    def close(self) -> None:
        threading.Event().wait(self.close_time)  # a close that takes a while (files, sockets)
        with self.gate.lock:
            self.gate.closed[self.name] += 1


def pool_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("watchkeeper:pool:slow")]


def workers() -> int:
    """The pool's worker threads (its scheduler and processing thread not counted)."""
    return sum(1 for name in pool_threads() if name.rsplit(":", 1)[1].isdigit())


def make_keeper(tmp_path: Path, gate: Gate, count: int) -> Keeper:
    keeper = Keeper(state=tmp_path / "wk.db")
    for n in range(count):
        keeper.add(Slow(f"w{n}", gate))
    return keeper


def test_a_burst_runs_pool_size_at_a_time_and_checks_on_one_thread(tmp_path: Path) -> None:
    gate = Gate()
    keeper = make_keeper(tmp_path, gate, 10)
    with keeper:
        wait_until(lambda: gate.preparing == 3)
        # Ten watchers due at once: three workers wait (pool_size), the other seven in line.
        assert workers() == 3
        assert len(pool_threads()) == 5  # and the scheduler and the processing thread
        gate.open.set()
        wait_until(lambda: len(gate.checked) == 10)
        assert keeper.store is not None
        wait_until(lambda: sum(w.checks for w in keeper.store.watchers()) == 10)
    assert gate.most_preparing == 3
    assert gate.check_threads == {"watchkeeper:pool:slow:process"}
    assert set(gate.checked.values()) == {1}  # every = 1h: one check each
    assert not pool_threads()
    assert gate.closed == Counter({f"w{n}": 1 for n in range(10)})


def test_checkpoints_come_back_from_the_store_and_carry_on(tmp_path: Path) -> None:
    gate = Gate()
    gate.open.set()

    def titles(keeper: Keeper) -> list[str]:
        return [a.title for a in keeper.store.alerts()] if keeper.store else []

    for nth, first in ((1, 1), (2, 4)):  # the second keeper carries on from the first's state
        keeper = make_keeper(tmp_path, gate, 2)
        with keeper:
            wait_until(lambda k=keeper, n=first: f"w0 #{n}" in titles(k))
            wait_until(lambda k=keeper, n=nth: f"w1 #{n}" in titles(k))
            for n in (first + 1, first + 2):
                keeper.check_now("w0")
                wait_until(lambda k=keeper, n=n: f"w0 #{n}" in titles(k))
            # Between checks a pooled run keeps no copy of its checkpoint.
            assert all(run.checkpoint is None for run in keeper._runs.values())
    with Store(tmp_path / "wk.db", readonly=True) as store:
        assert store.checkpoint("w0") == 6
        assert store.checkpoint("w1") == 2


def test_check_now_during_a_check_runs_it_again_right_after(tmp_path: Path) -> None:
    gate = Gate()
    keeper = make_keeper(tmp_path, gate, 1)
    with keeper:
        wait_until(lambda: gate.preparing == 1)
        keeper.check_now("w0")  # while it waits at the gate
        gate.open.set()
        wait_until(lambda: gate.checked["w0"] == 2)


def test_paused_watchers_are_parked_and_resume_at_once(tmp_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.add(Slow("fast", gate, every=0.05))
    with keeper:
        wait_until(lambda: gate.checked["fast"] >= 2)
        keeper.pause("fast")
        paused_at = gate.checked["fast"]
        # At most the check in progress finishes; then nothing while a few intervals pass.
        wait_until(lambda: gate.checked["fast"] > paused_at + 1, timeout=0.5, must=False)
        assert gate.checked["fast"] <= paused_at + 1
        keeper.resume("fast")
        wait_until(lambda: gate.checked["fast"] >= paused_at + 3)


def test_idle_workers_end_and_new_work_starts_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "POOL_IDLE", 0.2)
    gate = Gate()
    keeper = make_keeper(tmp_path, gate, 6)
    with keeper:
        wait_until(lambda: gate.preparing == 3)
        gate.open.set()
        wait_until(lambda: len(gate.checked) == 6)
        wait_until(lambda: workers() == 0)
        keeper.check_now("w4")
        wait_until(lambda: gate.checked["w4"] == 2)


def test_the_pool_shrinks_under_a_light_steady_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "POOL_IDLE", 0.3)
    gate = Gate()
    keeper = Keeper(state=tmp_path / "wk.db")
    for n in range(5):
        keeper.add(Slow(f"w{n}", gate))
    keeper.add(Slow("busy", gate, every=0.02))
    with keeper:
        wait_until(lambda: gate.preparing == 3)  # a burst: all three workers busy
        gate.open.set()
        # Then one check every 20 ms: idle workers are woken latest-idle first, so the one
        # doing the work stays the same and the others stay idle long enough to end.
        wait_until(lambda: workers() == 1)
        done = gate.checked["busy"]
        wait_until(lambda: gate.checked["busy"] >= done + 20)


def test_a_slow_prepare_delays_no_other_check(tmp_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    stuck = threading.Event()
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.add(Slow("stuck", gate, hold=stuck))
    keeper.add(Slow("other", gate, every=0.05))
    keeper.add(Slow("asked", gate))
    with keeper:
        wait_until(lambda: gate.preparing == 1 and gate.checked["other"] >= 3)
        keeper.check_now("asked")  # at once, while "stuck" still waits
        wait_until(lambda: gate.checked["asked"] == 2)
        stuck.set()
        wait_until(lambda: gate.checked["stuck"] == 1)


def test_runs_past_their_slot_limit_wait_without_holding_workers(tmp_path: Path) -> None:
    gate = Gate()
    slow_host = threading.Event()
    keeper = Keeper(state=tmp_path / "wk.db")
    for n in range(6):  # six pages on one slow host, at most 2 at once
        keeper.add(Slow(f"slow{n}", gate, hold=slow_host, slot=("slow:80", 2)))
    keeper.add(Slow("elsewhere", gate, slot=("fast:80", 2)))
    with keeper:
        wait_until(lambda: gate.preparing == 3)  # two on the slow host, one elsewhere
        assert workers() == 3  # the four other slow-host pages hold no worker
        slow_host.set()
        gate.open.set()
        wait_until(lambda: sum(gate.checked.values()) == 7)
    assert gate.most_preparing == 3


@pytest.mark.parametrize("plan", ["raise", float("nan"), float("inf"), -1.0])
def test_a_bad_next_delay_stops_no_other_watcher(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, plan: str | float
) -> None:
    class BadPlan(Slow):
        def next_delay(self, delay: float) -> float:
            if plan == "raise":
                raise RuntimeError("bug in next_delay")
            return float(plan)

    gate = Gate()
    gate.open.set()
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.add(BadPlan("bad", gate, every=0.05))
    keeper.add(Slow("good", gate, every=0.05))
    with keeper:
        wait_until(lambda: gate.checked["good"] >= 5 and gate.checked["bad"] >= 2)
    assert "watcher bad: " in caplog.text  # "cannot plan its next check" or "planned a delay"


def test_a_base_exception_in_prepare_ends_no_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Cancelled(Slow):
        def prepare(self, checkpoint: Any) -> None:
            raise asyncio.CancelledError  # what an asyncio-based library may raise

    gate = Gate()
    gate.open.set()
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.add(Cancelled("cancelled", gate, every=0.05, slot=("host", 1)))
    keeper.add(Slow("same-host", gate, every=0.05, slot=("host", 1)))
    with keeper:
        wait_until(lambda: gate.checked["cancelled"] >= 3 and gate.checked["same-host"] >= 3)
    assert "watcher cancelled: internal error while preparing" in caplog.text


def test_a_resting_source_is_not_asked_by_runs_in_line(tmp_path: Path) -> None:
    class Polite(Slow):
        resting = threading.Event()  # the host answered "Retry-After: 60"

        def rest(self) -> float:
            return 60.0 if self.resting.is_set() else 0.0

        def prepare(self, checkpoint: Any) -> None:
            super().prepare(checkpoint)
            self.resting.set()

    gate = Gate()
    gate.open.set()
    keeper = Keeper(state=tmp_path / "wk.db")
    for n in range(5):  # due at once, one at a time for their host
        keeper.add(Polite(f"w{n}", gate, slot=("host", 1)))
    with keeper:
        wait_until(lambda: sum(gate.checked.values()) == 1)
        # The four in line go back to wait out the rest instead of asking.
        wait_until(lambda: sum(gate.prepared.values()) > 1, timeout=0.5, must=False)
    assert sum(gate.prepared.values()) == 1


def test_no_thread_starts_after_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    start = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    gate = Gate()
    keeper = Keeper(state=tmp_path / "wk.db")
    for n in range(6):  # two prepare (the slot's limit), four wait in line
        keeper.add(Slow(f"w{n}", gate, slot=("host", 2)))
    keeper.start()
    wait_until(lambda: gate.preparing == 2)
    monkeypatch.setattr(threading.Thread, "start", recording_start)
    assert not keeper.stop(timeout=0.2)  # the two are still waiting at the gate
    gate.open.set()  # now they end; nobody takes the four in line
    wait_until(lambda: not pool_threads())
    assert started == []
    assert gate.checked == Counter()
    assert gate.closed == Counter({f"w{n}": 1 for n in range(6)})


def test_watchers_are_closed_before_stop_returns(tmp_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    keeper = make_keeper(tmp_path, gate, 0)
    keeper.every(3600, lambda: None, name="own-thread")  # joined first, the pool after it
    for n in range(20):
        keeper.add(Slow(f"w{n}", gate, close_time=0.01))
    keeper.start()
    wait_until(lambda: len(gate.checked) == 20)
    assert keeper.stop(timeout=10)
    assert gate.closed == Counter({f"w{n}": 1 for n in range(20)})
    assert not pool_threads()


def test_a_prepare_that_raises_is_logged_and_the_check_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Slow):
        def prepare(self, checkpoint: Any) -> None:
            raise RuntimeError("bug in prepare")

    gate = Gate()
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.add(Broken("b", gate))
    with keeper:
        wait_until(lambda: gate.checked["b"] == 1)
    assert "internal error while preparing" in caplog.text


def test_an_unreadable_checkpoint_skips_the_check_until_it_reads_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    gate.open.set()
    keeper = make_keeper(tmp_path, gate, 1)

    def stored(value: str) -> None:
        with sqlite3.connect(tmp_path / "wk.db") as db:  # another writer, as a bad disk would be
            db.execute("UPDATE watchers SET checkpoint = ? WHERE name = 'w0'", (value,))

    def committed() -> int:
        assert keeper.store is not None
        record = keeper.store.watcher("w0")
        return 0 if record is None else record.checks

    with keeper:
        # The first check committed, not only run: its commit would write over the bad value.
        wait_until(lambda: committed() == 1)
        stored("{not json")
        keeper.check_now("w0")
        wait_until(lambda: "w0: cannot read its checkpoint" in caplog.text)
        assert (gate.prepared["w0"], gate.checked["w0"]) == (1, 1)  # neither fetch nor check
        stored("41")
        keeper.check_now("w0")
        wait_until(lambda: gate.checked["w0"] == 2)
        assert keeper.store is not None
        wait_until(lambda: any(a.title == "w0 #42" for a in keeper.store.alerts()))
