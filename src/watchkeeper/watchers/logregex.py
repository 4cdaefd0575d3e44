"""One meaning for a rule's regex on every engine: Python's ``re`` parse, written out again.

A rule's pattern is Python syntax, and the user's contract is ``re.search(pattern, line)``. Other
engines read regex text differently in places (``a{,3}`` is a repeat for ``re`` and three literal
characters for RE2 and hyperscan; ``[[:alpha:]]`` is a POSIX class for some and a plain set for
``re``; ``\\Z`` and ``$`` differ at line ends), so a pattern is never handed to them as written.
It is parsed once with ``re``'s own parser and written out again in a small, unambiguous subset
that means the same to each engine: every byte as ``\\xHH``, every set as explicit byte ranges
(case folding already applied, as ``re`` applies it to bytes), ``^``/``$`` as the string anchors
of a single line. Three writings come out of one tree:

- **exact for RE2** (``google-re2``, linear time): the line-by-line meaning, for every pattern
  without backreferences, lookarounds, conditionals, atomic groups or possessive repeats;
- **exact for regex** (the ``regex`` package, backtracking with a per-line timeout): for those
  that need one, and for patterns with non-ASCII characters, which match decoded text;
- **candidates for a whole chunk** (hyperscan, or RE2 in multi-line mode): a pattern whose
  matches include every line-by-line match, positioned on that line. Lookarounds are dropped,
  a backreference becomes "anything", ``$`` also matches before the ``\\r`` of a CRLF line (the
  line a rule sees has it stripped). Each candidate line is then confirmed with an exact engine.

A construct this module does not know is refused when the config loads, never approximated.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from watchkeeper.watchers.logfold import (
    MAX_MEMBERS,
    boundary,
    category,
    char,
    char_class,
    folded,
)

# re's own parser (the module Python's re compiles with), so a pattern means what re says it does.
sre: Any = importlib.import_module("re._constants")
sre_parse: Any = importlib.import_module("re._parser")

_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_CATEGORIES: dict[Any, frozenset[int]] = {
    sre.CATEGORY_DIGIT: frozenset(b"0123456789"),
    sre.CATEGORY_SPACE: frozenset(b" \t\n\r\f\v"),
    sre.CATEGORY_WORD: _WORD,
}
_CATEGORIES.update(
    {
        sre.CATEGORY_NOT_DIGIT: frozenset(range(256)) - _CATEGORIES[sre.CATEGORY_DIGIT],
        sre.CATEGORY_NOT_SPACE: frozenset(range(256)) - _CATEGORIES[sre.CATEGORY_SPACE],
        sre.CATEGORY_NOT_WORD: frozenset(range(256)) - _WORD,
    }
)
_CATEGORY_TEXT = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}
_BACKTRACKING = {
    sre.GROUPREF: "a backreference",
    sre.GROUPREF_EXISTS: "a conditional group",
    sre.ASSERT: "a lookaround",
    sre.ASSERT_NOT: "a lookaround",
    sre.ATOMIC_GROUP: "an atomic group",
    sre.POSSESSIVE_REPEAT: "a possessive repeat",
}
_RE2_MAX_REPEAT = 1000


class Untranslatable(ValueError):
    """The pattern uses something the engines cannot be made to agree on."""


@dataclass(frozen=True)
class Translation:
    """The writings of one pattern (see the module docstring)."""

    re2: str | None
    """Line-by-line meaning in RE2 syntax, or None when the pattern needs backtracking."""
    regex: str
    """Line-by-line meaning in ``regex`` syntax (with no flags of its own)."""
    candidates: str | None
    """Multi-line superset for a whole chunk (bytes patterns only)."""
    needs: str | None
    """Why RE2 cannot run the pattern, for messages."""
    empty: tuple[str | None, str] | None = None
    """The (RE2, regex) writings for an empty line, when the pattern has ``\\B``: ``re``'s
    ``\\B`` never matches an empty string, RE2's and regex's do."""


def translate(pattern: str | bytes) -> Translation:
    """The writings of a pattern ``re`` compiles; :class:`Untranslatable` when there are none.

    A ``bytes`` pattern (an ASCII rule, matched on raw bytes) gets all three; a ``str`` one
    (non-ASCII, matched on decoded text) only the ``regex`` writing.
    """
    tree = sre_parse.parse(pattern)
    flags = tree.state.flags
    _no_locale(flags)
    names = {gid: name for name, gid in tree.state.groupdict.items()}
    needs = _backtracking(tree)
    bounds = any(op is sre.AT and av is sre.AT_NON_BOUNDARY for op, av in walk(tree))
    if isinstance(pattern, str):
        ascii_only = bool(flags & sre.SRE_FLAG_ASCII)
        ignore = bool(flags & sre.SRE_FLAG_IGNORECASE)
        prefix = "(?a)" if ascii_only else ""
        text = [
            prefix + _TextWriter(names, ascii_only, empty).write(tree, ignore)
            for empty in (False, True)
        ]
        empty = (None, text[1]) if bounds else None
        return Translation(None, text[0], None, "non-ASCII text", empty)
    ignore = bool(flags & sre.SRE_FLAG_IGNORECASE)
    if needs is None and not _repeats_fit(tree):
        needs = f"a repeat count above {_RE2_MAX_REPEAT}"

    def exact(empty: bool) -> tuple[str | None, str]:
        linear = None if needs else _BytesWriter(names, "re2", empty).write(tree, ignore)
        return linear, _BytesWriter(names, "regex", empty).write(tree, ignore)

    return Translation(
        *exact(False),
        _BytesWriter(names, "candidates").write(tree, ignore),
        needs,
        exact(True) if bounds else None,
    )


def walk(tree: Any) -> Any:
    """Every (op, av) of a parsed pattern, depth first."""
    for op, av in tree:
        yield op, av
        for sub in _children(op, av):
            yield from walk(sub)


def _children(op: Any, av: Any) -> list[Any]:
    if op is sre.BRANCH:
        return list(av[1])
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        return [av[2]]
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op is sre.GROUPREF_EXISTS:
        return [a for a in av[1:] if a is not None]
    return []


def _backtracking(tree: Any) -> str | None:
    """The first construct only a backtracking engine runs, if any."""
    for op, _ in walk(tree):
        if op in _BACKTRACKING:
            return _BACKTRACKING[op]
    return None


def _repeats_fit(tree: Any) -> bool:
    """RE2 refuses repeat counts above 1000."""
    for op, av in walk(tree):
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            bounds = [n for n in av[:2] if n is not sre.MAXREPEAT]
            if any(n > _RE2_MAX_REPEAT for n in bounds):
                return False
    return True


def byte_set(items: Any, ignore: bool) -> frozenset[int]:
    """The bytes a ``[...]`` set matches, as ``re`` decides it for a bytes pattern.

    Under IGNORECASE ``re`` lowers the set's literals and ranges and tests the lowered byte, so
    a byte matches when its lower case is in the lowered set (categories are case-closed).
    """
    negate, ranges, names = _set_parts(items)
    explicit = {code for low, high in ranges for code in range(low, high + 1)}
    categories = frozenset().union(*(_CATEGORIES[name] for name in names))
    if ignore:
        lowered = {_lower(b) for b in explicit} | categories
        found = {b for b in range(256) if _lower(b) in lowered}
    else:
        found = explicit | categories
    return frozenset(range(256)) - found if negate else frozenset(found)


def _set_parts(items: Any) -> tuple[bool, list[tuple[int, int]], list[Any]]:
    """A ``[...]`` set's parts: negated or not, its ranges (a character is one), categories."""
    negate, ranges, categories = False, [], []
    for op, av in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            ranges.append((av, av))
        elif op is sre.RANGE:
            ranges.append(av)
        elif op is sre.CATEGORY and av in _CATEGORY_TEXT:
            categories.append(av)
        else:
            raise Untranslatable(f"unknown set item {op}")
    return negate, ranges, categories


def _lower(byte: int) -> int:
    return byte + 32 if 65 <= byte <= 90 else byte


def _byte_class(members: frozenset[int]) -> str:
    """A set of bytes as a class of ``\\xHH`` ranges (an empty set matches nothing)."""
    if not members:
        return r"[^\x00-\xff]"
    ordered = sorted(members)
    parts: list[str] = []
    start = prev = ordered[0]
    for byte in [*ordered[1:], -1]:
        if byte == prev + 1:
            prev = byte
            continue
        parts.append(f"\\x{start:02x}" if start == prev else f"\\x{start:02x}-\\x{prev:02x}")
        start = prev = byte
    return "[" + "".join(parts) + "]"


def _no_locale(flags: int) -> None:
    if flags & sre.SRE_FLAG_LOCALE:  # only bytes patterns may have it, and rules are text
        raise Untranslatable("the LOCALE flag (?L) depends on the machine's locale")


def _group(names: dict[int, str], group: int | None, flags: int, body: str) -> str:
    """A group around ``body``: capturing (named if it was) when it was, so numbers hold."""
    _no_locale(flags)
    if group is None:
        return f"(?:{body})"
    name = names.get(group)
    return f"(?P<{name}>{body})" if name else f"({body})"


def _quantifier(low: int, high: Any) -> str:
    return f"{{{low},}}" if high is sre.MAXREPEAT else f"{{{low},{high}}}"


class _Writer(ABC):
    """Writes a parse tree out again; the parts every dialect writes alike are here.

    ``ignore`` (IGNORECASE in force) is passed down the tree and applied by each subclass to
    its characters and sets, so that no dialect's own ``(?i)`` is ever relied on.
    """

    def __init__(self, names: dict[int, str], empty: bool) -> None:
        self.names = names
        self.empty = empty
        """Written for an empty line, where ``re``'s ``\\B`` never matches."""

    def write(self, tree: Any, ignore: bool) -> str:
        return "".join(self.node(op, av, ignore) for op, av in tree)

    def node(self, op: Any, av: Any, ignore: bool) -> str:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.IN, sre.ANY, sre.AT):
            return self.atom(op, av, ignore)
        if op is sre.BRANCH:
            return "(?:" + "|".join(self.write(b, ignore) for b in av[1]) + ")"
        if op is sre.SUBPATTERN:
            group, add, remove, sub = av
            inner = bool(
                (ignore or add & sre.SRE_FLAG_IGNORECASE) and not (remove & sre.SRE_FLAG_IGNORECASE)
            )
            return _group(self.names, group, add, self.scoped(add, remove, sub, inner))
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, sub = av
            text = f"(?:{self.write(sub, ignore)}){_quantifier(low, high)}"
            return text + self.suffix(op)
        if op in _BACKTRACKING:
            return self.backtracking(op, av, ignore)
        raise Untranslatable(f"unknown construct {op}")

    @abstractmethod
    def atom(self, op: Any, av: Any, ignore: bool) -> str:
        """A character, set, ``.`` or anchor, in this dialect (case folded by hand)."""

    def scoped(self, add: int, remove: int, sub: Any, ignore: bool) -> str:
        """The inside of a group that may set flags of its own."""
        return self.write(sub, ignore)

    def suffix(self, op: Any) -> str:
        """A repeat's suffix: lazy ``?``, possessive ``+``."""
        return {sre.MIN_REPEAT: "?", sre.POSSESSIVE_REPEAT: "+"}.get(op, "")

    def backtracking(self, op: Any, av: Any, ignore: bool) -> str:
        """A construct only a backtracking engine runs, in ``regex`` syntax."""
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            direction, sub = av
            sign = "=" if op is sre.ASSERT else "!"
            return f"(?{'<' if direction < 0 else ''}{sign}{self.write(sub, ignore)})"
        if op is sre.GROUPREF:
            return f"(?i:\\{av})" if ignore else f"(?:\\{av})"
        if op is sre.GROUPREF_EXISTS:
            gid, yes, no = av
            other = "" if no is None else "|" + self.write(no, ignore)
            return f"(?({gid}){self.write(yes, ignore)}{other})"
        return f"(?>{self.write(av, ignore)})"  # an atomic group


class _BytesWriter(_Writer):
    """Writes a bytes pattern's tree in one dialect: "re2", "regex" or "candidates"."""

    def __init__(self, names: dict[int, str], dialect: str, empty: bool = False) -> None:
        super().__init__(names, empty)
        self.dialect = dialect

    def atom(self, op: Any, av: Any, ignore: bool) -> str:
        if op is sre.LITERAL:
            return _byte_class(byte_set([(op, av)], ignore)) if ignore else f"\\x{av:02x}"
        if op is sre.NOT_LITERAL:
            return _byte_class(byte_set([(sre.NEGATE, None), (sre.LITERAL, av)], ignore))
        if op is sre.IN:
            return _byte_class(byte_set(av, ignore))
        if op is sre.ANY:
            return r"[^\n]"  # a line has no newline; in a chunk, a match stays on its line
        if av in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
            return {"re2": r"\A", "regex": r"\A", "candidates": "^"}[self.dialect]
        if av in (sre.AT_END, sre.AT_END_STRING):
            # "\r*$": the line a rule sees has its CRs stripped; the chunk still holds them.
            return {"re2": r"\z", "regex": r"\Z", "candidates": r"\r*$"}[self.dialect]
        if av is sre.AT_BOUNDARY:
            return r"\b"
        if av is sre.AT_NON_BOUNDARY:
            return r"[^\x00-\xff]" if self.empty else r"\B"
        raise Untranslatable(f"unknown anchor {av}")

    def suffix(self, op: Any) -> str:
        if op is sre.POSSESSIVE_REPEAT and self.dialect == "candidates":
            return ""  # a plain repeat matches more: the candidate set only grows
        return super().suffix(op)

    def backtracking(self, op: Any, av: Any, ignore: bool) -> str:
        if self.dialect == "re2":
            raise Untranslatable(f"{op} has no RE2 writing")
        if self.dialect == "regex":
            return super().backtracking(op, av, ignore)
        # The candidate search: each construct widened, so the candidate set only grows.
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            return ""
        if op is sre.GROUPREF:
            return r"[^\n]*"
        if op is sre.GROUPREF_EXISTS:
            branches = [self.write(b, ignore) for b in av[1:] if b is not None]
            return "(?:" + "|".join([*branches, ""]) + ")"
        return f"(?:{self.write(av, ignore)})"  # an atomic group


class _TextWriter(_Writer):
    """Writes a text (non-ASCII) pattern's tree for ``regex``.

    Case folding and the Unicode classes are written out as explicit characters (see
    :mod:`logfold`); the ASCII flag stays a flag, as it means the same to both engines.
    """

    def __init__(self, names: dict[int, str], ascii_only: bool, empty: bool = False) -> None:
        super().__init__(names, empty)
        self.ascii_only = ascii_only

    def atom(self, op: Any, av: Any, ignore: bool) -> str:
        if op is sre.LITERAL:
            return char_class(folded([av], self.ascii_only)) if ignore else char(av)
        if op is sre.NOT_LITERAL:
            return char_class(folded([av], self.ascii_only) if ignore else {av}, negate=True)
        if op is sre.IN:
            return self.set(av, ignore)
        if op is sre.ANY:
            return r"[^\n]"
        if av in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
            return r"\A"
        if av in (sre.AT_END, sre.AT_END_STRING):
            return r"\Z"
        if av not in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
            raise Untranslatable(f"unknown anchor {av}")
        if not self.ascii_only:
            return boundary(av is sre.AT_NON_BOUNDARY, self.empty)
        return r"\b" if av is sre.AT_BOUNDARY else "(?!)" if self.empty else r"\B"

    def backtracking(self, op: Any, av: Any, ignore: bool) -> str:
        if op is sre.GROUPREF and ignore and not self.ascii_only:
            raise Untranslatable(
                "a case-insensitive backreference in a pattern with non-ASCII characters: re "
                "and the regex package compare the repeated text differently; write the cases "
                "out ([Ss]) or make the pattern ASCII"
            )
        return super().backtracking(op, av, ignore)

    def scoped(self, add: int, remove: int, sub: Any, ignore: bool) -> str:
        flags = _flag_letters(add) + ("-" + _flag_letters(remove) if remove else "")
        outer = self.ascii_only
        self.ascii_only = bool(
            (outer or add & sre.SRE_FLAG_ASCII) and not (remove & sre.SRE_FLAG_ASCII)
        )
        body = self.write(sub, ignore)
        self.ascii_only = outer
        return f"(?{flags}:{body})" if flags.strip("-") else body

    def set(self, items: Any, ignore: bool) -> str:
        """A ``[...]`` set: its characters (case-folded as re does) and categories."""
        negate, ranges, names = _set_parts(items)
        extra = "".join(
            _CATEGORY_TEXT[name] if self.ascii_only else _unicode_category(name) for name in names
        )
        if not ignore:
            extra = (
                "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges) + extra
            )
            return char_class(set(), negate, extra)
        if sum(high - low for low, high in ranges) > MAX_MEMBERS:
            raise Untranslatable("a case-insensitive set of more than 65,536 characters")
        members = {code for low, high in ranges for code in range(low, high + 1)}
        return char_class(folded(members, self.ascii_only), negate, extra)


def _unicode_category(code: Any) -> str:
    """``\\w`` and the like as ``re`` means them in a text pattern, as class items."""
    text = _CATEGORY_TEXT[code]
    name = {"w": "word", "d": "digit", "s": "space"}[text[1].lower()]
    return category(name, negate=text[1].isupper())


def _flag_letters(flags: int) -> str:
    """The scoped flags a text pattern keeps as flags (IGNORECASE is written out instead)."""
    letters = {sre.SRE_FLAG_ASCII: "a", sre.SRE_FLAG_UNICODE: "u"}
    return "".join(letter for flag, letter in letters.items() if flags & flag)
