"""The state file: atomic commits, the outbox, migrations and clear errors on bad files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from watchkeeper import Keeper, Observation, StoreError
from watchkeeper.alerts import Alert, Severity
from watchkeeper.store import Route, Store


def alert(title: str, uid: str | None = None) -> Alert:
    extra = {"uid": uid} if uid else {}
    return Alert(
        watcher="w", kind="custom", severity=Severity.ERROR, title=title, key=title, **extra
    )


ROUTES = [Route("mail", Severity.WARNING), Route("chat", Severity.CRITICAL)]


def test_checkpoint_alerts_and_deliveries_commit_together(state: str | Path) -> None:
    with Store(state) as store:
        store.register_watcher("w", "custom")
        store.commit_check(
            "w",
            checkpoint={"offset": 10},
            rule_state={},
            alerts=[alert("a")],
            routes=ROUTES,
            now=1.0,
            next_check=2.0,
        )
        # A failing commit (a repeated uid) must leave no trace: not the checkpoint, not "b".
        first = store.alerts()[0]
        with pytest.raises(StoreError, match=r"(?i)unique"):
            store.commit_check(
                "w",
                checkpoint={"offset": 20},
                rule_state={"x": 1},
                alerts=[alert("b"), alert("again", uid=first.uid)],
                routes=ROUTES,
                now=3.0,
                next_check=4.0,
            )
        record = store.watcher("w")
        assert record is not None
        assert record.checkpoint == {"offset": 10}
        assert record.rule_state == {}
        assert [a.title for a in store.alerts()] == ["a"]
        # ERROR goes to "mail" (>= warning) only, not "chat" (critical only).
        assert store.delivery_counts() == {"mail": {"pending": 1}}


def test_checkpoint_parts_commit_with_the_check_and_only_those_changed(state: str | Path) -> None:
    def commit(parts: dict[str, object], *alerts: Alert) -> None:
        store.commit_check(
            "w",
            checkpoint={"main": 1},
            rule_state={},
            alerts=alerts,
            routes=ROUTES,
            now=1.0,
            next_check=2.0,
            parts=parts,
        )

    with Store(state) as store:
        store.register_watcher("w", "custom")
        store.register_watcher("other", "custom")
        commit({"a": {"offset": 1}, "b": [2]})
        commit({"b": None, "c": 3})
        assert store.checkpoint_parts("w") == {"a": {"offset": 1}, "c": 3}
        assert store.checkpoint_parts("other") == {}
        store.commit_check(
            "w",
            checkpoint={},
            rule_state={},
            alerts=[alert("x")],
            routes=ROUTES,
            now=3.0,
            next_check=None,
        )
        uid = store.alerts()[0].uid
        with pytest.raises(StoreError, match=r"(?i)unique"):  # the alerts fail: no part changes
            commit({"a": None, "d": 4}, alert("again", uid=uid))
        assert store.checkpoint_parts("w") == {"a": {"offset": 1}, "c": 3}


def test_outbox_retry_and_failure_bookkeeping(state: str | Path) -> None:
    with Store(state) as store:
        store.register_watcher("w", "custom")
        store.commit_check(
            "w",
            checkpoint=None,
            rule_state={},
            alerts=[alert("a"), alert("b")],
            routes=[Route("mail")],
            now=100.0,
            next_check=None,
        )
        due = store.due("mail", now=100.0)
        assert [d.alert.title for d in due] == ["a", "b"]
        store.mark_retry([due[0].id], "timeout", next_try=200.0)
        store.mark_failed([due[1].id], "550 no such user")
        assert store.due("mail", now=150.0) == []
        assert store.next_try("mail") == 200.0
        assert store.reschedule_pending("mail", now=150.0) == 1
        (again,) = store.due("mail", now=150.0)
        assert again.attempts == 1
        store.mark_sent([again.id], now=151.0)
        assert store.delivery_counts() == {"mail": {"sent": 1, "failed": 1}}
        assert store.last_delivery_errors() == {"mail": "550 no such user"}


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wk.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than this watchkeeper"):
        Store(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "wk.db"
    path.write_text("this is a text file, not SQLite\n" * 100)
    with pytest.raises(StoreError, match=r"wk\.db: file is not a database"):
        Store(path)


def fill(
    store: Store,
    count: int,
    start: float = 0.0,
    routes: list[Route] | None = None,
    body: int = 2000,
) -> None:
    """``count`` alerts, one a second from ``start``, each with a delivery to "mail"."""
    store.register_watcher("w", "custom")
    for first in range(0, count, 500):
        store.commit_check(
            "w",
            checkpoint=None,
            rule_state={},
            alerts=[
                Alert(
                    watcher="w",
                    kind="custom",
                    severity=Severity.ERROR,
                    title=f"alert {i}",
                    key=f"k{i}",
                    body="x" * body,
                    created_at=start + i,
                )
                for i in range(first, min(count, first + 500))
            ],
            routes=routes if routes is not None else [Route("mail")],
            now=start + first,
            next_check=None,
        )


def test_retention_deletes_old_delivered_alerts_never_pending_or_failed(state: str | Path) -> None:
    with Store(state) as store:
        sqlite = store.backend == "sqlite"  # a file whose size can be watched
        fill(store, 3000)
        pending = store.due("mail", now=10**9, limit=3000)
        by_title = {d.alert.title: d.id for d in pending}
        failed = [by_title["alert 5"], by_title["alert 2500"]]
        waiting = [by_title["alert 6"], by_title["alert 2600"]]
        store.mark_failed(failed, "550 no such user")
        store.mark_sent([i for t, i in by_title.items() if i not in failed + waiting], now=1.0)
        size = store.path.stat().st_size if sqlite else 0
        # Everything older than t=2000 goes, and the newest 10,000 are kept: ~1000 stay...
        deleted = store.prune(before=2000.0, keep=10_000, step=64)
        titles = {a.title for a in store.alerts(limit=10_000)}
        assert deleted == 2000 - 2  # ...but not "alert 5" (failed) or "alert 6" (pending)
        assert {"alert 5", "alert 6", "alert 2500", "alert 2600", "alert 1999"} - titles == {
            "alert 1999"
        }
        assert len(titles) == 1002
        rows = store.query("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
        assert dict(map(tuple, rows)) == {"sent": 998, "failed": 2, "pending": 2}
        # The counters count every delivery that ended, those of deleted alerts too.
        assert store.delivery_counts()["mail"] == {"sent": 2996, "failed": 2, "pending": 2}
        if sqlite:
            assert store.path.stat().st_size < size * 0.6  # the space went back to the disk
        # max_alerts: keep the newest 100 (and whatever is still to be delivered).
        store.prune(before=0.0, keep=100)
        titles = {a.title for a in store.alerts(limit=10_000)}
        assert {f"alert {i}" for i in range(2900, 3000)} <= titles
        assert titles == {f"alert {i}" for i in range(2900, 3000)} | {
            "alert 5",
            "alert 6",
            "alert 2500",
            "alert 2600",
        }
        assert store.oldest_alert() == 5.0


def test_due_deliveries_come_in_order_from_the_index_and_the_cursor_sees_each_once(
    state: str | Path,
) -> None:
    with Store(state) as store:
        fill(store, 1200, routes=[Route("mail"), Route("chat", Severity.CRITICAL)])
        if store.backend == "sqlite":  # (PostgreSQL's planner chooses by its statistics)
            plan = store.query(
                "EXPLAIN QUERY PLAN SELECT id FROM deliveries WHERE notifier = 'mail' AND "
                "status = 'pending' AND next_try <= 1 ORDER BY next_try, id LIMIT 10"
            )
            assert "USING INDEX deliveries_pending" in plan[0]["detail"]
            assert not any("TEMP B-TREE" in r["detail"] for r in plan)  # no sort of the backlog
        first = store.due("mail", now=10**9, limit=10)
        store.mark_retry([d.id for d in first[:5]], "down", next_try=5000.0)
        again = store.due("mail", now=10**9, limit=2000)
        assert [d.alert.title for d in again[-5:]] == [f"alert {i}" for i in range(5)]
        seen: list[int] = []
        found, cursor = store.pending_after("mail", None, limit=700)
        seen += [d.id for d in found]
        found, cursor = store.pending_after("mail", cursor, limit=700)
        seen += [d.id for d in found]
        assert len(found) == 500
        assert sorted(seen) == seen == sorted(d.id for d in again)
        assert store.pending_after("mail", cursor) == ([], cursor)
        assert store.pending_after("chat", None) == ([], cursor)  # nothing for chat: the end


def test_counters_agree_with_the_rows_through_every_kind_of_mark(state: str | Path) -> None:
    """The counters pages read must say what a scan of the rows says, after any marks."""
    with Store(state) as store:
        fill(store, 700, start=time.time() - 7200, routes=[Route("mail"), Route("chat")])
        mail = [d.id for d in store.due("mail", now=10**10, limit=1000)]
        store.mark_sent(mail[:300], now=1.0)
        store.mark_sent(mail[:10], now=2.0)  # again: idempotent, counted once
        store.mark_failed(mail[300:400], "550")
        store.mark_retry(mail[400:450], "timeout", next_try=0.0)
        store.mark_retry(mail[400:420], "timeout", next_try=0.0)
        assert store.retry_failed("mail") == 100
        store.mark_failed(mail[300:350], "550")
        scanned: dict[str, dict[str, int]] = {}
        for notifier, status, count in store.query(
            "SELECT notifier, status, COUNT(*) FROM deliveries GROUP BY 1, 2"
        ):
            scanned.setdefault(notifier, {})[status] = count
        assert store.delivery_counts() == scanned
        tries = store.query("SELECT SUM(attempts) FROM deliveries WHERE notifier = 'mail'")
        assert store.delivery_attempts() == {"mail": tries[0][0]}  # chat was never tried
        assert store.alert_totals() == [("w", Severity.ERROR, 700)]
        by_hour = store.recent_alert_counts(time.time() - 86400)
        assert by_hour == {"w": 700}
        assert store.recent_alert_counts(time.time() + 3600) == {}


def test_a_keeper_bounds_its_history_as_it_runs(
    state: str | Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pruner thread of a running keeper: the newest max_alerts stay, and every older alert
    whose delivery is still to be done (to an unreachable webhook) stays too."""
    monkeypatch.setattr("watchkeeper.retention.FIRST_PRUNE", 0.05)
    monkeypatch.setattr("watchkeeper.retention.PRUNE_EVERY", 0.1)
    checks = iter(range(60))  # 60 checks of 20 alerts, then nothing
    keeper = Keeper(
        state=state,
        notify=[
            {"kind": "jsonl", "path": str(tmp_path / "all.jsonl")},
            {"kind": "webhook", "url": "http://127.0.0.1:9/", "min_severity": "critical"},
        ],
        max_alerts=50,
    )

    def check() -> list[Observation]:
        number = next(checks, None)
        if number is None:
            return []
        return [
            Observation(
                f"event {number}-{i}", severity="critical" if i == 0 else "info", event=True
            )
            for i in range(20)
        ]

    keeper.every(0.01, check, name="w")
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: sum(n for _, _, n in store.alert_totals()) == 1200)

        def settled() -> bool:
            kept = store.alerts(limit=10**6)
            older = kept[:-50]
            return len(kept) >= 50 and all(a.severity is Severity.CRITICAL for a in older)

        wait_until(settled, timeout=30)
        kept = store.alerts(limit=10**6)
        # Every critical alert is kept: its webhook delivery is still pending.
        assert sum(a.severity is Severity.CRITICAL for a in kept) == 60
        assert len(kept) == 50 + sum(a.severity is Severity.CRITICAL for a in kept[:-50])
        assert store.delivery_counts()["jsonl"] == {"sent": 1200}
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert len(lines) == 1200  # the file got every alert before its history went


@pytest.mark.slow
def test_a_large_history_drains_in_order_prunes_to_its_bound_and_counts_right(
    tmp_path: Path,
) -> None:
    """300,000 alerts (through the store's API): the outbox gives the oldest first with 300,000
    pending, the counters agree with a scan, and pruning to 100,000 keeps exactly the newest
    100,000 plus what is still pending, and gives the space back."""
    total = 300_000
    with Store(tmp_path / "wk.db") as store:
        fill(store, total, start=time.time() - total, body=100)
        first = store.due("mail", now=10**10, limit=1000)
        assert [d.alert.title for d in first[:3]] == ["alert 0", "alert 1", "alert 2"]
        store.mark_failed([first[0].id], "550")  # alert 0: failed, so kept
        delivered = 1
        while delivered < total - 10:  # leave the newest 10 pending
            batch = store.due("mail", now=10**10, limit=min(5000, total - 10 - delivered))
            store.mark_sent([d.id for d in batch], now=1.0)
            delivered += len(batch)
        scanned = dict(
            map(tuple, store.query("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))
        )
        assert (
            store.delivery_counts()["mail"]
            == scanned
            == {
                "sent": total - 11,
                "failed": 1,
                "pending": 10,
            }
        )
        size = store.path.stat().st_size
        assert store.prune(before=0.0, keep=100_000) == total - 100_000 - 1
        titles = [a.title for a in store.alerts(limit=10**6)]
        assert titles == ["alert 0"] + [f"alert {i}" for i in range(total - 100_000, total)]
        assert store.path.stat().st_size < size * 0.5
        assert store.alert_totals() == [("w", Severity.ERROR, total)]


def test_a_start_waits_out_a_status_probe_of_the_lock(tmp_path: Path) -> None:
    """``status`` and ``reload`` ask the lock who holds it with a brief shared flock; a keeper
    starting in that instant must wait it out, not report another keeper (a fault on purpose:
    the probe's lock is held here while the start runs)."""
    import fcntl
    import threading

    state = tmp_path / "wk.db"
    Store(state).close()
    probe = state.with_name("wk.db.lock").open("a+")
    fcntl.flock(probe, fcntl.LOCK_SH)
    release = threading.Timer(0.3, probe.close)  # the probe's instant, stretched
    release.start()
    try:
        store = Store(state)
        store.claim()  # waits for the probe instead of failing
        assert Store.holder(state) is not None
        store.close()
    finally:
        release.join()
    assert Store.holder(state) is None  # no holder once the claim is released
