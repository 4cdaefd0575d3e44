"""A newcomer's commands: ``init`` (a starter config), ``token`` (a dashboard token) and ``demo``
(a world on loopback)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from watchkeeper.cli.helpers import DEFAULT_CONFIG, app, fail, out
from watchkeeper.quantities import parse_duration

SYSTEM_CONFIG = Path("/etc/watchkeeper/watchkeeper.toml")
SYSTEM_STATE = "${STATE_DIRECTORY:-/var/lib/watchkeeper}"
"""systemd sets $STATE_DIRECTORY from the unit's StateDirectory=; an admin's shell has the same
path by default, so `watchkeeper status -c /etc/watchkeeper/watchkeeper.toml` finds the state."""


@app.command()
def init(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Where to write (default ./watchkeeper.toml; --system: /etc)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    system: Annotated[
        bool,
        typer.Option("--system", help="For the systemd service: state in /var/lib/watchkeeper."),
    ] = False,
    root: Annotated[
        Path | None, typer.Option(help="With --system: write under this folder instead of /.")
    ] = None,
) -> None:
    """Write a commented starter config (console and jsonl alerts, a log watcher, examples)."""
    if root is not None and not system:
        raise typer.BadParameter("--root goes with --system")
    target = config or (SYSTEM_CONFIG if system else DEFAULT_CONFIG)
    if root is not None:
        target = root / target.relative_to(target.anchor) if target.is_absolute() else root / target
    if target.exists() and not force:
        fail(f"{target} exists; use --force to overwrite it")
    starter = resources.files("watchkeeper").joinpath("starter.toml").read_text()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(system_starter(starter) if system else starter)
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror or exc}")
    then = "systemctl enable --now watchkeeper (docs/systemd.md)" if system else "watchkeeper run"
    out.print(f"wrote {target}; next: watchkeeper check -c {target}, then {then}")


def system_starter(starter: str) -> str:
    """The starter config for the service: state and alert files in the service's state folder,
    the system's logs watched instead of a ``logs/`` folder beside the config."""
    text = re.sub(
        r'^state = "[^"]*" *', f'state = "{SYSTEM_STATE}/state.db"  ', starter, count=1, flags=re.M
    )
    text = re.sub(
        r'^path = "alerts.jsonl"', f'path = "{SYSTEM_STATE}/alerts.jsonl"', text, flags=re.M
    )
    text = re.sub(r'^paths = \["logs/\*\.log"\]', 'paths = ["/var/log/*.log"]', text, flags=re.M)
    return text.replace(
        "# watchkeeper.toml — written by `watchkeeper init`.",
        "# /etc/watchkeeper/watchkeeper.toml — written by `watchkeeper init --system` for the\n"
        "# systemd unit (docs/systemd.md): `systemctl reload watchkeeper` applies changes.\n#",
        1,
    )


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
