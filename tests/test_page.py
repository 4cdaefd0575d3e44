"""The page watcher's checks against a real local HTTP server: items, not text.

These call ``check()`` directly, as the runtime does, carrying the checkpoint from one check to
the next; test_page_keeper.py runs the same watcher inside a Keeper with real notifiers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.pagesite import Page, Site, site
from watchkeeper import ConfigError
from watchkeeper.alerts import Observation
from watchkeeper.config import watcher_config
from watchkeeper.watchers.fetch import PageError
from watchkeeper.watchers.page import PageConfig, PageWatcher

__all__ = ["site"]

Make = Callable[..., PageWatcher]


@pytest.fixture
def make(site: Site) -> Iterator[Make]:
    """Build page watchers from ``[[page]]`` keys; closes them (and the shared client) after."""
    made: list[PageWatcher] = []

    def build(url: str, **table: Any) -> PageWatcher:
        config = watcher_config("page", {"name": f"p{len(made)}", "url": url, **table}, "test")
        assert isinstance(config, PageConfig)
        watcher = PageWatcher(config)
        made.append(watcher)
        return watcher

    yield build
    for watcher in made:
        watcher.close()


class Run:
    """A watcher and the checkpoint carried between its checks, as the runtime carries it."""

    def __init__(self, watcher: PageWatcher) -> None:
        self.watcher = watcher
        self.checkpoint: Any = None

    def check(self) -> list[Observation]:
        result = self.watcher.check(self.checkpoint)
        self.checkpoint = result.checkpoint
        return result.observations


def titles(observations: list[Observation]) -> list[str]:
    return [str(o.data["item_title"]) for o in observations]


def links(*names: str) -> list[str]:
    return [f"<a href='/p/{n}'>{n.title()}</a>" for n in names]


def test_new_items_at_top_middle_and_bottom_alert_once_each(site: Site, make: Make) -> None:
    url = site.html("/list", links("b", "d"))
    run = Run(make(url, items="li.item"))
    assert run.check() == []  # the baseline alerts on nothing
    site.html("/list", links("a", "b", "c", "d", "e"))
    found = run.check()
    assert titles(found) == ["A", "C", "E"]
    first = found[0]
    assert first.event
    assert first.key == f"item:{site.base}/p/a"
    assert first.title == "A"
    assert dict(first.data) == {
        "url": url,
        "item_key": f"{site.base}/p/a",
        "item_title": "A",
        "item_url": f"{site.base}/p/a",
    }
    assert f"{site.base}/p/a" in first.body
    assert run.check() == []  # seen now; the "Updated N" text outside the items changes


def test_reordering_and_removal_never_alert(site: Site, make: Make) -> None:
    site.html("/list", links("a", "b", "c"))
    run = Run(make(site.url("/list"), items="li.item"))
    run.check()
    site.html("/list", links("c", "a", "b"))
    assert run.check() == []
    site.html("/list", links("a"))
    assert run.check() == []


def test_an_item_that_returns_alerts_only_after_forget_after(site: Site, make: Make) -> None:
    site.html("/list", links("a", "b"))
    run = Run(make(site.url("/list"), items="li.item", forget_after="30d"))
    run.check()
    site.html("/list", links("a"))
    run.check()
    site.html("/list", links("a", "b"))
    assert run.check() == []  # back within forget_after: not new
    site.html("/list", links("a"))
    run.check()
    b_key = f"{site.base}/p/b"
    first_seen, last_seen = run.checkpoint["items"][b_key]
    # 31 days pass without b on the page (the clock is the checkpoint's: age its times).
    run.checkpoint["items"][b_key] = [first_seen - 31 * 86400, last_seen - 31 * 86400]
    run.check()
    assert b_key not in run.checkpoint["items"]  # forgotten, and the checkpoint stays bounded
    site.html("/list", links("a", "b"))
    assert titles(run.check()) == ["B"]


def test_items_still_on_the_page_are_not_forgotten_after_downtime(site: Site, make: Make) -> None:
    site.html("/list", links("a", "b"))
    run = Run(make(site.url("/list"), items="li.item", forget_after="1h"))
    run.check()
    for times in run.checkpoint["items"].values():  # the agent was stopped for two hours
        times[0] -= 7200
        times[1] -= 7200
    assert run.check() == []  # a 304: nothing forgotten
    site.html("/list", links("b", "a"))
    assert run.check() == []  # changed, same items: nothing is new
    assert len(run.checkpoint["items"]) == 2


def test_cards_sharing_a_link_or_with_dummy_links_are_told_apart(site: Site, make: Make) -> None:
    site.html(
        "/list",
        [
            '<a href="#">fav</a><h2>Lamp</h2><a href="/share">share</a>',
            '<a href="javascript:void(0)">fav</a><h2>Desk</h2><a href="/share">share</a>',
            '<a href="/list">all</a><h2>Chair</h2><a href="/share">share</a>',
            '<a href="#">fav</a><h2>Sofa</h2><a href="/p/sofa">more</a>',
        ],
    )
    run = Run(make(site.url("/list"), items="li.item", title="h2", on_first="alert"))
    assert sorted(titles(run.check())) == ["Chair", "Desk", "Lamp", "Sofa"]
    keys = set(run.checkpoint["items"])
    assert f"{site.base}/p/sofa" in keys  # a real, unshared link is still the key
    assert len(keys) == 4


def test_a_server_dripping_bytes_cannot_outlast_the_timeout(site: Site, make: Make) -> None:
    site.pages["/slow"] = Page("<ul>" + "<li class='item'>x</li>" * 20 + "</ul>", drip=0.05)
    run = Run(make(site.url("/slow"), items="li.item", timeout="1s"))
    started = time.monotonic()
    with pytest.raises(PageError, match="timed out after 1s"):
        run.check()
    assert time.monotonic() - started < 3  # not the 25 s the whole body would take


def test_keys_titles_and_links_by_selector_with_relative_urls(site: Site, make: Make) -> None:
    body = """<html><head><base href="/shop/"></head><body>
      <div class="product"><h2> Red   chair </h2><a href="chair?utm_source=x&amp;id=1">more</a>
        <span class="sku">SKU-1</span></div>
      <div class="product"><h2>Blue table</h2><a href="https://other.example/t#frag">more</a>
        <span class="sku">SKU-2</span></div>
      <div class="product"><h2>No sku</h2></div>
    </body></html>"""
    site.pages["/new"] = Page(body)
    run = Run(make(site.url("/new"), items="div.product", title="h2", on_first="alert"))
    found = run.check()
    assert titles(found) == ["Red chair", "Blue table", "No sku"]
    assert [o.data["item_url"] for o in found] == [
        f"{site.base}/shop/chair?id=1",  # relative to <base href>, utm_* dropped
        "https://other.example/t#frag",
        None,
    ]
    assert found[2].data["item_key"].startswith("text:")  # no link: a hash of the text
    by_sku = Run(make(site.url("/new"), items="div.product", key="span.sku", on_first="alert"))
    assert [o.data["item_key"] for o in by_sku.check()] == ["SKU-1", "SKU-2"]  # 3rd skipped


def test_a_json_api(site: Site, make: Make) -> None:
    def serve(*ids: int) -> None:
        doc = {
            "data": {
                "results": [
                    {"id": i, "name": f"Job {i}", "links": {"self": f"/jobs/{i}?utm_medium=rss"}}
                    for i in ids
                ]
            }
        }
        import json

        site.pages["/api"] = Page(json.dumps(doc), content_type="application/json")

    serve(1, 2)
    run = Run(make(site.url("/api"), items="data.results", link="links.self"))
    assert run.check() == []
    serve(3, 1, 2)
    found = run.check()
    assert [dict(o.data) for o in found] == [
        {
            "url": site.url("/api"),
            "item_key": "3",
            "item_title": "Job 3",
            "item_url": f"{site.base}/jobs/3",
        }
    ]
    site.pages["/api"] = Page('{"data": {"results": [', content_type="application/json")
    with pytest.raises(PageError, match=r"/api: not valid JSON"):
        run.check()
    site.pages["/api"] = Page('{"data": {}}', content_type="application/json")
    with pytest.raises(PageError, match=r"'data.results' gave nothing, not a list"):
        run.check()


RSS = """<?xml version="1.0"?><rss version="2.0"><channel><title>News</title>
<link>{base}/</link>{items}</channel></rss>"""
RSS_ITEM = (
    "<item><title>{t}</title><link>{base}/n/{t}?utm_campaign=x</link>"
    "<guid isPermaLink='false'>{g}</guid></item>"
)
ATOM = """<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">
<title>Blog</title><id>urn:blog</id><updated>2026-11-27T00:00:00Z</updated>{items}</feed>"""
ATOM_ENTRY = """<entry><title>{t}</title><id>urn:post:{t}</id><link href="/posts/{t}"/>
<updated>2026-11-27T00:00:00Z</updated></entry>"""


def test_rss_and_atom_feeds(site: Site, make: Make) -> None:
    def rss(*names: str) -> None:
        entries = "".join(RSS_ITEM.format(t=n, g=f"guid-{n}", base=site.base) for n in names)
        site.pages["/rss"] = Page(
            RSS.format(items=entries, base=site.base), content_type="application/rss+xml"
        )

    def atom(*names: str) -> None:
        entries = "".join(ATOM_ENTRY.format(t=n) for n in names)
        site.pages["/atom"] = Page(ATOM.format(items=entries), content_type="text/xml")

    rss("one", "two")
    atom("alpha")
    feed = Run(make(site.url("/rss")))
    blog = Run(make(site.url("/atom")))
    feed.check()
    blog.check()
    rss("three", "one", "two")
    atom("beta", "alpha")
    [news] = feed.check()
    assert dict(news.data) == {
        "url": site.url("/rss"),
        "item_key": "guid-three",
        "item_title": "three",
        "item_url": f"{site.base}/n/three",
    }
    [post] = blog.check()
    assert post.data["item_key"] == "urn:post:beta"
    assert post.data["item_url"] == f"{site.base}/posts/beta"  # relative to the feed's URL
    site.pages["/rss"] = Page("<html><body>Please log in</body></html>", content_type="text/xml")
    with pytest.raises(PageError, match=r"not an RSS or Atom feed"):
        feed.check()


def test_conditional_get_skips_parsing_on_304(site: Site, make: Make) -> None:
    site.html("/list", links("a"), etag='"v1"')
    run = Run(make(site.url("/list"), items="li.item"))
    run.check()
    assert site.conditional["/list"] == 0
    seen_at = run.checkpoint["seen_at"]
    assert run.check() == []
    assert run.check() == []
    assert site.conditional["/list"] == 2
    assert site.not_modified["/list"] == 2
    # A 304 still counts as seeing the items: their last-seen time moves on.
    [(_, last_seen)] = run.checkpoint["items"].values()
    assert last_seen > seen_at
    site.html("/list", links("a", "b"), etag='"v2"')
    assert titles(run.check()) == ["B"]
    assert run.checkpoint["etag"] == '"v2"'


def test_http_errors_and_timeouts_raise_with_the_url(site: Site, make: Make) -> None:
    site.pages["/down"] = Page("oops", status=500)
    with pytest.raises(PageError, match=r"GET http://127\.0\.0\.1:\d+/down: HTTP 500"):
        make(site.url("/down"), items="li").check(None)
    with pytest.raises(PageError, match=r"HTTP 404"):
        make(site.url("/missing"), items="li").check(None)
    site.pages["/slow"] = Page("<li>x</li>", delay=5)
    with pytest.raises(PageError, match=r"/slow: timed out after 300ms"):
        make(site.url("/slow"), items="li", timeout="300ms").check(None)


def test_retry_after_keeps_the_host_waiting(site: Site, make: Make) -> None:
    site.pages["/busy"] = Page("slow down", status=429, headers={"Retry-After": "120"})
    watcher = make(site.url("/busy"), items="li")
    with pytest.raises(PageError, match="HTTP 429"):
        watcher.check(None)
    assert 100 < watcher.fetcher.wait_hint(site.url("/other")) <= 120


def test_selector_matching_nothing_is_a_failure(site: Site, make: Make) -> None:
    site.html("/list", links("a"))
    with pytest.raises(PageError, match=r"the selector 'li\.product' matched nothing"):
        make(site.url("/list"), items="li.product").check(None)


def test_oversized_page_is_cut_off_and_still_read(
    site: Site, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    site.html("/big", [f"<a href='/i/{n}'>item {n}</a>" for n in range(2000)])
    run = Run(make(site.url("/big"), items="li.item", max_bytes="20KB", on_first="alert"))
    with caplog.at_level(logging.WARNING, logger="watchkeeper"):
        found = run.check()
    assert 100 < len(found) < 2000
    assert titles(found)[:2] == ["item 0", "item 1"]
    assert run.checkpoint["last"]["truncated"] is True
    assert "cut off at max_bytes" in caplog.text


def test_malformed_html_and_encodings(site: Site, make: Make) -> None:
    broken = b"<html><ul><li class=item><a href=/x>Caf\xe9 <b>cr\xe8me</a><li class=item>\xff\xfe<p"
    site.pages["/latin1"] = Page(b"<meta charset='iso-8859-1'>" + broken, content_type="text/html")
    found = Run(make(site.url("/latin1"), items="li.item", on_first="alert")).check()
    assert titles(found)[0] == "Café crème"  # the meta charset, since the header has none
    assert len(found) == 2  # unclosed tags and stray bytes: parsed as a browser would
    site.pages["/utf8"] = Page(broken, content_type="text/html; charset=utf-8")
    found = Run(make(site.url("/utf8"), items="li.item", on_first="alert")).check()
    assert titles(found)[0] == "Caf\ufffd cr\ufffdme"  # undecodable bytes replaced, not fatal


def test_digest_and_on_first_alert(site: Site, make: Make) -> None:
    site.html("/list", links("a", "b"))
    run = Run(make(site.url("/list"), items="li.item", alert="digest", on_first="alert"))
    [digest] = run.check()
    assert digest.title == "2 new items"
    assert digest.key == "new-items"
    assert digest.data["count"] == 2
    assert [i["item_title"] for i in digest.data["items"]] == ["A", "B"]
    assert f"- A\n  {site.base}/p/a" in digest.body


def test_per_host_limit_holds_across_threads(site: Site, make: Make) -> None:
    for n in range(8):
        site.pages[f"/p{n}"] = Page("<li>x</li>", delay=0.2)
    watchers = [make(site.url(f"/p{n}"), items="li", max_per_host=2) for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda w: w.check(None), watchers))
    assert len(results) == 8
    assert site.max_in_flight == 2
    assert len({id(w.fetcher) for w in watchers}) == 1  # one shared, pooled client


def test_shared_client_closes_with_its_last_user(site: Site, make: Make) -> None:
    url = site.html("/list", links("a"))
    a, b = make(url, items="li.item"), make(url, items="li.item")
    fetcher = a.fetcher
    assert b.fetcher is fetcher
    a.check(None)
    assert len(fetcher.pool.pools) == 1  # connections to the host are kept open
    a.close()
    assert len(fetcher.pool.pools) == 1
    b.close()
    assert len(fetcher.pool.pools) == 0
    assert make(url, items="li.item").fetcher is not fetcher


def test_redirects_are_followed_and_capped(site: Site, make: Make) -> None:
    site.html("/shop/new", links("a"))
    site.pages["/old"] = Page("", status=301, headers={"Location": "/shop/new"})
    [item] = Run(make(site.url("/old"), items="li.item", on_first="alert")).check()
    assert item.data["item_url"] == f"{site.base}/p/a"
    site.html("/shop/new", ["<a href='rel'>R</a>"])
    [item] = Run(make(site.url("/old"), items="li.item", on_first="alert")).check()
    assert item.data["item_url"] == f"{site.base}/shop/rel"  # relative to where it ended
    for n in range(8):
        site.pages[f"/loop{n}"] = Page("", status=302, headers={"Location": f"/loop{n + 1}"})
    with pytest.raises(PageError, match=r"/loop0: more than 5 redirects"):
        make(site.url("/loop0"), items="li").check(None)


def test_connection_refused_is_a_clear_failure(make: Make) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(PageError, match=rf"GET http://127\.0\.0\.1:{port}/: cannot connect"):
            make(f"http://127.0.0.1:{port}/", items="li").check(None)


def test_first_checks_are_staggered_by_name() -> None:
    def delay(name: str, **table: Any) -> float:
        config = PageConfig(name=name, url="http://127.0.0.1/", items="li", **table)
        return PageWatcher(config).first_delay()

    delays = [delay(f"page-{n}", every="10m") for n in range(200)]
    assert all(0 <= d < 60 for d in delays)
    assert max(delays) - min(delays) > 50  # spread over the window, not bunched
    assert delay("page-1", every="10m") == delays[1]  # the same offset after a restart
    assert delay("page-1", every="2s") < 2
    assert delay("page-1", stagger=0) == 0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"items": "li[", "format": "html"}, "items: Value error, 'li[' is not a valid CSS"),
        ({"format": "html"}, "a CSS selector is required with format = 'html'"),
        ({"items": "a[?", "format": "json"}, "not a valid JMESPath expression"),
        ({"items": "li", "key": "a[@href"}, "is not a valid CSS selector"),
        ({"url": "ftp://example.com/", "items": "li"}, "url: 'ftp://example.com/' is not an http"),
        ({"items": "li", "timeout": "0s"}, "timeout: must be longer than 0s"),
        ({"items": "li", "alert": "all"}, "alert: Input should be 'each' or 'digest'"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    full = {"name": "shop", "url": "http://127.0.0.1/", **table}
    with pytest.raises(ConfigError) as info:
        watcher_config("page", full, "wk.toml: [[page]] #1")
    assert message.replace("Value error, ", "") in str(info.value)
    assert str(info.value).startswith("wk.toml: [[page]] #1")


@pytest.mark.parametrize(
    ("href", "key"),
    [
        ("c?utm_source=news&id=2", "http://shop.test/a/c?id=2"),
        ("/x?id=1&UTM_Medium=a&fbclid=z", "http://shop.test/x?id=1"),
        ("/p?utm_source=x", "http://shop.test/p"),
        ("/p?page=2&q=a%20b", "http://shop.test/p?page=2&q=a%20b"),  # kept as written
        ("HTTPS://Other.TEST:443/y#frag", "https://other.test/y#frag"),
        ("/a/../b", "http://shop.test/b"),
        ("//cdn.test/img", "http://cdn.test/img"),
        ("mailto:shop@test", "mailto:shop@test"),
    ],
)
def test_url_keys_are_normalized(href: str, key: str) -> None:
    from watchkeeper.watchers.pageitems import normalize_url

    assert normalize_url(href, "http://Shop.test:80/a/b") == key


def test_next_check_honours_retry_after_over_a_shorter_interval(site: Site, make: Make) -> None:
    site.pages["/busy"] = Page("busy", status=503, headers={"Retry-After": "1"})
    watcher = make(site.url("/busy"), items="li")
    with pytest.raises(PageError, match="HTTP 503"):
        watcher.check(None)
    # The runtime plans 10 ms (with jitter); the host said 1 s, which wins.
    assert 0.5 < watcher.next_delay(0.01) <= 1.0
    assert watcher.next_delay(5.0) >= 4.5  # a longer interval is kept (less its jitter)


def test_json_nested_too_deeply_is_a_clear_failure(site: Site, make: Make) -> None:
    site.pages["/deep"] = Page("[" * 200_000, content_type="application/json")
    run = Run(make(site.url("/deep"), format="json"))
    with pytest.raises(PageError, match="nested too deeply"):
        run.check()
