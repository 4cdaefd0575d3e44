"""The configuration reference, generated from the pydantic models in the registries.

``python -m watchkeeper.reference > docs/reference.md`` writes it; a test fails when the file
drifts from the code, so the docs cannot fall behind a new option.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from watchkeeper.config import KeeperSettings
from watchkeeper.notifiers import NOTIFIERS, NotifierConfig
from watchkeeper.quantities import format_duration
from watchkeeper.watchers import WATCHERS, WatcherConfig

HEADER = """# Configuration reference

Generated from the code by `python -m watchkeeper.reference`; do not edit by hand.
Durations are written like `500ms`, `30s`, `5m`, `1h30m` (a bare number is seconds); sizes like
`64KiB` or `5MB`. Any string may use `${VAR}` or `${VAR:-default}` from the environment.
"""


def _special(metadata: typing.Iterable[Any]) -> str | None:
    """``duration``, ``size`` or ``template`` for the Annotated types of units.py and notifiers."""
    names = {getattr(getattr(m, "func", None), "__name__", "") for m in metadata}
    for func, name in (
        ("parse_duration", "duration"),
        ("parse_size", "size"),
        ("_compiles", "template"),
    ):
        if func in names:
            return name
    return None


def field_type(field: FieldInfo) -> str:
    """A reader's name for a field's type; pydantic keeps Annotated metadata apart."""
    return _special(field.metadata) or type_name(field.annotation)


def type_name(annotation: Any) -> str:
    """A reader's name for a type: ``duration``, ``list of string``, ``"a" | "b"``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        args = typing.get_args(annotation)
        return _special(args[1:]) or type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f'`"{v}"`' for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in members)
    if origin is list:
        return f"list of {type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"table of {type_name(typing.get_args(annotation)[1])}"
    if annotation is SecretStr:
        return "string (secret)"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f'`"{m.name.lower()}"`' for m in annotation)
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if annotation in simple:
        return simple[annotation]
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in TOML, or *required*."""
    if field.is_required():
        return "*required*"
    factory: Any = field.default_factory
    value = factory() if factory is not None else field.default
    if value is None or value is PydanticUndefined or value == "":
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        return f'`"{value.name.lower()}"`'
    if isinstance(value, float) and "duration" in field_type(field):
        return f'`"{format_duration(value)}"`'
    if isinstance(value, str) and "\n" in value:
        return "(see the docs)"
    if isinstance(value, str) and len(value) > 40:
        return "(see the docs)"
    if isinstance(value, str):
        return f'`"{value}"`'
    if value in ([], {}):
        return f"`{value}`"
    return f"`{value}`"


def table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> str:
    """A markdown table of a model's fields."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        kind = field_type(field)
        rows.append(f"| `{field.alias or name}` | {kind} | {default_text(field)} | {meaning} |")
    return "\n".join(rows)


def first_line(doc: str | None) -> str:
    """The summary line of a docstring, after its ``[[table]]:`` label, in Markdown quoting."""
    line = (doc or "").strip().splitlines()[0] if doc else ""
    return line.split(": ", 1)[-1].replace("``", "`")


def kinds(registry: Mapping[str, Any], base: type[BaseModel], heading: str) -> list[str]:
    """One section per registered kind: its summary and the keys it adds to ``base``."""
    parts: list[str] = []
    for kind in sorted(registry):
        model = registry[kind].config_model
        parts += [
            heading.format(kind=kind) + "\n",
            first_line(model.__doc__) + "\n",
            table(model, tuple(base.model_fields)),
            "",
        ]
    return parts


def render() -> str:
    """The whole reference page."""
    parts = [HEADER, "## `[keeper]`\n", table(KeeperSettings), ""]
    parts += ["## `[[notify]]`\n", "Every notifier takes these keys:\n", table(NotifierConfig), ""]
    parts += kinds(NOTIFIERS, NotifierConfig, '### `kind = "{kind}"`')
    parts += [
        "## Watchers\n",
        "Every watcher table takes these keys (the rules are in docs/rules.md):\n",
        table(WatcherConfig),
        "",
    ]
    parts += kinds(WATCHERS, WatcherConfig, "### `[[{kind}]]`")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
