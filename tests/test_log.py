"""The log watcher's checks on real files: rotation of every kind, partial and odd lines, rules.

Most tests drive ``LogWatcher.check`` directly, one check at a time, with the checkpoint passed
through JSON exactly as the store keeps it; that makes each rotation step deterministic. The
hyperscan and pure-``re`` prefilters both run every test when hyperscan is installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_until
from watchkeeper.alerts import Observation, Severity
from watchkeeper.config import watcher_config
from watchkeeper.watchers.base import PARTS, apply_parts
from watchkeeper.watchers.log import LogWatcher
from watchkeeper.watchers.logconfig import LogConfig
from watchkeeper.watchers.logmatch import hyperscan_available
from watchkeeper.watchers.logread import BUFFERED

ENGINES = ["re2", *(["hyperscan"] if hyperscan_available() else [])]


class Follow:
    """A log watcher checked by hand, its checkpoint round-tripped through JSON each time."""

    def __init__(self, engine: str, paths: list[Path], **options: Any) -> None:
        options.setdefault("rules", [{"match": "CRITICAL", "severity": "critical"}])
        options.setdefault("start_at", "beginning")
        options.setdefault("rotate_wait", 0)
        options.setdefault("inotify", False)
        table = {"name": "app", "paths": [str(p) for p in paths], **options}
        config = watcher_config("log", table, "test")
        assert isinstance(config, LogConfig)
        self.watcher = LogWatcher(config, use_hyperscan=engine == "hyperscan")
        # Hyperscan refuses a pattern that can never match: RE2 searches for such rules alone.
        assert self.watcher.engine == engine or not self.watcher.scanner.prefilter.database
        self.checkpoint: Any = None
        self.seen: list[Observation] = []
        self.changed: dict[str, Any] | None = None
        """The parts the last check changed."""

    def check(self) -> list[Observation]:
        """One check, its parts merged as the runtime does (a copy: an old checkpoint, kept
        to replay a crash, stays as it was)."""
        result = self.watcher.check(self.checkpoint)
        parts = dict((self.checkpoint or {}).get(PARTS, {}))
        apply_parts(parts, result.parts)
        self.changed = result.parts
        self.checkpoint = json.loads(json.dumps({**result.checkpoint, PARTS: parts}))
        self.seen += result.observations
        return result.observations

    @property
    def files(self) -> list[dict[str, Any]]:
        """The followed files' entries, in the order the checks read them."""
        return sorted(self.checkpoint[PARTS].values(), key=lambda d: d["seq"])

    def lines(self) -> list[str]:
        return [o.data["line"] for o in self.seen]

    def close(self) -> None:
        self.watcher.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def follow(engine: str, tmp_path: Path) -> Iterator[Any]:
    made: list[Follow] = []

    def make(*paths: Path, **options: Any) -> Follow:
        f = Follow(engine, list(paths) or [tmp_path / "app.log"], **options)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def append(path: Path, text: str | bytes) -> None:
    with path.open("ab") as out:
        out.write(text.encode() if isinstance(text, str) else text)


def numbered(first: int, last: int, every: int = 3) -> str:
    """Lines ``first..last``; every ``every``-th is CRITICAL."""
    return "".join(
        f"{i} {'CRITICAL' if i % every == 0 else 'info'} line {i}\n" for i in range(first, last + 1)
    )


def criticals(first: int, last: int, every: int = 3) -> list[str]:
    return [f"{i} CRITICAL line {i}" for i in range(first, last + 1) if i % every == 0]


def test_lines_alert_once_and_a_restart_continues_at_the_offset(
    follow: Any, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 10))
    f = follow()
    f.check()
    assert f.lines() == criticals(1, 10)
    assert f.check() == []
    append(log, numbered(11, 20))
    restarted = follow()
    restarted.checkpoint = f.checkpoint
    restarted.check()
    assert restarted.lines() == criticals(11, 20)
    first = f.seen[0].data
    assert first["path"] == str(log)
    assert first["offset"] == len(numbered(1, 2).encode())


def test_start_at_end_skips_history_but_new_files_are_read_whole(
    follow: Any, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 9) + "9 CRITICAL half")
    f = follow(tmp_path / "*.log", start_at="end")
    assert f.check() == []
    append(log, " written\n" + numbered(10, 12))
    (tmp_path / "new.log").write_text("CRITICAL in new file\n")
    f.check()
    assert f.lines() == ["9 CRITICAL half written", *criticals(10, 12), "CRITICAL in new file"]


def test_rename_rotation_reads_the_old_file_to_its_end(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 6))
    f = follow()
    f.check()
    append(log, numbered(7, 9))
    log.rename(tmp_path / "app.log.1")
    append(tmp_path / "app.log.1", numbered(10, 12))  # the writer has not reopened yet
    append(log, numbered(13, 15))
    f.check()
    assert f.lines() == criticals(1, 15)
    assert f.seen[3].data["path"] == str(tmp_path / "app.log.1")


def test_rotation_while_down_is_found_by_identity(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 6))
    f = follow()
    f.check()
    f.close()
    append(log, numbered(7, 9))
    log.rename(tmp_path / "app.log.1")
    (tmp_path / "app.log.1").rename(tmp_path / "app.log.2")  # rotated twice while down
    append(log, numbered(10, 12))
    restarted = follow()
    restarted.checkpoint = f.checkpoint
    restarted.check()
    assert restarted.lines() == criticals(7, 12)


def test_copytruncate_reads_the_rest_from_the_copy(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 6))
    f = follow()
    f.check()
    append(log, numbered(7, 9))
    (tmp_path / "app.log.1").write_bytes(log.read_bytes())  # logrotate's copytruncate
    with log.open("r+b") as out:
        out.truncate(0)
    # Rewritten past the old offset before the next look: size alone cannot tell.
    append(log, numbered(100, 140))
    f.check()
    assert f.lines() == criticals(1, 9) + criticals(100, 140)


def test_truncation_without_a_copy_restarts_at_zero(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 6))
    f = follow()
    f.check()
    with log.open("r+b") as out:
        out.truncate(0)
    append(log, numbered(1, 3))
    f.check()
    assert f.lines() == criticals(1, 6) + criticals(1, 3)


def test_delete_and_recreate_and_inode_reuse(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 6))
    f = follow()
    f.check()
    f.close()  # restart: no descriptor kept, so the inode can be reused
    log.unlink()
    append(log, numbered(1, 3))  # on tmpfs/ext4 the freed inode is usually handed out again
    restarted = follow()
    restarted.checkpoint = f.checkpoint
    restarted.check()
    assert restarted.lines() == criticals(1, 3)


def test_a_deleted_file_still_open_is_read_to_its_end(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 3))
    f = follow()
    f.check()
    with log.open("ab") as writer:
        log.unlink()
        writer.write(numbered(4, 6).encode())
    append(log, numbered(7, 9))
    f.check()
    assert f.lines() == criticals(1, 9)


def test_a_partial_line_waits_for_its_newline_then_for_the_timeout(
    follow: Any, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    append(log, "CRITICAL one\nCRITICAL tw")
    f = follow(partial_timeout="0.2s")
    f.check()
    assert f.lines() == ["CRITICAL one"]
    append(log, "o\nCRITICAL never finished")
    f.check()
    assert f.lines() == ["CRITICAL one", "CRITICAL two"]
    assert f.check() == []
    wait_until(f.check, timeout=5)  # the partial line goes out once partial_timeout has passed
    assert f.lines()[-1] == "CRITICAL never finished"


def test_glob_gains_and_loses_files(follow: Any, tmp_path: Path) -> None:
    f = follow(tmp_path / "*.log")
    f.check()
    for name in ("a", "b", "c"):
        append(tmp_path / f"{name}.log", f"CRITICAL {name}\n")
    append(tmp_path / "other.txt", "CRITICAL not followed\n")
    f.check()
    (tmp_path / "b.log").unlink()
    append(tmp_path / "c.log", "CRITICAL c again\n")
    f.check()
    assert f.lines() == ["CRITICAL a", "CRITICAL b", "CRITICAL c", "CRITICAL c again"]
    assert [e["path"] for e in f.files] == [
        str(tmp_path / "a.log"),
        str(tmp_path / "c.log"),
    ]


def test_invalid_utf8_nul_bytes_and_crlf(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, b"CRITICAL bad \xff\xfe bytes\r\nCRITICAL nul \x00 here\n\xc3\x28 CRITICAL\n")
    f = follow()
    f.check()
    assert f.lines() == [
        "CRITICAL bad \ufffd\ufffd bytes",
        "CRITICAL nul \ufffd here",
        "\ufffd( CRITICAL",
    ]


def test_a_10mb_line_is_truncated_and_nothing_around_it_is_lost(
    follow: Any, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    append(log, "CRITICAL before\n" + "CRITICAL " + "x" * (10 * 1024 * 1024) + "\nCRITICAL after\n")
    f = follow(read_limit="3MiB")
    for _ in range(10):
        f.check()
    assert len(f.seen) == 3
    assert f.lines()[0] == "CRITICAL before"
    assert f.lines()[2] == "CRITICAL after"
    long = f.lines()[1]
    assert long.startswith("CRITICAL xxx")
    assert len(long) < 70 * 1024
    assert "truncated" in long


def test_read_limit_commits_a_backlog_in_steps(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, numbered(1, 30000))
    f = follow(read_limit="64KiB", max_line="16KiB")
    steps = 0
    while not steps or f.watcher.more:
        f.check()
        steps += 1
    assert steps > 5
    assert f.lines() == criticals(1, 30000)


def test_lines_after_makes_one_alert_per_traceback(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    rules = [
        {"match": r"Traceback \(most recent call last\)", "severity": "error", "lines_after": 3},
        {"match": "Error", "severity": "warning"},
    ]
    f = follow(rules=rules, partial_timeout="0.2s")
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\n'
    append(log, "ok\n" + trace)
    assert f.check() == []  # waiting for the rest of the block
    append(
        log, "    boom()\nValueError: bad\nother Error line\nTraceback (most recent call last):\n"
    )
    f.check()
    assert f.lines() == [
        'Traceback (most recent call last):\n  File "x.py", line 1\n    boom()\nValueError: bad',
        "other Error line",
    ]
    assert f.seen[0].title == "Traceback (most recent call last): … ValueError: bad"
    # The last block never completes: it goes out after the timeout.
    wait_until(lambda: f.check() is not None and len(f.seen) >= 3, timeout=5)
    assert f.lines()[2] == "Traceback (most recent call last):"


def test_rules_unless_severity_title_and_threshold(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    rules = [
        {"match": "FATAL|CRITICAL", "severity": "critical", "title": "{name} down: {line}"},
        {
            "match": r"ERROR (?P<code>\d+)",
            "unless": "healthcheck",
            "severity": "warning",
            "threshold": "3 in 1m",
            "title": "errors {code} x{count}",
        },
    ]
    f = follow(rules=rules)
    append(log, "FATAL x\nERROR 1\nERROR 2 healthcheck\nERROR 3\n")
    f.check()
    assert [o.title for o in f.seen] == ["app down: FATAL x"]
    append(log, "ERROR 4\nERROR 5\n")
    f.check()
    assert [(o.title, str(o.level)) for o in f.seen] == [
        ("app down: FATAL x", "critical"),
        ("errors 4 x3", "warning"),
    ]
    assert f.seen[1].data["count"] == 3
    assert all(o.event for o in f.seen)


def test_non_ascii_and_hyperscan_incompatible_patterns(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    rules = [{"match": "(ab)\\1"}, {"match": "[ä]rger"}, {"match": "^ok(?=!)"}, {"match": "plain"}]
    f = follow(rules=rules)
    append(log, "xx abab\nÄrger\närger gross\nok\nok!\nnothing\nplain\n")
    f.check()
    assert f.lines() == ["xx abab", "ärger gross", "ok!", "plain"]


def test_anchors_and_alternations_match_on_every_line(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    rules = [{"match": "^START|FATAL$"}, {"match": "(?i)^warn"}]
    f = follow(rules=rules)
    append(log, "x START\nSTART here\nFATAL no\nis FATAL\nWarning one\nnot warn\n")
    f.check()
    assert f.lines() == ["START here", "is FATAL", "Warning one"]


def test_literal_rules_alert_as_built_and_a_backlog_uses_the_read_buffer(
    follow: Any, tmp_path: Path
) -> None:
    """Literal rules skip the ``re`` check under hyperscan and their observations are built
    from a prototype: each must still equal the ``Observation`` the rules describe, on both
    engines, with first-rule-wins, ``unless``, CRLF, NULs and invalid UTF-8; the filler makes
    the read large enough to go through the reused buffer."""
    log = tmp_path / "app.log"
    rules = [
        {"match": "FATAL|CRITICAL", "severity": "critical"},
        {"match": "ERROR", "unless": "healthcheck", "severity": "warning"},
        {"match": r"disk \(full\)"},
        {"match": "ERR.R", "severity": "info"},
    ]
    lines = [
        b"CRITICAL and ERROR on one line",
        b"ERROR healthcheck failed",
        b"ERRXR odd spelling",
        b"disk (full) with crlf\r",
        b"FATAL \x00 nul and \xff invalid",
        b"disk full without parentheses",
        b"fatal in lower case",
    ]
    filler = b"".join(b"%06d info filler line\n" % i for i in range(20000))
    append(log, filler + b"\n".join(lines) + b"\n")
    f = follow(rules=rules)
    f.check()
    expected = []
    offset = len(filler)
    for raw, rule in zip(lines, [0, 3, 3, 2, 0, None, None], strict=True):
        text = raw.rstrip(b"\r").decode("utf-8", "replace").replace("\x00", "\ufffd")
        if rule is not None:
            expected.append(
                Observation(
                    title=text,
                    severity=Severity.parse(rules[rule].get("severity", "error")),
                    key=rules[rule]["match"],
                    body=text,
                    data={"path": str(log), "line": text, "offset": offset, "rule": rule},
                    event=True,
                )
            )
        offset += len(raw) + 1
    assert len(filler) > BUFFERED
    assert f.seen == expected
    assert f.watcher.buffer is None  # caught up: the buffer is let go


OPS = st.lists(
    st.sampled_from(["write", "write", "write", "split", "rename", "copytruncate", "delete"])
    | st.sampled_from(["check", "check", "restart"]),
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
# Found by hypothesis: an empty file deleted, its inode reused by the next-but-one file.
@example(ops=["delete", "write", "restart", "rename"])
@example(ops=["delete", "restart", "write", "rename", "write"])
@example(ops=["write", "delete", "restart", "write", "rename"])
# The same, the file with the reused inode rotated on too: the generation between them first.
@example(ops=["delete", "write", "restart", "rename", "write", "rename"])
def test_any_sequence_of_writes_rotations_and_restarts_alerts_each_line_once(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str]
) -> None:
    """Property: whatever the order of appends, rotations (rename, copytruncate, delete),
    restarts and checks, every CRITICAL line alerts exactly once, in write order.

    Deleting a file and copytruncate only come after a check, as in life: a file deleted before
    anyone opened it is gone for every tool (see docs/log.md)."""
    folder = tmp_path_factory.mktemp("prop")
    log = folder / "app.log"
    log.touch()
    f = Follow("hyperscan" if hyperscan_available() else "re2", [log], rotate_wait=0)
    seen: list[str] = []
    f.check()
    line = 0
    generation = 0
    checked_since_rotation = True
    try:
        for op in ops:
            if op in ("write", "split"):
                text = numbered(line + 1, line + 5)
                line += 5
                if op == "split":  # a line written in two halves with a look in between
                    cut = len(text) - 7
                    append(log, text[:cut])
                    f.check()
                    text = text[cut:]
                append(log, text)
            elif op == "check":
                f.check()
                checked_since_rotation = True
            elif op == "restart":
                seen += f.lines()
                f.close()
                restarted = Follow(f.watcher.engine, [log], rotate_wait=0)
                restarted.checkpoint = f.checkpoint
                f = restarted
            elif op == "rename":
                generation += 1
                log.rename(folder / f"app.log.{generation}")
                log.touch()
                checked_since_rotation = False
            elif checked_since_rotation:
                f.check()  # the reads that precede a rotation
                if op == "copytruncate":
                    generation += 1
                    (folder / f"app.log.{generation}").write_bytes(log.read_bytes())
                    with log.open("r+b") as out:
                        out.truncate(0)
                else:
                    log.unlink()
                    log.touch()
                checked_since_rotation = False
        f.check()
        f.check()
        seen += f.lines()
    finally:
        f.close()
    assert seen == criticals(1, line)


@pytest.mark.parametrize("start_at", ["end", "beginning"])
def test_rotations_before_the_first_check_lose_nothing(
    follow: Any, tmp_path: Path, start_at: str
) -> None:
    """keeper.start() takes the starting point; the first check runs later on its thread."""
    log = tmp_path / "app.log"
    append(log, "old CRITICAL before start\n")
    f = follow(start_at=start_at)
    f.checkpoint = json.loads(json.dumps(f.watcher.initial_checkpoint()))
    for n in range(3):  # the program writes and rotates twice before the watcher's first look
        append(log, f"CRITICAL {n}\n")
        for k in (2, 1):
            older = tmp_path / f"app.log.{k}"
            if (tmp_path / (f"app.log.{k - 1}" if k > 1 else "app.log")).exists():
                (tmp_path / (f"app.log.{k - 1}" if k > 1 else "app.log")).rename(older)
        log.touch()
    append(log, "CRITICAL 3\n")
    for _ in range(5):
        f.check()
    expected = ["CRITICAL 0", "CRITICAL 1", "CRITICAL 2", "CRITICAL 3"]
    if start_at == "beginning":
        expected = ["old CRITICAL before start", *expected]
    assert sorted(f.lines()) == sorted(expected)


def test_changing_the_paths_drops_old_files_and_starts_new_ones_per_start_at(
    engine: str, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, "old CRITICAL a\n")
    append(b, "old CRITICAL b\n")
    first = Follow(engine, [a], start_at="end")
    first.checkpoint = json.loads(json.dumps(first.watcher.initial_checkpoint()))
    append(a, "CRITICAL a1\n")
    first.check()
    assert first.lines() == ["CRITICAL a1"]
    first.close()
    second = Follow(engine, [b], start_at="end")  # the same watcher, its paths edited
    second.checkpoint = first.checkpoint
    assert second.check() == []  # b's old lines are before "the end"; a is no longer followed
    append(b, "CRITICAL b1\n")
    append(a, "CRITICAL a2\n")
    second.check()
    assert second.lines() == ["CRITICAL b1"]
    assert [f["path"] for f in second.files] == [str(b)]
    second.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoding": "utf-16-le"}, "encoding 'utf-16-le' is not ASCII-compatible"),
        ({"read_limit": "64KiB"}, "read_limit must be at least twice max_line"),
        ({"line_timeout": "0s"}, "line_timeout: Input should be greater than 0"),
    ],
)
def test_settings_that_could_never_work_are_refused(options: dict[str, Any], message: str) -> None:
    from watchkeeper import ConfigError

    table = {"name": "app", "paths": ["/tmp/x.log"], "rules": [{"match": "E"}], **options}
    with pytest.raises(ConfigError, match=message):
        watcher_config("log", table, "test")
