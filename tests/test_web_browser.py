"""The dashboard in headless Chromium (Debian's, driven by Playwright) against a real agent.

Each test runs ``watchkeeper run`` as a child process with custom watchers, opens its pages and
looks at them as a user would. Screenshots of every page go to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web_agent import ROOT, Agent

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
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
