"""The ``[[log]]`` table and its rules, validated when the config loads.

A bad regex, an unknown template field or a malformed threshold is reported with the table, the
rule's index and the key (``[[log]] #1 (name 'app'): rules.2.match: ...``), before any thread
starts.
"""

from __future__ import annotations

import codecs
import re
import string
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from watchkeeper.alerts import Severity
from watchkeeper.quantities import parse_duration
from watchkeeper.units import Duration, Size
from watchkeeper.watchers.base import WatcherConfig
from watchkeeper.watchers.logregex import Untranslatable, translate

_THRESHOLD = re.compile(r"^\s*(\d+)\s+in\s+(.+?)\s*$")
BLOCK_CAP = 200
"""The default longest block, in lines after the matched one, of a ``block`` or
``record_start`` rule."""
TITLE_FIELDS = frozenset({"name", "path", "line", "last", "severity", "match", "count"})
"""Fields a rule's ``title`` template may use, besides the named groups of its ``match``."""


def parse_threshold(value: str) -> tuple[int, float]:
    """``"10 in 1m"`` -> ``(10, 60.0)``."""
    found = _THRESHOLD.match(value)
    if not found:
        raise ValueError(
            f"{value!r} is not a threshold; write it as 'N in DURATION', like '10 in 1m'"
        )
    count, window = int(found.group(1)), parse_duration(found.group(2))
    if count < 1 or window <= 0:
        raise ValueError(f"{value!r}: the count and the duration must be more than 0")
    return count, window


def _regex(value: str) -> str:
    try:
        re.compile(value)
        translate(value.encode("ascii") if value.isascii() else value)
    except re.error as exc:
        raise ValueError(f"invalid regex {value!r}: {exc}") from None
    except Untranslatable as exc:
        raise ValueError(f"regex {value!r} is not supported: {exc}") from None
    return value


class LogRule(BaseModel):
    """One rule: which lines alert, how loudly, and with what context."""

    model_config = ConfigDict(extra="forbid")

    match: str = Field(description="Regex; a line matching it alerts (first matching rule wins).")
    unless: str | None = Field(
        default=None, description="Regex; a line matching it is skipped by this rule."
    )
    severity: str = Field(default="error", description="debug, info, warning, error, critical.")
    title: str | None = Field(
        default=None,
        description="Template: {name} {path} {line} {last} {severity} {match} {count} and the "
        "named groups of `match`. Default: '{line}'; for a block '{line} … {last}'.",
    )
    block: Literal["python", "java", "go"] | None = Field(
        default=None,
        description="The matched line starts a multi-line error of this format: the alert is "
        "the whole block, which ends at the first line that does not continue it.",
    )
    record_start: str | None = Field(
        default=None,
        description="Regex; with it, a block runs from the matched line up to the next line "
        "this regex matches (the start of the next record).",
    )
    lines_after: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=f"With `block` or `record_start`: the most lines a block takes after the "
        f"match (default {BLOCK_CAP}). Without: exactly this many lines after the match belong "
        "to the alert, whatever they are.",
    )
    threshold: str | None = Field(
        default=None,
        description="'N in DURATION': alert only when N lines matched within DURATION.",
    )

    @property
    def structured(self) -> bool:
        """Blocks end by structure (``block`` or ``record_start``), not by a count."""
        return self.block is not None or self.record_start is not None

    @property
    def cap(self) -> int:
        """The lines after the match a block takes at most (0: no block)."""
        if self.lines_after is not None:
            return self.lines_after
        return BLOCK_CAP if self.structured else 0

    @field_validator("match", "unless", "record_start")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        return value if value is None else _regex(value)

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        return str(Severity.parse(value))

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: str | None) -> str | None:
        if value is not None:
            parse_threshold(value)
        return value

    @model_validator(mode="after")
    def _one_block_shape(self) -> LogRule:
        if self.block is not None and self.record_start is not None:
            raise ValueError(
                "block and record_start both say where a block ends: keep one (block for a "
                "known format, record_start for your own)"
            )
        if self.structured and self.lines_after == 0:
            raise ValueError(
                "lines_after = 0 leaves a block rule no lines: remove it (the default caps a "
                "block at 200) or give the most lines a block may take"
            )
        return self

    @model_validator(mode="after")
    def _title_fields(self) -> LogRule:
        if self.title is not None:
            allowed = TITLE_FIELDS | set(re.compile(self.match).groupindex)
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(self.title) if f is not None}
            except ValueError as exc:
                raise ValueError(f"title {self.title!r}: {exc}") from None
            unknown = sorted(f for f in fields if f.split(".")[0].split("[")[0] not in allowed)
            if unknown:
                raise ValueError(
                    f"title {self.title!r}: unknown field {{{unknown[0]}}}; "
                    f"use {', '.join('{' + f + '}' for f in sorted(allowed))}"
                )
        return self


class LogConfig(WatcherConfig):
    """``[[log]]``: follow log files through rotation and alert on matching lines.

    The rules are written ``rules = [...]``; the field is ``line_rules`` because ``rules()`` is
    the method every watcher config has for the alerting rules (throttle and the like).
    """

    paths: list[Path] = Field(
        min_length=1, description="Files or globs; files that appear later are picked up."
    )
    line_rules: list[LogRule] = Field(
        alias="rules",
        min_length=1,
        description="What to alert on, in order: a table per rule (see docs/log.md).",
    )
    every: Duration = Field(
        default=30.0,
        description="The safety sweep: every followed file and the globs are looked at once per "
        "`every` even when inotify is quiet, a tenth of the files at a time.",
    )
    start_at: Literal["end", "beginning"] = Field(
        default="end",
        description="Where to start in files present at the very first check; files that "
        "appear later are always read from their beginning.",
    )
    encoding: str = Field(default="utf-8", description="Invalid bytes are replaced, never fatal.")
    inotify: bool = Field(default=True, description="Use inotify when the OS offers it.")
    linger: Duration = Field(
        default=0.25,
        le=10,
        description="Under inotify, writes that come within this time of the last check's start "
        "are read together by the next check, not each by one of its own: fewer commits and "
        "messages under a steady trickle of lines, an alert at most this much later. 0: every "
        "write starts a check at once.",
    )
    poll_interval: Duration = Field(
        default=1.0, description="How often to look when inotify is off or unavailable."
    )
    partial_timeout: Duration = Field(
        default=5.0,
        description="A last line without its newline, or a block that may still grow, is "
        "emitted after waiting this long.",
    )
    line_timeout: Duration = Field(
        default=0.1,
        gt=0,
        le=10,
        description="The most time a pattern that needs backtracking (backreferences, "
        "lookarounds) may take on one line; a line that takes longer is counted, reported "
        "and skipped by that rule.",
    )
    rotated: list[str] | None = Field(
        default=None,
        description="Globs where rotated files are found ({path}: the followed file, {name}: "
        "its name; a glob without them, such as an olddir's, stands as written). Default: "
        "{path}.1, {path}-*, {path}.*.",
    )
    max_open_files: int = Field(
        default=256,
        ge=8,
        description="At most this many files are held open; past it, the ones used longest "
        "ago are closed and reopened by identity when they change.",
    )
    close_inactive: Duration = Field(
        default=300.0,
        description="A file read to its end and not written for this long is closed (and "
        "reopened by identity when it changes).",
    )
    rotate_wait: Duration = Field(
        default=5.0, description="Keep reading a rotated-away file this long after rotation."
    )
    max_line: Size = Field(
        default=64 * 1024,
        description="Longer lines are shown truncated with a marker (rules match the whole "
        "line, up to 4 MiB or read_limit; beyond that, its first max_line bytes).",
    )
    read_limit: Size = Field(
        default=32 * 1024 * 1024,
        description="At most this much is read per check, so a backlog commits in steps.",
    )

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        if "\n".encode(value) != b"\n" or "ERROR".encode(value) != b"ERROR":
            # Lines are split and matched as bytes: only ASCII-compatible encodings work.
            raise ValueError(
                f"encoding {value!r} is not ASCII-compatible; use utf-8, latin-1, cp1252 or similar"
            )
        return value

    @model_validator(mode="after")
    def _a_read_holds_a_line(self) -> Self:
        if self.read_limit < 2 * self.max_line:
            raise ValueError("read_limit must be at least twice max_line, so a line always fits")
        return self

    @field_validator("max_line", "read_limit")
    @classmethod
    def _at_least_a_kib(cls, value: int) -> int:
        if value < 1024:
            raise ValueError("must be at least 1KiB")
        return value
