"""``watchkeeper follow`` end to end: a real agent and a real follow, both child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli, wait_until
from tests.web_agent import ROOT, Agent


class Follow:
    """A ``watchkeeper follow`` child process writing to files."""

    def __init__(self, folder: Path, *args: str) -> None:
        folder.mkdir(exist_ok=True)
        self.out = folder / "follow.out"
        self.err = folder / "follow.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("WATCHKEEPER_TOKEN", None)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchkeeper", "follow", *args],
                stdout=out,
                stderr=err,
                env=env,
            )

    def lines(self) -> list[str]:
        return self.out.read_text(encoding="utf-8", errors="replace").splitlines()

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(tmp_path).start()
    yield running
    running.stop()


def alert_titles(agent: Agent) -> list[str]:
    return [a["title"] for a in httpx.get(agent.url + "/api/alerts").json()]


def test_follow_prints_every_alert_once_across_an_agent_restart(
    agent: Agent, tmp_path: Path
) -> None:
    agent.fire("one")
    agent.fire("two", "error")
    wait_until(lambda: len(alert_titles(agent)) == 2)
    follow = Follow(tmp_path, "--url", agent.url, "--after-id", "0", "--json")
    try:
        wait_until(lambda: len(follow.lines()) == 2)
        assert [r["title"] for r in follow.records()] == ["one", "two"]
        agent.fire("three")
        wait_until(lambda: len(follow.lines()) == 3)

        # The agent goes away; alerts keep being made for when it is back.
        assert agent.stop() == 0
        wait_until(lambda: "retrying in" in follow.stderr())
        agent.fire("four")
        agent.fire("five", "critical")
        agent.bind = f"127.0.0.1:{agent.port}"
        agent.start()
        wait_until(lambda: len(follow.lines()) == 5, timeout=20)
        agent.fire("six")
        wait_until(lambda: len(follow.lines()) == 6)
        records = follow.records()
        assert [r["title"] for r in records] == ["one", "two", "three", "four", "five", "six"]
        assert [r["id"] for r in records] == [1, 2, 3, 4, 5, 6]
        assert "will resume after alert 3" in follow.stderr()
        assert follow.interrupt() == 0
        assert "Traceback" not in follow.stderr()
        assert len(follow.lines()) == 6
    finally:
        follow.kill()


def test_follow_since_a_time_or_a_duration_like_alerts(agent: Agent, tmp_path: Path) -> None:
    """``--since`` takes what it takes in ``alerts``: a duration or a time, never an id."""
    agent.fire("old one")
    agent.fire("old two")
    wait_until(lambda: len(alert_titles(agent)) == 2)
    agent.fire("new one")
    wait_until(lambda: len(alert_titles(agent)) == 3)
    moment = httpx.get(agent.url + "/api/alerts").json()[2]["created_at"]  # ISO 8601, UTC
    since_time = Follow(tmp_path, "--url", agent.url, "--since", moment, "--json")
    recent = Follow(tmp_path / "recent", "--url", agent.url, "--since", "1h", "--json")
    now = Follow(tmp_path / "now", "--url", agent.url, "--since", "0s", "--json")
    try:
        wait_until(lambda: len(since_time.lines()) == 1)
        wait_until(lambda: len(recent.lines()) == 3)
        wait_until(lambda: "following" in now.stderr())
        agent.fire("live")
        wait_until(lambda: len(since_time.lines()) == 2)
        wait_until(lambda: len(recent.lines()) == 4)
        wait_until(lambda: len(now.lines()) == 1)
        assert [r["title"] for r in since_time.records()] == ["new one", "live"]
        assert [r["title"] for r in recent.records()] == ["old one", "old two", "new one", "live"]
        assert [r["title"] for r in now.records()] == ["live"]  # none since then: live only
    finally:
        for follow in (since_time, recent, now):
            follow.kill()
    wrong = run_cli("follow", "--url", agent.url, "--since", "42x", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "'42x': use a duration like 1h or a time like 2026-11-27T10:00" in wrong.stderr


def test_follow_prints_readable_lines_that_cannot_drive_the_terminal(
    agent: Agent, tmp_path: Path
) -> None:
    follow = Follow(tmp_path, "--url", agent.url, "--severity", "error")
    try:
        wait_until(lambda: "following" in follow.stderr())
        agent.fire("just so", "info")
        agent.fire("\x1b[2J\x1b]0;pwned\x07 disk \x9b31m full", "error")
        wait_until(follow.lines)
        agent.fire("last", "critical")
        wait_until(lambda: len(follow.lines()) == 2)
        text = follow.out.read_text(encoding="utf-8")
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\x9b" not in text
        first, second = follow.lines()
        assert " ERROR " in first
        assert " probe " in first
        assert "disk" in first
        assert "full" in first
        assert first.endswith("#2")
        assert "CRITICAL" in second
        assert "last" in second
        assert "just so" not in text
        assert follow.interrupt() == 0
    finally:
        follow.kill()


def test_follow_with_a_token(tmp_path: Path) -> None:
    agent = Agent(tmp_path, token="t0ken").start()
    try:
        refused = Follow(tmp_path, "--url", agent.url)
        assert refused.proc.wait(15) == 1
        assert "401 unauthorized; pass --token" in refused.stderr()
        follow = Follow(tmp_path, "--url", agent.url, "--token", "t0ken", "--json")
        try:
            wait_until(lambda: "following" in follow.stderr())
            agent.fire("hello")
            wait_until(follow.lines)
            assert follow.records()[0]["title"] == "hello"
            assert follow.interrupt() == 0
        finally:
            follow.kill()
    finally:
        agent.stop()


def test_run_refuses_a_public_dashboard_without_a_token(tmp_path: Path) -> None:
    config = tmp_path / "wk.toml"
    config.write_text('[keeper]\nstate = "s.db"\ndashboard = "0.0.0.0:8470"\n')
    result = subprocess.run(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "dashboard = '0.0.0.0:8470' is reachable beyond this machine" in result.stderr
    assert "[keeper] token" in result.stderr
    assert not (tmp_path / "s.db").exists()


def test_follow_into_a_pipe_that_closes_ends_quietly(agent: Agent) -> None:
    agent.fire("first")
    agent.fire("second")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchkeeper",
            "follow",
            "--url",
            agent.url,
            "--after-id",
            "0",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        assert json.loads(proc.stdout.readline())["title"] == "first"  # like `| head -1`
        proc.stdout.close()
        agent.fire("third")
        assert proc.wait(15) == 0
        errors = proc.stderr.read().decode()
        assert "Traceback" not in errors
        assert "BrokenPipe" not in errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()
