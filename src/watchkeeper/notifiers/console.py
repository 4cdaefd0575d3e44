"""One readable line per alert on stderr, coloured by rich when stderr is a terminal.

rich is imported when it is used, not with this module, which the notifier registry imports in
every process that loads a config.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal

from watchkeeper.alerts import Alert, Severity
from watchkeeper.notifiers.base import Notifier, NotifierConfig, register

if TYPE_CHECKING:
    from rich.text import Text
from watchkeeper.quantities import iso_utc
from watchkeeper.textsafe import terminal_safe

SEVERITY_STYLES = {
    Severity.DEBUG: "dim",
    Severity.INFO: "cyan",
    Severity.WARNING: "yellow",
    Severity.ERROR: "bold red",
    Severity.CRITICAL: "bold white on red",
}


class ConsoleConfig(NotifierConfig):
    """``[[notify]] kind = "console"``: print alerts on stderr."""

    kind: Literal["console"] = "console"


def alert_text(alert: Alert) -> Text:
    """``2026-11-27T21:45:07.123Z  CRITICAL  app  disk full``, styled, escape sequences inert.

    rich's Text never interprets markup in its content, and :func:`terminal_safe` shows control
    and bidi characters as escapes, so alert text from logs or pages cannot drive or reorder the
    terminal. Shared by the console notifier, ``follow`` and ``alerts``.
    """
    from rich.text import Text

    status = "RESOLVED" if alert.status == "resolved" else str(alert.severity).upper()
    style = "green" if alert.status == "resolved" else SEVERITY_STYLES[alert.severity]
    line = Text()
    line.append(iso_utc(alert.created_at), style="dim")
    line.append("  ")
    line.append(f"{status:<8}", style=style)
    line.append("  ")
    line.append(terminal_safe(alert.watcher), style="bold")
    line.append("  ")
    line.append(terminal_safe(alert.title))
    return line


@register
class ConsoleNotifier(Notifier):
    """Prints alerts; never fails."""

    kind = "console"
    config_model = ConsoleConfig

    def __init__(self, config: ConsoleConfig) -> None:
        from rich.console import Console

        super().__init__(config)
        self._console = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def describe(self) -> str:
        """Where the lines go."""
        return "stderr"

    def send(self, alert: Alert) -> None:
        """Print the alert's line."""
        self._console.print(alert_text(alert))
