"""The pydantic field types for durations and sizes, shared by config, rules and the CLI.

They live apart from ``config.py`` because the rules, the watchers and the notifiers all declare
fields of these types, and ``config.py`` imports those modules (through the registries). The
parsers themselves are in ``quantities.py``, which does not import pydantic.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from watchkeeper.quantities import format_duration, parse_duration, parse_size

Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
"""A pydantic field type: seconds as float, written in config as ``"30s"``, ``"5m"`` or a number."""

Size = Annotated[int, BeforeValidator(parse_size)]
"""A pydantic field type: a byte count, written in config as ``"5MB"`` or a number."""
