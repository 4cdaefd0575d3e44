"""Durations, sizes and timestamps as text: parsed and formatted with the standard library alone.

Apart from ``units.py`` (which wraps these parsers as pydantic field types) so that code that
only needs the text forms, such as ``watchkeeper scan``, does not import pydantic.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
import time
from typing import Any

MAX_DURATION = 10 * 365 * 86400.0
"""Longer than any sane interval or timeout; also keeps nan and inf out."""
RETRY_AFTER_CAP = 86400.0
"""A Retry-After longer than this (a day) is taken as this."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$")
_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1d"``.

    A bare number means seconds, as in the TOML ``every = 30``.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        if _NUMBER.match(value):
            seconds = float(value)
        elif _DURATION.match(value):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(value)
            )
        else:
            raise ValueError(
                f"{value!r} is not a duration; use a number with ms, s, m, h, d or w, like '30s'"
            )
    else:
        raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION:
        raise ValueError(f"a duration must be between 0s and 10 years, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``1024``, ``"64KiB"``, ``"5MB"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '5MB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size; use bytes or KB, KiB, MB, MiB, GB, GiB")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    else:
        raise ValueError(f"expected a size like '5MB', got {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return size


def parse_since(value: str, now: float | None = None) -> float:
    """A moment from ``"1h"`` (that long before ``now``) or an ISO 8601 time (UTC if no zone).

    What ``--since`` and ``?since=`` take everywhere, so a duration or a time mean the same thing
    in every command and API. A bare number is refused: it used to be an alert id in ``follow``
    and ``/api/stream``, and reading it as seconds now would change what old scripts get.
    """
    if re.fullmatch(r"\s*\d+(\.\d*)?\s*", value):
        raise ValueError(
            f"{value!r}: give a unit for a duration (e.g. {value.strip()}s), or a time; "
            "an alert id goes in --after-id (?since_id= in the API)"
        )
    with contextlib.suppress(ValueError):  # not a duration: try it as a time
        return (time.time() if now is None else now) - parse_duration(value)
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r}: use a duration like 1h or a time like 2026-11-27T10:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_duration(seconds: float) -> str:
    """The shortest readable form: ``90`` -> ``"1m30s"``, ``0.5`` -> ``"500ms"``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts) or "0s"


def iso_utc(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``: ``2026-11-27T21:45:07.123Z``."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{whole}.{int(timestamp % 1 * 1000):03d}Z"


def retry_after_seconds(
    value: str | None, now: float, cap: float = RETRY_AFTER_CAP
) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at ``cap``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(moment.timestamp() - now, 0.0), cap)
