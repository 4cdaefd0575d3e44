"""Nothing dies unseen: each kind of thread the keeper starts is killed from inside its loop,
and must be logged, restarted, reported (a health alert, /api/health, /metrics) and keep working."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tests.conftest import RecordingServer, read_jsonl, run_cli, wait_until
from watchkeeper import CheckResult, Keeper, Observation, Watcher, WatcherConfig
from watchkeeper.dispatch import Dispatcher
from watchkeeper.supervisor import read_health
from watchkeeper.web import serve_dashboard


def unit(keeper: Keeper, kind: str) -> dict[str, Any]:
    """The one health entry of this kind."""
    (found,) = [u for u in keeper.health()["threads"] if u["kind"] == kind]
    return found


def test_a_check_raising_system_exit_is_a_failed_check_and_the_watcher_lives(
    tmp_path: Path,
) -> None:
    calls: list[int] = []

    def check() -> str | None:
        calls.append(1)
        if len(calls) <= 2:
            raise SystemExit(3)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return None

    jsonl = tmp_path / "a.jsonl"
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "jsonl", "path": str(jsonl)}])
    keeper.every(0.01, check, name="quitter", fail_after=1)
    with keeper:
        wait_until(lambda: len(calls) >= 6)
        store = keeper.store
        assert store is not None
        record = wait_until(lambda: (r := store.watcher("quitter")) and r.failures == 0 and r)
        assert record.failures_total == 3
        assert unit(keeper, "watcher")["state"] == "running"
    titles = [a["title"] for a in read_jsonl(jsonl)]
    assert any("SystemExit: 3" in t for t in titles), titles


class Choking(Watcher):
    """Checks fine, but its wait raises a BaseException once: the thread's loop dies."""

    kind = "choking"
    config_model = WatcherConfig
    checks = 0
    choked = threading.Event()

    def check(self, checkpoint: Any) -> CheckResult:
        Choking.checks += 1
        return CheckResult([])

    def wait(self, wake: threading.Event, timeout: float) -> None:
        if not Choking.choked.is_set():
            Choking.choked.set()
            raise SystemExit("choked in wait")
        wake.wait(timeout)


def test_a_crashed_watcher_thread_is_restarted_and_reported(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "jsonl", "path": str(jsonl)}])
    keeper.add(Choking(WatcherConfig(name="choker", every=0.02)))
    Choking.checks = 0
    Choking.choked.clear()
    with keeper:
        wait_until(lambda: unit(keeper, "watcher")["state"] == "restarting")
        entry = unit(keeper, "watcher")
        assert entry["restarts"] == 1
        assert "SystemExit: choked in wait" in entry["error"]
        before = Choking.checks
        wait_until(lambda: Choking.checks > before + 3)  # it checks again
        health = wait_until(lambda: [a for a in read_jsonl(jsonl) if a["kind"] == "health"])
        assert "watchkeeper:choker crashed" in health[0]["title"]
        # Other processes see it too: `watchkeeper status` reads the health file.
        report = wait_until(lambda: read_health(tmp_path / "wk.db"))
        assert report["threads"][0]["state"] in ("restarting", "running")
        store = keeper.store
        assert store is not None
    assert not (tmp_path / "wk.db.health.json").exists()  # a stopped keeper leaves none
    assert len(health) == 1


def test_a_crashed_dispatcher_is_restarted_and_delivers_everything_once(
    tmp_path: Path, http_receiver: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = Dispatcher._step
    crashed = threading.Event()

    def step(self: Dispatcher) -> bool:
        if self.store.due(self.notifier.name, self.clock()) and not crashed.is_set():
            crashed.set()
            raise RuntimeError("dispatcher bug")
        return real_step(self)

    monkeypatch.setattr(Dispatcher, "_step", step)
    jsonl = tmp_path / "a.jsonl"
    keeper = Keeper(
        state=tmp_path / "wk.db",
        notify=[  # every alert on its own (no grouping): the test counts them
            {"kind": "webhook", "url": http_receiver.url, "group_interval": "0s"},
            {"kind": "jsonl", "path": str(jsonl)},
        ],
    )
    count = iter(range(1, 1000))
    keeper.every(0.01, lambda: Observation(f"event {next(count)}", event=True), name="events")
    with keeper:
        wait_until(crashed.is_set)
        states = wait_until(lambda: {u["state"] for u in keeper.health()["threads"]} - {"running"})
        assert states <= {"crashed", "restarting"}
        wait_until(lambda: len(http_receiver.requests) >= 30)
        keeper.pause("events")
        store = keeper.store
        assert store is not None
        wait_until(lambda: not store.delivery_counts()["webhook"].get("pending"))
    titles = [r.json()["title"] for r in http_receiver.requests]
    events = [t for t in titles if t.startswith("event ")]
    assert len(events) == len(set(events))  # nothing twice
    assert sorted(events, key=lambda t: int(t.split()[1])) == [
        f"event {n}" for n in range(1, len(events) + 1)
    ]  # nothing lost
    assert any("crashed" in t and "notify" in t for t in titles)  # the health alert


class Pooled(Watcher):
    """A pooled kind whose next_delay hook raises a BaseException once."""

    kind = "pooled"
    config_model = WatcherConfig
    pool_size: ClassVar[int] = 2
    checks = 0
    raised = threading.Event()

    def check(self, checkpoint: Any) -> CheckResult:
        Pooled.checks += 1
        return CheckResult([])

    def next_delay(self, delay: float) -> float:
        if not Pooled.raised.is_set():
            Pooled.raised.set()
            raise SystemExit("hook gave up")
        return delay


def test_a_crashed_pool_is_renewed_and_its_watchers_keep_checking(tmp_path: Path) -> None:
    Pooled.checks = 0
    Pooled.raised.clear()
    keeper = Keeper(state=tmp_path / "wk.db")
    for n in range(3):
        keeper.add(Pooled(WatcherConfig(name=f"p{n}", every=0.02)))
    with keeper:
        wait_until(Pooled.raised.is_set)
        entry = wait_until(lambda: (u := unit(keeper, "pool"))["state"] == "restarting" and u)
        assert "SystemExit: hook gave up" in entry["error"]
        assert entry["watchers"] == ["p0", "p1", "p2"]
        store = keeper.store
        assert store is not None
        before = {r.name: r.checks for r in store.watchers()}
        wait_until(lambda: all(r.checks > before[r.name] + 2 for r in store.watchers()))
        # The watchers' rows say so while it lasts.
        assert pool_states(keeper) <= {"restarting"}
    assert not [t for t in threading.enumerate() if t.name.startswith("watchkeeper:pool")]


def pool_states(keeper: Keeper) -> set[str]:
    from watchkeeper.supervisor import watcher_health

    return {state for state, _ in watcher_health(keeper.health()).values()}


def test_a_dashboard_that_ends_by_itself_is_served_again_on_its_address(
    tmp_path: Path,
) -> None:
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(3600, lambda: None, name="idle")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper:
        url = dashboard.url
        assert httpx.get(url + "/api/health").status_code == 200
        server = dashboard._server
        assert server is not None
        server.should_exit = True  # uvicorn's loop ends as if it had failed
        wait_until(lambda: unit(keeper, "dashboard")["state"] == "restarting")
        assert dashboard.url == url
        health = wait_until(lambda: _get(url + "/api/health"))
        (entry,) = [u for u in health["threads"] if u["kind"] == "dashboard"]
        assert entry["restarts"] == 1
        metrics = httpx.get(url + "/metrics").text
        assert 'watchkeeper_thread_restarts_total{kind="dashboard",thread=' in metrics


def _get(url: str) -> Any:
    try:
        return httpx.get(url).json()
    except httpx.HTTPError:
        return None


def test_metrics_and_api_show_a_crash_while_it_waits_for_its_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("watchkeeper.supervisor.RESTART_BASE", 30.0)
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.add(Choking(WatcherConfig(name="choker", every=0.02)))
    Choking.choked.clear()
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper:
        wait_until(lambda: unit(keeper, "watcher")["state"] == "crashed")
        (row,) = httpx.get(dashboard.url + "/api/watchers").json()
        assert row["state"] == "crashed"
        assert "SystemExit: choked in wait" in row["last_error"]
        metrics = httpx.get(dashboard.url + "/metrics").text
        assert 'watchkeeper_thread_crashed{kind="watcher",thread="watchkeeper:choker"} 1.0' in (
            metrics
        )
        # And `watchkeeper status`, another process, through the health file.
        wait_until(lambda: read_health(tmp_path / "wk.db"))
        shown = run_cli("status", "--state", str(tmp_path / "wk.db"), cwd=tmp_path)
        assert shown.returncode == 0
        assert re.search(r"choker\W+choking\W+crashed", shown.stdout), shown.stdout
        assert "thread watchkeeper:choker: crashed: SystemExit: choked in wait" in shown.stdout
        as_json = run_cli("status", "--json", "--state", str(tmp_path / "wk.db"), cwd=tmp_path)
        (row,) = json.loads(as_json.stdout)["watchers"]
        assert row["state"] == "crashed"


def test_a_reload_swaps_what_the_supervisor_watches_and_restarts_nothing(tmp_path: Path) -> None:
    from watchkeeper.config import parse_config

    def config(watchers: list[str], notifiers: list[str]) -> Any:
        return parse_config(
            {
                "notify": [
                    {"kind": "jsonl", "name": n, "path": str(tmp_path / f"{n}.jsonl")}
                    for n in notifiers
                ],
                "custom": [{"name": w, "call": "os:getpid", "every": "0.05s"} for w in watchers],
            }
        )

    keeper = Keeper.from_config(config(["a", "b"], ["n1"]), state=tmp_path / "wk.db")
    with keeper:
        keeper.reload(config(["a", "c"], ["n2"]))
        health = keeper.health()
        names = sorted(u["name"] for u in health["threads"])
        # (the lease loop too: on SQLite it runs, and grants everything, like a fleet's)
        assert names == [
            "watchkeeper:a",
            "watchkeeper:c",
            "watchkeeper:fleet",
            "watchkeeper:notify:n2",
        ]
        assert all(u["state"] == "running" and u["restarts"] == 0 for u in health["threads"])
        assert keeper.healthy()
        store = keeper.store
        assert store is not None
        wait_until(lambda: (r := store.watcher("c")) is not None and r.checks >= 3)
        assert all(u["restarts"] == 0 for u in keeper.health()["threads"])


def test_a_restart_that_fails_is_reported_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setattr("watchkeeper.supervisor.RESTART_BASE", 1.0)
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(3600, lambda: None, name="idle")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper:
        server = dashboard._server
        assert server is not None
        server.should_exit = True
        wait_until(lambda: unit(keeper, "dashboard")["state"] == "crashed")
        squatter = socket.socket()  # someone else takes the address meanwhile
        squatter.bind(("127.0.0.1", dashboard.port or 0))
        try:
            entry = wait_until(
                lambda: "cannot restart" in ((u := unit(keeper, "dashboard"))["error"] or "") and u
            )
            assert entry["state"] == "crashed"
            assert "cannot listen" in entry["error"]
        finally:
            squatter.close()
        wait_until(lambda: unit(keeper, "dashboard")["state"] == "restarting", timeout=15)
        assert _get(dashboard.url + "/api/health")
