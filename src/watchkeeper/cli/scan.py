"""``watchkeeper scan``: the TCP connect scanner as a command, nmap-style."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from watchkeeper.cli.helpers import app, err, fail, out
from watchkeeper.quantities import parse_duration

if TYPE_CHECKING:
    from watchkeeper.scan import HostScan, ScanOptions


@app.command("scan")
def scan_command(
    hosts: Annotated[list[str], typer.Argument(help="Hosts to scan (names or addresses).")],
    ports: Annotated[
        str | None,
        typer.Option("--ports", "-p", help='e.g. 22,80,1000-2000; "-p-" for 1-65535.'),
    ] = None,
    top_ports: Annotated[
        int | None, typer.Option("--top-ports", help="The N most common ports.")
    ] = None,
    exclude_ports: Annotated[str | None, typer.Option(help="Ports never to probe.")] = None,
    timeout: Annotated[str, typer.Option(help="Per-probe timeout.")] = "1s",
    concurrency: Annotated[int, typer.Option(help="Probes in flight at once.")] = 1000,
    retries: Annotated[int, typer.Option(help="Retries for ports with no answer.")] = 1,
    rate: Annotated[
        float | None, typer.Option(help="At most this many connects per second.")
    ] = None,
    banner: Annotated[
        bool, typer.Option("--banner", help="Read what open ports say first.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    as_xml: Annotated[bool, typer.Option("--xml", help="Print nmap XML (for ndiff).")] = False,
    previous: Annotated[
        Path | None,
        typer.Option("--diff", help="A previous --json file; exit 1 if ports opened or closed."),
    ] = None,
) -> None:
    """TCP connect scan. Scan only hosts you are allowed to scan.

    Exit status: 0 done (no change with --diff), 1 ports changed since --diff, 2 error.
    """
    from watchkeeper import scan as engine

    if as_json and as_xml:
        raise typer.BadParameter("choose one of --json and --xml")
    if ports and top_ports:
        raise typer.BadParameter("choose one of -p/--ports and --top-ports")
    try:
        wanted = engine.top_ports(top_ports) if top_ports else engine.parse_ports(ports or "1-1024")
        if exclude_ports:
            wanted = sorted(set(wanted) - set(engine.parse_ports(exclude_ports)))
        options = engine.ScanOptions(
            timeout=parse_duration(timeout),
            concurrency=concurrency,
            retries=retries,
            banner=banner,
            rate=rate,
        )
        before = engine.load_snapshots(previous) if previous else None
        reports = _run_scan(hosts, wanted, options)
    except (engine.ScanError, ValueError) as exc:
        fail(str(exc), code=2)
    args = f"watchkeeper scan -p {engine.port_ranges(wanted)} {' '.join(hosts)}"
    if as_json:
        sys.stdout.write(json.dumps(engine.to_json(reports, args), indent=2) + "\n")
    elif as_xml:
        sys.stdout.write(engine.to_nmap_xml(reports, args))
    else:
        out.print(engine.results_table(reports))
    report_to = err if as_json or as_xml else out
    for report in reports:
        report_to.print(Text(engine.summary(report)))
    if before is not None:
        changes = engine.diff(before, engine.snapshots(reports))
        for change in changes:
            sign, style = ("+", "green") if change.change == "opened" else ("-", "red")
            label = f" ({change.service})" if change.service else ""
            line = f"{sign} {change.host}:{change.port}{label} {change.change}"
            report_to.print(Text(line, style=style))
        if changes:
            raise typer.Exit(1)


def _run_scan(hosts: list[str], ports: list[int], options: ScanOptions) -> list[HostScan]:
    """Run the scan, with a progress bar (rate, ETA) on stderr when it is a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from watchkeeper.scan import scan as run

    if not err.is_terminal:
        return run(hosts, ports, options)
    with Progress(
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} ports/s"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("scan", total=len(hosts) * len(ports), rate="-")

        def update(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, rate=f"{speed:,.0f}" if speed else "-")

        return run(hosts, ports, options, update)
