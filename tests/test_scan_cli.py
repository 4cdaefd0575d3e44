"""``watchkeeper scan`` as a user runs it: a real process, inside a private network namespace
(ranges are scanned there only), read back by ``ndiff`` for the XML."""

from __future__ import annotations

import json
import os
import pty
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import require_netns, run_in_netns

CLI = [sys.executable, "-m", "watchkeeper"]

# Runs inside the namespace: two scans with a change between them, in every output format.
SCENARIO = """
import json, os, socket, subprocess, sys
cli = [sys.executable, "-m", "watchkeeper", "scan", "127.0.0.1"]
def run(*args):
    done = subprocess.run([*cli, *args], capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
os.chdir(sys.argv[1] if len(sys.argv) > 1 else os.environ["WORK"])
keep = []
for port in (22, 80, 8080, 65535):
    s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(4096); keep.append(s)
r = {}
r["table"] = run("-p-")
r["json1"] = run("-p", "1-9000,65535", "--json")
open("a.json", "w").write(r["json1"]["out"])
r["xml1"] = run("-p", "1-9000,65535", "--xml")
open("a.xml", "w").write(r["xml1"]["out"])
r["same"] = run("-p", "1-9000,65535", "--diff", "a.json")
keep[1].close()  # 80 closes
s = socket.socket(); s.bind(("127.0.0.1", 3306)); s.listen(4096); keep.append(s)  # 3306 opens
r["changed"] = run("-p", "1-9000,65535", "--json", "--diff", "a.json")
r["xml2"] = run("-p", "1-9000,65535", "--xml")
open("b.xml", "w").write(r["xml2"]["out"])
r["top"] = run("--top-ports", "20", "--exclude-ports", "22", "--json")
r["bad"] = run("-p", "0-10")
print(json.dumps(r))
"""


def test_scan_cli_outputs_diff_and_ndiff(tmp_path: Path) -> None:
    """One namespace, two scans with a change between them, every output format checked.
    (One test rather than several sharing a fixture: under xdist each worker would redo it.)"""
    require_netns()
    env = {"WORK": str(tmp_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "120"}
    runs: dict[str, dict[str, str]] = run_in_netns(SCENARIO, env=env)

    # The table: open ports with service names, and a summary line.
    table = runs["table"]
    assert table["rc"] == 0, table["err"]
    rows = [line for line in table["out"].splitlines() if "127.0.0.1" in line and "│" in line]
    assert [row.split("│")[2].strip() for row in rows] == ["22", "80", "8080", "65535"]
    assert "ssh" in rows[0]
    assert "http-alt" in rows[2]
    assert "65535 ports in" in table["out"]
    assert "4 open, 65531 closed" in table["out"]

    # --json: one document, open ports, the scanned ranges.
    [host] = json.loads(runs["json1"]["out"])["hosts"]
    assert host["scanned"] == "1-9000,65535"
    assert [(p["port"], p["state"], p["service"]) for p in host["ports"]] == [
        (22, "open", "ssh"),
        (80, "open", "http"),
        (8080, "open", "http-alt"),
        (65535, "open", ""),
    ]
    assert host["counts"] == {"open": 4, "closed": 8997, "filtered": 0, "error": 0}
    top = json.loads(runs["top"]["out"])["hosts"][0]
    assert len(top["scanned"].split(",")) == 19  # 20 common ports but 22, none adjacent

    # --diff: exit 0 when nothing changed, 1 with what opened and closed.
    same, changed = runs["same"], runs["changed"]
    assert same["rc"] == 0, same["err"]
    assert changed["rc"] == 1, changed["err"]
    assert "+ 127.0.0.1:3306 (mysql) opened" in changed["err"]
    assert "- 127.0.0.1:80 (http) closed" in changed["err"]
    json.loads(changed["out"])  # stdout stays a clean JSON document

    # Bad input: exit 2 with the reason, no traceback.
    bad = runs["bad"]
    assert bad["rc"] == 2
    assert "'0-10' is outside 1-65535" in bad["err"]
    assert "Traceback" not in bad["err"]

    # --xml: ndiff reads it and shows the change.
    if shutil.which("ndiff") is None:
        pytest.skip("ndiff not installed (Debian package ndiff); the other outputs passed")
    done = subprocess.run(
        ["ndiff", str(tmp_path / "a.xml"), str(tmp_path / "b.xml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # ndiff: 1 means the scans differ
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["-80/tcp", "open", "http"] in rows
    assert ["+3306/tcp", "open", "mysql"] in rows
    same_xml = subprocess.run(
        ["ndiff", "--xml", str(tmp_path / "a.xml"), str(tmp_path / "a.xml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert same_xml.returncode == 0, same_xml.stderr  # identical scans: no difference


def test_help_names_the_safety_rule() -> None:
    done = subprocess.run([*CLI, "scan", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "Scan only hosts you are allowed to scan" in done.stdout


def test_progress_bar_with_rate_goes_to_a_terminal_stderr() -> None:
    closed = [socket.socket() for _ in range(30)]  # bound, not listening: ours, and closed
    for sock in closed:
        sock.bind(("127.0.0.1", 0))
    ports = ",".join(str(s.getsockname()[1]) for s in closed)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [*CLI, "scan", "127.0.0.1", "-p", ports, "--rate", "50", "--json"],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            check=False,
            env={**os.environ, "COLUMNS": "120"},
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        for sock in closed:
            sock.close()
    assert done.returncode == 0
    assert json.loads(done.stdout)["hosts"][0]["counts"]["closed"] == 30
    text = shown.decode("utf-8", "replace")
    assert "scanning" in text
    assert "ports/s" in text
    assert "30 ports in" in text  # the summary follows the bar on stderr


def test_diff_does_not_call_a_port_whose_probe_failed_closed() -> None:
    from watchkeeper.scan.formats import Snapshot, diff

    before = {"h": Snapshot("h", frozenset({22, 80}), frozenset({22, 80}))}
    after = {"h": Snapshot("h", frozenset({22, 80}), frozenset(), frozenset({22}))}
    changes = diff(before, after)
    assert [(c.port, c.change) for c in changes] == [(80, "closed")]  # 22 is unknown, not closed
