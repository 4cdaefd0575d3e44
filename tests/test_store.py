"""The state file: atomic commits, the outbox, migrations and clear errors on bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from watchkeeper import StoreError
from watchkeeper.alerts import Alert, Severity
from watchkeeper.store import Route, Store


def alert(title: str, uid: str | None = None) -> Alert:
    extra = {"uid": uid} if uid else {}
    return Alert(
        watcher="w", kind="custom", severity=Severity.ERROR, title=title, key=title, **extra
    )


ROUTES = [Route("mail", Severity.WARNING), Route("chat", Severity.CRITICAL)]


def test_checkpoint_alerts_and_deliveries_commit_together(tmp_path: Path) -> None:
    with Store(tmp_path / "wk.db") as store:
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
        with pytest.raises(StoreError, match="UNIQUE"):
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


def test_outbox_retry_and_failure_bookkeeping(tmp_path: Path) -> None:
    with Store(tmp_path / "wk.db") as store:
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
