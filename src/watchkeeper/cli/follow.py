"""``watchkeeper follow``: an agent's alerts as they happen (the client is in ``follower``)."""

from __future__ import annotations

from typing import Annotated

import typer

from watchkeeper.cli.helpers import (
    SeverityOption,
    WatcherOption,
    app,
    err,
    out,
    parse_severity,
    parse_since,
)


@app.command()
def follow(
    url: Annotated[
        str, typer.Option(help="The agent's dashboard.", envvar="WATCHKEEPER_URL")
    ] = "http://127.0.0.1:8470",
    token: Annotated[
        str | None, typer.Option(help="[keeper] token, if set.", envvar="WATCHKEEPER_TOKEN")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Replay alerts since then first: 10m, 2d, or an ISO time.")
    ] = None,
    after_id: Annotated[
        int | None, typer.Option("--after-id", help="Replay alerts after this id first (0: all).")
    ] = None,
    severity: SeverityOption = "debug",
    watcher: WatcherOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines on stdout.")] = False,
) -> None:
    """Print alerts as they happen (like journalctl -f); reconnects and resumes by itself."""
    from watchkeeper.cli.follower import Follower, print_alerts

    min_severity = parse_severity(severity)
    if since is not None and after_id is not None:
        raise typer.BadParameter("choose one of --since and --after-id")
    if since is not None:
        parse_since(since)  # a bad value is a usage error here, not a 400 from the agent
    follower = Follower(
        url, token=token, after_id=after_id, severity=min_severity, watcher=watcher, since=since
    )
    raise typer.Exit(print_alerts(follower, out, err, as_json=as_json))
