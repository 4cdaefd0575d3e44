"""Exit behaviour of a real program that embeds a Keeper, and of the agent under signals."""

from __future__ import annotations

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

from tests.conftest import RecordingServer, wait_until
from watchkeeper.smtpsink import SmtpSink
from watchkeeper.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def smtp(port: int) -> dict[str, object]:
    return {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "60s",
        "sender": "wk@example.com",
        "to": ["ops@example.com"],
    }


def run_script(
    state: Path, shutdown_timeout: float, notifier: dict[str, object]
) -> tuple[float, float, str]:
    """Run the embedded script; return (main-returned time, exit time, stderr)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "embedded_script.py"),
            str(state),
            str(shutdown_timeout),
            json.dumps(notifier),
        ],
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
    returned, ended, _ = run_script(tmp_path / "wk.db", 5.0, smtp(smtp_sink.port))
    assert len(smtp_sink.messages) == 1
    assert ended - returned < 1.0


def test_hung_smtp_server_bounds_exit_and_the_next_run_delivers_once(
    tmp_path: Path, silent_smtp: int, smtp_sink: SmtpSink
) -> None:
    state = tmp_path / "wk.db"
    returned, ended, stderr = run_script(state, 1.5, smtp(silent_smtp))
    assert ended - returned < 1.5 + 1.0
    assert "deliveries pending" in stderr
    with Store(state) as store:
        assert store.delivery_counts() == {"smtp": {"pending": 1}}

    run_script(state, 5.0, smtp(smtp_sink.port))
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
    run_script(state, 5.0, target)
    (request,) = http_receiver.wait_for(1)
    assert request.json()["title"] == "last words"
    with Store(state) as store:
        assert store.delivery_counts() == {"apprise": {"sent": 1}}


def write_agent_config(tmp_path: Path, call: str, every: str = "20ms") -> Path:
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        f'[keeper]\nstate = "wk.db"\nshutdown_timeout = "2s"\n'
        f'[[notify]]\nkind = "jsonl"\npath = "alerts.jsonl"\n'
        f'[[custom]]\nname = "w"\nevery = "{every}"\ncall = "{call}"\n'
    )
    return config


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
    config = write_agent_config(tmp_path, "tests.agent_checks:always")
    agent = start_agent(config)
    jsonl = tmp_path / "alerts.jsonl"
    wait_until(lambda: jsonl.exists() and jsonl.read_text(), timeout=20)
    sent = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=10)
    assert time.monotonic() - sent < 2.0 + 1.0
    assert agent.returncode == 0, agent.stderr.read() if agent.stderr else ""
    assert agent.stderr is not None
    agent.stderr.close()
    assert agent.stdout is not None
    agent.stdout.close()


def test_sigkill_at_any_moment_loses_no_committed_alert(tmp_path: Path) -> None:
    config = write_agent_config(tmp_path, "tests.agent_checks:tick")
    jsonl = tmp_path / "alerts.jsonl"
    rng = random.Random(7)
    for _ in range(8):
        agent = start_agent(config)
        time.sleep(rng.uniform(0.3, 0.9))  # the kill lands at a random moment, on purpose
        agent.kill()
        agent.wait(timeout=10)
        agent.communicate()
    with Store(tmp_path / "wk.db") as store:
        committed = {a.uid for a in store.alerts(limit=10**6)}
    assert len(committed) > 8
    # A final clean run drains whatever the kills left in the outbox.
    agent = start_agent(config)
    wait_until(
        lambda: committed <= {json.loads(x)["uid"] for x in jsonl.read_text().splitlines()},
        timeout=30,
    )
    agent.send_signal(signal.SIGTERM)
    agent.communicate(timeout=10)
    delivered = [json.loads(x)["uid"] for x in jsonl.read_text().splitlines()]
    assert committed <= set(delivered)
    # At-least-once: a kill between writing and recording may repeat an alert, rarely.
    assert len(delivered) - len(set(delivered)) <= 8
