"""Items out of a fetched page: HTML by CSS selector, JSON by JMESPath, RSS/Atom feeds.

The page watcher tracks *items*, not text: each item is a key (what identifies it), a title (what
an alert shows) and a link. Keys are normalized so that the same item always gets the same key:
URLs made absolute against the page (and its ``<base href>``), tracking parameters such as
``utm_*`` dropped, whitespace collapsed. Everything here is a pure function of the page's bytes,
so a selector can be tried with ``watchkeeper page URL --items SEL`` before it goes into a config.

Parsers: selectolax (lexbor, a fast standards-following HTML5 parser that copes with any
malformed markup), jmespath, feedparser.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

from watchkeeper.watchers.fetch import PageError

if TYPE_CHECKING:
    from jmespath.parser import ParsedResult

Format = Literal["html", "json", "feed"]

TITLE_MAX = 300
"""Item titles are cut to this many characters."""

TRACKING_PARAMS = re.compile(
    r"^(utm_\w+|fbclid|gclid|dclid|gbraid|wbraid|msclkid|yclid|mc_cid|mc_eid|_hsenc|_hsmi|"
    r"igshid|mkt_tok|_ga|_gl|oly_anon_id|oly_enc_id|vero_id|wickedid|__s)$",
    re.IGNORECASE,
)
"""Query parameters that identify a visitor or a campaign, never the item; dropped from keys."""

_TRACKING_HINT = re.compile(
    r"(?:^|&)(?:utm_|fbclid|gclid|dclid|gbraid|wbraid|msclkid|yclid|mc_|_hs|igshid|mkt_tok|_g|"
    r"oly_|vero_id|wickedid|__s)",
    re.IGNORECASE,
)
URL_ATTRIBUTES = frozenset({"href", "src", "action", "cite", "data-href", "data-url", "poster"})
_ATTR = re.compile(r"^[A-Za-z_:][-\w:.]*$")
_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([-\w.:]+)""", re.IGNORECASE | re.DOTALL
)
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Item:
    """One item on a page."""

    key: str
    title: str
    url: str | None = None


@dataclass
class Extraction:
    """The items of one page, and how many candidates had no key (counted, not fatal)."""

    items: list[Item] = field(default_factory=list)
    skipped: int = 0
    format: Format = "html"


# -- keys and text ------------------------------------------------------------------------------


def normalize_url(url: str, base: str) -> str:
    """Absolute, scheme and host lower-cased, tracking parameters dropped, fragment kept.

    Runs for every item of every check, so the common shapes (a root-relative or absolute
    http(s) link) take string fast paths; anything else goes through ``urljoin``.
    """
    url = url.strip()
    if url.startswith("/") and not url.startswith("//") and "/." not in url:
        absolute = _origin(base) + url
    else:
        if not url.startswith(("http://", "https://")):
            url = urljoin(base, url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return url
        path = parts.path or "/"
        absolute = urlunsplit((parts.scheme, _netloc(parts), path, parts.query, parts.fragment))
    rest, hash_mark, fragment = absolute.partition("#")
    head, _, query = rest.partition("?")
    if query and _TRACKING_HINT.search(query):
        pairs = query.split("&")
        query = "&".join(p for p in pairs if not TRACKING_PARAMS.match(p.partition("=")[0]))
    return head + ("?" + query if query else "") + hash_mark + fragment


@functools.lru_cache(maxsize=1024)
def _origin(base: str) -> str:
    """``scheme://host[:port]`` of a page URL, normalized like the keys."""
    parts = urlsplit(base)
    return f"{parts.scheme.lower()}://{_netloc(parts)}"


def _netloc(parts: SplitResult) -> str:
    """The host part lower-cased, without the scheme's default port."""
    netloc = parts.netloc.lower()
    return netloc.removesuffix({"http": ":80", "https": ":443"}.get(parts.scheme.lower(), "\0"))


def clean_text(text: str, limit: int | None = None) -> str:
    """Whitespace collapsed to single spaces, cut to ``limit`` characters with an ellipsis."""
    text = _WS.sub(" ", text).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def text_key(text: str) -> str:
    """A short stable key for an item known only by its text."""
    digest = hashlib.sha256(clean_text(text).encode("utf-8")).hexdigest()
    return f"text:{digest[:20]}"


def looks_like_url(value: str) -> bool:
    """True for absolute http(s) URLs, which are normalized wherever they appear as keys."""
    return value.startswith(("http://", "https://"))


# -- HTML ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """``"sel@attr"``, ``"sel"`` (its text) or ``"@attr"`` (of the item itself), parsed."""

    selector: str | None
    attribute: str | None

    @classmethod
    def parse(cls, spec: str) -> Pick:
        """Split on the last ``@`` when what follows is an attribute name."""
        selector, at, attribute = spec.rpartition("@")
        if at and _ATTR.match(attribute):
            return cls(selector.strip() or None, attribute)
        return cls(spec.strip() or None, None)

    def value(self, node: LexborNode, base: str) -> str | None:
        """The picked text or attribute inside ``node``; URL attributes come back absolute."""
        target = node if self.selector is None else node.css_first(self.selector)
        if target is None:
            return None
        if self.attribute is None:
            text = clean_text(target.text(deep=True, separator=" ", strip=True))
            return text or None
        raw = target.attributes.get(self.attribute)
        if raw is None or not raw.strip():
            return None
        if self.attribute.lower() in URL_ATTRIBUTES or looks_like_url(raw.strip()):
            return normalize_url(raw, base)
        return clean_text(raw)


@functools.lru_cache(maxsize=256)  # a thousand pages often share one selector
def check_selector(selector: str) -> str:
    """Raise ValueError naming the selector when lexbor cannot parse it."""
    try:
        LexborHTMLParser("<p></p>").css(selector)
    except SelectolaxError as exc:
        raise ValueError(f"{selector!r} is not a valid CSS selector ({exc})") from None
    return selector


@functools.lru_cache(maxsize=256)  # a thousand pages often share one selector
def check_pick(spec: str) -> str:
    """Validate a ``sel@attr`` spec at config time."""
    pick = Pick.parse(spec)
    if pick.selector is not None:
        check_selector(pick.selector)
    return spec


def decode_html(content: bytes, charset: str | None) -> str:
    """Text from bytes by the Content-Type charset, else ``<meta charset>``, else UTF-8.

    An unknown charset name falls back to UTF-8; undecodable bytes become U+FFFD rather than
    failing the check.
    """
    for candidate in (charset, _meta_charset(content), "utf-8"):
        if not candidate:
            continue
        try:
            codecs.lookup(candidate)
        except LookupError:
            continue
        return content.decode(candidate, errors="replace")
    return content.decode("utf-8", errors="replace")


def _meta_charset(content: bytes) -> str | None:
    if content.startswith(codecs.BOM_UTF8):
        return "utf-8"
    match = _META_CHARSET.search(content[:4096])
    return match.group(1).decode("ascii", "replace") if match else None


def _first_link(node: LexborNode, base: str, page_url: str) -> str | None:
    """The item's first real link: http(s), not a fragment, not the page itself.

    ``href="#"``, ``javascript:void(0)`` and links back to the list are on every card of many
    shops; keyed by them, all items would look like one.
    """
    links = [node] if node.tag == "a" and node.attributes.get("href") else []
    page = page_url.split("#", 1)[0]
    for link in [*links, *node.css("a[href]")]:
        href = (link.attributes.get("href") or "").strip()
        if not href or href.startswith("#"):
            continue
        url = normalize_url(href, base)
        if url.startswith(("http://", "https://")) and url.split("#", 1)[0] != page:
            return url
    return None


def html_items(
    text: str,
    page_url: str,
    items: str,
    key: str | None = None,
    title: str | None = None,
    link: str | None = None,
) -> Extraction:
    """One item per element ``items`` matches; raise PageError when it matches nothing."""
    tree = LexborHTMLParser(text)
    base_tag = tree.css_first("base[href]")
    base_href = None if base_tag is None else base_tag.attributes.get("href")
    base = urljoin(page_url, base_href) if base_href else page_url
    nodes = tree.css(items)
    if not nodes:
        raise PageError(
            f"{page_url}: the selector {items!r} matched nothing "
            "(a changed page, a wrong selector, or a blocked request)"
        )
    key_pick = Pick.parse(key) if key else None
    title_pick = Pick.parse(title) if title else None
    link_pick = Pick.parse(link) if link else None
    result = Extraction(format="html")
    by_link: list[tuple[int, str]] = []  # items keyed by their first link, and their text
    for node in nodes:
        own_text = node.text(deep=True, separator=" ", strip=True)
        first_link = _first_link(node, base, page_url) if not (link_pick and key_pick) else None
        url = link_pick.value(node, base) if link_pick else first_link
        if key_pick is not None:
            found = key_pick.value(node, base)
        else:
            found = first_link or (text_key(own_text) if own_text.strip() else None)
            if first_link and own_text.strip():
                by_link.append((len(result.items), own_text))
        if found is None:
            result.skipped += 1
            continue
        shown = (title_pick.value(node, base) if title_pick else None) or own_text or found
        result.items.append(Item(found, clean_text(shown, TITLE_MAX), url))
    # Items that share their first link (a category, "/share") are told apart by their text.
    shared = Counter(result.items[i].key for i, _ in by_link)
    for index, own_text in by_link:
        item = result.items[index]
        if shared[item.key] > 1:
            result.items[index] = replace(item, key=text_key(own_text))
    return _unique(result, page_url, "items", len(nodes))


# -- JSON ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # a thousand pages often share one selector
def _jmespath(expression: str) -> ParsedResult:
    """The compiled expression. jmespath is imported for the first JSON spec, not by every page."""
    import jmespath

    return jmespath.compile(expression)


def check_jmespath(expression: str) -> str:
    """Raise ValueError naming the expression when it does not compile."""
    from jmespath.exceptions import JMESPathError

    try:
        _jmespath(expression)
    except JMESPathError as exc:
        raise ValueError(f"{expression!r} is not a valid JMESPath expression ({exc})") from None
    return expression


def _scalar(value: Any) -> str | None:
    if value is None or value in ("", [], {}):
        return None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _json_pick(
    entry: Any, expression: str | None, defaults: Iterable[str], page_url: str
) -> str | None:
    if expression is not None:
        value = _scalar(_jmespath(expression).search(entry))
    elif isinstance(entry, Mapping):
        value = next((v for d in defaults if (v := _scalar(entry.get(d))) is not None), None)
    else:
        value = None
    if value is not None and (looks_like_url(value) or value.startswith("/")):
        return normalize_url(value, page_url)
    return value


def json_items(
    content: bytes,
    page_url: str,
    items: str | None,
    key: str | None = None,
    title: str | None = None,
    link: str | None = None,
) -> Extraction:
    """Items from the list ``items`` (JMESPath; default the document) selects."""
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PageError(f"{page_url}: not valid JSON: {exc}") from None
    except RecursionError:
        raise PageError(f"{page_url}: JSON nested too deeply to read") from None
    found = document if items is None else _jmespath(items).search(document)
    if not isinstance(found, list):
        what = "the document" if items is None else f"the expression {items!r}"
        got = "nothing" if found is None else f"a {type(found).__name__}"
        raise PageError(f"{page_url}: {what} gave {got}, not a list of items")
    result = Extraction(format="json")
    for entry in found:
        item_key = _json_pick(entry, key, ("id", "guid", "uuid", "url", "link", "href"), page_url)
        if item_key is None and key is None and entry not in (None, "", [], {}):
            item_key = (
                "json:"
                + hashlib.sha256(
                    json.dumps(entry, sort_keys=True, ensure_ascii=False).encode()
                ).hexdigest()[:20]
            )
        if item_key is None:
            result.skipped += 1
            continue
        shown = _json_pick(entry, title, ("title", "name", "headline", "summary"), page_url)
        url = _json_pick(entry, link, ("url", "link", "href", "permalink"), page_url)
        if url is not None and not looks_like_url(url):
            url = None
        result.items.append(Item(item_key, clean_text(shown or item_key, TITLE_MAX), url))
    return _unique(result, page_url, "entries", len(found))


# -- feeds --------------------------------------------------------------------------------------


def feed_items(content: bytes, page_url: str, headers: Mapping[str, str]) -> Extraction:
    """RSS/Atom entries; the key is the guid/id, else the link, else a hash of the title.

    feedparser (about 11 MiB) is imported on the first feed, not by every page watcher.
    """
    import feedparser

    parsed = feedparser.parse(
        content,
        response_headers={
            "content-location": page_url,
            "content-type": headers.get("content-type", "application/xml"),
        },
    )
    if not parsed.get("version") and not parsed.entries:
        reason = parsed.get("bozo_exception") or "no RSS or Atom root element"
        raise PageError(f"{page_url}: not an RSS or Atom feed: {reason}")
    result = Extraction(format="feed")
    for entry in parsed.entries:
        link = entry.get("link")
        url = normalize_url(link, page_url) if link else None
        ident = entry.get("id") or url
        shown = clean_text(str(entry.get("title") or ""), TITLE_MAX)
        if ident:
            item_key = normalize_url(ident, page_url) if looks_like_url(ident) else ident
        elif shown:
            item_key = text_key(shown)
        else:
            result.skipped += 1
            continue
        result.items.append(Item(str(item_key), shown or str(item_key), url))
    return _unique(result, page_url, "entries", len(parsed.entries))


# -- dispatch -----------------------------------------------------------------------------------


def detect_format(content_type: str, content: bytes) -> Format:
    """By Content-Type, else by the first bytes: ``{``/``[`` is JSON, ``<rss``/``<feed`` a feed."""
    if content_type.endswith("json"):
        return "json"
    if any(word in content_type for word in ("rss", "atom", "xml")) and "xhtml" not in content_type:
        return "feed"
    if content_type in ("text/html", "application/xhtml+xml"):
        return "html"
    head = content[:512].lstrip(codecs.BOM_UTF8 + b" \t\r\n").lower()
    if head[:1] in (b"{", b"["):
        return "json"
    if head.startswith(b"<?xml") or b"<rss" in head or b"<feed" in head or b"<rdf" in head:
        return "feed"
    return "html"


def extract(
    content: bytes,
    *,
    page_url: str,
    content_type: str,
    charset: str | None,
    headers: Mapping[str, str],
    fmt: Format | Literal["auto"],
    items: str | None,
    key: str | None = None,
    title: str | None = None,
    link: str | None = None,
) -> Extraction:
    """The items of one reply, by the configured or detected format."""
    chosen: Format = detect_format(content_type, content) if fmt == "auto" else fmt
    if chosen == "json":
        return json_items(content, page_url, items, key, title, link)
    if chosen == "feed":
        return feed_items(content, page_url, headers)
    if items is None:
        raise PageError(
            f"{page_url}: the page is HTML, so 'items' must be a CSS selector for the items"
        )
    return html_items(decode_html(content, charset), page_url, items, key, title, link)


def _unique(result: Extraction, page_url: str, what: str, candidates: int) -> Extraction:
    """Drop repeated keys (first wins); fail when no candidate had a key at all."""
    if candidates and not result.items:
        raise PageError(
            f"{page_url}: none of the {candidates} {what} had a key "
            "(check the 'key' setting against the page)"
        )
    unique: dict[str, Item] = {}
    for item in result.items:
        unique.setdefault(item.key, item)
    result.items = list(unique.values())
    return result
