"""``re``'s IGNORECASE and Unicode classes for text patterns, spelled out as characters.

A rule with non-ASCII characters runs on the ``regex`` package, whose case-insensitive matching
follows Unicode case folding; ``re`` lowers both sides and adds a table of extra equivalences
(``re._casefix``). They disagree on a few characters: for ``re``, ``(?i)`` and the dotless i
(U+0131) match ``i`` and the dotted capital I (U+0130), for ``regex`` they do not. So a
case-insensitive part is not left to ``regex``'s ``(?i)``: each literal and set is written as
the exact characters ``re`` would match, computed from the functions ``re`` itself uses
(``_sre.unicode_tolower`` and ``re._casefix``).

The same goes for ``\\w``, ``\\d``, ``\\s`` and ``\\b``: ``regex`` carries a newer Unicode
database than the Python running ``re``, so a letter added since is a word character for one and
not the other. They are written as the characters this Python's ``str`` methods name, which is
what ``re`` tests.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from typing import Any

_sre: Any = importlib.import_module("_sre")  # re's engine: its own case mapping
_EXTRA: dict[int, tuple[int, ...]] = importlib.import_module("re._casefix")._EXTRA_CASES
_LAST = 0x10FFFF
MAX_MEMBERS = 0x10000
"""A case-insensitive set with more explicit members than this is refused (it would be written
out character by character)."""


@functools.cache
def _lowered_from() -> dict[int, tuple[int, ...]]:
    """For each lowercase character, the other characters ``re`` lowers to it (built once, on
    the first case-insensitive text pattern: about a tenth of a second)."""
    found: dict[int, list[int]] = {}
    for code in range(_LAST + 1):
        lower = _sre.unicode_tolower(code)
        if lower != code:
            found.setdefault(lower, []).append(code)
    return {lower: tuple(codes) for lower, codes in found.items()}


def folded(codes: Iterable[int], ascii_only: bool) -> set[int]:
    """The characters that match one of ``codes`` under IGNORECASE, as ``re`` decides it.

    ``re`` lowers the pattern's character (adding its extra equivalents) and then tests the
    lowered input character, so a character matches when its lower case is in that set.
    """
    if ascii_only:  # (?a): ASCII case only
        lowered = {c + 32 if 65 <= c <= 90 else c for c in codes}
        return lowered | {c - 32 for c in lowered if 97 <= c <= 122}
    lowered = set()
    for code in codes:
        lower = _sre.unicode_tolower(code)
        lowered.add(lower)
        lowered.update(_EXTRA.get(lower, ()))
    table = _lowered_from()
    found: set[int] = set()
    for lower in lowered:
        found.update(table.get(lower, ()))
        if _sre.unicode_tolower(lower) == lower:
            found.add(lower)
    return found


_CATEGORY_TESTS = {
    "word": lambda c: c.isalnum() or c == "_",
    "digit": str.isdecimal,
    "space": str.isspace,
}


@functools.cache
def category(name: str, negate: bool = False) -> str:
    """The body of a class (no brackets) holding what ``re``'s ``\\w`` (``"word"``), ``\\d``
    (``"digit"``) or ``\\s`` (``"space"``) matches in a text pattern, or its complement; built
    once per process (a fifth of a second each)."""
    test = _CATEGORY_TESTS[name]
    return _ranges({x for x in range(_LAST + 1) if test(chr(x)) != negate})


def boundary(non: bool, empty: bool) -> str:
    """``\\b`` (or ``\\B``) with ``re``'s word characters; ``re``'s ``\\B`` never matches in an
    empty line (``empty``: the writing used for one)."""
    word = f"[{category('word')}]"
    if non:
        return "(?!)" if empty else f"(?:(?<={word})(?={word})|(?<!{word})(?!{word}))"
    return f"(?:(?<={word})(?!{word})|(?<!{word})(?={word}))"


def _ranges(codes: set[int]) -> str:
    parts: list[str] = []
    ordered = sorted(codes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        start, stop = ordered[i], ordered[j]
        parts.append(char(start) if start == stop else f"{char(start)}-{char(stop)}")
        i = j + 1
    return "".join(parts)


def char_class(codes: set[int], negate: bool = False, extra: str = "") -> str:
    """A ``regex`` class of these characters (as ranges), plus ``extra`` class items."""
    body = _ranges(codes) + extra
    if not body:
        return "[^\\s\\S]" if not negate else "[\\s\\S]"
    return f"[{'^' if negate else ''}{body}]"


def char(code: int) -> str:
    """One character, escaped for ``regex`` whatever it is."""
    return f"\\U{code:08x}"
