"""What a watcher's detail page shows beyond its row: a view of its checkpoint per kind.

The checkpoint is what a watcher keeps between checks (log: files and offsets; page: items and
validators; ports: the baseline open set). Read raw, it answers "where is it?" only for someone
who knows the format, so each kind gets a shaped view here: the log's files with their lag, the
page's items newest first, the ports' open set with service names and the history of changes
(from the alerts, which are that history). The same dict backs the HTML and ``/api/watchers/NAME``.

Everything in the checkpoint or the alerts is untrusted text (paths, titles, links, banners): the
templates render it escaped, and links are only made for http(s) URLs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from watchkeeper.quantities import iso_utc
from watchkeeper.scan import ScanError, parse_ports, service_name
from watchkeeper.store import Store, WatcherRecord
from watchkeeper.watchers.base import WatcherConfig
from watchkeeper.watchers.logrotated import lost_totals

log = logging.getLogger("watchkeeper")

ITEMS_SHOWN = 200
"""Page items listed (newest first); the rest are counted."""
HISTORY = 100
"""Port changes listed, newest first."""


def iso(value: Any) -> str | None:
    """A Unix time from a checkpoint as ISO, None when absent or not a number."""
    return iso_utc(float(value)) if isinstance(value, int | float) else None


def web_link(url: Any) -> str | None:
    """``url`` when it is an http(s) URL, the only kind of untrusted link a page may carry."""
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return url
    return None


def file_size(path: str, ino: Any) -> int | None:
    """The size of the file at ``path`` if it is still the one with inode ``ino`` (else None)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if isinstance(ino, int) and ino != info.st_ino:
        return None  # the path now holds another file: the entry's file was rotated away
    return info.st_size


def lag(size: int, offset: int) -> int:
    """Bytes written beyond the offset; all of a file truncated below it is unread."""
    return size - offset if size >= offset else size


def log_detail(record: WatcherRecord, config: WatcherConfig | None, store: Store) -> dict[str, Any]:
    """Files followed (identity, offset, size now, lag), rule hit windows, rotated files done.

    The files are the checkpoint's parts (one per file, in reading order), or its ``files``
    list in a checkpoint from before parts.
    """
    cp = record.checkpoint if isinstance(record.checkpoint, dict) else {}
    listed = cp.get("files")
    if listed is None:
        parts = store.checkpoint_parts(record.name).values()
        listed = sorted(parts, key=lambda d: float(d.get("seq", 0)) if isinstance(d, dict) else 0)
    files = []
    for entry in listed:
        if not isinstance(entry, dict):
            continue
        path, offset = str(entry.get("path", "")), int(entry.get("offset") or 0)
        size = file_size(path, entry.get("ino"))
        wait = entry.get("wait")
        origin = entry.get("origin") or path
        files.append(
            {
                "path": path,
                "folder": os.path.dirname(path),
                "name": os.path.basename(path),
                "origin": origin if origin != path else None,
                "dev": entry.get("dev"),
                "ino": entry.get("ino"),
                "fingerprint": entry.get("fp") or None,
                "fingerprint_bytes": entry.get("fp_len", 0),
                "offset": offset,
                "size": size,
                "lag": lag(size, offset) if size is not None else None,
                "rotated_at": iso(entry.get("gone")),
                "waiting_since": iso(wait[1])
                if isinstance(wait, list) and len(wait) == 2
                else None,
            }
        )
    rules = getattr(config, "line_rules", None) or []
    counts = cp.get("counts", {})
    hits = [
        {
            "rule": int(index),
            "match": rules[int(index)].match if int(index) < len(rules) else None,
            "hits": len(times),
            "last": iso(max(times)) if times else None,
        }
        for index, times in sorted(counts.items(), key=lambda kv: int(kv[0]))
        if isinstance(times, list)
    ]
    done = [
        {"origin": d[3], "dev": d[0], "ino": d[1], "mtime": iso(d[2] / 1e9)}
        for d in reversed(cp.get("done", []))
        if isinstance(d, list) and len(d) >= 4 and isinstance(d[2], int | float)
    ]
    known = [f["lag"] for f in files if f["lag"] is not None]
    return {
        "paths": [str(p) for p in getattr(config, "paths", [])],
        "files": files,
        "total_lag": sum(known) if known else None,
        "window_hits": hits,
        "done": done,
        "lost": lost_totals(cp),
    }


def page_detail(record: WatcherRecord, config: WatcherConfig | None) -> dict[str, Any]:
    """The URL, its validators, and the items newest first with title, link and times."""
    cp = record.checkpoint if isinstance(record.checkpoint, dict) else {}
    about = cp.get("about") or {}
    seen_at = cp.get("seen_at")
    known = [
        (key, times)
        for key, times in (cp.get("items") or {}).items()
        if isinstance(times, list) and len(times) == 2
    ]
    known.sort(key=lambda kv: (-float(kv[1][0]), kv[0]))  # newest first
    rows = []
    for key, times in known:
        title, link = (about.get(key) or [None, None])[:2]
        rows.append(
            {
                "key": key,
                "title": title or key,
                "link": web_link(link) or web_link(key),
                "first_seen": iso(times[0]),
                "last_seen": iso(times[1]),
                "on_page": seen_at is not None and times[1] == seen_at,
            }
        )
    last = cp.get("last") if isinstance(cp.get("last"), dict) else {}
    url = getattr(config, "url", None)
    return {
        "url": url,
        "link": web_link(url),
        "etag": cp.get("etag"),
        "last_modified": cp.get("last_modified"),
        "seen_at": iso(seen_at),
        "last": last,
        "count": len(rows),
        "on_page": sum(1 for r in rows if r["on_page"]),
        "items": rows[:ITEMS_SHOWN],
        "more": max(0, len(rows) - ITEMS_SHOWN),
    }


def port_of(key: str) -> int | None:
    """The port in an alert key: ``port:22:opened`` or ``expect:22``."""
    parts = key.split(":")
    if len(parts) >= 2 and parts[0] in ("port", "expect") and parts[1].isdigit():
        return int(parts[1])
    return None


def ports_detail(
    record: WatcherRecord, config: WatcherConfig | None, store: Store
) -> dict[str, Any]:
    """The open set with service names, pending changes, expectations, and the change history."""
    cp = record.checkpoint if isinstance(record.checkpoint, dict) else {}
    open_ports = sorted(int(p) for p in cp.get("open", []) if isinstance(p, int))
    pending = {int(p): n for p, n in (cp.get("pending") or {}).items() if str(p).isdigit()}
    expect_open = list(getattr(config, "expect_open", []))
    expect_closed = list(getattr(config, "expect_closed", []))
    expected: dict[int, str | None] = {
        **dict.fromkeys(expect_open, "open"),
        **dict.fromkeys(expect_closed, "closed"),
    }
    rows = store.query(
        "SELECT id, status, key, title, data, created_at FROM alerts WHERE watcher = ? "
        "AND (key LIKE 'port:%' OR key LIKE 'expect:%') ORDER BY id DESC LIMIT ?",
        (record.name, HISTORY),
    )
    history: list[dict[str, Any]] = []
    opened_at: dict[int, str] = {}
    host = getattr(config, "host", None)
    for row in rows:
        port = port_of(row["key"])
        data: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            data = json.loads(row["data"]) or {}
        if port is None or data.get("reminder") or data.get("summary"):
            continue
        host = host or data.get("host")
        note = ""
        if row["key"].startswith("expect:"):
            want = data.get("expected") or expected.get(port)
            expected.setdefault(port, want)
            if row["status"] == "resolved":
                change = "opened" if want == "open" else "closed"
                note = f"as expected ({want})" if want else "back as expected"
            else:
                change, note = str(data.get("change", "")), f"expected {want}"
        else:
            change = str(data.get("change") or row["key"].rsplit(":", 1)[-1])
        when = iso_utc(row["created_at"])
        if change == "opened":
            opened_at.setdefault(port, when)
        history.append(
            {
                "at": when,
                "port": port,
                "service": service_name(port),
                "change": change,
                "note": note,
                "banner": data.get("banner"),
                "alert": row["id"],
            }
        )
    conditions = (record.rule_state or {}).get("conditions", {})
    expectations = []
    for port, want in sorted(expected.items()):
        if want not in ("open", "closed"):
            continue
        state = ("open" if port in open_ports else "closed") if record.checkpoint else "unknown"
        cond = conditions.get(f"expect:{port}") or {}
        expectations.append(
            {
                "port": port,
                "service": service_name(port),
                "expected": want,
                "state": state,
                "met": None if state == "unknown" else state == want,
                "alerting_since": iso(cond.get("since")) if cond.get("firing") else None,
            }
        )
    scanned = cp.get("scanned")
    count = None
    with contextlib.suppress(ScanError):
        count = len(parse_ports(scanned)) if scanned else None
    return {
        "host": host,
        "scanned": scanned,
        "scanned_count": count,
        "open": [
            {
                "port": p,
                "service": service_name(p),
                "opened_at": opened_at.get(p),
                "changing": p in pending,
            }
            for p in open_ports
        ],
        "pending": [
            {
                "port": p,
                "service": service_name(p),
                "scans": n,
                "now": "open" if p not in open_ports else "closed",
            }
            for p, n in sorted(pending.items())
        ],
        "for_cycles": getattr(config, "for_cycles", None),
        "expectations": expectations,
        "history": history,
        "history_complete": len(rows) < HISTORY,
    }


Builder = Callable[[WatcherRecord, WatcherConfig | None, Store], dict[str, Any]]
BUILDERS: dict[str, Builder] = {
    "log": log_detail,
    "page": lambda record, config, store: page_detail(record, config),
    "ports": ports_detail,
}


def has_view(kind: str) -> bool:
    """Whether ``kind`` has a view built here (its template needs ``info``)."""
    return kind in BUILDERS


def watcher_detail(
    record: WatcherRecord, config: WatcherConfig | None, store: Store
) -> dict[str, Any] | None:
    """The kind's view of the watcher; None for a kind without one, or a checkpoint it cannot read.

    A checkpoint of another shape (an older version's, or one edited by hand) must not take the
    page down: it is logged and shown as the generic tree instead.
    """
    build = BUILDERS.get(record.kind)
    if build is None:
        return None
    try:
        return build(record, config, store)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        log.warning(
            "dashboard: cannot read %s's checkpoint as a %s view: %r", record.name, record.kind, exc
        )
        return None
