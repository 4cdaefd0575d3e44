"""What every ``watchkeeper`` command shares: the typer app, the consoles, the common options,
and loading a config or a state file with errors printed as messages, never as tracebacks.

The commands live one group per module beside this one (``agent``, ``follow``, ``scan``,
``page``, ``intro``). Each imports what it needs when it runs: loading a config imports every
watcher and notifier (the registries), which ``watchkeeper scan`` or ``--help`` should not pay
for.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from watchkeeper.errors import ConfigError, WatchkeeperError

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
    context_settings={"help_option_names": ["-h", "--help"]},
    # Help texts are plain text: "[keeper] state" must not be read as rich markup and vanish.
    rich_markup_mode=None,
)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # pipes: no wrap
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The config file.", show_default=True)
]
StateOption = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="The state: a file, or a postgresql:// URL (overrides [keeper] state).",
    ),
]
SeverityOption = Annotated[str, typer.Option(help="Minimum severity.")]
WatcherOption = Annotated[str | None, typer.Option(help="Only this watcher.")]
VerboseOption = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        metavar="",
        show_default=False,
        help="More logs, repeatable: -v info, -vv debug, -vvv debug with libraries' requests.",
    ),
]
LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        metavar="FORMAT",
        help="auto (rich on a terminal, else text), text (one line per record, ISO 8601 "
        "times), json (one object per line) or rich.",
    ),
]
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


def state_path(config_path: Path, state: str | None) -> Path | str:
    """--state, else the config's [keeper] state, else the default state file if it exists.

    Only ``[keeper] state`` is read: the rest may name secrets this shell does not have. Without
    a config file and a state file to read, the message says that there is no config, not that
    some state file the user never chose does not exist.
    """
    from watchkeeper.config import STATE_URLS, default_state_path, state_location

    if state is not None:  # a URL kept whole: a Path would fold its '//' into '/'
        return state if state.startswith(STATE_URLS) else Path(state)
    if config_path.exists():
        try:
            configured = state_location(config_path)
        except ConfigError as exc:
            fail("\n".join(exc.errors))
        return configured if configured is not None else default_state_path()
    if config_path != DEFAULT_CONFIG:
        fail(f"{config_path}: no such config file")
    if not default_state_path().exists():  # else: a program's keeper that uses the default
        fail(
            f"no config file here ({config_path.absolute()}): pass -c CONFIG, or --state FILE to "
            "read a state file directly; `watchkeeper init` writes a starter config"
        )
    return default_state_path()


def open_store(config_path: Path, state: str | None) -> Store:
    """Open the state file for reading, or exit 1 when there is none yet."""
    from watchkeeper.store import Store

    path = state_path(config_path, state)
    if isinstance(path, Path) and not path.exists():
        fail(f"no state file at {path} yet; has `watchkeeper run` been started with this config?")
    try:
        return Store(path, readonly=True)
    except WatchkeeperError as exc:
        fail(str(exc))


def setup_logging(verbose: int, log_format: str = "auto", least: int = 0) -> None:
    """Log to stderr: warnings, or -v info, -vv debug, -vvv debug with libraries' requests.

    ``least`` is the command's own default: the agent logs at info (1) without -v, as it says
    what it starts and stops; ``tail`` only warns (0).
    """
    from watchkeeper.cli.logformat import LOG_FORMATS, log_handler

    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"{log_format!r}: choose one of {', '.join(LOG_FORMATS)}", param_hint="--log-format"
        )
    steps = max(verbose, least)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(steps, 2)]
    handler = log_handler(log_format, sys.stderr)  # narrowed to a LogFormat just above
    logging.basicConfig(level=level, handlers=[handler], force=True)
    threading.excepthook = _log_thread_exception  # a thread's death is a record like the rest
    # Libraries' request logs are noise and may carry tokens (apprise URLs): -vvv shows them.
    for noisy in ("httpx", "httpcore", "apprise", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if steps >= 3 else logging.WARNING)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("watchkeeper").error(
        "thread %s ended by an exception", name, exc_info=exc_info
    )


def say(message: str, level: int = logging.INFO) -> None:
    """A message of the agent's for people and scripts (``dashboard: URL``) on stderr.

    A plain line beside rich's log; a log record like every other line when stderr is for a
    machine, so a ``--log-format json`` stream stays JSON line by line. Either way the line ends
    with the message, so ``dashboard: (http://\\S+)$`` finds the URL.
    """
    from watchkeeper.cli.logformat import for_machines

    if for_machines(logging.getLogger()):
        logging.getLogger("watchkeeper").log(level, "%s", message)
    else:
        style = "yellow" if level >= logging.WARNING else None
        err.print(Text(message, style=style or ""), soft_wrap=True)


def plural(count: int, noun: str) -> str:
    """``1 watcher``, ``2 watchers``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def parse_since(value: str) -> float:
    """``1h`` (that long ago) or an ISO 8601 time, or a usage error saying which forms work."""
    from watchkeeper.quantities import parse_since as moment

    try:
        return moment(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
