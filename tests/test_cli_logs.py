"""The agent's own log lines as a machine reads them: a real ``watchkeeper run`` with stderr to a
pipe (as under systemd, Docker or a log shipper) writes one line per record with an ISO 8601 UTC
time, the level and the logger, and a traceback as indented lines; ``--log-format json`` writes
one JSON object per line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
HEAD = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$"
)


def run_broken_agent(tmp_path: Path, *flags: str, journald: bool = False) -> str:
    """Run an agent whose one watcher always raises until its alert is out; return its stderr.

    Its stderr is a pipe, or with ``journald`` a file named by ``$JOURNAL_STREAM``, as systemd
    sets it for a service whose output goes to the journal.
    """
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        '[keeper]\nstate = "wk.db"\ndashboard = "127.0.0.1:0"\n'
        '[[notify]]\nkind = "jsonl"\npath = "alerts.jsonl"\n'
        '[[custom]]\nname = "queue"\nevery = "0.2s"\nfail_after = 2\n'
        'call = "tests.agent_checks:broken"\n'
    )
    journal = (tmp_path / "journal").open("w+") if journald else None
    env = dict(ENV)
    if journal is not None:
        stat = os.fstat(journal.fileno())
        env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
    agent = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config), *flags],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=journal or subprocess.PIPE,
    )
    try:
        jsonl = tmp_path / "alerts.jsonl"
        wait_until(lambda: jsonl.exists() and jsonl.read_text(), timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    if journal is not None:
        journal.close()
        stderr = (tmp_path / "journal").read_text()
    assert agent.returncode == 0, stderr
    return stderr


def records(stderr: str) -> list[tuple[re.Match[str], list[str]]]:
    """Each record's head line and its indented further lines; fails on any other line."""
    found: list[tuple[re.Match[str], list[str]]] = []
    for line in stderr.splitlines():
        head = HEAD.match(line)
        if head is not None:
            found.append((head, []))
        else:
            assert found, f"a first line that is not a record: {line!r}"
            assert line.startswith("    "), f"neither a record nor indented: {line!r}"
            found[-1][1].append(line)
    return found


def test_agent_logs_one_line_per_record_to_a_pipe(tmp_path: Path) -> None:
    stderr = run_broken_agent(tmp_path)
    assert "\x1b" not in stderr  # no colours for a machine
    assert all(line == line.rstrip() for line in stderr.splitlines())  # no wrapping padding
    found = records(stderr)
    failed = [
        (head, rest)
        for head, rest in found
        if head[4] == "watcher queue: check failed (1 in a row): RuntimeError: no route to queue"
    ]
    assert len(failed) == 1, stderr
    head, traceback = failed[0]
    assert head[2] == "WARNING"
    assert head[3] == "watchkeeper"
    assert traceback[0] == "    Traceback (most recent call last):"
    assert traceback[-1] == "    RuntimeError: no route to queue"
    assert any('agent_checks.py", line' in line for line in traceback)
    # The second failure in a row is one line: its traceback was already shown.
    second = [h for h, rest in found if "check failed (2 in a row)" in h[4]]
    assert second
    assert all(not rest for h, rest in found if h in second)
    times = [h[1] for h, _ in found]
    assert times == sorted(times)
    # What the agent says for scripts is a record too, ending with what they look for.
    assert any(re.fullmatch(r"dashboard: http://127\.0\.0\.1:\d+", h[4]) for h, _ in found)


def test_agent_logs_json_lines(tmp_path: Path) -> None:
    stderr = run_broken_agent(tmp_path, "--log-format", "json")
    docs = [json.loads(line) for line in stderr.splitlines()]  # every line is one object
    assert all(set(d) >= {"time", "level", "logger", "thread", "message"} for d in docs)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["time"]) for d in docs)
    (first,) = [d for d in docs if "check failed (1 in a row)" in d["message"]]
    assert first["level"] == "WARNING"
    assert first["traceback"].startswith("Traceback (most recent call last):")
    assert first["traceback"].endswith("RuntimeError: no route to queue")
    assert any(d["message"].startswith("dashboard: http://127.0.0.1:") for d in docs)


def test_journald_gets_priority_prefixes(tmp_path: Path) -> None:
    """Under systemd, stderr is journald's stream, which ``$JOURNAL_STREAM`` names by device and
    inode: every line then starts with its priority (``<4>`` warning), which journald strips."""
    stderr = run_broken_agent(tmp_path, journald=True)
    lines = stderr.splitlines()
    assert all(re.match(r"<[2-7]>", line) for line in lines), stderr
    at = lines.index(next(line for line in lines if "check failed (1 in a row)" in line))
    assert HEAD.match(lines[at][3:])
    assert lines[at].startswith("<4>")
    assert lines[at + 1] == "<4>    Traceback (most recent call last):"
    assert any(re.match(r"<6>\S+ INFO watchkeeper: ", line) for line in lines)


def test_the_dashboard_servers_records_are_json_lines_too(tmp_path: Path) -> None:
    """uvicorn's own records (a request that is not HTTP) go through the agent's format."""
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        '[keeper]\nstate = "wk.db"\ndashboard = "127.0.0.1:0"\n'
        '[[notify]]\nkind = "jsonl"\npath = "alerts.jsonl"\n'
        '[[custom]]\nname = "queue"\nevery = "1h"\ncall = "tests.agent_checks:broken"\n'
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config), "--log-format", "json"],
        cwd=tmp_path,
        env=ENV,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert agent.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(agent.stderr.readline, "")))
    reader.start()
    try:
        port = wait_until(
            lambda: next(
                (
                    m[1]
                    for line in list(lines)
                    if (m := re.search(r"dashboard: http://[\d.]+:(\d+)", line))
                ),
                None,
            ),
            timeout=30,
        )
        with socket.create_connection(("127.0.0.1", int(port))) as sock:
            sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                sock.recv(1000)
        wait_until(lambda: any("Invalid HTTP" in line for line in list(lines)), timeout=10)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        reader.join()
    for line in lines:
        json.loads(line)  # every line, uvicorn's included
