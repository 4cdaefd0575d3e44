"""The log watcher running in a Keeper: inotify and polling, a live writer rotating its file, the
config errors, and the ``watchkeeper tail`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_jsonl, run_cli, wait_until
from watchkeeper import Keeper
from watchkeeper.config import load_config
from watchkeeper.errors import ConfigError
from watchkeeper.store import Store
from watchkeeper.watchers.log import LogWatcher
from watchkeeper.watchers.loginotify import FolderWatch

ROOT = Path(__file__).resolve().parent.parent


def checked(keeper: Keeper, name: str) -> bool:
    """Whether the watcher's first check is committed (so start_at has been applied)."""
    record = keeper.store.watcher(name) if keeper.store is not None else None
    return record is not None and record.checks >= 1


def first_check_done(state: Path, name: str) -> bool:
    """Whether another process's watcher has committed its first check."""
    with Store(state) as store:
        record = store.watcher(name)
        return record is not None and record.checks >= 1


def caught_up(out: Path, line: int) -> None:
    """Wait until the alerts of every CRITICAL line up to ``line`` are out."""
    wait_until(lambda: len(read_jsonl(out)) >= line // 7, timeout=20)


def writer(
    folder: Path,
    lines: int,
    rotate_every: int,
    mode: str,
    done: threading.Event,
    before_delete: Callable[[int], None] = lambda line: None,
) -> None:
    """Write numbered lines (every 7th CRITICAL), rotating as logrotate would.

    A file deleted before anyone opened it is gone for every tool, and two copytruncates between
    two looks leave nothing to tell the middle generation by; ``before_delete(line)`` lets a test
    wait until the watcher has read up to ``line`` before such a rotation.
    """
    log = folder / "app.log"
    out = log.open("a")
    generation = 0
    try:
        for i in range(1, lines + 1):
            out.write(f"{i} {'CRITICAL' if i % 7 == 0 else 'INFO'} line {i}\n")
            out.flush()
            if i % rotate_every == 0:
                generation += 1
                if mode == "rename":
                    out.close()
                    log.rename(folder / f"app.log.{generation}")
                    out = log.open("a")
                elif mode == "copytruncate":
                    before_delete(i)
                    (folder / f"app.log.{generation}").write_bytes(log.read_bytes())
                    out.truncate(0)
                    out.seek(0)
                else:  # delete and recreate
                    before_delete(i)
                    out.close()
                    log.unlink()
                    out = log.open("a")
    finally:
        out.close()
        done.set()


@pytest.mark.parametrize(
    ("inotify", "mode"),
    [(True, "rename"), (True, "delete"), (False, "rename")],
)
def test_live_writer_with_rotations_no_line_lost_or_repeated(
    tmp_path: Path, inotify: bool, mode: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").touch()
    out = tmp_path / "alerts.jsonl"
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "jsonl", "path": str(out)}])
    watcher = keeper.log(
        logs / "app.log",
        rules=[{"match": "CRITICAL", "severity": "critical"}],
        inotify=inotify,
        poll_interval="50ms",
    )
    assert isinstance(watcher, LogWatcher)
    done = threading.Event()
    with keeper:
        wait_until(lambda: checked(keeper, watcher.name))

        thread = threading.Thread(
            target=writer, args=(logs, 3000, 500, mode, done, lambda n: caught_up(out, n))
        )
        thread.start()
        thread.join()
        expected = [f"{i} CRITICAL line {i}" for i in range(7, 3001, 7)]
        wait_until(lambda: len(read_jsonl(out)) >= len(expected), timeout=20, must=False)
        if inotify:
            assert watcher.watch is not None
            assert watcher.watch.usable
    got = [a["data"]["line"] for a in read_jsonl(out)]
    missing = sorted(set(expected) - set(got), key=lambda line: int(line.split()[0]))
    assert got == expected, f"missing {len(missing)}: {missing[:1]} ... {missing[-1:]}"


def test_copytruncate_with_a_live_writer(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").touch()
    out = tmp_path / "alerts.jsonl"
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "jsonl", "path": str(out)}])
    keeper.log(logs / "app.log", rules=[{"match": "CRITICAL"}], name="app")
    done = threading.Event()
    with keeper:
        wait_until(lambda: checked(keeper, "app"))
        writer(logs, 1500, 300, "copytruncate", done, lambda line: caught_up(out, line))
        expected = [f"{i} CRITICAL line {i}" for i in range(7, 1501, 7)]
        wait_until(lambda: len(read_jsonl(out)) >= len(expected), timeout=20, must=False)
    assert [a["data"]["line"] for a in read_jsonl(out)] == expected


def test_bad_regex_and_bad_rule_keys_are_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        """
[[log]]
name = "app"
paths = ["app.log"]
rules = [
  { match = "ok" },
  { match = "unclosed(", severity = "loud" },
  { match = "x", threshold = "ten in 1m" },
  { match = "y", title = "{nope}" },
]
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = "\n".join(caught.value.errors)
    assert "[[log]] #1 (name 'app'): rules.1.match: invalid regex 'unclosed('" in text
    assert "rules.1.severity: unknown severity 'loud'" in text
    assert "rules.2.threshold: 'ten in 1m' is not a threshold" in text
    assert "unknown field {nope}" in text


def test_config_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "watchkeeper.toml"
    config.write_text('[[log]]\nname = "app"\npaths = ["logs/*.log"]\nrules = [{match = "E"}]\n')
    loaded = load_config(config)
    assert [str(p) for p in loaded.watchers[0].paths] == [str(tmp_path / "logs" / "*.log")]  # type: ignore[attr-defined]


def tail_alerts(tmp_path: Path, written: str, *options: str) -> list[dict[str, Any]]:
    """Run ``watchkeeper tail app.log OPTIONS``; once it has looked, append ``written``; return
    the alerts of the jsonl notifier."""
    log = tmp_path / "app.log"
    out = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "watchkeeper", "tail", "app.log", *options),
            *("--notify", f"jsonl:{out}", "--state", "wk.db", "-v"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until((tmp_path / "wk.db").exists, timeout=20)
        wait_until(lambda: first_check_done(tmp_path / "wk.db", "tail"), timeout=20)
        with log.open("a") as f:
            f.write(written)
        return list(wait_until(lambda: read_jsonl(out), timeout=20))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_tail_command_alerts_on_a_matching_line(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("old CRITICAL line\n")
    written = "FATAL disk full\n"
    alerts = tail_alerts(tmp_path, written, "--match", "CRIT|FATAL", "--severity", "critical")
    assert [(a["title"], a["severity"]) for a in alerts] == [("FATAL disk full", "critical")]
    assert alerts[0]["data"]["path"] == str(log)


def test_tail_command_sends_a_traceback_as_one_alert(tmp_path: Path) -> None:
    (tmp_path / "app.log").touch()
    trace = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'k'\n"
    alerts = tail_alerts(
        tmp_path, trace + "INFO next\n", "--match", "^Traceback", "--block", "python"
    )
    assert [a["title"] for a in alerts] == ["Traceback (most recent call last): … KeyError: 'k'"]
    assert alerts[0]["data"]["line"] == trace.rstrip("\n")


def test_tail_command_rejects_a_bad_regex(tmp_path: Path) -> None:
    result = run_cli("tail", "x.log", "--match", "a(", "--state", "wk.db", cwd=tmp_path)
    assert result.returncode == 1
    assert "rules.0.match: invalid regex 'a('" in result.stderr


def test_inotify_wakes_for_followed_files_only(tmp_path: Path) -> None:
    """The state file may live next to the logs: its writes must not wake the watcher, or each
    commit would trigger the next check and the thread would never go idle."""
    watch = FolderWatch()
    if not watch.usable:
        pytest.skip("inotify is not available on this system")
    wake = threading.Event()
    try:
        watch.update([str(tmp_path)], {"app.log"}, ["*.log"])
        (tmp_path / "wk.db").write_bytes(b"state")
        (tmp_path / "wk.db-wal").write_bytes(b"wal")
        started = time.monotonic()
        watch.wait(wake, 0.3)
        assert time.monotonic() - started >= 0.3  # nothing relevant happened: it slept it out
        (tmp_path / "other.log").write_text("a line\n")  # a new glob member
        started = time.monotonic()
        watch.wait(wake, 10)
        assert time.monotonic() - started < 5
        wake.set()  # stop / check-now end a wait at once
        started = time.monotonic()
        watch.wait(wake, 10)
        assert time.monotonic() - started < 1
    finally:
        watch.close()
