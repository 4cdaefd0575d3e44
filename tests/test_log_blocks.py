"""Multi-line errors as blocks: one alert per error, ended by structure, the next line matched.

Python, Java and Go traces interleaved with CRITICAL lines must give one alert per trace, whose
body is exactly the trace and whose title names its own exception, and one per CRITICAL line:
written at once, written a line at a time, across a rotation, and ten thousand in a burst.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import test_log
from tests.conftest import wait_until
from tests.test_log import Follow, append

engine = test_log.engine  # the fixtures: every test runs on each engine
follow = test_log.follow

PYTHON = """\
Traceback (most recent call last):
  File "app.py", line 10, in handler
    data = load(key)
           ^^^^^^^^^
  File "app.py", line 4, in load
    return cache[key]
           ~~~~~^^^^^
KeyError: 'user:{n}'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "app.py", line 12, in handler
    raise LookupError(key)
LookupError: user:{n}
"""
JAVA = """\
2026-01-01 12:00:02 ERROR [main] com.example.App - request {n} failed
java.lang.IllegalStateException: boom {n}
\tat com.example.App.handle(App.java:10)
\tat com.example.App.main(App.java:3)
Caused by: java.io.IOException: disk
\tat com.example.Store.read(Store.java:7)
\t... 2 more
"""
GO = """\
panic: runtime error: index out of range [{n}] with length 3

goroutine 1 [running]:
main.lookup(...)
\t/app/main.go:12
main.main()
\t/app/main.go:20 +0x1d

goroutine 7 [chan receive]:
main.worker(0xc000010000)
\t/app/main.go:31 +0x45
created by main.main in goroutine 1
\t/app/main.go:18 +0x2b
exit status 2
"""
RULES = [
    {"match": "CRITICAL", "severity": "critical"},
    {"match": r"Traceback \(most recent call last\)", "block": "python"},
    {"match": r"^\S+ \S+ ERROR \[", "block": "java"},
    {"match": "^panic: ", "block": "go"},
    {"match": "Error|Exception", "severity": "warning"},  # inside a block: never on its own
]


def records(n: int) -> list[tuple[str, str | None]]:
    """Record ``n`` of each kind as (text, the title's exception or None for a CRITICAL)."""
    return [
        (PYTHON.format(n=n), f"LookupError: user:{n}"),
        (f"2026-01-01 12:00:03 CRITICAL app: database down {n}\n", None),
        (JAVA.format(n=n), f"java.lang.IllegalStateException: boom {n}"),
        (f"2026-01-01 12:00:04 CRITICAL app: queue full {n}\n", None),
        (GO.format(n=n), f"panic: runtime error: index out of range [{n}] with length 3"),
        (f"2026-01-01 12:00:05 CRITICAL app: disk full {n}\n", None),
    ]


def check_alerts(seen: list[Any], written: list[tuple[str, str | None]]) -> None:
    """One alert per record: a trace's body is the trace, its title names its exception.

    A trace that ends its file is held until ``partial_timeout``, so alerts are compared in
    the order of the records they are about."""
    seen = sorted(seen, key=lambda o: [t for t, _ in written].index(o.data["line"] + "\n"))
    assert [o.data["line"] for o in seen] == [text.rstrip("\n") for text, _ in written]
    for observation, (text, exception) in zip(seen, written, strict=True):
        first = text.split("\n", 1)[0]
        if exception is None:
            assert observation.title == first
            assert str(observation.level) == "critical"
        else:  # the first line and the exception line, or the one line that is both
            shown = first if exception == first else f"{first} … {exception}"
            assert observation.title == shown
            assert "cut" not in observation.data


def test_traces_and_criticals_in_a_burst_alert_once_each(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    written = [r for n in range(3) for r in records(n)]
    append(log, "".join(text for text, _ in written) + "2026-01-01 12:00:06 INFO done\n")
    f = follow(rules=RULES)
    f.check()
    check_alerts(f.seen, written)


def test_traces_written_a_line_at_a_time_across_a_rotation(follow: Any, tmp_path: Path) -> None:
    """Each line is its own write with a look after it; after every record but the last the
    file is renamed away and a new one started, so each trace ends its file and waits there
    (it could still grow) until ``partial_timeout`` lets it go."""
    log = tmp_path / "app.log"
    log.touch()
    f = follow(rules=RULES, partial_timeout="0.3s")
    written = records(1) + records(2)
    for number, (text, _) in enumerate(written):
        for line in text.splitlines(keepends=True):
            append(log, line)
            f.check()
        if number % 2 == 0:  # after each trace
            log.rename(tmp_path / f"app.log.{number}")
            log.touch()
            f.check()
    wait_until(lambda: f.check() is not None and len(f.seen) >= len(written), timeout=10)
    check_alerts(f.seen, written)


def test_ten_thousand_tracebacks_are_ten_thousand_alerts(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    trace = 'Traceback (most recent call last):\n  File "w.py", line 3, in run\nKeyError: {n}\n'
    append(log, "".join(trace.format(n=n) for n in range(10_000)) + "INFO after\n")
    f = follow(rules=RULES)
    for _ in range(1_000):  # a read_limit's worth a check: bounded, never a spin
        if not (f.check() or f.watcher.more):
            break
    assert [o.title for o in f.seen] == [
        f"Traceback (most recent call last): … KeyError: {n}" for n in range(10_000)
    ]
    assert f.seen[5].data["line"] == trace.format(n=5).rstrip("\n")


def test_a_block_cut_by_its_cap_or_the_timeout_says_so(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    rules = [{"match": r"^Traceback", "block": "python", "lines_after": 3}, {"match": "CRITICAL"}]
    f = follow(rules=rules, partial_timeout="0.2s")
    frames = "".join(f'  File "x.py", line {i}\n' for i in range(6))
    append(log, "Traceback (most recent call last):\n" + frames + "ValueError: deep\nnext\n")
    f.check()
    assert f.seen[0].data["cut"] == "[block cut: lines_after = 3 lines reached]"
    assert f.seen[0].data["line"].splitlines()[1:] == [
        '  File "x.py", line 0',
        '  File "x.py", line 1',
        '  File "x.py", line 2',
        "[block cut: lines_after = 3 lines reached]",
    ]
    append(log, 'Traceback (most recent call last):\n  File "y.py", line 1\n')
    wait_until(lambda: f.check() is not None and len(f.seen) == 2, timeout=5)
    assert f.seen[1].data["cut"] == "[block cut: no further line within partial_timeout]"
    append(log, 'Traceback (most recent call last):\n  File "z.py", line 1\n')
    f.check()
    log.rename(tmp_path / "app.log.1")  # the rest of that traceback never comes
    append(log, "CRITICAL in the new file\n")
    wait_until(lambda: f.check() is not None and len(f.seen) == 4, timeout=5)
    assert f.seen[2].data["line"] == "CRITICAL in the new file"
    assert f.seen[3].data["cut"] == "[block cut: the file was rotated away]"
    assert f.seen[3].data["path"] == str(tmp_path / "app.log.1")


def test_record_start_ends_a_block_at_the_next_record(follow: Any, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    rules = [
        {"match": "CRITICAL", "severity": "critical"},
        {"match": "ERROR", "record_start": r"^\d{4}-\d\d-\d\d ", "title": "{last}"},
    ]
    append(
        log,
        "2026-01-01 ERROR sync failed\n  detail one\nsummary: remote refused\n"
        "2026-01-01 CRITICAL after it\n",
    )
    f = follow(rules=rules)
    f.check()
    assert [(o.title, o.data["line"]) for o in f.seen] == [
        (
            "summary: remote refused",
            "2026-01-01 ERROR sync failed\n  detail one\nsummary: remote refused",
        ),
        ("2026-01-01 CRITICAL after it", "2026-01-01 CRITICAL after it"),
    ]


@settings(
    max_examples=int(os.environ.get("WK_BLOCK_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    picks=st.lists(st.integers(0, 5), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 400), max_size=10),
)
def test_any_mix_of_traces_written_in_any_pieces_alerts_each_record_once(
    tmp_path_factory: pytest.TempPathFactory, engine: str, picks: list[int], cuts: list[int]
) -> None:
    """Property: whatever the mix of records and however the writes split them (mid-line,
    mid-block, a look after each piece), each record is one alert whose body is the record."""
    folder = tmp_path_factory.mktemp("blocks")
    log = folder / "app.log"
    log.touch()
    written = [records(n)[pick] for n, pick in enumerate(picks)]
    data = "".join(text for text, _ in written) + "2026-01-01 12:00:09 INFO end\n"
    f = Follow(engine, [log], rules=RULES, partial_timeout="1h")  # only a next line ends one
    try:
        at = 0
        for size in cuts:
            append(log, data[at : at + size])
            at += size
            f.check()
        append(log, data[at:])
        f.check()
    finally:
        f.close()
    check_alerts(f.seen, written)


def test_a_block_longer_than_read_limit_is_cut_and_the_file_goes_on(
    follow: Any, tmp_path: Path
) -> None:
    """A block no read can hold (here over read_limit) is cut where the read ends: the lines
    after it are still read and matched, instead of every check re-reading the same bytes."""
    log = tmp_path / "app.log"
    log.touch()
    watcher = follow(
        log,
        rules=[{"match": "ERROR", "block": "python"}, {"match": "CRITICAL"}],
        read_limit="8KiB",
        max_line="1KiB",
        partial_timeout="0s",
    )
    frames = "".join(
        f'  File "/srv/app/module_{i:03}.py", line {i}, in handler_{i:03}\n'
        f"    do_something_long_{i:03}(argument_one, argument_two)\n"
        for i in range(80)
    )
    text = "ERROR request failed\nTraceback (most recent call last):\n" + frames
    text += "ValueError: boom\nCRITICAL disk full\n"
    assert len(text) > 8 * 1024
    assert text.count("\n") < 200  # within the block's cap of lines: only the read is too small
    append(log, text.encode())
    for _ in range(10):
        watcher.check()
    titles = [o.title for o in watcher.seen]
    assert len(titles) == 2
    assert "CRITICAL disk full" in titles[1]


GROUP_TRACE = (  # logging.exception() of an ExceptionGroup (Python 3.11+), as printed
    b"2026-11-30 17:40:12,023 ERROR task group failed\n"
    b"  + Exception Group Traceback (most recent call last):\n"
    b'  |   File "<stdin>", line 4, in <module>\n'
    b"  | ExceptionGroup: two failed (2 sub-exceptions)\n"
    b"  +-+---------------- 1 ----------------\n"
    b"    | ValueError: x\n"
    b"    +---------------- 2 ----------------\n"
    b"    | KeyError: 'y'\n"
    b"    +------------------------------------\n"
    b"2026-11-30 17:40:12,024 CRITICAL disk full\n"
    b"2026-11-30 17:40:13,000 INFO next\n"
)


@pytest.mark.parametrize("match", ["ERROR", "Traceback"])
def test_an_exception_group_is_one_block_and_the_next_record_alerts(
    follow: Any, tmp_path: Path, match: str
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    watcher = follow(
        log,
        rules=[{"match": match, "block": "python"}, {"match": "CRITICAL"}],
        partial_timeout="0s",
    )
    append(log, GROUP_TRACE)
    watcher.check()
    block, critical = (o.data["line"] for o in watcher.seen)
    assert "ExceptionGroup: two failed" in block
    assert "KeyError: 'y'" in block
    assert "CRITICAL" not in block
    assert critical == "2026-11-30 17:40:12,024 CRITICAL disk full"


def test_record_start_lines_that_run_out_of_time_count_as_slow_lines(
    follow: Any, tmp_path: Path
) -> None:
    """A record_start test that times out is a slow line like a rule's: counted, and charged to
    the check's share, so a check yields (commits, sees a stop) instead of running on."""
    log = tmp_path / "app.log"
    log.touch()
    watcher = follow(
        log,
        rules=[{"match": "ERROR", "record_start": r"^(a|a)+(?=b)"}],
        line_timeout="50ms",
        partial_timeout="0s",
    )
    append(log, b"".join(b"ERROR %d\n" % i + b"a" * 36 + b"X\n" for i in range(40)))

    def errors() -> list[str]:  # the rule's alerts (the slow-lines health alert aside)
        return [o.data["line"].split("\n")[0] for o in watcher.seen if o.key == "ERROR"]

    watcher.check()
    assert watcher.watcher.scanner.slow["lines"] > 0
    assert len(errors()) < 40  # it yielded after about a second of slow lines
    for _ in range(10):
        watcher.check()
    assert errors() == [f"ERROR {i}" for i in range(40)]
