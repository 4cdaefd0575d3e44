"""A fleet: three real ``watchkeeper run`` agents on one real PostgreSQL database.

The pages are served by a real HTTP site on 127.0.0.1 that records when each page was asked
for, so "no watcher ran twice in a cycle" is read off the server, not the agents' word. Leases
are 2 s here (30 s by default), so failover is quick enough for a test.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RecordingServer, run_cli, wait_until
from tests.pagesite import Site, site
from tests.postgres import Cluster
from tests.test_store_faults import LineWriter, delivered, log_keeper
from watchkeeper import ConfigError, Keeper, Observation
from watchkeeper.alerts import Alert, Severity
from watchkeeper.config import load_config
from watchkeeper.fleetview import agent_docs, runners
from watchkeeper.store import Route, Store
from watchkeeper.web import serve_dashboard

__all__ = ["site"]  # the page site's fixture, used by name

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LEASE = 2.0


@dataclass
class Fleet:
    """The agents' processes, their configs, and a store to look at what they do."""

    folder: Path
    url: str
    site: Site
    procs: dict[str, subprocess.Popen[bytes]]
    store: Store

    def start(self, name: str, extra: str = "") -> None:
        config = self.folder / f"{name}.toml"
        config.write_text(
            f'[keeper]\nagent = "{name}"\nstate = "{self.url}"\nlease = "{LEASE}s"\n'
            f'dashboard = false\ninclude = ["fleet.toml"]\n{extra}',
            encoding="utf-8",
        )
        with (self.folder / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "watchkeeper", "run", "-c", str(config), "-v"],
                env={**ENV, "PGAPPNAME": name},  # its sessions, as pg_stat_activity shows them
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def agents(self) -> dict[str, dict[str, Any]]:
        return {doc["name"]: doc for doc in agent_docs(self.store, LEASE)}

    def runners(self) -> dict[str, str]:
        return runners(self.store, list(self.agents().values()))

    def alive(self) -> set[str]:
        return {name for name, doc in self.agents().items() if doc["alive"]}

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str, site: Site) -> Iterator[Fleet]:
    store = Store.open(postgres_url)
    found = Fleet(tmp_path, postgres_url, site, {}, store)
    try:
        yield found
    finally:
        for proc in found.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        store.close()


def shared_pages(fleet: Fleet, count: int, every: str, **page: Any) -> list[str]:
    """``count`` shared page watchers in the fleet's file; their names (= paths)."""
    names = [f"p{i:03d}" for i in range(count)]
    tables = []
    for name in names:
        url = fleet.site.html(f"/{name}", [f"<a href='/{name}/0'>first</a>"], **page)
        tables.append(
            f'[[page]]\nname = "{name}"\nurl = "{url}"\nitems = "li"\nevery = "{every}"\n'
            'max_per_host = 8\ntimeout = "20s"\n'
        )
    (fleet.folder / "fleet.toml").write_text("".join(tables), encoding="utf-8")
    return names


def add_item(fleet: Fleet, names: list[str], number: int, **page: Any) -> None:
    """A new item on each page: one alert each, from whichever agent checks it."""
    for name in names:
        items = [f"<a href='/{name}/{n}'>item {n}</a>" for n in range(number + 1)]
        fleet.site.html(f"/{name}", items, **page)


def item_alerts(store: Store) -> collections.Counter[tuple[str, str]]:
    """(watcher, item link) of every new-item alert in the store, counted."""
    return collections.Counter(
        (a.watcher, a.key) for a in store.alerts(limit=100_000) if a.kind == "page"
    )


def started(fleet: Fleet, names: list[str]) -> None:
    """Every agent is alive and every page has had its first (baseline) check."""
    wait_until(lambda: fleet.alive() >= set(fleet.procs), timeout=30)

    def baselined() -> bool:
        records = {r.name: r for r in fleet.store.watchers()}
        return all(n in records and records[n].checks > 0 for n in names)

    wait_until(baselined, timeout=30)


def shortest_gap(fleet: Fleet, names: list[str], fetches: int) -> float:
    """From now until each page was asked for ``fetches`` times, the shortest time between two
    requests for one page: well under its ``every`` means two agents ran it, or one twice."""
    fleet.site.times.clear()
    wait_until(lambda: all(len(fleet.site.times[f"/{n}"]) >= fetches for n in names), timeout=30)
    return min(
        later - earlier
        for n in names
        for earlier, later in itertools.pairwise(fleet.site.times[f"/{n}"])
    )


def test_three_agents_share_300_pages_once_each_and_take_over_a_killed_one(fleet: Fleet) -> None:
    names = shared_pages(fleet, 300, "2s")
    for agent in ("a1", "a2", "a3"):
        fleet.start(agent)
    started(fleet, names)

    def spread() -> dict[str, int]:
        counts = collections.Counter(fleet.runners().get(n) for n in names)
        even = set(counts) == {"a1", "a2", "a3"} and all(80 <= c <= 120 for c in counts.values())
        return dict(counts) if even else {}

    wait_until(spread, timeout=30)
    # A window of checks once the spread holds: a page asked for twice within a cycle would
    # mean two agents ran it (or one ran it twice).
    assert shortest_gap(fleet, names, 3) > 1.0, fleet.logs()  # every 2 s, give or take jitter

    add_item(fleet, names, 1)
    wait_until(lambda: len(item_alerts(fleet.store)) == 300, timeout=30)
    victim = "a2"
    theirs = {n for n, agent in fleet.runners().items() if agent == victim}
    fleet.procs[victim].send_signal(signal.SIGKILL)
    fleet.procs[victim].wait(10)
    add_item(fleet, names, 2)

    def taken_over() -> bool:
        now = fleet.runners()
        return all(now.get(n) in ("a1", "a3") for n in theirs)

    wait_until(taken_over, timeout=4 * LEASE + 4)
    wait_until(lambda: len(item_alerts(fleet.store)) == 600, timeout=30)
    counts = item_alerts(fleet.store)
    assert set(counts.values()) == {1}, "an alert was produced twice"
    assert {watcher for watcher, _ in counts} == set(names)
    assert victim not in fleet.alive()


def test_an_agent_paused_past_its_lease_cannot_commit_its_stale_checks(fleet: Fleet) -> None:
    # Slow pages: an agent always has fetches in flight, each started under its lease.
    names = shared_pages(fleet, 30, "1s", delay=1.0)
    for agent in ("a1", "a2", "a3"):
        fleet.start(agent)
    started(fleet, names)
    wait_until(lambda: {"a1", "a2", "a3"} <= set(fleet.runners().values()), timeout=30)
    add_item(fleet, names, 1, delay=1.0)

    def fetching() -> bool:  # a1 has checks under way: the moment to pause it
        theirs = [n for n, agent in fleet.runners().items() if agent == "a1"]
        with fleet.site.lock:
            # Several: one page being fetched may still be the fetch of the agent that ran it
            # before a1 (the share moves watchers while the fleet settles), and the site cannot
            # tell whose request it is. Three of a1's pages at once are not all such leftovers.
            return sum(fleet.site.active[f"/{n}"] > 0 for n in theirs) >= 3

    def taken_over() -> str | None:
        # Paused inside a transaction, it holds row locks the others' takeover waits on.
        sql = "SELECT 1 FROM pg_stat_activity WHERE application_name = ? AND xact_start IS NOT NULL"
        if fleet.store.query(sql, ("a1",)):
            return "in a transaction"
        # Every lease it held has gone to another agent (a new token). Its leases having run
        # out is not enough: one nobody took yet is still its own to renew when it resumes,
        # and a check under it then commits, rightly (nobody else ran that watcher).
        return "taken" if all(lease.agent != "a1" for lease in fleet.store.leases()) else None

    paused = fleet.procs["a1"]
    for _ in range(5):
        wait_until(fetching, timeout=20)
        paused.send_signal(signal.SIGSTOP)
        # The others take its watchers once its leases expire (on the database clock).
        taken = wait_until(taken_over, timeout=4 * LEASE + 4)
        paused.send_signal(signal.SIGCONT)
        if taken == "taken":
            break
    else:
        pytest.fail("a1 was paused inside a transaction every time")
    # Its fetches in flight come back and their commits are refused: counted, not committed.
    wait_until(lambda: fleet.agents()["a1"]["leases_lost"] >= 1, timeout=20, interval=0.1)
    wait_until(lambda: len(item_alerts(fleet.store)) == 30, timeout=30)
    assert set(item_alerts(fleet.store).values()) == {1}, fleet.logs()


def test_a_burst_is_delivered_once_across_the_agents_dispatchers(
    fleet: Fleet, http_receiver: RecordingServer
) -> None:
    http_receiver.delay = 0.2  # each list of alerts takes a while: the others claim meanwhile
    (fleet.folder / "fleet.toml").write_text(
        f'[[notify]]\nname = "hook"\nkind = "webhook"\nurl = "{http_receiver.url}/hook"\n'
        'group_interval = "0s"\ngroup_wait = "0s"\nlist_body = true\n',
        encoding="utf-8",
    )
    for agent in ("a1", "a2", "a3"):
        fleet.start(agent)
    wait_until(lambda: fleet.alive() >= {"a1", "a2", "a3"}, timeout=30)
    burst = [
        Alert(
            watcher="burst", kind="test", severity=Severity.WARNING, title=f"alert {i}", key=f"k{i}"
        )
        for i in range(10_000)
    ]
    for start in range(0, len(burst), 1000):  # ten commits, as a storm on many watchers makes
        fleet.store.add_alerts(burst[start : start + 1000], [Route("hook")], burst[0].created_at)

    def received() -> collections.Counter[str]:
        with http_receiver.changed:
            requests = list(http_receiver.requests)
        return collections.Counter(a["uid"] for r in requests for a in r.json())

    claimers: set[str] = set()

    def delivered() -> bool:  # and which agents hold claims meanwhile: they share the work
        rows = fleet.store.query("SELECT DISTINCT claimed_by FROM deliveries")
        claimers.update(r[0] for r in rows if r[0])
        return sum(received().values()) >= 10_000

    wait_until(delivered, timeout=60, interval=0.05)
    assert len(claimers) >= 2, claimers
    counts = received()
    assert set(counts) == {a.uid for a in burst}
    assert set(counts.values()) == {1}, "an alert was delivered twice"
    # Every delivery is marked sent (claims cleared), whichever agent sent it.
    wait_until(lambda: fleet.store.delivery_counts()["hook"].get("sent") == 10_000, timeout=20)


def test_a_config_change_on_one_agent_keeps_the_others_watchers(fleet: Fleet) -> None:
    names = shared_pages(fleet, 4, "1s")
    log = '[[log]]\nname = "{0}-log"\npaths = ["{1}"]\nrules = [{{match = "x"}}]\n'
    for agent in ("a1", "a2"):
        fleet.start(agent, log.format(agent, fleet.folder / f"{agent}.app.log"))
    started(fleet, [*names, "a1-log", "a2-log"])
    # a2 drops its log watcher and a page (a SIGHUP reload): a1's rows stay, and so do the
    # pages a1 still has.
    (fleet.folder / "a2.toml").write_text(
        (fleet.folder / "a2.toml")
        .read_text()
        .split("[[log]]")[0]
        .replace('include = ["fleet.toml"]', "include = []"),
        encoding="utf-8",
    )
    fleet.procs["a2"].send_signal(signal.SIGHUP)
    wait_until(lambda: "a2-log" not in fleet.agents()["a2"]["watchers"], timeout=20)
    wait_until(lambda: set(fleet.agents()["a1"]["watchers"]) >= {*names, "a1-log"}, timeout=20)
    assert {r.name for r in fleet.store.watchers()} >= {*names, "a1-log", "a2-log"}


def test_while_the_database_is_away_checks_pause_alerts_wait_and_nothing_is_lost(
    postgres_cluster: Cluster,
    postgres_url: str,
    tmp_path: Path,
    http_receiver: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("watchkeeper.supervisor.FAULT_ALERT_AFTER", 0.5)
    log = tmp_path / "app.log"
    log.write_text("")
    lines = LineWriter(log)
    keeper = log_keeper(postgres_url, log, http_receiver)
    with keeper:
        lines.write(10, 80)
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("webhook", {}).get("sent") == 10)
        postgres_cluster.stop("fast")  # its sessions end: the agent's commits fail from here
        try:
            lines.write(10, 80)  # read, but its commit cannot go anywhere: redone until it can
            # The keeper says so (status, /api/health), and through the notifiers directly.
            wait_until(lambda: keeper.health()["store"]["state"] == "failing", timeout=20)
            wait_until(
                lambda: any(
                    "cannot be recorded" in r.json()["title"] for r in list(http_receiver.requests)
                ),
                timeout=20,
            )
            assert all(u["state"] == "running" for u in keeper.health()["threads"])
        finally:
            postgres_cluster.start()
        lines.write(10, 80)
        wait_until(lambda: len(delivered(http_receiver)) >= 30, timeout=30)
        wait_until(lambda: keeper.health()["store"]["state"] == "ok", timeout=20)
    assert sorted(delivered(http_receiver)) == list(range(30))  # none lost, none twice


def test_two_agents_defining_one_shared_watcher_differently_is_refused_naming_both(
    postgres_url: str, tmp_path: Path, site: Site
) -> None:
    def config(agent: str, items: str) -> Path:
        path = tmp_path / f"{agent}.toml"
        path.write_text(
            f'[keeper]\nagent = "{agent}"\nstate = "{postgres_url}"\nlease = "2s"\n'
            f'[[page]]\nname = "shop"\nurl = "{site.url("/shop")}"\nitems = "{items}"\n',
            encoding="utf-8",
        )
        return path

    site.html("/shop", ["<a href='/1'>one</a>"])
    with Keeper.from_config(config("a1", "li")), pytest.raises(ConfigError) as caught:
        Keeper.from_config(config("a2", "p")).start()
    (error,) = caught.value.errors
    assert str(tmp_path / "a2.toml") in error
    assert "defined differently on live agent 'a1'" in error
    assert str(tmp_path / "a1.toml") in error


@pytest.mark.parametrize("reloaded", [False, True], ids=["started", "reloaded"])
def test_a_grouped_notifier_sends_its_digests_from_one_agent(
    postgres_url: str, tmp_path: Path, http_receiver: RecordingServer, reloaded: bool
) -> None:
    """Also when its dispatcher was made by a reload (that one once ignored the lease)."""
    http_receiver.delay = 1.0  # a digest in flight: a second agent grouping would send too

    def config(agent: str, wait: str) -> Path:
        path = tmp_path / f"{agent}.toml"
        path.write_text(
            f'[keeper]\nagent = "{agent}"\nstate = "{postgres_url}"\nlease = "2s"\n'
            f'[[notify]]\nkind = "webhook"\nurl = "{http_receiver.url}"\n'
            f'group_wait = "{wait}"\n',
            encoding="utf-8",
        )
        return path

    keepers = [Keeper.from_config(config(name, "0.2s")) for name in ("a1", "a2")]
    for keeper in keepers:
        keeper.start()
    try:
        if reloaded:
            for keeper, name in zip(keepers, ("a1", "a2"), strict=True):
                keeper.reload(load_config(config(name, "0.3s")))
        store = keepers[0].store
        assert store is not None
        alerts = [
            Alert(watcher="w", kind="test", severity=Severity.ERROR, title=f"alert {i}", key=f"{i}")
            for i in range(50)
        ]
        store.add_alerts(alerts, [Route("webhook")], alerts[0].created_at)
        wait_until(lambda: store.delivery_counts()["webhook"].get("sent") == 50, timeout=20)
    finally:
        for keeper in keepers:
            keeper.stop()
    # One agent held the notifier's lease and grouped every alert into its digests; the other
    # sent none (two agents grouping the same pending alerts would send each twice).
    # (a second digest would have arrived while the first was in flight, before its marks)
    assert http_receiver.arrived == 1
    assert http_receiver.wait_for(1)[0].json()["data"]["count"] == 50


def test_a_cleanly_stopped_agent_is_gone_at_once_and_its_watchers_move_within_a_round(
    postgres_url: str,
) -> None:
    lease = 6.0
    checked: dict[str, tuple[str, float]] = {}
    lock = threading.Lock()

    def keeper(agent: str) -> Keeper:
        made = Keeper(state=postgres_url, agent=agent, lease=f"{lease}s")
        for name in ("w1", "w2", "w3", "w4"):

            def check(name: str = name) -> list[Observation]:
                with lock:
                    checked[name] = (agent, time.monotonic())
                return []

            made.every("1s", check, name=name)
        return made

    a, b = keeper("a"), keeper("b")
    with a:
        with b:
            store = a.store
            assert store is not None

            def held_by_b() -> list[str]:
                owners = [lease.agent for lease in store.leases()]
                return (
                    [x.watcher for x in store.leases() if x.agent == "b"]
                    if owners.count("b") == 2 and owners.count("a") == 2
                    else []
                )

            moved = wait_until(held_by_b, timeout=40)
        stopped = time.monotonic()
        assert {d["name"]: d["alive"] for d in agent_docs(store, lease)} == {"a": True, "b": False}

        def taken_over() -> bool:
            with lock:
                return all(checked[n][0] == "a" and checked[n][1] > stopped for n in moved)

        # Within a lease round (lease / 3) and a check, not after b's lease ran out (6 s).
        wait_until(taken_over, timeout=lease - 1)


def test_any_agent_shows_the_whole_fleet(postgres_url: str, tmp_path: Path, site: Site) -> None:
    pages = [site.html(f"/p{i}", [f"<a href='/{i}'>{i}</a>"]) for i in range(4)]

    def keeper(name: str) -> Keeper:
        made = Keeper(state=postgres_url, agent=name, lease="2s")
        for i, url in enumerate(pages):
            made.page(url, items="li", name=f"p{i}", every="1s")
        made.log(tmp_path / f"{name}.log", [{"match": "x"}], name=f"{name}-log")
        return made

    first, second = keeper("a1"), keeper("a2")
    dashboard = serve_dashboard(first, "127.0.0.1:0")
    with first, second, httpx.Client(base_url=dashboard.url) as http:

        def shown() -> dict[str, Any]:
            agents = {a["name"]: a for a in http.get("/api/agents").json()}
            runs = {w["name"]: w["agent"] for w in http.get("/api/watchers").json()}
            spread = {runs.get(f"p{i}") for i in range(4)} == {"a1", "a2"}
            both = all(agents.get(n, {}).get("alive") for n in ("a1", "a2"))
            return {"agents": agents, "runs": runs} if spread and both else {}

        seen = wait_until(shown, timeout=20)
        # Each log watcher is pinned to its agent; the pages are spread over both.
        assert seen["runs"]["a1-log"] == "a1"
        assert seen["runs"]["a2-log"] == "a2"
        assert "a2-log" in seen["agents"]["a2"]["watchers"]
        metrics = http.get("/metrics").text
        assert 'watchkeeper_agent_up{agent="a2"} 1.0' in metrics
        # The CLI shows it too, from the database alone (no agent's files needed).
        shell = tmp_path / "shell.toml"  # an admin's config: the state only
        shell.write_text(f'[keeper]\nstate = "{postgres_url}"\n', encoding="utf-8")
        status = run_cli("status", "--json", "-c", str(shell), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert {a["name"] for a in doc["agents"] if a["alive"]} == {"a1", "a2"}
        assert {w["name"]: w["agent"] for w in doc["watchers"]}["a2-log"] == "a2"
        # ...or with no config at all: --state takes the URL whole.
        direct = run_cli("status", "--json", "--state", postgres_url, cwd=tmp_path)
        assert direct.returncode == 0, direct.stderr
        assert {a["name"] for a in json.loads(direct.stdout)["agents"]} >= {"a1", "a2"}


def test_a_pause_made_on_another_agent_stops_the_agent_running_the_watcher(
    postgres_url: str, site: Site
) -> None:
    url = site.html("/p", ["<li>a</li>"])
    keepers = {}
    for name in ("a1", "a2"):
        keepers[name] = Keeper(state=postgres_url, agent=name, lease="2s")
        keepers[name].page(url, items="li", name="p", every="1s")
    with keepers["a1"], keepers["a2"]:
        store = keepers["a1"].store
        assert store is not None

        def holder() -> str | None:
            return next((lease.agent for lease in store.leases() if lease.watcher == "p"), None)

        running = wait_until(holder, timeout=20)
        other = keepers["a2" if running == "a1" else "a1"]

        def last_hit() -> float:
            with site.lock:
                return site.times["/p"][-1] if site.times["/p"] else 0.0

        wait_until(lambda: last_hit() > 0, timeout=20)
        other.pause("p")  # on the agent that does not run it, as from its dashboard
        # The agent running it stops within a round of its lease loop: no fetch for 2.5 s (it
        # fetched every second), which without the pause never comes.
        wait_until(lambda: time.monotonic() - last_hit() > 2.5, timeout=20)
        assert holder() == running
        resumed_at = time.monotonic()
        other.resume("p")
        wait_until(lambda: last_hit() > resumed_at, timeout=20)


def counting_keeper(
    url: str, agent: str, names: list[str], calls: collections.Counter[tuple[str, str]]
) -> Keeper:
    """An in-process agent whose shared custom watchers (every second) count their checks."""
    keeper = Keeper(state=url, agent=agent, lease=f"{LEASE}s")
    for name in names:

        def check(name: str = name) -> list[Any]:
            calls[(agent, name)] += 1
            return []

        keeper.every("1s", check, name=name)
    return keeper


def test_a_shared_watcher_only_one_agent_offers_is_never_given_back(postgres_url: str) -> None:
    # b alone runs all five; when a joins, b is over its share and gives some back: never the
    # one a does not have (it came last in name order, the first to go), nobody would take it.
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    common = ["p1", "p2", "p3", "p4"]
    b = counting_keeper(postgres_url, "b", [*common, "zz-only-b"], calls)
    a = counting_keeper(postgres_url, "a", common, calls)
    with b:
        wait_until(lambda: all(calls[("b", n)] for n in [*common, "zz-only-b"]), timeout=20)
        with a:
            wait_until(lambda: any(calls[("a", n)] for n in common), timeout=20)  # b shed some
            seen = calls[("b", "zz-only-b")]
            wait_until(lambda: calls[("b", "zz-only-b")] >= seen + 4, timeout=4 * LEASE + 4)


def test_a_paused_run_whose_name_was_taken_does_not_take_its_leases_back(fleet: Fleet) -> None:
    names = shared_pages(fleet, 4, "2s")
    fleet.start("a1")
    started(fleet, names)
    old = fleet.procs.pop("a1")
    fleet.procs["a1-old"] = old  # the fixture still ends it
    wait_until(lambda: [lease.agent for lease in fleet.store.leases()] == ["a1"] * 4, timeout=20)
    before = {lease.watcher: lease.token for lease in fleet.store.leases()}
    old.send_signal(signal.SIGSTOP)
    wait_until(lambda: "a1" not in fleet.alive(), timeout=4 * LEASE + 4)
    fleet.start("a1")  # a new run takes the name, and the leases at once with new tokens

    def retaken() -> bool:
        return all(lease.token > before[lease.watcher] for lease in fleet.store.leases())

    wait_until(retaken, timeout=30)
    old.send_signal(signal.SIGCONT)
    # It wakes with checks overdue (refused at commit: fenced), then its lease round says its
    # name is taken. From then on it takes nothing back: each page is checked once a cycle
    # (every 2 s), by the new run alone; before, the two runs took the leases from each other
    # round after round, and each took the pages' checks as its own to do at once.
    wait_until(lambda: "was taken by another run" in (fleet.folder / "a1.log").read_text())
    # A check the old run began before that round may still reach the site just after: once
    # every page was asked for again, any such straggler is behind us.
    fleet.site.times.clear()
    wait_until(lambda: all(fleet.site.times[f"/{n}"] for n in names), timeout=30)
    assert shortest_gap(fleet, names, 4) > 1.0, fleet.logs()


def test_a_pause_made_while_the_lease_round_reads_is_not_undone(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    keeper = counting_keeper(postgres_url, "a1", ["w"], calls)
    with keeper:
        wait_until(lambda: calls[("a1", "w")] > 0, timeout=20)  # it holds the lease
        store = keeper.store
        assert store is not None
        reading, paused, rounds = threading.Event(), threading.Event(), []
        real = store._read

        def read(sql: str, params: Any = ()) -> Any:
            """The lease round's read of the watchers' pause and mute, held until the pause."""
            rows = real(sql, params)
            if threading.current_thread().name == "watchkeeper:fleet" and "FROM watchers" in sql:
                rounds.append(sql)
                reading.set()
                paused.wait(10)
            return rows

        monkeypatch.setattr(store, "_read", read)
        wait_until(reading.is_set, timeout=10)
        keeper.pause("w")  # between the round's read and its write
        seen = calls[("a1", "w")]
        paused.set()
        after = len(rounds)
        wait_until(lambda: len(rounds) > after + 1, timeout=10)  # later rounds, too
        assert calls[("a1", "w")] == seen, "the pause was undone for a round"


def test_a_watcher_taken_over_by_an_agent_whose_clock_is_ahead_is_checked_when_due(
    postgres_url: str,
) -> None:
    checks: list[tuple[str, float]] = []

    def keeper(agent: str) -> Keeper:
        made = Keeper(state=postgres_url, agent=agent, lease=f"{LEASE}s")
        made.every("4s", lambda: checks.append((agent, time.monotonic())) or [], name="w")
        return made

    first, second = keeper("a1"), keeper("a2")
    with first:
        wait_until(lambda: checks, timeout=20)
        with second:
            second._runs["w"].clock = lambda: time.time() + 8.0  # its host's clock is 8 s fast
            first.stop()  # a clean stop: a2 takes the watcher over within a round
            wait_until(lambda: any(agent == "a2" for agent, _ in checks), timeout=20)
    last = max(at for agent, at in checks if agent == "a1")
    taken = min(at for agent, at in checks if agent == "a2")
    # Due when a1 planned it, 4 s after its last check, reckoned on the database's clock (a2
    # used to compare a1's plan with its own clock, and checked at once).
    assert taken - last > 3.0, checks


def test_a_grouped_notifier_flushing_at_shutdown_keeps_its_lease_until_done(
    postgres_url: str, http_receiver: RecordingServer
) -> None:
    hook = {"kind": "webhook", "url": http_receiver.url, "group_wait": "0.2s"}
    http_receiver.delay = 3 * LEASE  # a digest in flight past the lease while its agent stops
    keepers = {
        name: Keeper(state=postgres_url, notify=[hook], agent=name, lease=f"{LEASE}s")
        for name in ("a1", "a2")
    }
    for keeper in keepers.values():
        keeper.start()
    store = Store.open(postgres_url)  # a look from outside: the agents' stores close
    try:
        alerts = [
            Alert(watcher="w", kind="test", severity=Severity.ERROR, title=f"alert {i}", key=f"{i}")
            for i in range(50)
        ]
        store.add_alerts(alerts, [Route("webhook")], alerts[0].created_at)
        wait_until(lambda: http_receiver.arrived == 1, timeout=20)  # the digest is in flight
        holder = next(lease.agent for lease in store.leases() if lease.watcher == "notify:webhook")
        assert holder is not None
        keepers[holder].stop(timeout=5 * LEASE)  # waits for the digest in flight
        wait_until(lambda: store.delivery_counts()["webhook"].get("sent") == 50, timeout=20)
    finally:
        for keeper in keepers.values():
            keeper.stop(timeout=5 * LEASE)  # the other's flush sends whatever it still holds
        store.close()
    # The other agent took the lease only once the stopping one had let go of it: it never
    # grouped the alerts in flight into a second digest.
    counts = [r.json()["data"]["count"] for r in http_receiver.wait_for(http_receiver.arrived)]
    assert counts == [50]
