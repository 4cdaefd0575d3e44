"""``render = true``: load a page in headless Chromium so items built by JavaScript exist.

Playwright (the optional extra ``watchkeeper[browser]``) drives a Chromium: the Debian/Ubuntu
``chromium`` package at ``/usr/bin/chromium`` when present (``$WATCHKEEPER_CHROMIUM`` names
another), else the browser ``playwright install chromium`` downloaded. Each render starts and ends
its own browser: pages are checked minutes apart, and a browser kept between checks would hold
a few hundred MB per watcher for nothing. Playwright's sync API is bound to the thread that
started it, which here is the watcher's own thread, start to end.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from watchkeeper.quantities import format_duration
from watchkeeper.watchers.fetch import PageError, Reply

CHROMIUM_ARGS = [
    # Chromium's sandbox cannot run as root; as any other user it protects us from the page.
    *(["--no-sandbox"] if os.geteuid() == 0 else []),
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")


def chromium_path() -> str | None:
    """The Chromium to launch: $WATCHKEEPER_CHROMIUM, /usr/bin/chromium, else Playwright's own."""
    configured = os.environ.get("WATCHKEEPER_CHROMIUM")
    if configured:
        return configured
    return str(DEBIAN_CHROMIUM) if DEBIAN_CHROMIUM.exists() else None


def render(
    url: str,
    *,
    headers: dict[str, str],
    timeout: float,
    max_bytes: int,
    wait_for: str | None = None,
) -> Reply:
    """The DOM after load (and after ``wait_for`` matched, if given) as an HTML reply."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise PageError(
            "render = true needs Playwright: pip install 'watchkeeper[browser]' "
            "and a Chromium (apt-get install chromium)"
        ) from exc
    started = time.monotonic()
    millis = timeout * 1000
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS, timeout=millis
            )
            try:
                page = browser.new_page(extra_http_headers=headers)
                response = page.goto(url, wait_until="load", timeout=millis)
                if response is not None and response.status >= 400:
                    raise PageError(f"GET {url}: HTTP {response.status} {response.status_text}")
                if wait_for:
                    left = max(millis - (time.monotonic() - started) * 1000, 1.0)
                    # On timeout, extraction reports "matched nothing" with the page's URL.
                    with contextlib.suppress(PlaywrightTimeout):
                        page.wait_for_selector(wait_for, state="attached", timeout=left)
                html = page.content().encode("utf-8")
                final_url = page.url
            finally:
                browser.close()
    except PlaywrightTimeout as exc:
        raise PageError(
            f"GET {url}: timed out after {format_duration(timeout)} in Chromium"
        ) from exc
    except PlaywrightError as exc:
        raise PageError(f"GET {url}: Chromium: {exc.message.splitlines()[0]}") from exc
    return Reply(
        url=final_url,
        status=200 if response is None else response.status,
        headers={"content-type": "text/html; charset=utf-8"},
        content=html[:max_bytes],
        truncated=len(html) > max_bytes,
    )
