"""The two shapes of catastrophic backtracking, found in a rule's pattern for ``watchkeeper check``.

A backtracking engine (Python's ``re``, the ``regex`` package) can take time exponential in the
line's length when a repeat can split the same text in many ways and the line almost matches:

- **nested repeats**: a repeated part that itself repeats, ``(a+)+``, ``(\\w+\\s?)*``;
- **overlapping alternatives under a repeat**: ``(a|a)+``, ``(\\w|\\d)+``, ``(x|x?)*``, where
  two branches can start with the same character, or both match nothing.

These are heuristics on ``re``'s parse tree: they may name a harmless pattern, never change what
a rule matches, and only produce a warning. watchkeeper itself runs such a pattern on RE2 (linear
time) when it can, else with ``line_timeout``.
"""

from __future__ import annotations

import re
from typing import Any

from watchkeeper.watchers.logregex import byte_set, sre, sre_parse, walk

_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
First = frozenset[int] | None
"""The characters a part can start with; None: any character."""


def catastrophic(pattern: str) -> str | None:
    """The shape that makes this pattern prone to catastrophic backtracking, or None."""
    try:
        tree = sre_parse.parse(pattern)
    except re.error:
        return None
    for op, av in walk(tree):
        if op not in (sre.MAX_REPEAT, sre.MIN_REPEAT) or av[1] <= 1:
            continue
        body = av[2]
        if any(o in _REPEATS and a[1] > 1 for o, a in walk(body)):
            return "a repeated group that itself repeats"
        if any(o is sre.BRANCH and _overlap(a[1]) for o, a in walk(body)):
            return "a repeat over alternatives that can match the same text"
    return None


def _overlap(branches: list[Any]) -> bool:
    """Two branches can start alike, or both match nothing."""
    seen: list[tuple[First, bool]] = []
    for branch in branches:
        first, empty = _first(branch)
        for other, other_empty in seen:
            if (empty and other_empty) or _meet(first, other):
                return True
        seen.append((first, empty))
    return False


def _meet(a: First, b: First) -> bool:
    if a is None or b is None:
        return bool(a is None or a) and bool(b is None or b)
    return bool(a & b)


def _first(sequence: Any) -> tuple[First, bool]:
    """What a sequence of parse nodes can start with, and whether it can match nothing."""
    found: set[int] = set()
    for op, av in sequence:
        first, empty = _first_of(op, av)
        if first is None:
            return None, False
        found |= first
        if not empty:
            return frozenset(found), False
    return frozenset(found), True


def _first_of(op: Any, av: Any) -> tuple[First, bool]:
    if op is sre.LITERAL:
        return frozenset({av, ord(chr(av).swapcase()[0])}), False  # either case: a guess
    if op is sre.IN and not any(item is sre.NEGATE for item, _ in av):
        codes = [c for item, a in av if item is not sre.CATEGORY for c in _codes(item, a)]
        if all(code < 256 for code in codes):
            return byte_set(av, True), False  # categories by their ASCII members: enough here
    if op in (sre.IN, sre.NOT_LITERAL, sre.ANY):
        return None, False
    if op is sre.BRANCH:
        parts = [_first(b) for b in av[1]]
        if any(first is None for first, _ in parts):
            return None, any(empty for _, empty in parts)
        return frozenset().union(*(f for f, _ in parts if f)), any(e for _, e in parts)
    if op is sre.SUBPATTERN:
        return _first(av[3])
    if op is sre.ATOMIC_GROUP:
        return _first(av)
    if op in _REPEATS:
        first, empty = _first(av[2])
        return first, empty or av[0] == 0
    if op is sre.GROUPREF_EXISTS:
        parts = [_first(b) for b in av[1:] if b is not None]
        if any(first is None for first, _ in parts):
            return None, True
        return frozenset().union(*(f for f, _ in parts if f)), True
    if op is sre.GROUPREF:
        return None, True
    return frozenset(), True  # anchors and lookarounds match nothing


def _codes(item: Any, av: Any) -> tuple[int, ...]:
    """The characters a set item names explicitly (a range by its ends)."""
    return (av,) if item is sre.LITERAL else tuple(av)
