"""Text from logs and pages, made safe for a terminal and for JSON read by one.

Alert text is the outside world's: a log line may carry ESC sequences that clear or retitle a
terminal, C1 controls (``\\x9b`` is a one-byte CSI on some terminals), or bidirectional
overrides (U+202E) that make ``evil.exe`` read as ``exe.live``. Every text output escapes
them visibly, so what is shown is what was there: :func:`terminal_safe` for lines on a
terminal, :func:`safe_json` for JSON (``\\u`` escapes, which JSON readers turn back).
"""

from __future__ import annotations

import json
import re
from typing import Any

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
"""Arabic letter mark, LRM/RLM, the embeddings and overrides, the isolates."""
_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
"""Controls (tab aside), C1, the Unicode line and paragraph separators, bidi controls."""
_UNSAFE_IN_JSON = re.compile(f"[\x7f-\x9f\u2028\u2029{_BIDI}]")
"""What ``json.dumps(ensure_ascii=False)`` leaves raw that a terminal would act on."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with controls and bidi marks shown as ``\\x1b`` / ``\\u202e``: inert, visible."""
    return _UNSAFE.sub(_escape, text)


def safe_json(value: Any, indent: int | None = None) -> str:
    """JSON with UTF-8 kept readable and C1 and bidi characters as ``\\u`` escapes."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
