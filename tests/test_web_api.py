"""The dashboard's HTTP side, in process: API, stream resume, actions, auth, metrics."""

from __future__ import annotations

import html
import json
import os
import queue
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from prometheus_client.parser import text_string_to_metric_families
from selectolax.lexbor import LexborHTMLParser as HTMLParser

from tests.conftest import wait_until
from tests.pagesite import Site, site
from watchkeeper import ConfigError, Keeper, Observation
from watchkeeper.config import parse_config
from watchkeeper.store import Store
from watchkeeper.watchers import CheckResult, Watcher, WatcherConfig
from watchkeeper.web import Dashboard, DashboardError, serve_dashboard

XSS = "<img src=x onerror=alert(1)>"
__all__ = ["site"]


class Feed:
    """A check function fed by the test: each queued title becomes one event alert."""

    def __init__(self) -> None:
        self.titles: queue.Queue[tuple[str, str]] = queue.Queue()

    def put(self, title: str, severity: str = "warning") -> None:
        self.titles.put((title, severity))

    def __call__(self) -> list[Observation]:
        found = []
        while True:
            try:
                title, severity = self.titles.get_nowait()
            except queue.Empty:
                return found
            if title == "!raise":
                raise RuntimeError("the check broke")
            found.append(Observation(title=title, severity=severity, key=title, event=True))


@pytest.fixture
def feed() -> Feed:
    return Feed()


@pytest.fixture
def served(tmp_path: Path, feed: Feed) -> Iterator[tuple[Keeper, Dashboard]]:
    keeper = Keeper(
        state=tmp_path / "wk.db", notify=[{"kind": "jsonl", "path": str(tmp_path / "a.jsonl")}]
    )
    keeper.every(0.05, feed, name="probe")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    keeper.start()
    yield keeper, dashboard
    keeper.stop()


def test_api_lists_watchers_and_alerts_and_pages_escape_titles(
    served: tuple[Keeper, Dashboard], feed: Feed
) -> None:
    _keeper, dashboard = served
    feed.put(XSS, "error")
    feed.put("disk 91% full", "warning")
    with httpx.Client(base_url=dashboard.url) as http:
        alerts = wait_until(
            lambda: len(http.get("/api/alerts").json()) >= 2 and http.get("/api/alerts").json()
        )
        assert [a["title"] for a in alerts] == [XSS, "disk 91% full"]
        errors = http.get("/api/alerts", params={"severity": "error"}).json()
        assert [a["title"] for a in errors] == [XSS]
        since = http.get("/api/alerts", params={"since_id": alerts[0]["id"]}).json()
        assert [a["title"] for a in since] == ["disk 91% full"]
        watchers = http.get("/api/watchers").json()
        assert [(w["name"], w["kind"], w["state"]) for w in watchers] == [("probe", "custom", "ok")]
        assert watchers[0]["alerts_24h"] == 2
        for path in ("/", "/alerts", "/watchers/probe"):
            page = http.get(path)
            assert page.status_code == 200
            assert XSS not in page.text
            assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
        found = http.get("/alerts", params={"q": "disk"}).text
        assert "disk 91% full" in found
        assert "onerror" not in found
        assert http.get("/api/alerts", params={"severity": "loud"}).status_code == 400
        assert http.get("/watchers/nobody").status_code == 404


def read_alert_ids(
    url: str, count: int, headers: dict[str, str] | None = None, path: str = "/api/stream"
) -> tuple[list[int], str]:
    """Read ``count`` alert events from the stream; return their ids and the last event id."""
    ids: list[int] = []
    last = ""
    with (
        httpx.Client(timeout=10) as http,
        connect_sse(http, "GET", url + path, headers=headers or {}) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for event in source.iter_sse():
            if event.id:
                last = event.id
            if event.event == "alert":
                doc = json.loads(event.data)
                assert doc["id"] == int(event.id)
                ids.append(doc["id"])
                if len(ids) == count:
                    break
    return ids, last


def test_stream_resumes_after_disconnect_without_missing_or_repeating(
    served: tuple[Keeper, Dashboard], feed: Feed
) -> None:
    keeper, dashboard = served
    assert keeper.store is not None
    for i in range(5):
        feed.put(f"before {i}")
    wait_until(lambda: len(keeper.store.alerts()) == 5)  # type: ignore[union-attr]
    first, last = read_alert_ids(dashboard.url, 5, {"Last-Event-ID": "0"})
    assert first == [1, 2, 3, 4, 5]
    # Disconnected: more alerts are made meanwhile.
    for i in range(7):
        feed.put(f"while away {i}")
    wait_until(lambda: len(keeper.store.alerts()) == 12)  # type: ignore[union-attr]

    # Resume by Last-Event-ID while a writer keeps adding alerts during the replay.
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 30:
            feed.put(f"live {n}")
            n += 1
            stop.wait(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        second, _ = read_alert_ids(dashboard.url, 7 + 30, {"Last-Event-ID": last})
    finally:
        stop.set()
        thread.join()
    assert second == list(range(6, 6 + 37))
    # ?since_id= works the same way.
    since, _ = read_alert_ids(dashboard.url, 2, path="/api/stream?since_id=40")
    assert since == [41, 42]
    # Every stream that was closed by its client is gone from the server too.
    with httpx.Client(base_url=dashboard.url) as http:
        wait_until(lambda: metrics(http)[("watchkeeper_stream_clients", ())] == 0)
        assert len(http.get("/api/alerts", params={"limit": "-1"}).json()) == 1


def test_stream_without_position_starts_live_and_carries_the_cursor(
    served: tuple[Keeper, Dashboard], feed: Feed
) -> None:
    keeper, dashboard = served
    feed.put("old")
    wait_until(lambda: keeper.store is not None and keeper.store.alerts())
    with (
        httpx.Client(timeout=10) as http,
        connect_sse(http, "GET", dashboard.url + "/api/stream?severity=error") as source,
    ):
        events = source.iter_sse()
        ready = next(events)
        assert (ready.event, ready.id) == ("ready", "1")
        feed.put("quiet", "info")
        feed.put("loud", "error")
        alert = next(e for e in events if e.event == "alert")
        assert json.loads(alert.data)["title"] == "loud"
        assert alert.id == "3"


def test_a_resume_id_ahead_of_the_store_starts_over_from_the_newest(
    served: tuple[Keeper, Dashboard], feed: Feed
) -> None:
    """Resuming from an id this state never had (another or a deleted state) starts over."""
    keeper, dashboard = served
    feed.put("one")
    wait_until(lambda: keeper.store is not None and keeper.store.alerts())
    with (
        httpx.Client(timeout=10) as http,
        connect_sse(http, "GET", dashboard.url + "/api/stream?since_id=100") as source,
    ):
        events = source.iter_sse()
        ready = next(events)
        assert json.loads(ready.data) == {"cursor": 1, "reset": True}
        feed.put("two")
        alert = next(e for e in events if e.event == "alert")
        assert json.loads(alert.data)["title"] == "two"


@contextmanager
def opened_stream(url: str) -> Iterator[Iterator[ServerSentEvent]]:
    """The stream's events, once it has opened with its ``ready`` event."""
    with httpx.Client(timeout=10) as http, connect_sse(http, "GET", url) as source:
        events = source.iter_sse()
        assert next(events).event == "ready"
        yield events


def test_stream_keeps_id_order_when_watchers_commit_concurrently(tmp_path: Path) -> None:
    feeds = [Feed(), Feed(), Feed()]
    keeper = Keeper(state=tmp_path / "wk.db")
    for i, feed in enumerate(feeds):
        keeper.every(0.01, feed, name=f"w{i}")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper, opened_stream(dashboard.url + "/api/stream") as events:
        for n in range(40):
            for feed in feeds:
                feed.put(f"{n}")
        ids = []
        for event in events:
            if event.event == "alert":
                ids.append(int(event.id))
                if len(ids) == 120:
                    break
    assert ids == list(range(1, 121))


def test_actions_need_post_and_the_csrf_token(served: tuple[Keeper, Dashboard]) -> None:
    _keeper, dashboard = served
    with httpx.Client(base_url=dashboard.url) as http:
        assert http.get("/watchers/probe/pause").status_code == 405
        refused = http.post("/watchers/probe/pause", data={"csrf": "forged"})
        assert refused.status_code == 403
        assert http.get("/api/watchers").json()[0]["state"] == "ok"
        page = http.get("/").text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        cross = http.post(
            "/watchers/probe/pause", data={"csrf": csrf}, headers={"Origin": "http://evil.test"}
        )
        assert cross.status_code == 403
        for browser in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.test"}):
            assert http.post("/api/watchers/probe/pause", headers=browser).status_code == 403
        same_site = {"Sec-Fetch-Site": "same-site"}  # a sibling subdomain is another origin
        assert (
            http.post("/watchers/probe/pause", data={"csrf": csrf}, headers=same_site).status_code
            == 403
        )
        done = http.post("/watchers/probe/pause", data={"csrf": csrf, "next": "/"})
        assert (done.status_code, done.headers["location"]) == (303, "/")
        assert http.get("/api/watchers").json()[0]["state"] == "paused"
        assert "Resume" in http.get("/").text
        muted = http.post("/api/watchers/probe/mute", data={"csrf": csrf, "duration": "1h"})
        assert muted.json()["watcher"]["muted_until"] is not None
        # A script on this machine (no Origin, no Sec-Fetch-Site) needs no form token here.
        bad = http.post("/api/watchers/probe/mute", data={"duration": "soon"})
        assert bad.status_code == 400
        assert "duration" in bad.json()["error"]
        http.post("/api/watchers/probe/resume", data={"csrf": csrf})
        assert http.get("/api/watchers").json()[0]["state"] == "ok"
        checks = http.get("/api/watchers").json()[0]["checks"]
        http.post("/api/watchers/probe/check", data={"csrf": csrf})
        wait_until(lambda: http.get("/api/watchers").json()[0]["checks"] > checks)
        assert http.post("/api/watchers/ghost/pause", data={"csrf": csrf}).status_code == 404
        # Another site's page cannot reach a token-less dashboard through DNS rebinding.
        assert http.get("/", headers={"Host": "evil.test"}).status_code == 400


def test_token_guards_everything_but_login(tmp_path: Path) -> None:
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(1, lambda: None, name="probe")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0", token="s3cret-token")
    with keeper, httpx.Client(base_url=dashboard.url) as http:
        for path in ("/api/watchers", "/api/alerts", "/api/stream", "/metrics", "/"):
            response = http.get(path)
            assert response.status_code == 401, path
        assert http.get("/api/watchers").headers["www-authenticate"].startswith("Bearer")
        html = http.get("/alerts", headers={"Accept": "text/html"})
        assert html.status_code == 401
        assert 'name="token"' in html.text
        assert 'name="csrf"' not in html.text  # no CSRF token for strangers
        assert http.post("/watchers/probe/pause").status_code == 401
        # With a token, a cookie session needs the form token even from a non-browser.
        jar = httpx.Client(base_url=dashboard.url)
        jar.post("/login", data={"token": "s3cret-token"})
        assert jar.post("/api/watchers/probe/check").status_code == 403
        jar.close()
        wrong = {"Authorization": "Bearer s3cret-tokeN"}
        assert http.get("/api/watchers", headers=wrong).status_code == 401
        bearer = {"Authorization": "Bearer s3cret-token"}
        assert http.get("/api/watchers", headers=bearer).status_code == 200
        assert http.get("/metrics", headers=bearer).status_code == 200
        # Bearer requests need no CSRF token: browsers never send that header by themselves.
        assert http.post("/api/watchers/probe/pause", headers=bearer).status_code == 200
        assert http.get("/static/style.css").status_code == 200
        # The login form sets a cookie that works for pages and the stream.
        denied = http.post("/login", data={"token": "nope", "next": "/alerts"})
        assert denied.status_code == 401
        assert "wrong token" in denied.text
        login = http.post("/login", data={"token": "s3cret-token", "next": "/alerts"})
        assert (login.status_code, login.headers["location"]) == (303, "/alerts")
        assert "s3cret-token" not in login.headers["set-cookie"]
        assert "httponly" in login.headers["set-cookie"].lower()
        assert http.get("/alerts").status_code == 200
        home = http.get("/").text
        assert "Log out" in home
        csrf = home.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert http.post("/logout").status_code == 403
        out = http.post("/logout", data={"csrf": csrf})
        assert (out.status_code, out.headers["location"]) == (303, "/login")
        assert http.get("/alerts").status_code == 401
        http.post("/login", data={"token": "s3cret-token"})
        redirect = http.post("/login", data={"token": "s3cret-token", "next": "https://evil.test"})
        assert redirect.headers["location"] == "/"
        redirect = http.post("/login", data={"token": "s3cret-token", "next": "//evil.test"})
        assert redirect.headers["location"] == "/"


def test_off_loopback_needs_a_token(tmp_path: Path) -> None:
    keeper = Keeper(state=tmp_path / "wk.db")
    with pytest.raises(DashboardError, match="needs a token"):
        serve_dashboard(keeper, "0.0.0.0:0")
    with pytest.raises(ConfigError, match=r"\[keeper\]: dashboard = '0.0.0.0:8470'.*token"):
        parse_config({"keeper": {"dashboard": "0.0.0.0:8470"}}, source="wk.toml")
    with pytest.raises(ConfigError, match=r"dashboard: 'localhost' is not HOST:PORT"):
        parse_config({"keeper": {"dashboard": "localhost"}}, source="wk.toml")
    assert parse_config({"keeper": {"dashboard": False}}).keeper.dashboard_bind() is None
    for weak in (" ", "a", " " * 20, "fifteen-chars-x"):  # guessable in a day at 23 tries/s
        with pytest.raises(ConfigError, match="at least 16 characters"):
            parse_config({"keeper": {"dashboard": "0.0.0.0:8470", "token": weak}})
        with pytest.raises(DashboardError, match="at least 16 characters"):
            serve_dashboard(keeper, "0.0.0.0:0", token=weak)
    strong = "sixteen-chars-ok"
    settings = parse_config({"keeper": {"dashboard": "0.0.0.0:8470", "token": strong}}).keeper
    assert settings.dashboard_bind() is not None


def test_busy_port_is_a_clear_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    first = Keeper(state=tmp_path / "a.db")
    taken = serve_dashboard(first, "127.0.0.1:0")
    with first:
        second = Keeper(state=tmp_path / "b.db")
        second.every(1, lambda: None, name="x")
        serve_dashboard(second, f"127.0.0.1:{taken.port}")
        with pytest.raises(DashboardError, match=r"cannot listen on 127\.0\.0\.1"):
            second.start()
        with Store(tmp_path / "b.db") as state:
            assert [w.checks for w in state.watchers()] == [0]  # refused before any check ran
        # The agent's default address is not required: busy, it runs without a dashboard.
        third = Keeper(state=tmp_path / "c.db")
        third.every(0.05, lambda: None, name="y")
        optional = serve_dashboard(third, f"127.0.0.1:{taken.port}", required=False)
        with third:
            assert not optional.running
            wait_until(lambda: third.store and third.store.watcher("y").checks)  # type: ignore[union-attr]


def metrics(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = http.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_counters_move(served: tuple[Keeper, Dashboard], feed: Feed) -> None:
    _keeper, dashboard = served
    with httpx.Client(base_url=dashboard.url) as http:
        before = metrics(http)
        checks = ("watchkeeper_checks_total", (("kind", "custom"), ("watcher", "probe")))
        assert checks in before
        feed.put("boom", "error")
        feed.put("bang", "error")
        errors = ("watchkeeper_alerts_total", (("severity", "error"), ("watcher", "probe")))
        sent = ("watchkeeper_deliveries_total", (("notifier", "jsonl"), ("outcome", "sent")))
        failures = ("watchkeeper_check_failures_total", (("watcher", "probe"),))
        assert before[failures] == 0
        after = wait_until(lambda: (m := metrics(http)).get(sent, 0) >= 2 and m)
        assert after[errors] == before.get(errors, 0) + 2
        assert after[checks] > before[checks]
        assert after[("watchkeeper_deliveries_pending", (("notifier", "jsonl"),))] == 0
        assert after[("watchkeeper_stream_clients", ())] == 0
        feed.put("!raise")
        failed = wait_until(lambda: (m := metrics(http))[failures] == 1 and m)
        assert failed[("watchkeeper_watcher_consecutive_failures", (("watcher", "probe"),))] <= 1
        # The streak resets on the next good check; the total does not.
        wait_until(lambda: http.get("/api/watchers").json()[0]["failures"] == 0)
        assert metrics(http)[failures] == 1


class FileWatcher(Watcher):
    """A watcher with a log-like checkpoint (not registered: no config table for it)."""

    kind = "tail"
    config_model = WatcherConfig

    def __init__(self, config: WatcherConfig, path: Path) -> None:
        super().__init__(config)
        self.path = path

    def check(self, checkpoint: Any) -> CheckResult:
        rotated = self.path.with_suffix(".1")
        return CheckResult(
            [],
            {
                "files": [
                    {"path": str(self.path), "offset": 10, "ino": self.path.stat().st_ino},
                    {"path": str(rotated), "offset": 3, "ino": -1},  # never a real inode
                ],
                "banner": "<b>not bold</b>",
                "ok": True,
            },
        )


def test_watcher_page_shows_the_checkpoint_as_a_tree_and_metrics_the_lag(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"x" * 25)
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.add(FileWatcher(WatcherConfig(name="applog", every=0.05), log))
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper, httpx.Client(base_url=dashboard.url) as http:
        wait_until(lambda: http.get("/api/watchers/applog").json()["checkpoint"])
        page = http.get("/watchers/applog").text
        assert "<dt>files</dt>" in page
        assert '<dt>offset</dt><dd><span class="leaf num">10</span>' in page
        assert "&lt;b&gt;not bold&lt;/b&gt;" in page
        assert "<b>not bold" not in page
        lag = ("watchkeeper_log_lag_bytes", (("path", str(log)), ("watcher", "applog")))
        assert metrics(http)[lag] == 15
        log.write_bytes(b"x" * 5)  # truncated below the offset: all of it is unread
        assert metrics(http)[lag] == 5
        # app.log.1 now holds a file that is not the one the entry tracked: no lag for it.
        log.with_suffix(".1").write_bytes(b"y" * 50)
        assert not [
            k for k in metrics(http) if k[0] == "watchkeeper_log_lag_bytes" and ".1" in str(k)
        ]


def test_watchers_of_an_older_config_are_shown_without_actions(tmp_path: Path) -> None:
    with Store(tmp_path / "wk.db") as store:
        store.register_watcher("retired", "custom")
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(1, lambda: None, name="probe")
    with keeper:
        dashboard = serve_dashboard(keeper, "127.0.0.1:0")  # attached to a running keeper
        http = httpx.Client(base_url=dashboard.url)
        page = http.get("/").text
        retired = page.split('data-watcher="retired"', 1)[1].split("</tr>", 1)[0]
        assert "not running" in retired
        assert "Pause" not in retired
        assert http.post("/api/watchers/retired/pause").status_code == 404
        assert "not running" not in page.split('data-watcher="probe"', 1)[1].split("</tr>")[0]
        http.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("bind", ["[::1]:0", "127.0.0.2:0", "localhost:0"])
def test_any_loopback_address_serves(tmp_path: Path, bind: str) -> None:
    if bind.startswith("[") and not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(1, lambda: None, name="probe")
    dashboard = serve_dashboard(keeper, bind)
    with keeper:
        assert dashboard.url.startswith(f"http://{bind.rsplit(':', 1)[0]}:")
        response = httpx.get(dashboard.url + "/api/watchers")
        assert response.status_code == 200
        assert response.json()[0]["name"] == "probe"


def test_live_alert_data_that_json_cannot_hold_is_streamed_as_text(tmp_path: Path) -> None:
    fire = threading.Event()

    def check() -> Observation | None:
        if not fire.is_set():
            return None
        fire.clear()
        return Observation(title="odd data", data={"at": Path("/var/log/x"), "n": 1}, event=True)

    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(0.05, check, name="probe")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper, opened_stream(dashboard.url + "/api/stream") as events:
        fire.set()
        alert = next(e for e in events if e.event == "alert")
        assert json.loads(alert.data)["data"] == {"at": "/var/log/x", "n": 1}


def test_alerts_page_pages_back_through_history(
    served: tuple[Keeper, Dashboard], feed: Feed
) -> None:
    _keeper, dashboard = served
    for n in range(60):
        feed.put(f"event {n:02d}", "error" if n % 2 else "info")
    with httpx.Client(base_url=dashboard.url) as http:
        wait_until(lambda: len(http.get("/api/alerts").json()) == 60)
        first = http.get("/alerts").text
        assert first.count("<tr data-id=") == 50
        assert "event 59" in first
        assert "event 09" not in first
        older = first.split('href="/alerts?', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        second = http.get("/alerts?" + older).text
        assert second.count("<tr data-id=") == 10
        assert "event 09" in second
        assert "event 10" not in second
        errors = http.get("/alerts", params={"severity": "error"}).text
        assert errors.count("<tr data-id=") == 30


# -- detail views per watcher kind ------------------------------------------------------------


def table(html: str, selector: str) -> list[list[str]]:
    """The cells' text of a table's body rows, as a user reads them."""
    tree = HTMLParser(html)
    return [
        [" ".join(td.text(separator=" ").split()) for td in tr.css("td")]
        for tr in tree.css(f"{selector} tbody tr")
    ]


def fact(html: str, name: str) -> str:
    """The text of a ``<dd data-cell=NAME>`` fact."""
    node = HTMLParser(html).css_first(f'dd[data-cell="{name}"]')
    assert node is not None, name
    return " ".join(node.text().split())


def test_log_detail_shows_files_identity_offset_and_lag(tmp_path: Path) -> None:
    log = tmp_path / "<b>app.log"  # a path is untrusted text too
    log.write_bytes(b"boot ok\nERROR disk full\n")
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.log(log, [{"match": "ERROR"}], name="applog", start_at="beginning")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper, httpx.Client(base_url=dashboard.url) as http:
        detail = wait_until(lambda: http.get("/api/watchers/applog").json()["detail"]["files"])
        keeper.pause("applog")
        info = os.stat(log)
        [entry] = detail
        assert (entry["path"], entry["dev"], entry["ino"]) == (str(log), info.st_dev, info.st_ino)
        assert entry["fingerprint_bytes"] == 24
        assert entry["fingerprint"]
        with log.open("ab") as out:
            out.write(b"more lines\n" * 10)  # 110 bytes the paused watcher has not read
        page = http.get("/watchers/applog").text
        assert str(log) not in page
        assert html.escape(str(log)) in page
        [row] = table(page, "#log-files")
        assert "".join(row[0].split()) == str(log)
        assert f"inode {info.st_ino}" in row[1]
        assert "(24 B)" in row[1]
        assert row[2:5] == ["24", "134", "110 B"]
        assert row[5] == "behind"
        keeper.resume("applog")
        wait_until(lambda: table(http.get("/watchers/applog").text, "#log-files")[0][4] == "0 B")
        assert table(http.get("/watchers/applog").text, "#log-files")[0][2:] == [
            "134",
            "134",
            "0 B",
            "caught up",
        ]


def test_page_detail_lists_items_newest_first_with_links_and_validators(
    tmp_path: Path, site: Site
) -> None:
    url = site.html("/list", ["<a href='/a'>Alpha</a>", "<a href='/b'>Bravo</a>"], etag='"v1"')
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.page(url, "li.item", name="shop", format="html", every=0.1, stagger=0)
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")

    def items() -> list[str]:
        return [i["title"] for i in http.get("/api/watchers/shop").json()["detail"]["items"]]

    with keeper, httpx.Client(base_url=dashboard.url) as http:
        wait_until(lambda: items() == ["Alpha", "Bravo"])
        site.html("/list", ["<a href='/b'>Bravo</a>", "<a href='/c'>Charlie</a>"], etag='"v2"')
        wait_until(lambda: items()[0] == "Charlie")
        evil = f"<a href='javascript:alert(1)'>{html.escape(XSS)}</a>"
        site.html("/list", ["<a href='/b'>Bravo</a>", "<a href='/c'>Charlie</a>", evil])
        wait_until(lambda: items()[0] == XSS)
        page = http.get("/watchers/shop").text
        assert XSS not in page
        assert 'href="javascript' not in page
        assert fact(page, "url") == url
        assert fact(page, "etag") == "none"  # the last reply had no ETag
        rows = table(page, "#page-items")
        assert [r[0] for r in rows] == [
            XSS,
            f"Charlie {site.url('/c')}",
            f"Alpha {site.url('/a')}",
            f"Bravo {site.url('/b')}",
        ]
        assert [r[2] == "on the page" for r in rows] == [True, True, False, True]
        tree = HTMLParser(page)
        gone = tree.css_first('#page-items tr.gone [data-cell="last_seen"] time')
        assert gone is not None  # Alpha left the page: when it was last seen
        detail = http.get("/api/watchers/shop").json()["detail"]
        alpha = next(i for i in detail["items"] if i["title"] == "Alpha")
        assert gone.attributes["datetime"] == alpha["last_seen"] < detail["seen_at"]
        links = [a.attributes["href"] for a in tree.css("#page-items td.title a")]
        assert links == [site.url("/c"), site.url("/a"), site.url("/b")]  # none for javascript:
        site.html("/list", ["<a href='/b'>Bravo</a>", "<a href='/c'>Charlie</a>"], etag='"v3"')
        wait_until(lambda: http.get("/api/watchers/shop").json()["detail"]["etag"] == '"v3"')
        page = http.get("/watchers/shop").text
        assert fact(page, "etag") == '"v3"'


def test_ports_detail_shows_open_set_expectations_and_history(tmp_path: Path) -> None:
    held = [socket.socket() for _ in range(3)]
    for sock in held:
        sock.bind(("127.0.0.1", 0))
    expected, plain, later = (s.getsockname()[1] for s in held)
    held[0].listen()
    held[1].listen()  # `later` is bound (so no one else takes it) but refuses connections
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.ports(
        "127.0.0.1", [expected, plain, later], name="lan", every=0.1, expect_open=[expected]
    )
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")

    def detail() -> dict[str, Any]:
        doc: dict[str, Any] = http.get("/api/watchers/lan").json()["detail"]
        return doc

    try:
        with keeper, httpx.Client(base_url=dashboard.url) as http:
            wait_until(lambda: [p["port"] for p in detail()["open"]] == sorted([expected, plain]))
            page = http.get("/watchers/lan").text
            assert "No change yet" in page
            held[2].listen()
            wait_until(lambda: later in [p["port"] for p in detail()["open"]])
            held[1].close()
            wait_until(lambda: plain not in [p["port"] for p in detail()["open"]])
            held[0].close()
            wait_until(lambda: detail()["expectations"][0]["alerting_since"])
            page = http.get("/watchers/lan").text
            back = socket.socket()
            held.append(back)
            back.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            back.bind(("127.0.0.1", expected))
            back.listen()
            recovered = wait_until(lambda: len(detail()["history"]) == 4 and detail())
    finally:
        for sock in held:
            sock.close()
    assert [r[0] for r in table(page, "#open-ports")] == [str(later)]
    tree = HTMLParser(page)
    opened = tree.css_first("#open-ports tbody tr time")
    opened_event = tree.css("#port-history tbody tr")[-1].css_first("time")
    assert opened is not None
    assert opened_event is not None
    assert opened.attributes["datetime"] == opened_event.attributes["datetime"]  # when it opened
    [expectation] = table(page, "#expectations")
    assert expectation[0] == str(expected)
    assert expectation[2:4] == ["open", "closed"]
    assert expectation[4].startswith("alerting since")
    history = [(r[1], r[2], r[4]) for r in table(page, "#port-history")]
    assert history == [
        ("closed", str(expected), "expected open"),
        ("closed", str(plain), ""),
        ("opened", str(later), ""),
    ]
    assert recovered["expectations"][0]["met"] is True
    assert recovered["expectations"][0]["alerting_since"] is None
    latest = recovered["history"][0]
    assert (latest["change"], latest["port"], latest["note"]) == (
        "opened",
        expected,
        "as expected (open)",
    )
    heading = tree.css_first("h2")
    assert heading is not None
    assert "127.0.0.1" in heading.text()


def test_a_checkpoint_its_view_cannot_read_is_shown_as_a_tree(tmp_path: Path) -> None:
    with Store(tmp_path / "wk.db") as store:
        store.register_watcher("oldlog", "log")
    odd = {"files": [{"path": "/var/log/x.log", "offset": "twelve"}], "counts": {"a": [1]}}
    with sqlite3.connect(tmp_path / "wk.db") as db:  # an older or hand-edited checkpoint
        db.execute("UPDATE watchers SET checkpoint = ? WHERE name = 'oldlog'", [json.dumps(odd)])
    db.close()
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(1, lambda: None, name="probe")
    dashboard = serve_dashboard(keeper, "127.0.0.1:0")
    with keeper, httpx.Client(base_url=dashboard.url) as http:
        page = http.get("/watchers/oldlog")
        assert page.status_code == 200
        assert '<dt>offset</dt><dd><span class="leaf">twelve</span>' in page.text
        assert "Files followed" not in page.text
        assert http.get("/api/watchers/oldlog").json()["detail"] is None


def test_ids_beyond_what_sqlite_holds_are_a_400(served: tuple[Keeper, Dashboard]) -> None:
    _keeper, dashboard = served
    huge = "9" * 30
    with httpx.Client(base_url=dashboard.url, timeout=10) as http:
        assert http.get("/api/alerts", params={"since_id": huge}).status_code == 400
        assert http.get("/api/stream", params={"since_id": huge}).status_code == 400
        for path in ("/api/stream", "/api/alerts"):  # since: a duration or a time, never an id
            bad = http.get(path, params={"since": "yesterday"})
            assert bad.status_code == 400
            assert "use a duration like 1h or a time like" in bad.json()["error"]
        for path in ("/api/stream", "/api/alerts"):  # the old id form says where ids go now
            old = http.get(path, params={"since": "0"})
            assert old.status_code == 400
            assert "?since_id=" in old.json()["error"]
