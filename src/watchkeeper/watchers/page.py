"""The page watcher: alert on *new items* on a web page, a JSON API or a feed.

urlwatch diffs a page's filtered text and changedetection.io hashes it, so a reordered list reads
as a change and an item that comes back is reported again. This watcher tracks items instead: an
alert means a key it has never seen (or has forgotten after ``forget_after`` without seeing it).
Reordering, removals and everything outside the items never alert.

The checkpoint, committed with the alerts it produced, is JSON::

    {"items": {key: [first_seen, last_seen], ...},   # unix times
     "seen_at": 1764280000.0,                        # the last check that read the items
     "etag": "...", "last_modified": "...",          # sent back: a 304 skips parsing
     "about": {key: [title, link], ...},             # what the dashboard lists (link or null)
     "last": {"items": 12, "skipped": 0, "truncated": false, "format": "html"}}

Failures (timeouts, DNS, 4xx/5xx, a selector matching nothing, JSON that does not parse) raise,
so the old checkpoint stays and the rules' ``fail_after`` (3 by default) decides when to alert.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from watchkeeper.alerts import Observation, Severity
from watchkeeper.units import Duration, Size
from watchkeeper.watchers import fetch
from watchkeeper.watchers.base import CheckResult, Watcher, WatcherConfig, register
from watchkeeper.watchers.pageitems import (
    Extraction,
    Item,
    check_jmespath,
    check_pick,
    check_selector,
    extract,
)

log = logging.getLogger("watchkeeper")

STAGGER_CAP = 60.0
"""By default first checks are spread over ``min(every, 1m)``, so a restart is no stampede."""
JITTER = 0.1
"""Each wait between checks is ``every`` ±10%, so pages started together drift apart."""


class PageConfig(WatcherConfig):
    """``[[page]]``: alert on new items on a web page, a JSON API or an RSS/Atom feed."""

    every: Duration = Field(default=600.0, description="Time between checks.")
    url: str = Field(description="The page, API or feed (http or https).")
    format: Literal["auto", "html", "json", "feed"] = Field(
        default="auto", description="How to read the reply; auto goes by Content-Type."
    )
    items: str | None = Field(
        default=None,
        description="HTML: CSS selector, one element per item. JSON: JMESPath to the list "
        "(default: the document). Feeds: not used (the entries are the items).",
    )
    key: str | None = Field(
        default=None,
        description='What identifies an item. HTML: "sel@attr", "sel" (its text) or "@attr"; '
        "default the first link's href, else a hash of the text. JSON: JMESPath in the item; "
        "default its id, guid, url or link. Feeds: the guid, else the link.",
    )
    title: str | None = Field(
        default=None,
        description="What an alert shows: like key. Default the element's text (HTML) or the "
        "title/name field (JSON).",
    )
    link: str | None = Field(
        default=None,
        description="The item's URL: like key. Default the first link (HTML) or the "
        "url/link field (JSON).",
    )
    alert: Literal["each", "digest"] = Field(
        default="each", description="One alert per new item, or one per check listing them."
    )
    on_first: Literal["baseline", "alert"] = Field(
        default="baseline",
        description="The first check records what is there (baseline) or alerts on all of it.",
    )
    forget_after: Duration = Field(
        default=30 * 86400.0,
        description="An item absent this long is forgotten, and alerts again if it returns.",
    )
    severity: Severity = Field(default=Severity.INFO, description="Severity of new-item alerts.")
    timeout: Duration = Field(default=30.0, description="Whole-request deadline.")
    max_bytes: Size = Field(
        default=5_000_000, description="Replies are cut off after this many bytes."
    )
    max_per_host: int = Field(
        default=2,
        ge=1,
        le=fetch.MAX_PER_HOST_CAP,
        description="At most this many requests in flight to the page's host.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers, e.g. a User-Agent with contact."
    )
    render: bool = Field(
        default=False,
        description="Load the page in headless Chromium first (extra 'browser'), for items "
        "built by JavaScript.",
    )
    stagger: Duration | None = Field(
        default=None,
        description="Delay the first check by a fixed offset (from the name) within this "
        "window; default min(every, 1m); 0 checks at once.",
    )

    @field_validator("severity", mode="before")
    @classmethod
    def _severity(cls, value: Any) -> Severity:
        return Severity.parse(value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("timeout", "forget_after")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("max_bytes")
    @classmethod
    def _positive_size(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be at least 1 byte")
        return value

    @field_validator("items", "key", "title", "link")
    @classmethod
    def _selector_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Catch a broken selector when the config loads, not at the first check."""
        if value is None:
            return value
        fmt = info.data.get("format", "auto")
        if fmt == "html":
            return check_selector(value) if info.field_name == "items" else check_pick(value)
        if fmt == "json":
            return check_jmespath(value)
        if fmt == "auto":
            _css_or_jmespath(value)
        return value

    @model_validator(mode="after")
    def _html_needs_items(self) -> Self:
        if self.format == "html" and self.items is None:
            raise ValueError("items: a CSS selector is required with format = 'html'")
        return self


def _css_or_jmespath(spec: str) -> None:
    """With format = "auto" a spec must make sense as CSS (``sel@attr``) or as JMESPath."""
    try:
        check_pick(spec)
    except ValueError as css_error:
        try:
            check_jmespath(spec)
        except ValueError:
            raise css_error from None


@register
class PageWatcher(Watcher):
    """Fetches (or renders) one URL per check and alerts on items it has not seen."""

    kind = "page"
    config_model = PageConfig
    config: PageConfig
    pool_size = fetch.MAX_TOTAL  # no more threads than requests the fetcher lets fly at once

    def __init__(self, config: PageConfig) -> None:
        super().__init__(config)
        self._fetcher: fetch.Fetcher | None = None
        self._prepared: fetch.Reply | Exception | None = None

    @property
    def fetcher(self) -> fetch.Fetcher:
        """The shared client, taken on first use (a config check never opens one)."""
        if self._fetcher is None:
            self._fetcher = fetch.shared()
        return self._fetcher

    def first_delay(self) -> float:
        """A fixed offset from the name's hash, so many pages' first checks spread out."""
        cfg = self.config
        window = min(cfg.every, STAGGER_CAP) if cfg.stagger is None else cfg.stagger
        digest = hashlib.sha256(cfg.name.encode()).digest()
        return window * int.from_bytes(digest[:8], "big") / 2**64

    def pool_slot(self) -> tuple[str, int]:
        """Pages on one host share its ``max_per_host`` (the fetcher enforces it too)."""
        return fetch.host_of(self.config.url), self.config.max_per_host

    def rest(self) -> float:
        """Until the host's Retry-After has passed (any page on that host may have heard it)."""
        return fetch.wait_hint(self.config.url)

    def next_delay(self, delay: float) -> float:
        """``every`` with jitter, and never before the host's Retry-After has passed."""
        return max(delay * random.uniform(1 - JITTER, 1 + JITTER), self.rest())

    def prepare(self, checkpoint: Any) -> None:
        """Fetch (or render) now, on a pool worker; the check parses what came back."""
        try:
            self._prepared = self.request(checkpoint)
        except Exception as exc:
            self._prepared = exc

    def request(self, checkpoint: Any) -> fetch.Reply:
        """One request for the page, conditional on what the checkpoint knows."""
        cfg = self.config
        cp = checkpoint if isinstance(checkpoint, dict) else {}
        if cfg.render:
            from watchkeeper.watchers.render import render

            with self.fetcher.slot(cfg.url, cfg.max_per_host):
                return render(
                    cfg.url,
                    headers=cfg.headers,
                    timeout=cfg.timeout,
                    max_bytes=cfg.max_bytes,
                    wait_for=cfg.items if cfg.format in ("html", "auto") else None,
                )
        return self.fetcher.get(
            cfg.url,
            headers=cfg.headers,
            timeout=cfg.timeout,
            max_bytes=cfg.max_bytes,
            max_per_host=cfg.max_per_host,
            etag=cp.get("etag") if cp.get("items") is not None else None,
            last_modified=cp.get("last_modified") if cp.get("items") is not None else None,
        )

    def read(self, checkpoint: Any) -> tuple[fetch.Reply, Extraction | None]:
        """The reply (prepared, or fetched now) and its items; ``None`` items for a 304."""
        cfg = self.config
        cp = checkpoint if isinstance(checkpoint, dict) else {}
        prepared, self._prepared = self._prepared, None
        if isinstance(prepared, Exception):
            raise prepared
        reply = prepared if prepared is not None else self.request(checkpoint)
        if reply.not_modified:
            if not cp:
                raise fetch.PageError(
                    f"GET {cfg.url}: 304 Not Modified without a conditional request"
                )
            return reply, None
        if reply.truncated:
            log.warning(
                "page %s: reply cut off at max_bytes (%d bytes); items past it are not seen",
                cfg.name,
                cfg.max_bytes,
            )
        extraction = extract(
            reply.content,
            page_url=reply.url,
            content_type=reply.content_type,
            charset=reply.charset,
            headers=reply.headers,
            fmt=cfg.format,
            items=cfg.items,
            key=cfg.key,
            title=cfg.title,
            link=cfg.link,
        )
        if extraction.skipped:
            log.warning(
                "page %s: %d of %d items had no key and were skipped",
                cfg.name,
                extraction.skipped,
                extraction.skipped + len(extraction.items),
            )
        return reply, extraction

    def check(self, checkpoint: Any) -> CheckResult:
        """Fetch, extract, compare keys with the checkpoint; new keys become observations."""
        now = time.time()
        reply, extraction = self.read(checkpoint)
        first = not isinstance(checkpoint, dict) or "items" not in checkpoint
        old: dict[str, Any] = {} if first else checkpoint
        if extraction is None:  # 304: the items are the ones the last read saw; none forgotten
            known = {k: [float(t[0]), float(t[1])] for k, t in old.get("items", {}).items()}
            seen_at = old.get("seen_at")
            for key, times in known.items():
                if times[1] == seen_at:
                    known[key] = [times[0], now]
            about = {k: v for k, v in old.get("about", {}).items() if k in known}
            new_checkpoint = {**old, "items": known, "seen_at": now, "about": about}
            return CheckResult([], new_checkpoint)
        present = {item.key for item in extraction.items}
        known = self._remembered(old.get("items", {}), now, keep=present)
        new_items = [item for item in extraction.items if item.key not in known]
        about = {k: v for k, v in old.get("about", {}).items() if k in known}
        for item in extraction.items:
            known[item.key] = [known.get(item.key, [now])[0], now]
            about[item.key] = [item.title, item.url]
        new_checkpoint = {
            "items": known,
            "seen_at": now,
            "about": about,
            "etag": reply.headers.get("etag"),
            "last_modified": reply.headers.get("last-modified"),
            "last": {
                "items": len(extraction.items),
                "skipped": extraction.skipped,
                "truncated": reply.truncated,
                "format": extraction.format,
            },
        }
        if first and self.config.on_first == "baseline":
            return CheckResult([], new_checkpoint)
        return CheckResult(self.observations(new_items), new_checkpoint)

    def _remembered(
        self, items: dict[str, Any], now: float, keep: set[str]
    ) -> dict[str, list[float]]:
        """The known items, less those missing from this read and unseen for ``forget_after``.

        Items on the page now (``keep``) are never forgotten, however long the agent was stopped
        or the site unreachable: forgetting is for items that were gone, not for time unwatched.
        """
        horizon = now - self.config.forget_after
        return {
            key: [float(times[0]), float(times[1])]
            for key, times in items.items()
            if key in keep or float(times[1]) >= horizon
        }

    def observations(self, new_items: list[Item]) -> list[Observation]:
        """One event per new item, or one digest event listing them all."""
        cfg = self.config
        if not new_items:
            return []
        if cfg.alert == "each":
            return [
                Observation(
                    title=item.title,
                    severity=cfg.severity,
                    key=f"item:{item.key}",
                    body=f"New item on {cfg.url}:\n\n{item.title}"
                    + (f"\n{item.url}" if item.url else ""),
                    data=_item_data(cfg.url, item),
                    event=True,
                )
                for item in new_items
            ]
        count = len(new_items)
        listing = "\n".join(
            f"- {item.title}" + (f"\n  {item.url}" if item.url else "") for item in new_items
        )
        summary = new_items[0].title if count == 1 else f"{count} new items"
        return [
            Observation(
                title=summary,
                severity=cfg.severity,
                key="new-items",
                body=f"New on {cfg.url}:\n\n{listing}",
                data={
                    "url": cfg.url,
                    "count": count,
                    "items": [_item_data(cfg.url, item) for item in new_items],
                },
                event=True,
            )
        ]

    def close(self) -> None:
        """Give the shared client back; the last page watcher to close closes it."""
        if self._fetcher is not None:
            fetch.release(self._fetcher)
            self._fetcher = None


def preview(config: PageConfig, stored: Any = None) -> tuple[fetch.Reply, Extraction, set[str]]:
    """One full read without the store: the reply, its items, and which keys ``stored`` lacks.

    For ``watchkeeper page``: trying a selector, or ``--diff`` against a watcher's checkpoint.
    """
    watcher = PageWatcher(config)
    try:
        reply, extraction = watcher.read(None)
    finally:
        watcher.close()
    assert extraction is not None  # no validators were sent, so there is no 304
    items = stored.get("items", {}) if isinstance(stored, dict) else {}
    present = {i.key for i in extraction.items}
    known = watcher._remembered(items, time.time(), keep=present)
    return reply, extraction, {key for key in present if key not in known}


def _item_data(url: str, item: Item) -> dict[str, Any]:
    return {"url": url, "item_key": item.key, "item_title": item.title, "item_url": item.url}
