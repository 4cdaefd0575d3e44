"""The dashboard in headless Chromium (Debian's, driven by Playwright) against a real agent.

Each test runs ``watchkeeper run`` as a child process with custom watchers, opens its pages and
looks at them as a user would. Screenshots of every page go to ``test-artifacts/``.
"""

from __future__ import annotations

import html
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.pagesite import Site
from tests.web_agent import ROOT, Agent
from watchkeeper.scan import service_name
from watchkeeper.watchers.render import CHROMIUM_ARGS, DEBIAN_CHROMIUM

CHROMIUM = str(DEBIAN_CHROMIUM)
ARGS = CHROMIUM_ARGS  # the same flags the page watcher's renderer runs Chromium with
ARTIFACTS = ROOT / "test-artifacts"
XSS = "<img src=x onerror=alert(1)>"

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser]')"
)
if not shutil.which(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh does it as root)",
        allow_module_level=True,
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    """Per test: Playwright's event loop starts executor threads that end only with it."""
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(tmp_path).start()
    yield running
    assert running.stop() == 0


class Watch:
    """A page plus everything that would betray a script running or breaking on it."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on(
            "console",
            lambda msg: self.errors.append(msg.text) if msg.type == "error" else None,
        )

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watch(browser: Any) -> Iterator[Watch]:
    opened = Watch(browser)
    yield opened
    opened.close()


def test_pages_show_watchers_and_new_alerts_live_as_text(agent: Agent, watch: Watch) -> None:
    expect = playwright_api.expect
    page = watch.page
    agent.fire("disk 91% full on /var", "warning", body="df says 91%")
    page.goto(agent.url + "/")
    rows = page.locator("#watchers tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator('tr[data-watcher="probe"] td').nth(1)).to_have_text("custom")
    expect(page.locator('tr[data-watcher="steady"] [data-cell="state"]')).to_have_text("ok")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#alerts tbody tr")).to_have_count(1)

    # Raised while the page is open: it appears without a reload, as text.
    page.evaluate("window.loadedOnce = true")
    agent.fire(XSS, "error")
    newest = page.locator("#alerts tbody tr").first
    expect(newest.locator("td.title")).to_have_text(XSS)
    expect(newest.locator(".badge")).to_have_text("error")
    assert page.evaluate("window.loadedOnce") is True  # the same page, not a reload
    expect(page.locator('tr[data-watcher="probe"] [data-cell="alerts_24h"]')).to_have_text("2")
    assert page.locator("img").count() == 0
    watch.shot("overview")

    page.goto(agent.url + "/alerts")
    expect(page.locator("#alerts tbody tr")).to_have_count(2)
    expect(page.locator("#alerts td.title").first).to_contain_text(XSS)
    agent.fire("queue depth 120", "critical")
    expect(page.locator("#alerts tbody tr").first.locator("td.title")).to_have_text(
        "queue depth 120"
    )
    page.select_option("select[name=severity]", "error")
    page.fill("input[name=q]", "queue")
    page.click("form.filters button")
    expect(page.locator("#alerts tbody tr")).to_have_count(1)
    watch.shot("alerts")

    page.goto(agent.url + "/watchers/probe")
    expect(page.locator("h1")).to_contain_text("probe")
    expect(page.locator("#alerts tbody tr")).to_have_count(3)
    expect(page.locator("#alerts td.title").nth(1)).to_contain_text(XSS)
    watch.shot("watcher")

    page.goto(agent.url + "/notifiers")
    row = page.locator("table.grid tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td").first).to_have_text("jsonl")
    expect(row.locator("td").nth(4)).to_have_text("3")  # sent
    watch.shot("notifiers")

    assert watch.dialogs == []  # the onerror handler never ran
    assert watch.errors == []  # no script error, no CSP violation


def test_pause_changes_the_state_here_and_on_other_open_pages(
    agent: Agent, watch: Watch, browser: Any
) -> None:
    expect = playwright_api.expect
    other = Watch(browser)
    try:
        other.page.goto(agent.url + "/watchers/probe")
        expect(other.page.locator("#live")).to_have_text("live")
        page = watch.page
        page.goto(agent.url + "/")
        row = page.locator('tr[data-watcher="probe"]')
        expect(row.locator('[data-cell="state"]')).to_have_text("ok")
        row.get_by_role("button", name="Pause").click()
        expect(row.locator('[data-cell="state"]')).to_have_text("paused")
        expect(row.get_by_role("button", name="Resume")).to_be_visible()
        # The other page learns it over the stream, without a reload.
        expect(other.page.locator('[data-cell="state"]')).to_have_text("paused")
        watches = httpx.get(agent.url + "/api/watchers").json()
        assert {w["name"]: w["state"] for w in watches}["probe"] == "paused"
        # Paused means no checks: a fired alert waits until resumed.
        agent.fire("while paused")
        row.get_by_role("button", name="Resume").click()
        expect(row.locator('[data-cell="state"]')).to_have_text("ok")
        expect(page.locator("#alerts td.title").first).to_have_text("while paused")
        other.page.get_by_role("button", name="Mute").click()
        expect(other.page.locator('[data-cell="state"]')).to_contain_text("muted")
        watch.shot("paused")
        assert watch.dialogs == []
        assert watch.errors == []
        assert other.errors == []
    finally:
        other.close()


def test_token_login_in_the_browser(tmp_path: Path, watch: Watch) -> None:
    expect = playwright_api.expect
    agent = Agent(tmp_path, token="correct-horse").start()
    try:
        page = watch.page
        response = page.goto(agent.url + "/alerts")
        assert response is not None
        assert response.status == 401
        expect(page.locator("h1")).to_have_text("Log in")
        watch.shot("login")
        page.fill("input[name=token]", "wrong")
        page.click("form button")
        expect(page.locator("p.bad")).to_have_text("wrong token")
        assert all("401" in e for e in watch.errors)  # the login page is served with a 401
        watch.errors.clear()
        page.fill("input[name=token]", "correct-horse")
        page.click("form button")
        expect(page).to_have_url(agent.url + "/alerts")
        expect(page.locator("#live")).to_have_text("live")  # the stream takes the cookie
        assert watch.errors == []
    finally:
        assert agent.stop() == 0


def test_an_open_page_catches_up_after_the_agent_restarts(agent: Agent, watch: Watch) -> None:
    expect = playwright_api.expect
    page = watch.page
    page.goto(agent.url + "/alerts")
    expect(page.locator("#live")).to_have_text("live")
    agent.fire("before the restart")
    expect(page.locator("#alerts tbody tr")).to_have_count(1)
    assert agent.stop() == 0
    expect(page.locator("#live")).to_have_text("reconnecting")
    agent.fire("while it was down")  # made at the next start, before the page reconnects
    agent.bind = f"127.0.0.1:{agent.port}"
    agent.start()
    agent.fire("after the restart")
    titles = page.locator("#alerts td.title")
    expect(titles).to_have_text(["after the restart", "while it was down", "before the restart"])
    expect(page.locator("#live")).to_have_text("live")
    watch.errors = [e for e in watch.errors if "ERR_CONNECTION_REFUSED" not in e]
    assert watch.errors == []


def bind_preferring(port: int) -> socket.socket:
    """A socket bound on loopback to ``port`` if it is free, else to any free port."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    return sock


def close_and_keep(held: list[socket.socket], index: int) -> None:
    """Stop listening on ``held[index]`` but keep its port bound, so the port reads closed and
    no other process (a parallel test binding port 0) can open it meanwhile."""
    port = held[index].getsockname()[1]
    held[index].close()
    keeper = socket.socket()
    keeper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    keeper.bind(("127.0.0.1", port))  # bound, never listening: connects are refused
    held[index] = keeper


def test_detail_pages_of_log_page_and_ports_watchers(tmp_path: Path, watch: Watch) -> None:
    """Each kind's own view, as a user sees it; screenshots dashboard-detail-<kind>.png."""
    expect = playwright_api.expect
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("boot ok\nERROR disk full on /var\n")
    (logs / "<b>worker.log").write_text("started\n")
    held = [bind_preferring(port) for port in (5432, 6379, 8080)]  # named services if free
    ssh_like, plain, later = (s.getsockname()[1] for s in held)
    held[0].listen()
    held[1].listen()
    shop = Site().start()
    url = shop.html("/new", [f"<a href='/p/{n}'>Product {n}</a>" for n in (1, 2, 3)], etag='"r1"')
    agent = Agent(
        tmp_path,
        extra=(
            '\n[[log]]\nname = "applog"\npaths = ["logs/*.log"]\nstart_at = "beginning"\n'
            'rules = [{ match = "ERROR" }]\n'
            f'\n[[page]]\nname = "shop"\nurl = "{url}"\nformat = "html"\nitems = "li.item"\n'
            'every = "200ms"\nstagger = "0s"\n'
            f'\n[[ports]]\nname = "lan"\nhost = "127.0.0.1"\n'
            f"ports = [{ssh_like}, {plain}, {later}]\n"
            f'expect_open = [{ssh_like}]\nevery = "200ms"\n'
        ),
    ).start()
    http = httpx.Client(base_url=agent.url)

    def detail(name: str) -> Any:
        return http.get(f"/api/watchers/{name}").json()["detail"]

    try:
        wait_until(lambda: len(detail("shop")["items"]) == 3)
        shop.html(
            "/new",
            [
                f"<a href='/p/4'>{html.escape(XSS)}</a>",
                *(f"<a href='/p/{n}'>Product {n}</a>" for n in (1, 2)),
            ],
            etag='"r2"',
        )
        wait_until(lambda: detail("shop")["items"][0]["title"] == XSS)
        wait_until(lambda: len(detail("lan")["open"]) == 2)
        held[2].listen()
        wait_until(lambda: len(detail("lan")["history"]) == 1)
        close_and_keep(held, 1)
        wait_until(lambda: len(detail("lan")["history"]) == 2)
        with (logs / "app.log").open("a") as out:
            out.write("ERROR queue stuck <script>alert(1)</script>\n")
        wait_until(lambda: detail("applog")["files"][1]["size"] == 76)
        wait_until(lambda: detail("applog")["total_lag"] == 0)
        close_and_keep(held, 0)  # the expected port goes away
        wait_until(lambda: detail("lan")["expectations"][0]["alerting_since"])

        page = watch.page
        page.goto(agent.url + "/watchers/applog")
        files = page.locator("#log-files tbody tr")
        expect(files).to_have_count(2)
        expect(files.locator("td.path").nth(0)).to_contain_text(str(logs / "<b>worker.log"))
        expect(files.locator('[data-cell="lag"]')).to_have_text(["0 B", "0 B"])
        page.get_by_role("button", name="Pause").click()
        expect(page.locator('[data-cell="state"]')).to_have_text("paused")
        with (logs / "app.log").open("a") as out:
            out.write("INFO written while paused\n" * 4)  # 104 bytes not read yet
        page.reload()
        expect(files.locator('[data-cell="lag"]')).to_have_text(["0 B", "104 B"])
        expect(files.locator("td.state").nth(1)).to_have_text("behind")
        watch.shot("detail-log")

        page.goto(agent.url + "/watchers/shop")
        items = page.locator("#page-items tbody tr")
        expect(items).to_have_count(4)
        expect(items.first.locator("td.title a")).to_have_text(XSS)
        expect(items.first.locator("td.title a")).to_have_attribute("href", shop.url("/p/4"))
        expect(page.locator('[data-cell="etag"]')).to_have_text('"r2"')
        expect(page.locator("#page-items tr.gone")).to_have_count(1)  # Product 3 left
        assert page.locator("#page-items img").count() == 0
        watch.shot("detail-page")

        page.goto(agent.url + "/watchers/lan")
        open_rows = page.locator("#open-ports tbody tr")
        expect(open_rows.locator("td.port")).to_have_text([str(later)])
        expect(open_rows.locator("td").nth(1)).to_have_text(service_name(later))
        history = page.locator("#port-history tbody tr")
        expect(history.locator(".badge")).to_have_text(["closed", "closed", "opened"])
        expect(history.locator("td.port")).to_have_text([str(ssh_like), str(plain), str(later)])
        expect(page.locator("#expectations .badge")).to_have_text("closed")
        expect(page.locator("#expectations td").last).to_contain_text("alerting since")
        watch.shot("detail-ports")
        assert watch.dialogs == []
        assert watch.errors == []
    finally:
        http.close()
        for sock in held:
            sock.close()
        assert agent.stop() == 0
        shop.stop()


PHONE = {"width": 390, "height": 844}  # an iPhone 12-14 in CSS pixels


def test_the_dashboard_is_usable_on_a_phone(tmp_path: Path, browser: Any) -> None:
    """At 390 px: cards instead of wide tables, nothing scrolls sideways, titles get the width.

    Screenshots ``dashboard-phone-<page>.png`` in ``test-artifacts/``.
    """
    expect = playwright_api.expect
    logs = tmp_path / "var-log-with-a-long-folder-name"
    logs.mkdir()
    (logs / "application-server.log").write_text("ERROR disk full on /var\n")
    agent = Agent(
        tmp_path,
        extra=(
            '\n[[log]]\nname = "application-server-errors"\n'
            f'paths = ["{logs}/*.log"]\nstart_at = "beginning"\nrules = [{{ match = "ERROR" }}]\n'
            '\n[[notify]]\nname = "pager-webhook"\nkind = "webhook"\n'
            'url = "http://127.0.0.1:9/hooks/a-long-path/that-never-answers"\n'
        ),
    ).start()
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        agent.fire("queue depth 106 > 100", "error", body="the queue grew for 5 minutes")
        agent.fire("https://shop.example.com/products/a-very-long-unbroken-slug-" + "x" * 60)
        for n in range(6):
            agent.fire(f"disk {90 + n}% full on /var/lib/postgresql/data", "warning")
        wait_until(lambda: len(httpx.get(agent.url + "/api/alerts").json()) >= 9, timeout=20)
        for name, path in [
            ("overview", "/"),
            ("alerts", "/alerts"),
            ("notifiers", "/notifiers"),
            ("watcher", "/watchers/probe"),
            ("log", "/watchers/application-server-errors"),
        ]:
            page.goto(agent.url + path)
            if name != "notifiers":  # the one page without a stream
                expect(page.locator("#live")).to_have_text("live")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"dashboard-phone-{name}.png"), full_page=True)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{path}: {width} px wide, scrolls sideways"
            titles = page.locator("td.title").evaluate_all(
                "cells => cells.map(c => c.getBoundingClientRect().width)"
            )
            assert all(w >= 300 for w in titles), f"{path}: titles only {min(titles)} px wide"
            if name == "overview":
                assert page.evaluate("document.documentElement.scrollHeight") < 2500
        # Live alerts arrive as cards too.
        page.goto(agent.url + "/")
        agent.fire("arrived live on a phone", "critical")
        newest = page.locator("#alerts tbody tr").first
        expect(newest.locator("td.title")).to_have_text("arrived live on a phone")
        box = newest.locator("td.title").bounding_box()
        assert box is not None
        assert box["width"] >= 300
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert errors == []
    finally:
        context.close()
        assert agent.stop() == 0
