"""The ``watchkeeper`` command (typer + rich).

Every command that reads state takes ``-c/--config`` (default ``./watchkeeper.toml``) and
``--state``. Config errors are printed as their messages, never as a traceback, with exit status 1.

Each command imports what it needs when it runs: loading a config imports every watcher and
notifier (the registries), which ``watchkeeper scan`` or ``--help`` should not pay for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from watchkeeper.errors import ConfigError, WatchkeeperError
from watchkeeper.quantities import format_duration, iso_utc, parse_duration

if TYPE_CHECKING:
    from watchkeeper.alerts import Severity
    from watchkeeper.config import Config, KeeperSettings
    from watchkeeper.keeper import Keeper
    from watchkeeper.scan import HostScan, ScanOptions
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
    """--state, else the config's [keeper] state, else the default; no config file is fine."""
    from watchkeeper.config import default_state_path

    if state is not None:
        return state
    if config_path.exists():
        configured = load(config_path).keeper.state
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


def run_until_signal(
    keeper: Keeper, duration: float | None = None, started: Callable[[], None] | None = None
) -> None:
    """Start a keeper and hold the main thread until SIGTERM/SIGINT (or ``duration``), then stop.

    Signals can only be handled in the main thread, so this is where agent mode turns them into
    the same graceful stop the embedded atexit hook performs.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        keeper.start()
        if started is not None:
            started()
        ends = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            remaining = None if ends is None else ends - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            stop.wait(1.0 if remaining is None else min(1.0, remaining))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        keeper.stop()


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    state: StateOption = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 1,
) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C."""
    from watchkeeper.keeper import Keeper

    setup_logging(verbose)
    cfg = load(config)
    try:
        keeper = Keeper.from_config(cfg, state=state)
        if not keeper.watchers:
            err.print(f"[yellow]{config}: no watchers configured; nothing to watch.[/]")
        run_until_signal(keeper, started=attach_dashboard(keeper, cfg.keeper))
    except WatchkeeperError as exc:
        fail(str(exc))


def attach_dashboard(keeper: Keeper, settings: KeeperSettings) -> Callable[[], None]:
    """Serve the configured dashboard with the keeper; return what announces its URL."""
    bind = settings.dashboard_bind()
    if bind is None:
        return lambda: None
    token = settings.token.get_secret_value() if settings.token else None
    # The default address may be taken (another agent): then run without a dashboard.
    explicit = "dashboard" in settings.model_fields_set
    dashboard = keeper.serve_dashboard(f"{bind.host}:{bind.port}", token, required=explicit)

    def announce() -> None:
        if dashboard.running:
            # One plain line, so scripts (and tests) can find the real port after port 0.
            err.print(f"dashboard: {dashboard.url}", markup=False, soft_wrap=True)

    return announce


@app.command()
def check(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate a config file: exit 0 if it is good, 1 with every problem listed."""
    from watchkeeper.config import default_state_path
    from watchkeeper.keeper import build_from_config

    cfg = load(config)
    try:
        notifiers, watchers = build_from_config(cfg)
    except ConfigError as exc:
        fail("\n".join(exc.errors))
    for notifier in notifiers:
        notifier.close()
    for watcher in watchers:
        watcher.close()
    out.print(
        f"{config}: OK — {plural(len(cfg.watchers), 'watcher')}, "
        f"{plural(len(cfg.notify), 'notifier')}, "
        f"state {cfg.keeper.state or default_state_path()}"
    )


def plural(count: int, noun: str) -> str:
    """``1 watcher``, ``2 watchers``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


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
    """Show watchers (health, last and next check) and the outbox per notifier."""
    store = open_store(config, state)
    watchers = store.watchers()
    counts = store.delivery_counts()
    errors = store.last_delivery_errors()
    store.close()
    if as_json:
        doc = {
            "watchers": [
                {
                    "name": w.name,
                    "kind": w.kind,
                    "state": _state(w.paused, w.failures),
                    "last_check": iso_utc(w.last_check) if w.last_check else None,
                    "next_check": iso_utc(w.next_check) if w.next_check else None,
                    "failures": w.failures,
                    "last_error": w.last_error,
                    "checks": w.checks,
                }
                for w in watchers
            ],
            "notifiers": {
                name: {**c, "last_error": errors.get(name)} for name, c in counts.items()
            },
        }
        out.print_json(json.dumps(doc))
        return
    table = Table(title="watchers", title_justify="left")
    for column in ("name", "kind", "state", "last check", "next check", "checks", "last error"):
        table.add_column(column)
    for w in watchers:
        state_text = _state(w.paused, w.failures)
        style = {"ok": "green", "failing": "red", "paused": "yellow"}[state_text]
        table.add_row(
            w.name,
            w.kind,
            Text(state_text, style=style),
            _ago(w.last_check),
            _ago(w.next_check),
            str(w.checks),
            Text((w.last_error or "")[:80]),
        )
    out.print(table)
    notifiers = Table(title="outbox", title_justify="left")
    for column in ("notifier", "pending", "sent", "failed", "last error"):
        notifiers.add_column(column)
    for name, c in sorted(counts.items()):
        notifiers.add_row(
            name,
            str(c.get("pending", 0)),
            str(c.get("sent", 0)),
            str(c.get("failed", 0)),
            Text((errors.get(name) or "")[:80]),
        )
    out.print(notifiers)


def _state(paused: bool, failures: int) -> str:
    return "paused" if paused else "failing" if failures else "ok"


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
    found = store.alerts(
        since_time=parse_since(since) if since else None,
        min_severity=min_severity,
        watcher=watcher,
        limit=limit,
        newest_first=True,
    )
    store.close()
    for alert in reversed(found):
        if as_json:
            sys.stdout.write(json.dumps(alert.to_dict(), ensure_ascii=False) + "\n")
        else:
            out.print(alert_text(alert))


@app.command("notify-test")
def notify_test(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Send one test alert straight to every notifier and report each result."""
    from watchkeeper.alerts import Alert, Severity
    from watchkeeper.keeper import build_notifier

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


@app.command()
def demo(
    duration: Annotated[str, typer.Option(help="How long to run, e.g. 60s.")] = "60s",
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Do not open the dashboard in a browser.")
    ] = False,
) -> None:
    """Run a self-contained demo on loopback: watchers, an SMTP sink, live alerts."""
    from watchkeeper.demo import run_demo

    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run_demo(seconds, open_browser=not no_browser)


@app.command()
def follow(
    url: Annotated[
        str, typer.Option(help="The agent's dashboard.", envvar="WATCHKEEPER_URL")
    ] = "http://127.0.0.1:8470",
    token: Annotated[
        str | None, typer.Option(help="[keeper] token, if set.", envvar="WATCHKEEPER_TOKEN")
    ] = None,
    since: Annotated[
        int | None, typer.Option(help="Replay alerts after this id first (0: all).")
    ] = None,
    severity: SeverityOption = "debug",
    watcher: WatcherOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines on stdout.")] = False,
) -> None:
    """Print alerts as they happen (like journalctl -f); reconnects and resumes by itself."""
    from watchkeeper.follow import Follower, print_alerts

    min_severity = parse_severity(severity)
    follower = Follower(url, token=token, since=since, severity=min_severity, watcher=watcher)
    raise typer.Exit(print_alerts(follower, out, err, as_json=as_json))


@app.command()
def scan(
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
    from watchkeeper import scanformats as fmt
    from watchkeeper.services import top_ports as common_ports

    if as_json and as_xml:
        raise typer.BadParameter("choose one of --json and --xml")
    if ports and top_ports:
        raise typer.BadParameter("choose one of -p/--ports and --top-ports")
    try:
        wanted = common_ports(top_ports) if top_ports else engine.parse_ports(ports or "1-1024")
        if exclude_ports:
            wanted = sorted(set(wanted) - set(engine.parse_ports(exclude_ports)))
        options = engine.ScanOptions(
            timeout=parse_duration(timeout),
            concurrency=concurrency,
            retries=retries,
            banner=banner,
            rate=rate,
        )
        before = fmt.load_snapshots(previous) if previous else None
        reports = _run_scan(hosts, wanted, options)
    except (engine.ScanError, ValueError) as exc:
        fail(str(exc), code=2)
    args = f"watchkeeper scan -p {engine.port_ranges(wanted)} {' '.join(hosts)}"
    if as_json:
        sys.stdout.write(json.dumps(fmt.to_json(reports, args), indent=2) + "\n")
    elif as_xml:
        sys.stdout.write(fmt.to_nmap_xml(reports, args))
    else:
        out.print(fmt.results_table(reports))
    report_to = err if as_json or as_xml else out
    for report in reports:
        report_to.print(Text(fmt.summary(report)))
    if before is not None:
        changes = fmt.diff(before, fmt.snapshots(reports))
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


@app.command()
def page(
    url: Annotated[str, typer.Argument(help="The page, JSON API or feed.")],
    items: Annotated[
        str | None, typer.Option(help="CSS selector (HTML) or JMESPath (JSON) of the items.")
    ] = None,
    key: Annotated[str | None, typer.Option(help='What identifies an item, e.g. "a@href".')] = None,
    title: Annotated[str | None, typer.Option(help="What an alert shows, e.g. h2.")] = None,
    link: Annotated[str | None, typer.Option(help="The item's URL, e.g. a@href.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, html, json or feed.")] = "auto",
    render: Annotated[bool, typer.Option(help="Render with headless Chromium first.")] = False,
    timeout: Annotated[str, typer.Option(help="Whole-request deadline.")] = "30s",
    diff: Annotated[
        bool, typer.Option("--diff", help="Mark the items the stored state has not seen.")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="With --diff: the watcher's name (default: by URL).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    state: StateOption = None,
) -> None:
    """Check a page once and print the items found: for writing a selector, or --diff."""
    from watchkeeper.config import watcher_config
    from watchkeeper.watchers.page import PageConfig, preview

    options = {"key": key, "title": title, "link": link, "format": fmt, "render": render}
    table = {"name": name or url, "url": url, "items": items, "timeout": timeout, **options}
    configured = _configured_page(config, name, url) if diff else None
    try:
        if configured is not None:  # --diff compares like the watcher: its settings, flags on top
            given = {"items": items, "key": key, "title": title, "link": link}
            updates: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
            updates |= {"format": fmt} if fmt != "auto" else {}
            updates |= {"render": True} if render else {}
            updates |= {"timeout": parse_duration(timeout)} if timeout != "30s" else {}
            cfg: Any = configured.model_copy(update=updates)
        else:
            cfg = watcher_config("page", {k: v for k, v in table.items() if v is not None}, "page")
    except (ConfigError, ValueError) as exc:
        fail("\n".join(exc.errors) if isinstance(exc, ConfigError) else str(exc))
    assert isinstance(cfg, PageConfig)
    stored = None
    if diff:
        stored = _stored_page_checkpoint(config, state, name or cfg.name, url)
    try:
        reply, found, new = preview(cfg, stored)
    except WatchkeeperError as exc:
        fail(str(exc))
    if as_json:
        rows = [
            {"key": i.key, "title": i.title, "url": i.url} | ({"new": i.key in new} if diff else {})
            for i in found.items
        ]
        out.print_json(json.dumps({"url": reply.url, "format": found.format, "items": rows}))
        return
    listing = Table(title=f"{len(found.items)} items ({found.format}) at {reply.url}")
    for column in ["", "key", "title", "url"] if diff else ["key", "title", "url"]:
        listing.add_column(column, overflow="fold")
    for i in found.items:
        cells = [Text(i.key), Text(i.title), Text(i.url or "")]
        if diff:
            cells.insert(0, Text("NEW", style="green") if i.key in new else Text(""))
        listing.add_row(*cells)
    out.print(listing)
    notes = [f"{found.skipped} without a key were skipped"] if found.skipped else []
    notes += ["the reply was cut off at max_bytes"] if reply.truncated else []
    notes += [f"{len(new)} not in the stored state"] if diff else []
    if notes:
        out.print("; ".join(notes))


def _configured_page(config: Path, name: str | None, url: str) -> Any:
    """The ``[[page]]`` table of the config named ``name`` (or with this ``url``), if any."""
    if not config.exists():
        return None
    for watcher in load(config).watchers:
        if getattr(watcher, "url", None) is None:
            continue
        if (name is not None and watcher.name == name) or (name is None and watcher.url == url):  # type: ignore[attr-defined]
            return watcher
    return None


def _stored_page_checkpoint(config: Path, state: Path | None, name: str | None, url: str) -> Any:
    """The checkpoint of the page watcher named ``name``, or of the config's watcher for ``url``."""
    from watchkeeper.config import Config

    if name is None:
        cfg = load(config) if config.exists() else Config()
        named = [w.name for w in cfg.watchers if getattr(w, "url", None) == url]
        if not named:
            fail(f"--diff: no [[page]] with url = {url!r} in {config}; name one with --name")
        name = named[0]
    store = open_store(config, state)
    record = store.watcher(name)
    store.close()
    if record is None:
        fail(f"--diff: the state has no watcher named {name!r}")
    return record.checkpoint


def notify_spec(value: str, index: int) -> dict[str, Any]:
    """``console``, ``https://...`` (webhook), ``jsonl:PATH`` or ``PATH.jsonl`` as a notifier."""
    name = {"name": f"notify{index + 1}"}
    if value.startswith(("http://", "https://")):
        return {"kind": "webhook", "url": value, **name}
    if value.startswith("jsonl:") or value.endswith(".jsonl"):
        return {"kind": "jsonl", "path": value.removeprefix("jsonl:"), **name}
    return {"kind": value, **name}


@app.command()
def tail(
    paths: Annotated[list[Path], typer.Argument(help="Files or globs to follow.")],
    match: Annotated[
        list[str], typer.Option("--match", "-m", help="Regex; a matching line alerts. Repeatable.")
    ],
    severity: Annotated[str, typer.Option(help="Severity of the alerts.")] = "error",
    notify: Annotated[
        list[str] | None,
        typer.Option(help="console (default), a webhook URL, or jsonl:PATH. Repeatable."),
    ] = None,
    start_at: Annotated[str, typer.Option(help="end or beginning, for files seen first.")] = "end",
    state: StateOption = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
) -> None:
    """Follow log files without a config file and alert on lines matching --match."""
    from watchkeeper.config import default_state_path
    from watchkeeper.keeper import Keeper

    setup_logging(verbose)
    rules = [{"match": m, "severity": severity} for m in match]
    followed = sorted(str(p.absolute()) for p in paths)
    # One state per set of paths: tails of different files neither share offsets nor block
    # each other; the same tail run again continues where it stopped.
    digest = hashlib.sha256("\0".join(followed).encode()).hexdigest()[:12]
    try:
        keeper = Keeper(
            state=state or default_state_path().with_name(f"tail-{digest}.db"),
            notify=[notify_spec(n, i) for i, n in enumerate(notify or ["console"])],
        )
        keeper.log(followed, rules=rules, name="tail", start_at=start_at)
        run_until_signal(keeper)
    except WatchkeeperError as exc:
        fail("\n".join(exc.errors) if isinstance(exc, ConfigError) else str(exc))


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


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``watchkeeper`` script."""
    return app(args=argv)
