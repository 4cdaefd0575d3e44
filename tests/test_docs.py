"""The docs cannot drift from the code.

- docs/reference.md is regenerated from the pydantic models and compared.
- Code blocks in README.md and docs/*.md marked with an HTML comment on the line before them are
  executed: ``<!-- test: python -->`` runs a Python block in a fresh folder (it must exit 0),
  ``<!-- test: toml -->`` loads a TOML block as a config file (it must validate), and
  ``<!-- test: sh -->`` runs a shell block with this venv's ``watchkeeper`` on the PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from watchkeeper import load_config
from watchkeeper.reference import render

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"<!-- test: (\w+) -->\n```(\w*)\n(.*?)```", re.S)


def marked_blocks() -> list[tuple[str, str, str]]:
    """(id, mode, code) for every marked block in the README and docs."""
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1), match.group(3)))
    return found


BLOCKS = marked_blocks()


def test_config_reference_is_current() -> None:
    current = (DOCS / "reference.md").read_text()
    assert current == render(), (
        "docs/reference.md is out of date: "
        "run `python -m watchkeeper.reference > docs/reference.md`"
    )


def test_some_blocks_are_marked() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize(("where", "mode", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_marked_block_runs(
    where: str, mode: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    if mode == "toml":
        for name in re.findall(r"\$\{(\w+)\}", code):  # the reader sets these; so do we
            monkeypatch.setenv(name, f"test-{name.lower()}")
        path = tmp_path / "watchkeeper.toml"
        path.write_text(code)
        load_config(path)
        return
    if mode == "python":
        command = [sys.executable, "-c", code]
    elif mode == "sh":
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        pytest.fail(f"{where}: unknown test mode {mode!r}")
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
