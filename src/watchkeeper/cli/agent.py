"""The agent's commands: ``run``, ``check``, ``status``, ``alerts`` and ``notify-test``."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from watchkeeper.agentnote import AgentNote, read_note
from watchkeeper.cli.helpers import (
    DEFAULT_CONFIG,
    ConfigOption,
    LogFormatOption,
    SeverityOption,
    StateOption,
    VerboseOption,
    WatcherOption,
    app,
    fail,
    load,
    open_store,
    out,
    parse_severity,
    parse_since,
    plural,
    say,
    setup_logging,
)
from watchkeeper.cli.service import Reloader
from watchkeeper.errors import ConfigError, WatchkeeperError
from watchkeeper.foreground import run_until_signal
from watchkeeper.quantities import format_duration, iso_utc
from watchkeeper.textsafe import safe_json, terminal_safe

if TYPE_CHECKING:
    from watchkeeper.config import KeeperSettings
    from watchkeeper.keeper import Keeper
    from watchkeeper.store import WatcherRecord


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    state: StateOption = None,
    verbose: VerboseOption = 0,
    log_format: LogFormatOption = "auto",
) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C; SIGHUP reloads the config.

    It logs at info without -v.
    """
    from watchkeeper.keeper import Keeper

    setup_logging(verbose, log_format, least=1)
    cfg = load(config)
    try:
        keeper = Keeper.from_config(cfg, state=state)
        if not keeper.watchers:
            say(f"{config}: no watchers configured; nothing to watch.", logging.WARNING)
        announce = attach_dashboard(keeper, cfg.keeper)
        reloader = Reloader(keeper, config, cfg.keeper)

        def started() -> None:
            reloader.started()
            announce()

        run_until_signal(keeper, started=started, reload=reloader)
    except WatchkeeperError as exc:
        fail(str(exc))


def attach_dashboard(keeper: Keeper, settings: KeeperSettings) -> Callable[[], None]:
    """Serve the configured dashboard with the keeper; return what announces its URL."""
    from watchkeeper.web import serve_dashboard

    bind = settings.dashboard_bind()
    if bind is None:
        return lambda: None
    token = settings.token.get_secret_value() if settings.token else None
    # The default address may be taken (another agent): then run without a dashboard.
    explicit = "dashboard" in settings.model_fields_set
    tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    dashboard = serve_dashboard(
        keeper, f"{bind.host}:{bind.port}", token, required=explicit, tls=tls
    )

    def announce() -> None:
        if dashboard.running:
            keeper.advertised["dashboard"] = dashboard.url  # the fleet view links to it
            # A line that ends with it, so scripts (and tests) can find the port after port 0.
            say(f"dashboard: {dashboard.url}")

    return announce


@app.command()
def check(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate a config file: exit 0 if it is good, 1 with every problem listed."""
    from watchkeeper.build import build_from_config
    from watchkeeper.config import default_state_path, validate_config

    try:
        cfg, problems = validate_config(config)
    except ConfigError as exc:
        fail("\n".join(exc.errors))
    try:  # build what is valid too, so every problem shows in this one pass
        notifiers, watchers = build_from_config(cfg)
    except ConfigError as exc:
        notifiers, watchers = [], []
        problems += exc.errors
    for notifier in notifiers:
        notifier.close()
    for watcher in watchers:
        for warning in watcher.warnings():
            out.print(f"[yellow]warning[/]: {escape(warning)}")
        watcher.close()
    if problems:
        fail("\n".join(problems))
    out.print(
        f"{config}: OK — {plural(len(cfg.watchers), 'watcher')}, "
        f"{plural(len(cfg.notify), 'notifier')}, "
        f"state {cfg.keeper.state or default_state_path()}"
    )


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    delta = time.time() - timestamp
    return f"in {format_duration(-delta)}" if delta < 0 else f"{format_duration(delta)} ago"


@app.command()
def status(
    config: ConfigOption = DEFAULT_CONFIG,
    state: StateOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show watchers (health, last and next check), the outbox per notifier, and the running
    keeper's threads and state file when something is wrong with them."""
    from watchkeeper.fleetview import agent_docs, runners
    from watchkeeper.supervisor import read_health, watcher_health
    from watchkeeper.watchers.logrotated import lost_totals

    store = open_store(config, state)
    try:
        watchers = store.watchers()
        counts = store.delivery_counts()
        errors = store.last_delivery_errors()
        size, oldest = store.file_size(), store.oldest_alert()
        agents = agent_docs(store, DEFAULT_LEASE) if store.fleet_capable else []
        running = runners(store, agents) if agents else {}
    except WatchkeeperError as exc:
        fail(str(exc))
    finally:
        store.close()
    note = running_note(store.path)
    configured = None if note is None else set(note.watchers)
    health = read_health(store.path)
    threads = watcher_health(health)

    def state_of(w: WatcherRecord) -> str:
        if w.name in threads:
            return threads[w.name][0]
        removed = configured is not None and w.name not in configured
        return "removed" if removed else _state(w.paused, w.failures)

    rows: list[dict[str, Any]] = [
        {
            "name": w.name,
            "kind": w.kind,
            "agent": running.get(w.name),
            "state": state_of(w),
            "last_check": iso_utc(w.last_check) if w.last_check else None,
            "next_check": iso_utc(w.next_check) if w.next_check else None,
            "failures": w.failures,
            "last_error": threads[w.name][1] if w.name in threads else w.last_error,
            "checks": w.checks,
            "log_lost": lost_totals(w.checkpoint),
        }
        for w in watchers
    ]
    if as_json:
        doc = {
            "agent": None if note is None else asdict(note),
            "agents": agents,
            "watchers": rows,
            "notifiers": {
                name: {**c, "last_error": errors.get(name)} for name, c in counts.items()
            },
            "state": {
                "bytes": size,
                "oldest_alert": iso_utc(oldest) if oldest is not None else None,
            },
            "keeper": health,
        }
        sys.stdout.write(safe_json(doc, indent=2) + "\n")
        return
    _print_agents(agents)
    table = Table(title="watchers", title_justify="left")
    columns = ["name", "kind", "agent", "state", "last check", "next check", "checks", "last error"]
    for column in columns if agents else [c for c in columns if c != "agent"]:
        table.add_column(column)
    styles = {"ok": "green", "paused": "yellow", "restarting": "yellow", "removed": "dim"}
    for row, w in zip(rows, watchers, strict=True):
        style = styles.get(row["state"], "red")
        table.add_row(
            Text(terminal_safe(w.name)),
            Text(terminal_safe(w.kind)),
            *([Text(terminal_safe(row["agent"] or "—"))] if agents else []),
            Text(row["state"], style=style),
            _ago(w.last_check),
            _ago(w.next_check),
            str(w.checks),
            Text(terminal_safe((row["last_error"] or "")[:80])),
        )
    out.print(table)
    for row in rows:
        lost = row["log_lost"]
        if lost and lost["episodes"]:
            out.print(
                Text(
                    f"{terminal_safe(row['name'])}: {lost['bytes']:,} bytes (and "
                    f"{lost['files']:,} whole files) lost before they could be read, in "
                    f"{lost['episodes']} episodes: see its health alerts",
                    style="red",
                )
            )
    _print_health(health)
    notifiers = Table(title="outbox", title_justify="left")
    for column in ("notifier", "pending", "sent", "failed", "last error"):
        notifiers.add_column(column)
    for name, c in sorted(counts.items()):
        notifiers.add_row(
            Text(terminal_safe(name)),
            str(c.get("pending", 0)),
            str(c.get("sent", 0)),
            str(c.get("failed", 0)),
            Text(terminal_safe((errors.get(name) or "")[:80])),
        )
    out.print(notifiers)
    since = "no alerts" if oldest is None else f"oldest alert {iso_utc(oldest)} ({_ago(oldest)})"
    out.print(f"state file: {size / 2**20:.1f} MiB, {since}")
    if note is not None:
        out.print(agent_lines(note))


DEFAULT_LEASE = 30.0
"""An agent whose heartbeat does not say its lease counts as gone after this long."""


def _print_agents(agents: list[dict[str, Any]]) -> None:
    """The fleet's agents: alive or gone, last heartbeat, how many watchers each runs."""
    if not agents:
        return
    table = Table(title="agents", title_justify="left")
    for column in ("agent", "state", "last heartbeat", "host", "runs", "leases lost"):
        table.add_column(column)
    for doc in agents:
        table.add_row(
            Text(terminal_safe(doc["name"])),
            Text("alive", style="green") if doc["alive"] else Text("gone", style="red"),
            f"{format_duration(doc['seen_ago'])} ago",
            Text(terminal_safe(f"{doc['host'] or ''} (pid {doc['pid']})")),
            str(len(doc["watchers"])),
            str(doc["leases_lost"]),
        )
    out.print(table)


def agent_lines(note: AgentNote) -> Text:
    """The running agent, its config's load time, and the last reload's outcome."""
    text = Text(f"agent: pid {note.pid}, {note.config}, loaded {_ago(note.loaded_at)}")
    if note.reload_at is not None:
        verdict = "applied" if note.reload_ok else "refused"
        text.append(f"\nlast reload {_ago(note.reload_at)}: {verdict}")
        for line in note.reload_lines:
            text.append(f"\n  {line}", style=None if note.reload_ok else "red")
    return text


def running_note(path: Path) -> AgentNote | None:
    """The note of the agent that holds the state file now; None when none runs."""
    from watchkeeper.store import Store

    note = read_note(path)
    return note if note is not None and Store.holder(path) == note.pid else None


def _print_health(health: dict[str, Any] | None) -> None:
    """The running keeper's threads that crashed or restart, and a state file that fails."""
    if health is None:
        return
    for unit in health.get("threads", []):
        if unit["state"] != "running":
            line = f"thread {unit['name']}: {unit['state']}: {unit['error'] or ''}"
            out.print(Text(terminal_safe(line), style="red"))
    store = health.get("store", {})
    if store.get("state") == "failing":
        out.print(Text(terminal_safe(f"state file failing: {store.get('error')}"), style="red"))


def _state(paused: bool, failures: int) -> str:
    return "paused" if paused else "failing" if failures else "ok"


@app.command()
def alerts(
    config: ConfigOption = DEFAULT_CONFIG,
    state: StateOption = None,
    since: Annotated[str | None, typer.Option(help="e.g. 1h, 2d, or an ISO time.")] = None,
    severity: SeverityOption = "debug",
    watcher: WatcherOption = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Alert history from the state file, oldest first."""
    from watchkeeper.notifiers.console import alert_text

    min_severity = parse_severity(severity)
    store = open_store(config, state)
    try:
        found = store.alerts(
            since_time=parse_since(since) if since else None,
            min_severity=min_severity,
            watcher=watcher,
            limit=limit,
            newest_first=True,
        )
    except WatchkeeperError as exc:
        fail(str(exc))
    finally:
        store.close()
    for alert in reversed(found):
        if as_json:
            sys.stdout.write(safe_json(alert.to_dict()) + "\n")
        else:
            out.print(alert_text(alert))


@app.command("notify-test")
def notify_test(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Send one test alert straight to every notifier and report each result."""
    from watchkeeper.alerts import Alert, Severity
    from watchkeeper.build import build_notifier

    cfg = load(config)
    if not cfg.notify:
        fail(f"{config}: no [[notify]] tables")
    failures = 0
    for spec in cfg.notify:
        alert = Alert(
            watcher="notify-test",
            kind="test",
            severity=Severity.INFO,
            title=f"watchkeeper test alert for notifier {spec.name!r}",
            key="notify-test",
            body="If you can read this, the notifier works.",
        )
        try:
            notifier = build_notifier(spec)
        except WatchkeeperError as exc:
            failures += 1
            out.print(Text(f"FAIL  {spec.name}: {exc}", style="red"))
            continue
        try:
            notifier.send(alert)
        except Exception as exc:  # report every notifier, whatever one of them raises
            failures += 1
            out.print(Text(f"FAIL  {spec.name} ({notifier.describe()}): {exc}", style="red"))
        else:
            out.print(Text(f"OK    {spec.name} ({notifier.describe()})", style="green"))
        finally:
            notifier.close()
    if failures:
        raise typer.Exit(1)
