"""Fingerprints: what makes two alerts "the same message" for throttles and grouped digests.

A log line's fingerprint is the hash of its *shape*: the text with its variable parts masked,
Sentry-style, so ``user 4711 timed out after 30s`` and ``user 12 timed out after 5s`` are one
message and ``disk full on /var`` is another. Masking is a fixed list of regular expressions
applied in order (no learned model such as drain3, whose clusters depend on what it saw first):
the same line has the same fingerprint in every process, after every restart, on every host.

What is masked (each becomes a placeholder such as ``<uuid>``; in one pass over the line, where
two could start at one place the earlier in this list wins):

1. timestamps (ISO 8601, ``Nov 30 16:04:53``, ``12:04:53.123``)
2. UUIDs
3. e-mail addresses and URLs
4. IPv4 addresses (with an optional ``:port``) and IPv6 addresses
5. quoted strings (``"..."``, ``'...'``)
6. paths (``/var/log/app.log``, ``C:\\temp``)
7. hex ids: ``0x1f``, and runs of 8+ hex digits with both a digit and a letter
8. numbers (``42``, ``-3.5``, ``1e9``, ``30s``, ``512MB``: a unit stuck to a number goes with it)

and the digits left inside words count as alike (``worker2`` is ``worker7``).

Other alerts (pages, ports, custom checks) name their subject in their key already, so their
fingerprint is derived from the key.
"""

from __future__ import annotations

import functools
import hashlib
import re

_MASKS: tuple[tuple[str, str, re.RegexFlag | int], ...] = (
    (
        r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
        r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}"
        r"|\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b",
        "<time>",
        0,
    ),
    (r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<uuid>", re.I),
    (r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", "<email>", 0),
    (r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]+", "<url>", re.I),
    (r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b", "<ip>", 0),
    (
        r"(?<![\w:])(?:(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}|G::(?:G)?|::G)(?![\w:])".replace(
            "G", r"[0-9a-f]{1,4}(?::[0-9a-f]{1,4})*"
        ),
        "<ip>",
        re.I,
    ),
    (r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'", "<str>", 0),
    (
        r"(?<![\w>])(?:[A-Za-z]:)?(?:[/\\][\w.@%+~-]+){2,}[/\\]?|(?<![\w>])/[\w.@%+~-]+",
        "<path>",
        0,
    ),
    (r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", "<hex>", re.I),
    (r"(?<![\w<])[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?[a-z%]*", "<num>", re.I),
    (r"\s+", " ", 0),
)
_ANY = re.compile(
    "|".join(
        f"(?P<m{i}>{'(?i:' if flags else '(?:'}{pattern}))"
        for i, (pattern, _, flags) in enumerate(_MASKS)
    )
)
"""Every mask in one pattern, tried in the list's order at each place: one pass over a line."""
_PLACEHOLDERS = {f"m{i}": placeholder for i, (_, placeholder, _) in enumerate(_MASKS)}


def _placeholder(found: re.Match[str]) -> str:
    return _PLACEHOLDERS[found.lastgroup or ""]


def shape(text: str) -> str:
    """The text with its variable parts masked (see the module's list) and spaces collapsed."""
    return _ANY.sub(_placeholder, text).strip()


def fingerprint(text: str) -> str:
    """A short stable hash of ``text`` (16 hex digits): what the store and the groups keep."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def of_line(text: str) -> str:
    """The fingerprint of a log line's message: the hash of its shape.

    Every digit counts as ``0`` first: no mask tells one digit from another, so this changes no
    masking, only makes digits inside words alike too (``worker2`` and ``worker7``), and lets
    the lines of a storm, which differ in their numbers, share one cached shape.
    """
    return _of_normalized(text.translate(_ZEROS))


_ZEROS = str.maketrans("123456789", "000000000")


@functools.lru_cache(maxsize=4096)
def _of_normalized(text: str) -> str:
    return fingerprint("shape:" + shape(text))


def of_key(key: str) -> str:
    """The fingerprint of an alert that names its subject in its key (pages, ports, checks)."""
    return fingerprint("key:" + key)
