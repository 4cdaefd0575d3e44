"""The store's fleet primitives on a real PostgreSQL server: claimed deliveries, leases and
fencing, agents, NOTIFY, and the database going away; the same calls on SQLite always grant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import read_jsonl, run_cli, wait_until
from tests.postgres import Cluster
from watchkeeper.alerts import Alert, Severity
from watchkeeper.store import LeaseLost, Route, Store, StoreError

ROOT = Path(__file__).resolve().parent.parent


def alerts(count: int, prefix: str = "a") -> list[Alert]:
    return [
        Alert(watcher="w", kind="custom", severity=Severity.ERROR, title=f"{prefix}{i}", key="k")
        for i in range(count)
    ]


def fill(store: Store, count: int, per_commit: int = 1000) -> None:
    """``count`` alerts with a delivery each to "mail", due at t=100."""
    store.register_watchers([("w", "custom")])
    for start in range(0, count, per_commit):
        store.commit_check(
            "w",
            checkpoint={"n": start},
            rule_state={},
            alerts=alerts(min(per_commit, count - start), f"{start}-"),
            routes=[Route("mail")],
            now=100.0,
            next_check=None,
        )


def test_two_agents_claiming_at_once_get_disjoint_rows(postgres_url: str) -> None:
    with Store(postgres_url) as one, Store(postgres_url) as two:
        fill(one, 40)
        first = one.due("mail", now=200.0, limit=25, agent="one")
        second = two.due("mail", now=200.0, limit=25, agent="two")
        assert (len(first), len(second)) == (25, 15)
        assert not {d.id for d in first} & {d.id for d in second}
        assert two.due("mail", now=200.0, agent="two") == []  # everything is claimed


def test_ten_thousand_deliveries_claimed_by_three_connections_each_exactly_once(
    postgres_url: str,
) -> None:
    with Store(postgres_url) as store:
        fill(store, 10_000)
    got: dict[str, list[int]] = {}

    def drain(agent: str) -> None:
        with Store(postgres_url) as mine:
            taken = got.setdefault(agent, [])
            while batch := mine.due("mail", now=200.0, limit=100, agent=agent):
                taken += [d.id for d in batch]
                mine.mark_sent([d.id for d in batch], now=201.0)

    threads = [threading.Thread(target=drain, args=(f"agent{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    every = [i for ids in got.values() for i in ids]
    assert len(every) == len(set(every)) == 10_000
    assert all(got.values())  # all three took part
    with Store(postgres_url) as store:
        assert store.delivery_counts() == {"mail": {"sent": 10_000}}


def test_a_claim_never_marked_is_due_again_after_its_timeout(postgres_url: str) -> None:
    with Store(postgres_url) as dead, Store(postgres_url) as alive:
        fill(dead, 3)
        claimed = dead.due("mail", now=200.0, agent="dead", claim_for=0.3)
        assert len(claimed) == 3
        assert alive.due("mail", now=200.0, agent="alive") == []
        again = wait_until(lambda: alive.due("mail", now=200.0, agent="alive"), timeout=10)
        assert sorted(d.id for d in again) == sorted(d.id for d in claimed)
        alive.mark_retry([again[0].id], "down", next_try=150.0)  # a mark ends the claim
        assert [d.id for d in dead.due("mail", now=200.0, agent="dead")] == [again[0].id]


def test_leases_take_renew_expire_and_take_over(postgres_url: str) -> None:
    with Store(postgres_url) as one, Store(postgres_url) as two:
        token = one.take_lease("page", "one", ttl=0.5)
        assert token == 1
        assert two.take_lease("page", "two", ttl=0.5) is None
        assert one.take_lease("page", "one", ttl=0.5) == 1  # already ours: same token
        assert one.renew_lease("page", "one", 1, ttl=0.5)
        taken = wait_until(lambda: two.take_lease("page", "two", ttl=30), timeout=10)
        assert taken == 2  # changed hands: the token grew
        assert not one.renew_lease("page", "one", 1, ttl=30)
        two.release_lease("page", "two", 2)
        assert one.take_lease("page", "one", ttl=30) == 3
        (lease,) = one.leases()
        assert (lease.watcher, lease.agent, lease.token) == ("page", "one", 3)
        assert lease.expires_at > one.db_now() + 20


def test_a_stale_fence_commits_nothing(state: str | Path) -> None:
    with Store(state) as store:
        store.register_watchers([("w", "custom")])
        token = store.take_lease("w", "one", ttl=30)
        assert token is not None
        commit = {"rule_state": {}, "routes": [Route("mail")], "now": 1.0, "next_check": None}
        store.commit_check(
            "w", checkpoint={"n": 1}, alerts=alerts(1), fence=("one", token), **commit
        )
        store.release_lease("w", "one", token)
        assert store.take_lease("w", "two", ttl=30) == token + 1
        with pytest.raises(LeaseLost, match="now held by two"):
            store.commit_check(
                "w", checkpoint={"n": 2}, alerts=alerts(2, "b"), fence=("one", token), **commit
            )
        record = store.watcher("w")
        assert record is not None
        assert record.checkpoint == {"n": 1}
        assert [a.title for a in store.alerts()] == ["a0"]
        assert store.delivery_counts() == {"mail": {"pending": 1}}


def test_agents_heartbeat_and_a_live_name_is_refused(postgres_url: str) -> None:
    with Store(postgres_url) as first:
        first.claim("web-3")
        first.heartbeat("web-3", {"watchers": ["page-1"]})
        (agent,) = first.agents()
        assert (agent.name, agent.info["watchers"]) == ("web-3", ["page-1"])
        assert abs(agent.last_seen - first.db_now()) < 5
        with Store(postgres_url) as second, pytest.raises(StoreError, match="already running"):
            second.claim("web-3")
    with Store(postgres_url) as again:  # a clean stop freed the name
        again.claim("web-3")


def test_notify_wakes_a_listener_on_another_connection(postgres_url: str) -> None:
    with Store(postgres_url) as writer, Store(postgres_url) as reader:
        heard: list[str] = []
        reader.listen(heard.append)
        wait_until(lambda: "reconnected" in heard)  # listening
        fill(writer, 1)
        wait_until(lambda: {"alerts", "mail"} <= set(heard))
        woke = threading.Event()
        waiter = threading.Thread(target=lambda: reader.wait_changed(30) and woke.set())
        waiter.start()
        writer.retry_failed("mail")  # nothing failed: no notice
        writer.add_alerts(alerts(1, "late"), [Route("mail")], now=1.0)
        waiter.join(30)
        assert woke.is_set()


def test_the_database_going_away_is_a_transient_error_and_nothing_is_lost_or_repeated(
    postgres_cluster: Cluster, postgres_url: str
) -> None:
    """Every connection of the agent is cut (pg_terminate_backend) mid-run: the next commit
    fails as a transient StoreError and leaves nothing behind; then work goes on, exactly once."""
    database = postgres_url.rsplit("/", 1)[1]
    with Store(postgres_url) as store:
        fill(store, 10)
        postgres_cluster.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        errors: list[StoreError] = []
        for attempt in range(10):  # each broken pooled connection fails once, then is replaced
            try:
                store.commit_check(
                    "w",
                    checkpoint={"n": "after"},
                    rule_state={},
                    alerts=alerts(1, f"after{attempt}-"),
                    routes=[Route("mail")],
                    now=1.0,
                    next_check=None,
                )
                break
            except StoreError as exc:
                errors.append(exc)
                assert store.fault is not None
        assert errors
        assert all(e.transient for e in errors), errors
        assert store.fault is None
        titles = [a.title for a in store.alerts(limit=100)]
        assert len(titles) == len(set(titles)) == 11
        assert store.delivery_counts() == {"mail": {"pending": 11}}


def test_an_agent_runs_on_postgres_end_to_end(tmp_path: Path, postgres_url: str) -> None:
    """``watchkeeper run`` with a PostgreSQL state (its password part from ${VAR}): a log line
    becomes a jsonl alert, and ``watchkeeper status`` reads the database."""
    user, rest = postgres_url.split("@", 1)
    log = tmp_path / "app.log"
    log.write_text("")
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        f'[keeper]\nstate = "{user}:${{WK_TEST_PGPASSWORD}}@{rest}"\n'
        '[[notify]]\nkind = "jsonl"\npath = "alerts.jsonl"\n'
        f'[[log]]\nname = "app"\npaths = ["{log}"]\nstart_at = "beginning"\n'
        'rules = [{ match = "CRITICAL", severity = "critical" }]\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WK_TEST_PGPASSWORD": "unused-by-trust"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        log.write_text("12:00 CRITICAL disk on fire\n")
        jsonl = tmp_path / "alerts.jsonl"
        wait_until(lambda: read_jsonl(jsonl), timeout=30)
        (record,) = read_jsonl(jsonl)
        assert "disk on fire" in json.dumps(record)
        status = run_cli("status", "-c", str(config), cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert "app" in status.stdout
        assert "unused-by-trust" not in status.stdout + status.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
    assert "unused-by-trust" not in stderr  # the password never reaches the log
    with Store(postgres_url) as store:
        assert [a.title for a in store.alerts()] == [record["title"]]
