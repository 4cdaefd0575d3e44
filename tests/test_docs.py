"""The docs cannot drift from the code: the config reference is regenerated and compared."""

from __future__ import annotations

from pathlib import Path

from watchkeeper.reference import render

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_config_reference_is_current() -> None:
    current = (DOCS / "reference.md").read_text()
    assert current == render(), (
        "docs/reference.md is out of date: "
        "run `python -m watchkeeper.reference > docs/reference.md`"
    )
