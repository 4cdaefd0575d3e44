"""No rule can freeze the process: catastrophic patterns against a real agent and a real script.

``(a+)+b`` with the line ``'a' * 36 + 'X ab'`` used to hold the GIL for hours in ``re``: every
watcher stopped, signals went unhandled, and a restart froze on the same line. It now runs on
RE2 (linear time); a pattern only a backtracking engine runs (``(a|a)+(?=b)``) has a per-line
time limit, and a line that hits it is skipped by that rule and reported once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import read_jsonl, run_cli, wait_until
from tests.test_exit import run_program, start_agent
from tests.test_log import Follow, append
from watchkeeper.store import Store
from watchkeeper.web.metrics import metrics_registry, render

EVIL = "a" * 36 + "X ab"  # (a+)+b matches it, after trying 2^36 ways in a backtracking engine
SLOW = "a" * 30 + "X"  # (a|a)+(?=b): exponential for regex too; hits line_timeout
RULES = """rules = [
  { match = '(a+)+b', severity = "critical" },
  { match = '(a|a)+(?=b)', severity = "warning" },
]
line_timeout = "50ms"
"""


def titles(jsonl: Path, watcher: str = "app") -> list[str]:
    return [a["title"] for a in read_jsonl(jsonl) if a["watcher"] == watcher]


def ticks(jsonl: Path) -> int:
    return len(titles(jsonl, "ticker"))


def stop(agent: subprocess.Popen[str], within: float) -> str:
    sent = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=30)
    assert time.monotonic() - sent < within, stderr
    assert agent.returncode == 0, stderr
    return stderr


def test_catastrophic_patterns_freeze_nothing_in_a_real_agent(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, f"{EVIL}\n{SLOW}\nfirst ab\n")
    jsonl = tmp_path / "alerts.jsonl"
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        '[keeper]\nstate = "wk.db"\nshutdown_timeout = "2s"\ndashboard = false\n'
        '[[notify]]\nkind = "jsonl"\npath = "alerts.jsonl"\n'
        '[[custom]]\nname = "ticker"\nevery = "100ms"\ncall = "tests.agent_checks:tick"\n'
        f'[[log]]\nname = "app"\npaths = ["{log}"]\nstart_at = "beginning"\n{RULES}'
    )
    agent = start_agent(config)
    try:
        wait_until(lambda: len(titles(jsonl)) >= 3, timeout=30)
        assert titles(jsonl) == [
            EVIL,
            "first ab",
            "a rule's pattern is too slow on some lines",
        ]
        # The next line alerts at once, and the other watcher keeps its schedule meanwhile.
        before = ticks(jsonl)
        written = time.monotonic()
        append(log, "next ab\n")
        # The acceptance is 1 s; the second is slack for a loaded machine. A freeze fails it.
        assert wait_until(lambda: "next ab" in titles(jsonl), timeout=2.0, must=False), (
            f"no alert for the next line {time.monotonic() - written:.1f}s after it was written"
        )
        wait_until(lambda: ticks(jsonl) >= before + 5, timeout=10)
    finally:
        stderr = stop(agent, within=2.0 + 1.5)
    assert "took longer than line_timeout" in " ".join(stderr.split())  # rich wraps lines
    with Store(tmp_path / "wk.db") as store:
        scraped = render(metrics_registry(store, lambda: 0)).decode()
    assert 'watchkeeper_log_slow_lines_total{watcher="app"} 1.0' in scraped
    # A restart does not freeze either: the same lines again, then one more.
    append(log, f"{EVIL}\n{SLOW}\nafter restart ab\n")
    agent = start_agent(config)
    try:
        wait_until(lambda: "after restart ab" in titles(jsonl), timeout=30)
    finally:
        stop(agent, within=2.0 + 1.5)
    app = titles(jsonl)
    assert app.count(EVIL) == 2  # once per written line, never again
    assert app.count("first ab") == 1


SCRIPT = """
import sys, time
from watchkeeper import Keeper
keeper = Keeper(state=sys.argv[1], notify=[{"kind": "jsonl", "path": sys.argv[2]}],
                shutdown_timeout=1.0)
keeper.log([sys.argv[3]], rules=[{"match": "(a+)+b"}, {"match": "(a|a)+(?=b)"}],
           start_at="beginning", line_timeout="50ms", name="app")
keeper.start()
while not keeper.store.watcher("app") or not keeper.store.watcher("app").checks:
    time.sleep(0.01)  # the program's own work, polling until the first check committed
print(f"main returns {time.time()}", flush=True)
"""


def test_an_embedding_program_exits_on_time(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, f"{EVIL}\n{SLOW}\n" * 3)
    jsonl = tmp_path / "alerts.jsonl"
    returned, ended, _ = run_program("-c", SCRIPT, str(tmp_path / "wk.db"), str(jsonl), str(log))
    assert ended - returned < 1.0 + 1.5
    assert titles(jsonl).count(EVIL) == 3


def test_check_warns_about_patterns_prone_to_catastrophic_backtracking(tmp_path: Path) -> None:
    (tmp_path / "watchkeeper.toml").write_text(
        '[[log]]\nname = "app"\npaths = ["app.log"]\nline_timeout = "50ms"\nrules = [\n'
        "  { match = '(a+)+b' },\n  { match = '(a|a)+(?=b)' },\n"
        "  { match = '(x+x+)+(?!y)z' },\n  { match = 'ERROR [0-9]+' },\n]\n"
    )
    result = run_cli("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert (
        "warning: [[log]] 'app': rules.0.match '(a+)+b' has a repeated group that itself "
        "repeats: catastrophic in a backtracking engine (Python's re); here it runs on RE2, in "
        "linear time"
    ) in said
    assert (
        "warning: [[log]] 'app': rules.2.match '(x+x+)+(?!y)z' has a repeated group that itself "
        "repeats and needs a backtracking engine: lines that take longer than line_timeout "
        "(0.05s) are skipped by this rule and reported"
    ) in said
    assert (
        "warning: [[log]] 'app': rules.1.match '(a|a)+(?=b)' has a repeat over alternatives that "
        "can match the same text and needs a backtracking engine"
    ) in said
    assert said.count("warning:") == 3
    assert "OK" in said


def lines(f: Follow) -> list[str]:
    """The lines alerted (not the slow-pattern condition each check also reports)."""
    return [o.data["line"] for o in f.seen if o.event]


def test_a_check_commits_and_goes_on_after_a_second_of_slow_lines(tmp_path: Path) -> None:
    """Forty lines that each run out of line_timeout take a few seconds: the watcher commits
    what it read after about a second of them and carries on at once (a stop request is seen
    between two checks), and every line is looked at once."""
    log = tmp_path / "app.log"
    append(log, "".join(f"{SLOW}\nline {n} ab\n" for n in range(40)))
    f = Follow("re2", [log], rules=[{"match": "(a|a)+(?=b)"}, {"match": "ab"}], line_timeout="50ms")
    try:
        f.check()
        assert f.watcher.more
        assert 0 < len(lines(f)) < 40
        while f.watcher.more:
            f.check()
    finally:
        f.close()
    assert lines(f) == [f"line {n} ab" for n in range(40)]
    assert f.checkpoint["slow"]["lines"] == 40
