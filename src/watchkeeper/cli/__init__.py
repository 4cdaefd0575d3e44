"""The ``watchkeeper`` command (typer + rich), one module per command group.

Every command that reads state takes ``-c/--config`` (default ``./watchkeeper.toml``) and
``--state``. Config errors are printed as their messages, never as a traceback, with exit status 1.
Importing the command modules registers their commands on the one app in ``helpers``.
"""

from __future__ import annotations

from typing import Any

from watchkeeper.cli import agent, follow, intro, page, scan, service
from watchkeeper.cli.helpers import app

__all__ = ["agent", "app", "follow", "intro", "main", "page", "scan", "service"]


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``watchkeeper`` script."""
    return app(args=argv)
