"""Where a multi-line error ends: by its structure, not by a count of lines.

A rule with ``block = "python" | "java" | "go"`` or ``record_start = REGEX`` takes, after its
matched line, the lines that continue the same record, as Filebeat's and Fluent Bit's multiline
parsers do. The first line that does not continue it ends the block and is matched by the rules
like any other line (a ``CRITICAL`` right after a traceback alerts).

- **python**: the ``Traceback`` header (on the matched line or the one after it), the indented
  frames, code lines and ``^`` markers, the exception line, and chained sections
  ("During handling of the above exception…", "The above exception was the direct cause…")
  with the blank lines around them.
- **java** (and Kotlin, Scala): the exception line (on the matched line or the one after it),
  indented lines (``\\tat …``, ``\\t... 3 more``, ``Suppressed:``) and ``Caused by:`` lines.
- **go**: a ``panic:`` or ``fatal error:`` line, ``[signal …]``, and the goroutine dump: headers,
  function lines, indented file lines, ``created by …``, the blank lines between goroutines and
  ``exit status N``.
- **record_start**: every line up to the next one the regex matches (a log line's timestamp, say).

A blank line belongs to a block only when a line after it does. The extent is decided on the
lines read so far: a block that reaches the end of what has been written may still grow, and the
caller waits for more (up to ``partial_timeout``) before sending it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import re2

from watchkeeper.watchers.logmatch import RE2_BYTES


def _compile(pattern: bytes) -> Any:
    """RE2, like the rules: a structure test must not backtrack on a long line either."""
    return re2.compile(pattern, RE2_BYTES)


_PY_HEADER = _compile(rb"Traceback \(most recent call last\):")
_PY_GROUP = _compile(rb"[ \t]+\+ Exception Group Traceback \(most recent call last\):")
"""An exception group (Python 3.11+): printed all indented, ``+``/``|``-ruled, to its end."""
_PY_EXCEPTION = _compile(rb"[A-Za-z_][\w.]*(?::|$)")
"""What may end a traceback: ``ValueError: boom``, ``pkg.Error``, ``KeyboardInterrupt``; not a
log record's timestamp, which begins the next record."""
_PY_CHAIN = (
    b"During handling of the above exception, another exception occurred:",
    b"The above exception was the direct cause of the following exception:",
)
_JAVA_EXCEPTION = _compile(
    rb"(?:Exception in thread \"[^\"]*\" )?[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+"
    rb"(?:Exception|Error|Throwable|Failure)[\w$]*(?::.*)?"
)
_GO_START = _compile(rb"(?:panic: |fatal error: )")
_GO_FUNCTION = _compile(rb"[\w./*()\[\]{}%:-]+\(.*\)|created by .*")
_GO_PART = _compile(rb"goroutine \d+ \[.*\]:|\[signal .*\]|exit status \d+")


# A step takes (line, state) and answers (continues, new state); states are short strings.
Step = Callable[[bytes, str], tuple[bool, str]]


def _python(line: bytes, state: str) -> tuple[bool, str]:
    indented = line[:1] in (b" ", b"\t")
    if state == "group":  # a group ends at the first line that is not indented
        return indented, state
    if indented:
        if state in ("head", "chain") and _PY_GROUP.match(line):
            return True, "group"
        return state != "head", "frames" if state == "chain" else state
    if _PY_HEADER.match(line):
        return state in ("head", "chain"), "frames"
    if line in _PY_CHAIN:
        return state in ("exception", "chain"), "chain"
    if state == "frames" and _PY_EXCEPTION.match(line):
        return True, "exception"
    return False, state


def _python_start(first: bytes) -> str:
    if _PY_GROUP.search(first):
        return "group"
    return "frames" if _PY_HEADER.search(first) else "head"


def _java(line: bytes, state: str) -> tuple[bool, str]:
    if line[:1] in (b" ", b"\t"):
        return state != "head", "trace"
    if line.startswith(b"Caused by: ") and state != "head":
        return True, "trace"
    if state == "head" and _JAVA_EXCEPTION.fullmatch(line):
        return True, "trace"
    return False, state


def _go(line: bytes, state: str) -> tuple[bool, str]:
    if line[:1] in (b" ", b"\t") or _GO_PART.fullmatch(line):
        return True, "stack" if line.startswith(b"goroutine ") else state
    if state == "head" and _GO_START.match(line):
        return True, state
    if state == "stack" and _GO_FUNCTION.fullmatch(line):
        return True, state
    return False, state


_STEPS: dict[str, tuple[Step, Callable[[bytes], str], frozenset[str]]] = {
    # (step, the state after the matched line, the states in which the block is whole)
    "python": (_python, _python_start, frozenset({"exception", "group"})),
    "java": (
        _java,
        lambda first: "trace" if _JAVA_EXCEPTION.search(first) else "head",
        frozenset({"trace"}),
    ),
    "go": (_go, lambda first: "head", frozenset({"stack"})),
}


@dataclass(frozen=True)
class Extent:
    """A block's extent within a chunk."""

    stop: int
    """Index of the newline that ends the block's last line."""
    lines: int
    """Lines after the matched one that belong to the block."""
    status: str
    """"ended" (a line after it starts something else), "cap" (``lines_after`` reached) or
    "open" (the chunk ended while the block could still grow)."""
    whole: bool
    """The structure is complete (a traceback reached its exception line): a block cut by a
    timeout is only said to be cut when it is not."""


class BlockShape:
    """How one rule's blocks end: a known format, or a record-start regex."""

    def __init__(self, kind: str | None, record_start: Callable[[bytes], bool] | None) -> None:
        self.kind = kind
        self.record_start = record_start

    def extent(self, data: bytes | bytearray, start: int, end: int, size: int, cap: int) -> Extent:
        """The block whose matched line is ``data[start:end]`` (the newline at ``end``)."""
        if self.record_start is not None:
            step: Step = _record(self.record_start)
            state, whole_states = "", frozenset({""})
        else:
            assert self.kind is not None
            step, first, whole_states = _STEPS[self.kind]
            state = first(bytes(data[start:end]).rstrip(b"\r"))
        stop, lines, pending = end, 0, 0
        pos = end + 1
        while True:
            if lines >= cap:
                return Extent(stop, lines, "cap", state in whole_states)
            nxt = data.find(b"\n", pos, size)
            if nxt < 0:
                return Extent(stop, lines, "open", state in whole_states)
            line = bytes(data[pos:nxt]).rstrip(b"\r")
            if not line.strip():
                pending += 1  # a blank line belongs only if a line after it does
            else:
                continues, state = step(line, state)
                if not continues:
                    return Extent(stop, lines, "ended", state in whole_states)
                stop, lines, pending = nxt, lines + pending + 1, 0
            pos = nxt + 1


def _record(starts: Callable[[bytes], bool]) -> Step:
    return lambda line, state: (not starts(line), state)


def summary(kind: str | None, lines: list[str]) -> str | None:
    """The line that names a block's own error, for ``{last}`` and the default title.

    python: the last exception line (a chained traceback's is the one that was raised);
    java: the first exception line; go: the panic line; otherwise the block's last line.
    """
    body = lines[1:]
    if kind == "python" or (kind is None and "Traceback (most recent call last)" in lines[0]):
        found = [
            ln.strip()
            for ln in body
            if ln.strip()
            and not ln[:1].isspace()
            and not _PY_HEADER.match(ln.encode())
            and ln.encode() not in _PY_CHAIN
        ]
        return found[-1] if found else None
    if kind == "java":
        return next((ln.strip() for ln in lines if _JAVA_EXCEPTION.fullmatch(ln.encode())), None)
    if kind == "go":
        return next((ln.strip() for ln in lines if _GO_START.match(ln.encode())), None)
    return next((ln.strip() for ln in reversed(body) if ln.strip()), None)
