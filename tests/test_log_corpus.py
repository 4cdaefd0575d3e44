"""Rules on real-world log lines agree with GNU grep, the tool a user checks a pattern with.

``tests/data/corpus.log`` holds lines of many daemons' formats (syslog, sshd, kernel, nginx and
Apache access and error logs, Python logging with a traceback, a Java stack trace, logfmt, JSON,
a journald export, PostgreSQL, a Go panic), blank and empty lines; the test adds invalid UTF-8
and a NUL. For each pattern, the lines each engine alerts must be the lines ``grep`` prints, run
with ``LC_ALL=C`` (bytes, as an ASCII rule matches) and ``-a`` (a NUL does not make the file
"binary").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_log import ENGINES, Follow

CORPUS = Path(__file__).parent / "data" / "corpus.log"
ODD = b"Nov 30 06:33:00 web1 app[1200]: bad bytes \xff\xfe ERROR\nNUL\x00 in a line CRITICAL\n"

# (rule pattern, grep flags, grep pattern): the same text where ERE/PCRE read it as re does.
CASES = [
    ("^$", "-E", "^$"),
    (r"^\s*$", "-P", r"^\s*$"),
    ("CRITICAL|FATAL|crit", "-E", "CRITICAL|FATAL|crit"),
    ("(?i)error", "-iE", "error"),
    (r"^\S+ \S+ ERROR", "-P", r"^\S+ \S+ ERROR"),
    (r"\[(error|crit|emerg)\]", "-E", r"\[(error|crit|emerg)\]"),
    (r'" [45][0-9][0-9] ', "-E", r'" [45][0-9][0-9] '),
    ("[0-9]$", "-E", "[0-9]$"),
    (r"^[A-Z][a-z]{2} [ 0-9][0-9] ", "-E", r"^[A-Z][a-z]{2} [ 0-9][0-9] "),
    ("(Exception|Error)(: |$)", "-E", "(Exception|Error)(: |$)"),
    (r"\bsshd\[\d+\]: Failed password", "-P", r"\bsshd\[\d+\]: Failed password"),
    (r"^\tat |^Caused by: ", "-P", r"^\tat |^Caused by: "),
    ("^PRIORITY=[0-3]$", "-E", "^PRIORITY=[0-3]$"),
    (r"(?<=user=)root\b", "-P", r"(?<=user=)root\b"),
    (r"^(\w)\w*=.*\1$", "-P", r"^(\w)\w*=.*\1$"),  # a backreference
    (r"\xff|\x00", "-P", r"\xff|\x00"),
]


@pytest.mark.skipif(shutil.which("grep") is None, reason="GNU grep is the oracle here")
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("pattern", "flags", "grep_pattern"), CASES)
def test_matched_lines_are_what_grep_prints(
    tmp_path: Path, engine: str, pattern: str, flags: str, grep_pattern: str
) -> None:
    log = tmp_path / "corpus.log"
    log.write_bytes(CORPUS.read_bytes() + ODD)
    grep = subprocess.run(
        ["grep", "-a", "-n", flags, grep_pattern, str(log)],
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    assert grep.returncode in (0, 1), grep.stderr
    printed = [int(line.split(b":", 1)[0]) for line in grep.stdout.splitlines()]
    starts = [0]
    for line in log.read_bytes().splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    f = Follow(engine, [log], rules=[{"match": pattern}])
    try:
        f.check()
    finally:
        f.close()
    alerted = [starts.index(o.data["offset"]) + 1 for o in f.seen]
    assert alerted == printed
    assert printed, "a case that matches nothing proves little"
