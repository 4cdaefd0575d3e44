"""Commands that need no config file: ``page`` (check a page once) and ``tail`` (follow logs)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from watchkeeper.cli.helpers import (
    DEFAULT_CONFIG,
    ConfigOption,
    LogFormatOption,
    StateOption,
    VerboseOption,
    app,
    fail,
    load,
    open_store,
    out,
    setup_logging,
)
from watchkeeper.errors import ConfigError, WatchkeeperError
from watchkeeper.foreground import run_until_signal
from watchkeeper.quantities import parse_duration
from watchkeeper.textsafe import safe_json, terminal_safe


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
        doc = {"url": reply.url, "format": found.format, "items": rows}
        sys.stdout.write(safe_json(doc, indent=2) + "\n")
        return
    listing = Table(title=f"{len(found.items)} items ({found.format}) at {reply.url}")
    for column in ["", "key", "title", "url"] if diff else ["key", "title", "url"]:
        listing.add_column(column, overflow="fold")
    for i in found.items:
        cells = [Text(terminal_safe(text)) for text in (i.key, i.title, i.url or "")]
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


def _stored_page_checkpoint(config: Path, state: str | None, name: str | None, url: str) -> Any:
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
    block: Annotated[
        str | None,
        typer.Option(
            help="python, java or go: a matched line starts an error of that format, "
            "sent as one alert."
        ),
    ] = None,
    state: StateOption = None,
    verbose: VerboseOption = 0,
    log_format: LogFormatOption = "auto",
) -> None:
    """Follow log files without a config file and alert on lines matching --match."""
    from watchkeeper.config import default_state_path
    from watchkeeper.keeper import Keeper

    setup_logging(verbose, log_format)
    rules = [
        {"match": m, "severity": severity, **({"block": block} if block else {})} for m in match
    ]
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
