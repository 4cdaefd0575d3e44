"""A rule means ``re.search(pattern, line)``, whatever the engine, the reads and the writes.

The differential test draws patterns from a grammar of what users write (anchors, empty-line
patterns, word boundaries, ``\\Z``, classes, alternations, repeats, ``(?i)``, lookarounds,
backreferences) and lines with the awkward bytes (empty, blank, CR, invalid UTF-8, NUL), writes
them all at once, a line per write or in random pieces, and checks the lines each engine alerts
against ``re`` run line by line. The bugs it found are kept as ``@example``s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.test_log import ENGINES, Follow, append
from watchkeeper.config import ConfigError, watcher_config
from watchkeeper.watchers.logmatch import Pattern
from watchkeeper.watchers.logregex import Untranslatable
from watchkeeper.watchers.logrisk import catastrophic

# "[[:alpha:]]" is drawn on purpose: re warns that it may one day read it as a POSIX class.
pytestmark = pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")

ATOMS = st.sampled_from(
    [
        "a", "b", "A", "0", "1", " ", "_", ":", r"\.", ".", "[a-c]", "[^a]", "[0-9]", "[ab_]",
        r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", "^", "$", r"\b", r"\B", r"\Z", r"\A",
        "[[:alpha:]]", "x{,2}", "ä", r"\xff", r"\x00", r"[^\d]",
        "\u0131", "\u0130", "\u017f", "\u212a", "[a-z\u00e4]", "[^\u0131]", "i", "s", "k",
    ]
)  # fmt: skip


def _combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map("|".join),
        inner.map(lambda p: f"({p})"),
        inner.map(lambda p: f"(?:{p})"),
        st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{,2}", "*?", "+?"])).map(
            lambda t: f"(?:{t[0]}){t[1]}"
        ),
        inner.map(lambda p: f"(?i:{p})"),
        inner.map(lambda p: f"(?={p})"),
        inner.map(lambda p: f"(?!{p})"),
        inner.map(lambda p: f"(?<=a){p}"),
        inner.map(lambda p: f"({p})\\1"),
        inner.map(lambda p: f"(?>{p})"),
        inner.map(lambda p: f"(?:{p})*+"),
    )


PATTERNS = st.tuples(
    st.sampled_from(["", "", "(?i)", "(?m)", "(?s)", "(?x)"]),
    st.recursive(ATOMS, _combine, max_leaves=6),
).map("".join)
PIECES = [b"a", b"b", b"A", b"0", b"1", b" ", b"\t", b"_", b".", b":", b"\xff", b"\x00", b"\r"]
PIECES += [b"\xc3\xa4", b"x", b"ab", b"i", b"I", b"s", b"k"]
PIECES += ["\u0131\u0130\u017f\u212a"[i].encode() for i in range(4)]  # dotless i, İ, long s, Kelvin
PIECES += ["\U0001e4d0".encode()]  # a letter since Unicode 15: newer than Python 3.11's re
LINES = st.lists(
    st.lists(st.sampled_from(PIECES), max_size=6).map(b"".join), min_size=1, max_size=25
)
WRITES = st.one_of(
    st.just("once"),
    st.just("lines"),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
)


def expected(patterns: list[str], lines: list[bytes]) -> list[tuple[int, int]]:
    """The oracle: (offset, rule) of each line some rule matches, ``re`` line by line, CRs at
    the end stripped; the first rule that matches takes the line."""
    found: list[tuple[int, int]] = []
    offset = 0
    for line in lines:
        body = line.rstrip(b"\r")
        text = body.decode("utf-8", "replace").replace("\x00", "\ufffd")
        for rule, pattern in enumerate(patterns):
            if pattern.isascii():
                hit = re.search(pattern.encode(), body)
            else:
                hit = re.search(pattern, text)
            if hit is not None:
                found.append((offset, rule))
                break
        offset += len(line) + 1
    return found


def alerted(
    engine: str,
    folder: Path,
    patterns: list[str],
    lines: list[bytes],
    writes: Any,
    read_limit: str = "2KiB",
) -> list[tuple[int, int]]:
    """(offset, rule) of the lines a log watcher alerts, the file written as ``writes`` says."""
    log = folder / f"{engine}.log"
    log.touch()
    rules = [{"match": p} for p in patterns]
    f = Follow(engine, [log], rules=rules, read_limit=read_limit, max_line="1KiB")
    # (a pattern hyperscan rejects, "can never match" say, is searched with RE2 instead; with
    # some rules in hyperscan and some not, both search, which is another path)
    try:
        data = b"".join(line + b"\n" for line in lines)
        if writes == "once":
            pieces = [data]
        elif writes == "lines":
            pieces = [line + b"\n" for line in lines]
        else:
            pieces, rest = [], data
            for size in writes:
                pieces.append(rest[:size])
                rest = rest[size:]
            pieces.append(rest)
        for piece in pieces:
            append(log, piece)
            f.check()
        while f.watcher.more:
            f.check()
        return [(o.data["offset"], o.data["rule"]) for o in f.seen]
    finally:
        f.close()


@settings(
    max_examples=int(os.environ.get("WK_RULE_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    patterns=st.lists(PATTERNS, min_size=1, max_size=3),
    lines=LINES,
    writes=WRITES,
    repeat=st.sampled_from([1, 1, 2, 5, 40]),
)
# The reports of issue 11: empty-line and end-of-line matches, a line per write.
@example(patterns=["^$"], lines=[b"a", b"", b"b", b""], writes="once", repeat=1)
@example(patterns=[r"^\s*$"], lines=[b"a", b" ", b"", b"\t"], writes="once", repeat=1)
@example(patterns=["[0-9]$"], lines=[b"a1", b"b", b"22"], writes="lines", repeat=1)
@example(patterns=["[0-9]$"], lines=[b"a1", b"b2"], writes=[3], repeat=1)
# Syntax the engines read differently from re: written out from re's parse, they agree.
@example(patterns=["x{,2}y"], lines=[b"y", b"x{,2}y"], writes="once", repeat=1)
@example(patterns=["[[:alpha:]]"], lines=[b"a", b":", b"]", b"b"], writes="once", repeat=1)
@example(patterns=[r"a\Z"], lines=[b"a", b"ab", b"a\r"], writes="once", repeat=1)
@example(patterns=["1$"], lines=[b"1\r", b"1\r\r", b"1 "], writes="once", repeat=1)
@example(patterns=["(?i)[^a]"], lines=[b"A", b"a", b"b"], writes="once", repeat=1)
@example(patterns=[r"(?<=a)\b"], lines=[b"a", b"ab", b"a b"], writes="once", repeat=1)
# Found by this test: re's \B never matches an empty line, RE2's and regex's do; a pattern
# hyperscan refuses ("can never match") is searched by RE2.
@example(patterns=[r"\B"], lines=[b"", b" ", b"a"], writes="once", repeat=1)
@example(patterns=[r"(?<=a)\B|x"], lines=[b"", b"a", b"ab"], writes="once", repeat=1)
@example(patterns=[r"\Za"], lines=[b"", b"a"], writes="once", repeat=1)
# Several rules: the first that matches wins; hyperscan and RE2 search side by side when a rule
# is not for hyperscan (non-ASCII, or refused), and hyperscan's late reports are merged.
@example(patterns=["ä", "[0-9]$", "^$"], lines=[b"", b"1", b"\xc3\xa4 1"], writes="once", repeat=1)
@example(patterns=["b", r"(?<=a)\b", "^a"], lines=[b"ab", b"a", b"ba"], writes="lines", repeat=1)
@example(patterns=["$", "(?i:(?=a))"], lines=[b"", b""], writes="once", repeat=1)  # a late report
# Non-ASCII patterns: re's \w and \b (regex knows newer letters), re's case folding (for re,
# (?i) and the dotless i match i and İ; not for regex).
@example(
    patterns=["\u00e4\\w", "\u00e4\\b"],
    lines=["\u00e4\U0001e4d0".encode(), "\u00e4".encode()],
    writes="once",
    repeat=1,
)
@example(
    patterns=["(?i)\u0131", "(?i)[\u0130]x"],
    lines=[b"i", b"I", "\u0130".encode(), "\u0131".encode(), b"Ix", "\u0131x".encode()],
    writes="once",
    repeat=1,
)
def test_every_engine_alerts_exactly_the_lines_re_matches(
    tmp_path_factory: pytest.TempPathFactory,
    patterns: list[str],
    lines: list[bytes],
    writes: Any,
    repeat: int,
) -> None:
    patterns = [p for p in patterns if _valid(p)]
    if not patterns:
        return
    lines = lines * repeat
    folder = tmp_path_factory.mktemp("rules")
    want = expected(patterns, lines)
    for engine in ENGINES:
        assert alerted(engine, folder, patterns, lines, writes) == want, engine


@settings(
    max_examples=int(os.environ.get("WK_RULE_EXAMPLES", "150")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(patterns=st.lists(PATTERNS, min_size=1, max_size=3), lines=LINES)
# Found by hand: a report can come a byte late, after one on the next line; the line-by-line
# search must not take the later line and step over the earlier one.
@example(patterns=[r"$|\W"], lines=[b"", b"a", b"", b"b"])
@example(patterns=[r"(?i:$|\W)", "x"], lines=[b"", b"xxa_\r", b"b"])
# Found by this test: a non-ASCII rule was matched against the shortened text an alert shows
# ("… [... 17000 more bytes]"), not the line.
@example(patterns=["(?i:\u017f)"], lines=[b""])
def test_after_a_line_of_many_matches_the_search_goes_line_by_line(
    tmp_path_factory: pytest.TempPathFactory, patterns: list[str], lines: list[bytes]
) -> None:
    """A line on which hyperscan reports thousands of matches makes the one-pass search give
    up (its callback would be the cost) and go on line by line, which is another path."""
    patterns = [p for p in patterns if _valid(p)]
    if not patterns:
        return
    lines = [b"a1 _.:" * 3000, *lines]
    folder = tmp_path_factory.mktemp("rules")
    want = expected(patterns, lines)
    for engine in ENGINES:
        assert alerted(engine, folder, patterns, lines, "once", "64KiB") == want, engine


def _valid(pattern: str) -> bool:
    """Not every drawn string is a pattern (a backreference to a later group, say), and a few
    are refused at load, saying why (see ``test_bad_rules_are_refused_at_load_saying_where``)."""
    try:
        re.compile(pattern)
        Pattern.compile(pattern)
    except (re.error, Untranslatable):
        return False
    return True


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"match": "(a"}, r"rules\.0\.match: invalid regex '\(a': missing \)"),
        ({"match": "a", "record_start": "[x"}, r"rules\.0\.record_start: invalid regex"),
        ({"match": "a", "block": "perl"}, r"rules\.0\.block: .*'python', 'java' or 'go'"),
        (
            {"match": "a", "block": "python", "record_start": "^x"},
            r"rules\.0: .*block and record_start both say where a block ends",
        ),
        ({"match": "a", "block": "go", "lines_after": 0}, r"rules\.0: .*lines_after = 0"),
        (  # found by the differential test: re and regex disagree on (?i)(\u017f)\1 on "\u017fs"
            {"match": "(?i)(\u017f)\\1"},
            r"rules\.0\.match: regex .* is not supported: a case-insensitive backreference",
        ),
    ],
)
def test_bad_rules_are_refused_at_load_saying_where(rule: dict[str, Any], message: str) -> None:
    table = {"name": "app", "paths": ["/tmp/x.log"], "rules": [rule]}
    with pytest.raises(ConfigError, match=message):
        watcher_config("log", table, "test")


@pytest.mark.parametrize(
    ("pattern", "linear"),
    [
        ("(a+)+b", True),
        (r"(\w+\s?)*$", True),
        ("CRITICAL|FATAL", True),
        (r"(ab)\1", False),
        ("^ok(?=!)", False),
        ("a{2000}", False),
        ("ärger", False),
    ],
)
def test_patterns_without_backtracking_features_run_in_linear_time(
    pattern: str, linear: bool
) -> None:
    assert Pattern.compile(pattern).linear is linear


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [
        ("(a+)+b", "a repeated group that itself repeats"),
        (r"(\w+\s?)*$", "a repeated group that itself repeats"),
        ("(a|a)+(?=b)", "a repeat over alternatives that can match the same text"),
        (r"(ab|a\wc)+d", "a repeat over alternatives that can match the same text"),
        ("(?i)(xA|Xa)*z", "a repeat over alternatives that can match the same text"),
        (r"(\w|\d)+x", None),  # re makes one set of single-character alternatives: no choice
        ("(x|y?|z?)*q", "a repeat over alternatives that can match the same text"),
        (r"ERROR \d+", None),
        ("(ab){2}", None),
        ("(GET|POST)+ /", None),
        (r"(\d|[a-f])+", None),
        ("(ä|ö)+", None),
    ],
)
def test_shapes_of_catastrophic_backtracking_are_named(pattern: str, shape: str | None) -> None:
    assert catastrophic(pattern) == shape


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "pattern", [r"(?:a{1000}){1000}", r"(?:[a-z]{1,100}){1,100}", r"(.{1,1000}){1,1000}x"]
)
def test_a_rule_too_big_for_re2_still_runs_exactly(
    tmp_path: Path, engine: str, pattern: str
) -> None:
    """RE2 refuses nested counted repeats this large: every line is then a candidate, and the
    exact matcher (regex, with its time limit) decides, instead of the watcher failing to build."""
    log = tmp_path / "app.log"
    lines = ["x" * 5, "a" * 1200 + "x", "b"]
    append(log, "".join(f"{line}\n" for line in lines))
    follow = Follow(engine, [log], rules=[{"match": pattern}])
    try:
        follow.check()
        assert follow.lines() == [line for line in lines if re.search(pattern, line)]
    finally:
        follow.close()
