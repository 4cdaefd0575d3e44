"""A newcomer's commands: ``init`` (a starter config), ``token`` (a dashboard token) and ``demo``
(a world on loopback)."""

from __future__ import annotations

from importlib import resources
from typing import Annotated

import typer

from watchkeeper.cli.helpers import DEFAULT_CONFIG, ConfigOption, app, fail, out
from watchkeeper.quantities import parse_duration


@app.command()
def init(
    config: ConfigOption = DEFAULT_CONFIG,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config (console and jsonl alerts, a log watcher, examples)."""
    if config.exists() and not force:
        fail(f"{config} exists; use --force to overwrite it")
    starter = resources.files("watchkeeper").joinpath("starter.toml").read_text()
    config.write_text(starter)
    out.print(f"wrote {config}; next: watchkeeper check -c {config}, then watchkeeper run")


@app.command()
def token() -> None:
    """Print a fresh random token for [keeper] token (32 characters, URL-safe)."""
    import secrets

    out.print(secrets.token_urlsafe(24), markup=False)


@app.command()
def demo(
    duration: Annotated[str, typer.Option(help="How long to run, e.g. 60s.")] = "60s",
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Do not open the dashboard in a browser.")
    ] = False,
) -> None:
    """Run a self-contained demo on loopback: watchers, an SMTP sink, live alerts."""
    from watchkeeper.demo.runner import run_demo

    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run_demo(seconds, open_browser=not no_browser)
