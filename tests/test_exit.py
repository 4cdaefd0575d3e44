"""Exit behaviour of a real program that embeds a Keeper, and of the agent under signals."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RecordingServer, smtp_spec, wait_until
from watchkeeper import StoreError
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_script(
    state: Path, shutdown_timeout: float, notifier: dict[str, object], *flags: str
) -> tuple[float, float, str]:
    """Run the embedded script; return (main-returned time, exit time, stderr)."""
    script = str(ROOT / "tests" / "embedded_script.py")
    return run_program(script, str(state), str(shutdown_timeout), json.dumps(notifier), *flags)


def run_program(*args: str) -> tuple[float, float, str]:
    """Run a Python program that prints "main returns <time>"; (that time, exit time, stderr)."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    ended = time.time()
    assert proc.returncode == 0, proc.stderr
    returned = float(proc.stdout.split("main returns ")[1])
    return returned, ended, proc.stderr


@pytest.fixture
def silent_smtp() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung SMTP server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_script_exits_promptly_after_its_last_alert_is_delivered(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    returned, ended, _ = run_script(
        tmp_path / "wk.db", 5.0, smtp_spec(smtp_sink.port, timeout="60s")
    )
    assert len(smtp_sink.messages) == 1
    assert ended - returned < 1.0


def test_hung_smtp_server_bounds_exit_and_the_next_run_delivers_once(
    tmp_path: Path, silent_smtp: int, smtp_sink: SmtpSink
) -> None:
    state = tmp_path / "wk.db"
    returned, ended, stderr = run_script(state, 1.5, smtp_spec(silent_smtp, timeout="60s"))
    assert ended - returned < 1.5 + 1.0
    assert "deliveries pending" in stderr
    with Store(state) as store:
        assert store.delivery_counts() == {"smtp": {"pending": 1}}

    run_script(state, 5.0, smtp_spec(smtp_sink.port, timeout="60s"))
    assert len(smtp_sink.messages) == 1  # the pending one; the condition did not re-alert
    assert "last words" in str(smtp_sink.messages[0]["Subject"])
    with Store(state) as store:
        assert store.delivery_counts() == {"smtp": {"sent": 1}}


def test_apprise_deliveries_wait_at_exit_instead_of_failing(
    tmp_path: Path, http_receiver: RecordingServer
) -> None:
    pytest.importorskip("apprise")
    state = tmp_path / "wk.db"
    target = {"kind": "apprise", "url": "json://" + http_receiver.url.removeprefix("http://")}
    # A long batch window keeps the dispatcher from sending before main returns; the exit flush
    # closes open windows for every exit-safe notifier, but must leave apprise's pending.
    run_script(state, 2.0, {**target, "batch": "1h"})
    with Store(state) as store:
        assert store.delivery_counts() == {"apprise": {"pending": 1}}
    assert http_receiver.requests == []
    run_script(state, 5.0, target, "drain")
    (request,) = http_receiver.wait_for(1)
    assert request.json()["title"] == "job: last words"  # apprise names the watcher
    with Store(state) as store:
        assert store.delivery_counts() == {"apprise": {"sent": 1}}


def write_agent_config(tmp_path: Path, call: str, notify: str, every: str = "20ms") -> Path:
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        f'[keeper]\nstate = "wk.db"\nshutdown_timeout = "2s"\n{notify}'
        f'[[custom]]\nname = "w"\nevery = "{every}"\ncall = "{call}"\n'
    )
    return config


JSONL = '[[notify]]\nkind = "jsonl"\npath = "alerts.jsonl"\n'


def start_agent(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)],
        cwd=config.parent,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_agent_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    config = write_agent_config(tmp_path, "tests.agent_checks:always", JSONL)
    agent = start_agent(config)
    jsonl = tmp_path / "alerts.jsonl"
    wait_until(lambda: jsonl.exists() and jsonl.read_text(), timeout=20)
    sent = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0 + 1.0
    assert agent.returncode == 0, stderr


def test_sigkill_at_any_moment_loses_no_committed_alert(
    tmp_path: Path, http_receiver: RecordingServer
) -> None:
    """Kill the agent while alerts are being made and delivered to a slow webhook, 10 times."""
    http_receiver.delay = 0.03  # deliveries are in flight most of the time: kills land mid-send
    hook = f'[[notify]]\nkind = "webhook"\nurl = "{http_receiver.url}"\ntimeout = "5s"\n'
    config = write_agent_config(tmp_path, "tests.agent_checks:tick", hook)
    state = tmp_path / "wk.db"
    rng = random.Random(7)
    kills = 10

    def count() -> int:
        try:
            with Store(state, readonly=True) as store:
                return store.count_alerts()
        except StoreError:  # not made, or not migrated yet, by the first agent
            return 0

    for _ in range(kills):
        before = count()
        agent = start_agent(config)
        more = rng.randint(1, 12)  # the kill lands after a random number of new commits
        wait_until(lambda target=before + more: count() >= target, timeout=30)
        agent.kill()
        agent.communicate(timeout=10)
    with Store(state) as store:
        committed = {a.uid for a in store.alerts(limit=10**6)}
        assert store.delivery_counts()["webhook"].get("pending", 0) > 0  # the kills left work
    agent = start_agent(config)  # a final clean run drains the outbox
    wait_until(
        lambda: committed <= {r.headers["Idempotency-Key"] for r in http_receiver.requests},
        timeout=60,
    )
    agent.send_signal(signal.SIGTERM)
    agent.communicate(timeout=10)
    delivered = [r.headers["Idempotency-Key"] for r in http_receiver.requests]
    assert committed <= set(delivered)
    # At least once: a kill between the receiver's answer and the outbox's record of it repeats
    # that one alert at the next start (the idempotency key lets the receiver drop it).
    assert len(delivered) - len(set(delivered)) <= kills


def test_exec_delivers_in_the_exit_path_and_a_hung_command_waits_for_the_next_run(
    tmp_path: Path,
) -> None:
    """Popen and selectors need no thread: a command runs while the interpreter exits. One that
    hangs past ``shutdown_timeout`` leaves its alert pending for the next run, which sends it."""
    got, pid = tmp_path / "got.txt", tmp_path / "hung.pid"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$WATCHKEEPER_TITLE" >> {got}\n')
    hook.chmod(0o755)
    hung = tmp_path / "hung"
    hung.write_text(f"#!/bin/sh\necho $$ > {pid}\nexec sleep 60\n")
    hung.chmod(0o755)
    state = tmp_path / "wk.db"
    # A long batch window keeps the dispatcher from sending before main returns: the exit flush
    # closes it, so the command runs in the exit path.
    run_script(state, 5.0, {"kind": "exec", "command": [str(hook)], "batch": "1h"})
    assert got.read_text() == "last words\n"

    state2 = tmp_path / "wk2.db"
    try:
        returned, ended, stderr = run_script(
            state2, 1.5, {"kind": "exec", "command": [str(hung)], "timeout": "60s"}
        )
        assert ended - returned < 1.5 + 1.0 + 1.0  # shutdown_timeout, the abort's grace, slack
        assert "deliveries pending" in stderr

        def gone() -> bool:
            try:
                os.kill(int(pid.read_text()), 0)
            except ProcessLookupError:
                return True
            return False

        assert wait_until(gone, timeout=5, must=False), "the command outlived the program"
    finally:
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):  # it leads its process group
                os.killpg(int(pid.read_text()), signal.SIGKILL)
    with Store(state2) as store:
        assert store.delivery_counts() == {"exec": {"pending": 1}}
    run_script(state2, 5.0, {"kind": "exec", "command": [str(hook)]}, "drain")
    assert got.read_text() == "last words\nlast words\n"  # one for each state file
    with Store(state2) as store:
        assert store.delivery_counts() == {"exec": {"sent": 1}}
