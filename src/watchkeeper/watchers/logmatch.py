"""Find the lines of a chunk that match any of a log watcher's rules, without a loop per line.

The whole chunk (complete lines only) is searched for all rules at once; only a hit costs Python
work: the hit's line bounds are found with ``rfind``/``find``, the rules are confirmed on that one
line with an exact engine (except literal ones hyperscan reported: see ``Pattern.literal``), and
the search resumes at the next line. The searching is done with each pattern's *candidate*
writing (see :mod:`logregex`): it matches on every line the rule matches, so a prefilter can
only add lines the confirmation then drops, never lose one. Two prefilters:

- **hyperscan** (the ``fast`` extra), one multi-pattern database for every rule it can compile.
  The callback halts the scan at the first hit; the scan restarts after that line, so a pattern
  that matches often costs one scan call per matching line, never one per match. A report is
  placed on the line of its *end* offset: an empty match (``^$``) ends on its own line's start.
- **RE2** (``google-re2``), always available: each rule's candidate pattern searches the chunk
  in multi-line mode from the current line, and the earliest hit across rules wins. Literal
  rules (``CRITICAL|FATAL``) search with ``re`` instead, one branch at a time: its literal search
  is faster, and a literal cannot backtrack.

Both are linear in the chunk's size whatever the pattern. Patterns that are plain ASCII are
matched on the raw bytes (as GNU grep does with ``LC_ALL=C``): ``\\w`` and ``\\d`` then mean ASCII
classes. A pattern with non-ASCII characters is matched on the decoded line instead, which needs
every line as a candidate: correct, but as slow as a loop.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import re2
import regex

from watchkeeper.watchers.logregex import translate

hyperscan: Any
try:  # the optional ``fast`` extra
    import hyperscan
except ImportError:  # pragma: no cover - depends on the environment
    hyperscan = None

_EVERY_LINE = re.compile(rb"(?m)^")
_LITERAL = re.compile(rb"(?:[^\\.^$*+?{}\[\]|()\r\n]|\\[^A-Za-z0-9\r\n])+")
"""Characters that stand for themselves in Python's ``re`` and in hyperscan alike."""
RE2_BYTES = re2.Options()
"""RE2's options for bytes patterns: one byte is one character, as for ``re``."""
RE2_BYTES.encoding = re2.Options.Encoding.LATIN1
RE2_BYTES.log_errors = False
_RE2_TYPE = type(re2.compile(b"", RE2_BYTES))
ALL = -1
"""A pattern mask with every bit set: the prefilter cannot tell which patterns matched."""


class LineTimeout(Exception):
    """A backtracking pattern took longer than its time limit on one line."""

    def __init__(self, source: str, elapsed: float) -> None:
        super().__init__(source)
        self.elapsed = elapsed
        """Seconds it took (``regex`` overshoots its timeout, by a few times under load)."""


@dataclass(frozen=True)
class Pattern:
    """One rule regex: its exact line matcher and its candidate search for whole chunks.

    Lines are matched by an engine that gives ``re``'s answer in bounded time (see
    :mod:`logregex`): RE2 where the pattern allows, else ``regex`` with ``timeout`` per line.
    Python's ``re`` is never run on a line: one pattern like ``(a+)+b`` and one unlucky line
    would hold the GIL, and with it every thread of the process, for hours.
    """

    source: str
    exact: Any
    """The compiled exact matcher (``re2`` or ``regex``)."""
    candidates: bytes | None
    """The chunk-wide candidate pattern, or None when the pattern has non-ASCII characters
    (it is then matched on the decoded line, and every line is a candidate)."""
    timeout: float
    literal: bool = False
    """Plain words, or an alternation of them (``CRITICAL|FATAL``): no metacharacter, no line
    break. Hyperscan reporting one on a line is then proof enough, as hyperscan's and ``re``'s
    meaning of a literal is the same; any other pattern is confirmed (``logscan.Rule.exact``)."""
    empty: Any = None
    """The matcher for an empty line, when it differs (see ``Translation.empty``)."""

    @classmethod
    def compile(cls, source: str, timeout: float = 0.1) -> Pattern:
        """Compile, raising ``ValueError`` (``re.error`` or :class:`Untranslatable`)."""
        re.compile(source)
        ascii_ = source.isascii()
        found = translate(source.encode("ascii") if ascii_ else source)
        exact = _compile(found.re2, found.regex, ascii_)
        empty = None if found.empty is None else _compile(*found.empty, ascii_)
        literal = ascii_ and all(
            _LITERAL.fullmatch(branch) for branch in alternatives(source.encode("ascii"))
        )
        candidates = None if found.candidates is None else found.candidates.encode("ascii")
        return cls(source, exact, candidates, timeout, literal, empty)

    @property
    def linear(self) -> bool:
        """RE2 runs it: time linear in the line's length, no timeout needed."""
        return isinstance(self.exact, _RE2_TYPE)

    @property
    def raw(self) -> bool:
        """Matched on the raw bytes of a line (an ASCII pattern), not on its decoded text."""
        return self.candidates is not None

    def search(self, raw: bytes | bytearray, text: str) -> Any:
        """Search one line: its bytes when the pattern is ASCII, else its decoded text.

        Raises :class:`LineTimeout` when a backtracking pattern runs out of time on the line.
        """
        subject: bytes | bytearray | str = raw if self.raw else text
        matcher = self.exact if subject or self.empty is None else self.empty
        if isinstance(matcher, _RE2_TYPE):
            return matcher.search(subject)
        if isinstance(subject, bytearray):
            subject = bytes(subject)  # concurrent matching needs an immutable subject
        started = time.monotonic()
        try:
            return matcher.search(subject, timeout=self.timeout, concurrent=True)
        except TimeoutError:
            raise LineTimeout(self.source, time.monotonic() - started) from None


def _compile(linear: str | None, backtracking: str, ascii_: bool) -> Any:
    """RE2 when the pattern has a linear writing RE2 takes, else ``regex``."""
    if linear is not None:
        with contextlib.suppress(re2.error):  # too large for RE2: regex, with a timeout
            return re2.compile(linear.encode("ascii"), RE2_BYTES)
    return regex.compile(backtracking.encode("ascii") if ascii_ else backtracking)


def hyperscan_available() -> bool:
    """Whether the hyperscan prefilter can be used here."""
    return hyperscan is not None


class Prefilter:
    """Yields the start and end of every line of a chunk on which some pattern may match."""

    def __init__(self, patterns: Sequence[Pattern], use_hyperscan: bool = True) -> None:
        self.patterns = list(patterns)
        self.database: Any = None
        self.engine = "re2"
        fallback: list[Any] = []
        compiled: list[tuple[bytes, int]] = []
        for index, pattern in enumerate(self.patterns):
            if pattern.candidates is None:
                fallback.append(_EVERY_LINE)
                continue
            if use_hyperscan and hyperscan is not None and _hyperscan_accepts(pattern.candidates):
                compiled.append((pattern.candidates, index))
            elif pattern.literal:  # re's literal search is fast, and a literal cannot backtrack
                literal = pattern.source.encode("ascii")
                fallback += [re.compile(branch) for branch in alternatives(literal)]
            else:
                try:
                    fallback.append(re2.compile(b"(?m)" + pattern.candidates, RE2_BYTES))
                except re2.error:  # too big for RE2 (nested counted repeats): every line is
                    fallback.append(_EVERY_LINE)  # a candidate; the exact matcher confirms
        if compiled:
            self.database = hyperscan.Database()
            self.database.compile(
                expressions=[c[0] for c in compiled],
                ids=[c[1] for c in compiled],
                elements=len(compiled),
                flags=[_HS_FLAGS] * len(compiled),
            )
            self.engine = "hyperscan"
        # One search per pattern: alternation would clash on group names and inline flags.
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
                hit = min(hit, self._hyperscan_hit(data, view, pos))
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
        Reports come in order of end offset *nearly*: one that needs the next byte to be sure
        (``$``, ``\\b``) may come after a match ending a byte later, on the next line; such late
        reports are merged in at the end.
        """
        hits: list[int] = []
        starts: list[int] = []
        stops: list[int] = []
        masks: list[int] = []
        late: list[tuple[int, int]] = []
        begin, stop = 0, -1
        repeats = 0
        find = data.find
        rfind = data.rfind

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: Any) -> bool:
            nonlocal begin, stop, repeats
            at = end  # on the line of the match: its last byte's, or an empty match's own
            if at <= stop:
                if at < begin:
                    late.append((at, pattern_id))
                    return False
                repeats += 1
                masks[-1] |= 1 << pattern_id
                return repeats > 15 * len(hits) + 4096
            newline = find(b"\n", at)
            if newline < 0:  # an empty match after the last newline: no line there
                return False
            begin, stop = rfind(b"\n", 0, at) + 1, newline
            hits.append(at)
            starts.append(begin)
            stops.append(stop)
            masks.append(1 << pattern_id)
            return False

        finished = True
        try:
            self.database.scan(view, match_event_handler=on_match)
        except hyperscan.ScanTerminated:
            finished = False
            masks[-1] = ALL  # the rest of that line's matches were not reported
        found = list(zip(starts, stops, masks, strict=True))
        if late:
            found = _merge(data, found, late)
        return (len(view) if finished else stop + 1), found

    def _hyperscan_hit(self, data: bytes | bytearray, view: memoryview, pos: int) -> int:
        """The end of the first match ending at or after ``pos``: a position on its line.

        A report can come a byte late (see ``_batch``): one for an earlier line, ending at or
        before that line's start, comes before any report ending past it. So the scan halts at
        the first report that ends past the start of the earliest line found so far: normally
        the first report, or the second when the first is an empty match at a line's start.
        """
        first = [len(view), -1]  # the earliest end so far (relative to pos), its line's start

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: Any) -> bool:
            if end < first[0]:
                first[0] = end
                first[1] = max(data.rfind(b"\n", pos, pos + end) + 1 - pos, 0)
            return end > first[1]  # halt: nothing earlier can still come

        with contextlib.suppress(hyperscan.ScanTerminated):
            self.database.scan(view[pos:], match_event_handler=on_match)
        return min(pos + first[0], len(view))


def _merge(
    data: bytes | bytearray, found: list[tuple[int, int, int]], late: list[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """Candidate lines with the late reports' lines added (or their pattern bits, if known)."""
    lines = {start: [start, stop, mask] for start, stop, mask in found}
    for at, pattern_id in late:
        start = data.rfind(b"\n", 0, at) + 1
        line = lines.setdefault(start, [start, data.find(b"\n", at), 0])
        line[2] |= 1 << pattern_id
    return [(s, e, m) for s, e, m in sorted(lines.values())]


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
