"""What every ``watchkeeper`` command shares: the typer app, the consoles, the common options,
and loading a config or a state file with errors printed as messages, never as tracebacks.

The commands live one group per module beside this one (``agent``, ``follow``, ``scan``,
``page``, ``intro``). Each imports what it needs when it runs: loading a config imports every
watcher and notifier (the registries), which ``watchkeeper scan`` or ``--help`` should not pay
for.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from watchkeeper.errors import ConfigError, WatchkeeperError
from watchkeeper.quantities import parse_duration

if TYPE_CHECKING:
    from watchkeeper.alerts import Severity
    from watchkeeper.config import Config
    from watchkeeper.store import Store

app = typer.Typer(
    name="watchkeeper",
    help="Keep watch over logs, pages, ports and your own checks; alert without losing or "
    "repeating anything.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # pipes: no wrap
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The config file.", show_default=True)
]
StateOption = Annotated[
    Path | None, typer.Option("--state", help="The state file (overrides [keeper] state).")
]
SeverityOption = Annotated[str, typer.Option(help="Minimum severity.")]
WatcherOption = Annotated[str | None, typer.Option(help="Only this watcher.")]
DEFAULT_CONFIG = Path("watchkeeper.toml")


def parse_severity(value: str) -> Severity:
    """A --severity value, or a usage error naming the choices."""
    from watchkeeper.alerts import Severity

    try:
        return Severity.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error without a traceback and exit."""
    err.print(Text(message, style="red"))
    raise typer.Exit(code)


def load(path: Path) -> Config:
    """Load a config or exit 1 with every problem listed."""
    from watchkeeper.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail("\n".join(exc.errors))


def state_path(config_path: Path, state: Path | None) -> Path:
    """--state, else the config's [keeper] state, else the default; no config file is fine.

    Only ``[keeper] state`` is read: the rest may name secrets this shell does not have.
    """
    from watchkeeper.config import default_state_path, state_location

    if state is not None:
        return state
    if config_path.exists():
        try:
            configured = state_location(config_path)
        except ConfigError as exc:
            fail("\n".join(exc.errors))
        if configured is not None:
            return configured
    return default_state_path()


def open_store(config_path: Path, state: Path | None) -> Store:
    """Open the state file for reading, or exit 1 when there is none yet."""
    from watchkeeper.store import Store

    path = state_path(config_path, state)
    if not path.exists():
        fail(f"no state file at {path} yet; has `watchkeeper run` been started with this config?")
    try:
        return Store(path, readonly=True)
    except WatchkeeperError as exc:
        fail(str(exc))


def setup_logging(verbose: int) -> None:
    """Log to stderr through rich: warnings by default, -v info, -vv debug."""
    from rich.logging import RichHandler

    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler = RichHandler(console=err, show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    # Libraries' request logs are noise at -v and may carry tokens (apprise URLs); -vv shows them.
    for noisy in ("httpx", "httpcore", "apprise", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def plural(count: int, noun: str) -> str:
    """``1 watcher``, ``2 watchers``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def parse_since(value: str) -> float:
    """``1h`` (that long ago) or an ISO 8601 time."""
    with contextlib.suppress(ValueError):  # not a duration: try it as a time
        return time.time() - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r}: use a duration like 1h or a time like 2026-11-27T10:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
