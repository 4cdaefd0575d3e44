"""A log watcher's rules applied to a chunk of complete lines: which lines alert, and how.

The prefilter (:mod:`logmatch`) names the candidate lines; each candidate is confirmed by the
rules in order (the first that takes it wins), and a rule with a block (:mod:`logblocks`, or a
counted ``lines_after``) takes the lines after it that belong to the same error. Lines inside a
block are part of its alert and are not matched again; the first line after it is.

A pattern that needs a backtracking engine runs with a per-line time limit; a line that hits it
is skipped by that rule and counted in :attr:`Scanner.slow`, which the watcher keeps in its
checkpoint and reports (see ``LogWatcher.check``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from watchkeeper.alerts import Observation, Severity
from watchkeeper.watchers.logblocks import BlockShape, summary
from watchkeeper.watchers.logconfig import LogConfig, LogRule, parse_threshold
from watchkeeper.watchers.logmatch import ALL, LineTimeout, Pattern, Prefilter

TITLE_CHARS = 200
SLOW_SHARE = 1.0
"""Seconds of ``line_timeout`` hits after which a check stops at the end of the line, so that
what it read is committed and a stop request is seen before it goes on (see ``yielded``)."""


@dataclass(frozen=True)
class Rule:
    """A rule with its patterns compiled."""

    index: int
    config: LogRule
    match: Pattern
    unless: Pattern | None
    threshold: tuple[int, float] | None
    severity: Severity
    plain: bool
    """No title template, block or threshold: the observation is the line itself."""
    exact: bool
    """Plain, no ``unless`` and a literal ``match``: a hyperscan report needs no check."""
    shared: tuple[tuple[str, Any], ...]
    """The fields every observation of a plain rule shares (see ``observation``)."""
    shape: BlockShape | None
    """How its blocks end, for ``block`` and ``record_start`` rules."""

    @classmethod
    def build(cls, index: int, config: LogRule, timeout: float, encoding: str) -> Rule:
        """Compile one validated rule."""
        match = Pattern.compile(config.match, timeout)
        unless = Pattern.compile(config.unless, timeout) if config.unless else None
        threshold = parse_threshold(config.threshold) if config.threshold else None
        severity = Severity.parse(config.severity)
        plain = not (config.title or config.cap or threshold)
        sample = Observation(title="", severity=severity, key=config.match, event=True)
        exact = plain and unless is None and match.literal
        shared = tuple((k, v) for k, v in vars(sample).items() if k not in _OWN)
        shape = None
        if config.structured:
            starts = None
            if config.record_start is not None:
                starts = RecordStart(Pattern.compile(config.record_start, timeout), encoding)
            shape = BlockShape(config.block, starts)
        return cls(index, config, match, unless, threshold, severity, plain, exact, shared, shape)

    def accepts(self, raw: bytes | bytearray, text: str) -> Any:
        """The match when this rule takes the line (:class:`LineTimeout` if it ran too long)."""
        found = self.match.search(raw, text)
        if found is None or (self.unless is not None and self.unless.search(raw, text)):
            return None
        return found

    def observation(self, title: str, line: str, data: dict[str, Any]) -> Observation:
        """A plain rule's observation of one line, without ``Observation()``'s per-call checks.

        On a backlog, building observations was a third of a matched line's cost. The shared
        fields were validated once, in ``build``, by making a real ``Observation``, and are copied
        from it, so the result equals one built the slow way. Fields are set one by one, as the
        dataclass's ``__init__`` does: filling ``__dict__`` instead would give each observation a
        second object for the cyclic GC, whose full passes took a quarter of a 1 GB scan.
        """
        made = _new(Observation)
        for name, value in self.shared:
            _set(made, name, value)
        _set(made, "title", title)
        _set(made, "body", line)
        _set(made, "data", data)
        return made


_new = object.__new__
_set = object.__setattr__  # as the dataclass's own __init__ does (the class itself is frozen)
_OWN = ("title", "body", "data")
"""The fields each line's observation has of its own."""


class RecordStart:
    """A record-start test on a line's bytes. A line too slow to tell starts a record, and its
    time is kept in ``timeouts`` for the scanner to count as a slow line, like a rule's."""

    def __init__(self, pattern: Pattern, encoding: str) -> None:
        self.pattern = pattern
        self.encoding = encoding
        self.timeouts: list[float] = []

    def __call__(self, line: bytes) -> bool:
        try:
            return self.pattern.search(line, line.decode(self.encoding, "replace")) is not None
        except LineTimeout as exc:
            self.timeouts.append(exc.elapsed)
            return True


class Scanner:
    """Turns a chunk of complete lines into observations, all rules searched at once."""

    def __init__(self, config: LogConfig, use_hyperscan: bool = True) -> None:
        self.config = config
        timeout, encoding = config.line_timeout, config.encoding
        self.rules = [Rule.build(i, r, timeout, encoding) for i, r in enumerate(config.line_rules)]
        self.prefilter = Prefilter([r.match for r in self.rules], use_hyperscan)
        self.needs_text = any(
            not p.raw for r in self.rules for p in (r.match, r.unless) if p is not None
        )
        self.counts: dict[int, list[float]] = {}
        self.slow: dict[str, Any] = {}
        """Lines that ran out of ``line_timeout``: ``lines`` (count), ``last`` (time), ``rule``,
        ``file`` and ``byte`` of the last one. Kept in the checkpoint (not as ``path`` and
        ``offset``: those name a followed file there, see ``web.metrics.file_lags``)."""
        self.by_mask: dict[int, list[Rule]] = {}
        """The rules a prefilter mask names, in order: computed once per mask seen."""
        self.slow_spent = 0.0
        """Seconds this check spent on lines that ran out of ``line_timeout``."""
        self.yielded = False
        """This check stopped early (``SLOW_SHARE``): the caller commits and goes on at once."""

    def scan(
        self,
        data: bytes | bytearray,
        path: str,
        base: int,
        release: int | None,
        now: float,
        cut: bool = False,
        size: int | None = None,
        gone: bool = False,
    ) -> tuple[int, list[Observation]]:
        """Observations of ``data[:size]`` (ending with a newline) and the bytes consumed.

        Fewer bytes than ``size`` are consumed when a block rule matched and its block may not
        have all arrived: the caller holds at that line, unless ``release`` (an offset within
        ``data``) says the wait there is over. ``cut`` marks a truncated over-long line; ``gone``
        says the file was rotated away (a block cut short then says so).
        """
        size = len(data) if size is None else size
        found: list[Observation] = []
        block_end = 0
        limit = self.config.max_line
        encoding = self.config.encoding
        needs = self.needs_text
        by_mask = self.by_mask
        over = False
        for start, end, mask in self.prefilter.lines(data, size):
            if start < block_end:
                continue  # inside the block of an alert already made
            raw = data[start:end].rstrip(b"\r")
            # A non-ASCII rule matches the whole decoded line, not the shortened one alerts show.
            subject = raw.decode(encoding, "replace").replace("\x00", "\ufffd") if needs else ""
            text = subject if len(raw) <= limit else ""  # what the alert shows, made on need
            rules = by_mask.get(mask)
            if rules is None:
                rules = by_mask[mask] = [r for r in self.rules if (mask >> r.index) & 1]
            for rule in rules:
                match = None
                if not (rule.exact and mask != ALL and not cut):  # a literal's report is exact
                    try:
                        match = rule.accepts(raw, subject)
                    except LineTimeout as exc:
                        self._too_slow(rule, path, base + start, now)
                        self.slow_spent += exc.elapsed
                        over = self.slow_spent >= SLOW_SHARE
                        continue
                    if match is None:
                        continue
                if rule.plain and not cut:  # the common case, without the general path's cost
                    if not text:
                        text = (
                            raw.decode(encoding, "replace").replace("\x00", "\ufffd")
                            if len(raw) <= limit
                            else self.decode(raw)
                        )
                    found.append(
                        rule.observation(
                            text[:TITLE_CHARS],
                            text,
                            {
                                "path": path,
                                "line": text,
                                "offset": base + start,
                                "rule": rule.index,
                            },
                        )
                    )
                    break
                assert match is not None  # only exact rules skip the check, and they are plain
                text = text or self.decode(raw)
                stop, note = end, None
                if rule.config.cap and not cut:
                    held, stop, note = self._block(rule, data, start, end, size, release, gone)
                    starts = rule.shape.record_start if rule.shape is not None else None
                    if isinstance(starts, RecordStart) and starts.timeouts:
                        for elapsed in starts.timeouts:  # record_start's slow lines count too
                            self._too_slow(rule, path, base + start, now)
                            self.slow_spent += elapsed
                        starts.timeouts.clear()
                        over = over or self.slow_spent >= SLOW_SHARE
                    if held:
                        return start, found
                    block_end = stop + 1
                observation = self.observe(
                    rule, match, path, base + start, text, data[start:stop], now, cut, note
                )
                if observation is not None:
                    found.append(observation)
                break
            if over:  # this check's share of slow lines is spent: the caller commits
                self.yielded = True
                return max(end + 1, block_end), found
        return size, found

    def _block(
        self,
        rule: Rule,
        data: bytes | bytearray,
        start: int,
        end: int,
        size: int,
        release: int | None,
        gone: bool,
    ) -> tuple[bool, int, str | None]:
        """(wait for more lines, end of the block, why it was cut short or None)."""
        cap = rule.config.cap
        if rule.shape is None:  # a counted lines_after: exactly that many lines
            stop, got = _context(data, end, size, cap)
            return got < cap and release != start, stop, None
        extent = rule.shape.extent(data, start, end, size, cap)
        if extent.status == "open" and release != start:
            return True, extent.stop, None
        note = None
        if extent.status == "cap":
            note = f"[block cut: lines_after = {cap} lines reached]"
        elif extent.status == "open" and not extent.whole:
            why = "the file was rotated away" if gone else "no further line within partial_timeout"
            note = f"[block cut: {why}]"
        return False, extent.stop, note

    def _too_slow(self, rule: Rule, path: str, offset: int, now: float) -> None:
        slow = self.slow
        slow["lines"] = int(slow.get("lines", 0)) + 1
        slow.update(last=now, rule=rule.index, file=path, byte=offset)

    def decode(self, raw: bytes | bytearray) -> str:
        """Text of a line: invalid bytes replaced, NULs made visible, long lines cut."""
        limit = self.config.max_line
        text = raw[:limit].decode(self.config.encoding, "replace").replace("\x00", "\ufffd")
        if len(raw) > limit:
            text += f" [... {len(raw) - limit} more bytes]"
        return text

    def observe(
        self,
        rule: Rule,
        match: re.Match[Any],
        path: str,
        offset: int,
        text: str,
        block: bytes | bytearray,
        now: float,
        cut: bool,
        note: str | None = None,
    ) -> Observation | None:
        """The observation for a matched line, or None while its threshold is not reached."""
        count = 1
        if rule.threshold is not None:
            needed, window = rule.threshold
            times = [t for t in self.counts.get(rule.index, []) if now - t < window] + [now]
            if len(times) < needed:
                self.counts[rule.index] = times
                return None
            self.counts[rule.index] = []
            count = needed
        if cut:
            text += " [line truncated]"
        body = text
        last = text
        if rule.config.cap and not cut:
            lines = [self.decode(ln.rstrip(b"\r")) for ln in block.split(b"\n")]
            body = "\n".join([*lines, note] if note else lines)
            last = summary(rule.config.block, lines) or text
        if rule.config.title is None:
            # A traceback's first line says nothing; its exception line says most: show both.
            named = rule.config.structured or text.lstrip().startswith("Traceback")
            shown = f"{text} … {last}" if named and last != text else text
            title = shown[:TITLE_CHARS]
        else:
            groups = {  # RE2 names bytes groups with bytes
                _text(k, "ascii"): _text(v, self.config.encoding)
                for k, v in match.groupdict().items()
            }
            fields = {
                "name": self.config.name,
                "path": path,
                "line": text[:TITLE_CHARS],
                "last": last[:TITLE_CHARS],
                "severity": rule.config.severity,
                "match": rule.config.match,
                "count": count,
                **groups,
            }
            title = rule.config.title.format_map(fields)
        data: dict[str, Any] = {"path": path, "line": body, "offset": offset, "rule": rule.index}
        if rule.threshold is not None:
            data["count"] = count
        if note is not None:
            data["cut"] = note
        return Observation(
            title=title,
            severity=rule.severity,
            key=rule.config.match,
            body=body,
            data=data,
            event=True,
        )


def _text(value: str | bytes | None, encoding: str) -> str:
    if isinstance(value, bytes):
        return value.decode(encoding, "replace")
    return value or ""


def _context(data: bytes | bytearray, end: int, size: int, lines: int) -> tuple[int, int]:
    """End of the ``lines`` lines after the one ending at ``end``, and how many there were."""
    got = 0
    while got < lines:
        nxt = data.find(b"\n", end + 1, size)
        if nxt < 0:
            break
        end, got = nxt, got + 1
    return end, got
