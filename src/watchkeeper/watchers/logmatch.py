"""Find the lines of a chunk that match any of a log watcher's rules, without a loop per line.

The whole chunk (complete lines only) is searched for all rules at once; only a hit costs Python
work: the hit's line bounds are found with ``rfind``/``find``, the rules are confirmed on that one
line with ``re`` (except literal ones hyperscan reported: see ``Pattern.literal``), and the search
resumes at the next line. Two prefilters do the searching:

- **hyperscan** (the ``fast`` extra), one multi-pattern database for every rule it can compile.
  The callback halts the scan at the first hit; the scan restarts after that line, so a pattern
  that matches often costs one scan call per matching line, never one per match.
- **re**, always available: each rule's compiled bytes pattern searches from the current line, and
  the earliest hit across rules wins. Rules hyperscan rejects (backreferences, lookarounds) use it.

Patterns that are plain ASCII are matched on the raw bytes (as GNU grep does with ``LC_ALL=C``):
``\\w`` and ``\\d`` then mean ASCII classes. A pattern with non-ASCII characters is matched on the
decoded line instead, which needs every line as a candidate: correct, but as slow as a loop.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

hyperscan: Any
try:  # the optional ``fast`` extra
    import hyperscan
except ImportError:  # pragma: no cover - depends on the environment
    hyperscan = None

_EVERY_LINE = re.compile(rb"(?m)^")
_LITERAL = re.compile(rb"(?:[^\\.^$*+?{}\[\]|()\r\n]|\\[^A-Za-z0-9\r\n])+")
"""Characters that stand for themselves in Python's ``re`` and in hyperscan alike."""
ALL = -1
"""A pattern mask with every bit set: the prefilter cannot tell which patterns matched."""


@dataclass(frozen=True)
class Pattern:
    """One regex, usable on the raw bytes of a line and on its decoded text."""

    source: str
    text: re.Pattern[str]
    raw: re.Pattern[bytes] | None
    """The bytes form, or None when the pattern has non-ASCII characters (decoded match only)."""

    literal: bool = False
    """Plain words, or an alternation of them (``CRITICAL|FATAL``): no metacharacter, no line
    break. Hyperscan reporting one on a line is then proof enough, as hyperscan's and ``re``'s
    meaning of a literal is the same; any other pattern is confirmed with ``re`` (see
    ``log.Rule.exact``), as hyperscan's syntax differs from Python's in places."""

    @classmethod
    def compile(cls, source: str) -> Pattern:
        """Compile, raising ``re.error`` for a bad pattern."""
        text = re.compile(source)
        raw = re.compile(source.encode("ascii")) if source.isascii() else None
        literal = raw is not None and all(
            _LITERAL.fullmatch(branch) for branch in alternatives(raw.pattern)
        )
        return cls(source, text, raw, literal)

    def search(self, raw: bytes | bytearray, text: str) -> re.Match[Any] | None:
        """Search one line: its bytes when the pattern is ASCII, else its decoded text."""
        if self.raw is not None:
            return self.raw.search(raw)
        return self.text.search(text)


def hyperscan_available() -> bool:
    """Whether the hyperscan prefilter can be used here."""
    return hyperscan is not None


class Prefilter:
    """Yields the start and end of every line of a chunk on which some pattern may match."""

    def __init__(self, patterns: Sequence[Pattern], use_hyperscan: bool = True) -> None:
        self.patterns = list(patterns)
        self.database: Any = None
        self.engine = "re"
        fallback: list[re.Pattern[bytes]] = []
        compiled: list[tuple[bytes, int]] = []
        for index, pattern in enumerate(self.patterns):
            if pattern.raw is None:
                fallback.append(_EVERY_LINE)
                continue
            if use_hyperscan and hyperscan is not None and _hyperscan_accepts(pattern.raw.pattern):
                compiled.append((pattern.raw.pattern, index))
            else:
                branches = alternatives(pattern.raw.pattern)
                fallback += [re.compile(branch, re.MULTILINE) for branch in branches]
        if compiled:
            self.database = hyperscan.Database()
            self.database.compile(
                expressions=[c[0] for c in compiled],
                ids=[c[1] for c in compiled],
                elements=len(compiled),
                flags=[_HS_FLAGS] * len(compiled),
            )
            self.engine = "hyperscan"
        # One regex per pattern: alternation would clash on group names and inline flags.
        self.fallback = list(dict.fromkeys(fallback))

    def lines(
        self, data: bytes | bytearray, size: int | None = None
    ) -> Iterator[tuple[int, int, int]]:
        """``(start, end, patterns)`` of each candidate line of ``data[:size]``, in order.

        ``end`` excludes the newline; ``patterns`` is a bit mask of the patterns that may match
        the line (all bits when the prefilter cannot tell). ``data[:size]`` must end with a
        newline (complete lines only); passing ``size`` instead of slicing saves a copy.
        """
        size = len(data) if size is None else size
        view = memoryview(data)[:size]
        pos = 0
        if self.database is not None and not self.fallback:
            pos, found = self._batch(data, view)
            yield from found
        next_re: dict[int, int] = {}
        while pos < size:
            hit = size
            if self.database is not None:
                hit = min(hit, self._hyperscan_hit(view, pos))
            for i, rx in enumerate(self.fallback):
                known = next_re.get(i, -1)
                if known < pos:
                    match = rx.search(data, pos, size)
                    known = match.start() if match is not None else size
                    next_re[i] = known
                hit = min(hit, known)
            if hit >= size:
                return
            end = data.find(b"\n", hit)
            yield max(data.rfind(b"\n", 0, hit) + 1, pos), end, ALL
            pos = end + 1

    def _batch(
        self, data: bytes | bytearray, view: memoryview
    ) -> tuple[int, list[tuple[int, int, int]]]:
        """Where one hyperscan pass stopped (``len`` if done) and the candidate lines it found.

        One scan call for the whole chunk; the callback keeps the first match of each line and
        ignores the others. A pattern that matches many times per line (``\\d``) makes that
        callback the cost, so past a bound the pass halts and the caller continues line by line.
        """
        hits: list[int] = []
        stops: list[int] = []
        masks: list[int] = []
        stop = -1
        repeats = 0
        find = data.find

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: Any) -> bool:
            nonlocal stop, repeats
            at = end - 1 if end else 0
            if at <= stop:
                repeats += 1
                masks[-1] |= 1 << pattern_id
                return repeats > 15 * len(hits) + 4096
            stop = find(b"\n", at)  # every line ends with a newline: find() cannot fail
            hits.append(at)
            stops.append(stop)
            masks.append(1 << pattern_id)
            return False

        finished = True
        try:
            self.database.scan(view, match_event_handler=on_match)
        except hyperscan.ScanTerminated:
            finished = False
            masks[-1] = ALL  # the rest of that line's matches were not reported
        rfind = data.rfind
        found = [
            (rfind(b"\n", 0, at) + 1, end, mask)
            for at, end, mask in zip(hits, stops, masks, strict=True)
        ]
        return (len(view) if finished else stop + 1), found

    def _hyperscan_hit(self, view: memoryview, pos: int) -> int:
        """The position of the first byte of the first match ending at or after ``pos``."""
        found: list[int] = []

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: Any) -> bool:
            found.append(end)
            return True  # halt: the caller resumes after this line

        with contextlib.suppress(hyperscan.ScanTerminated):
            self.database.scan(view[pos:], match_event_handler=on_match)
        if not found:
            return len(view)
        return pos + max(found[0] - 1, 0)


_HS_FLAGS = 0
if hyperscan is not None:
    _HS_FLAGS = hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_ALLOWEMPTY


def alternatives(pattern: bytes) -> list[bytes]:
    """The top-level branches of ``a|b|c``, searched one by one: ``re`` has a fast path for a
    literal but not for an alternation (``CRITICAL|FATAL`` searches 15x slower than each word).

    Only a prefilter uses them; the whole pattern still confirms each line. A pattern with a
    leading inline flag group, or an empty branch, is kept whole.
    """
    if pattern.startswith(b"(?") and not pattern.startswith((b"(?:", b"(?P", b"(?=", b"(?!")):
        return [pattern]
    branches, depth, start, i = [], 0, 0, 0
    in_class = False
    while i < len(pattern):
        char = pattern[i : i + 1]
        if char == b"\\":
            i += 2
            continue
        if in_class:
            in_class = char != b"]"
        elif char == b"[":
            in_class = True
            if pattern[i + 1 : i + 2] == b"]":  # "[]...]": a literal ] first
                i += 1
        elif char == b"(":
            depth += 1
        elif char == b")":
            depth -= 1
        elif char == b"|" and depth == 0:
            branches.append(pattern[start:i])
            start = i + 1
        i += 1
    branches.append(pattern[start:])
    if len(branches) == 1 or not all(branches):
        return [pattern]
    return branches


def _hyperscan_accepts(expression: bytes) -> bool:
    """Whether hyperscan compiles this pattern (it has no backreferences or lookarounds)."""
    try:
        database = hyperscan.Database()
        database.compile(expressions=[expression], ids=[0], elements=1, flags=[_HS_FLAGS])
    except hyperscan.error:
        return False
    return True
