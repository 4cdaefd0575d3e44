"""The page watcher inside a Keeper: alerts delivered once, failures, restarts, Chromium, CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_jsonl, run_cli, wait_until
from tests.pagesite import Page, Site, site
from watchkeeper import Keeper
from watchkeeper.store import Store

__all__ = ["site"]


def checks(state: Path, name: str) -> int:
    with Store(state) as store:
        record = store.watcher(name)
        return 0 if record is None else record.checks


def links(*names: str) -> list[str]:
    return [f"<a href='/p/{n}'>{n.title()}</a>" for n in names]


def keeper(tmp_path: Path, url: str, **options: Any) -> Keeper:
    jsonl = {"kind": "jsonl", "path": str(tmp_path / "alerts.jsonl")}
    wk = Keeper(state=tmp_path / "wk.db", notify=[jsonl])
    wk.page(url, items="li.item", name="shop", every="100ms", **options)
    return wk


def test_new_item_is_delivered_once_across_restarts(tmp_path: Path, site: Site) -> None:
    out = tmp_path / "alerts.jsonl"
    url = site.html("/new", links("a", "b"))
    with keeper(tmp_path, url) as wk:
        wait_until(lambda: site.hits["/new"] >= 2)  # the baseline and a check after it
        site.html("/new", links("c", "a", "b"))
        wait_until(lambda: read_jsonl(out))
        wk.check_now("shop")
        hits = site.hits["/new"]
        wait_until(lambda: site.hits["/new"] >= hits + 2)
    [alert] = read_jsonl(out)
    assert alert["title"] == "C"
    assert alert["severity"] == "info"
    assert alert["kind"] == "page"
    assert alert["data"] == {
        "url": url,
        "item_key": f"{site.base}/p/c",
        "item_title": "C",
        "item_url": f"{site.base}/p/c",
    }
    site.html("/new", links("d", "c", "a", "b"))  # appears while nothing is watching
    with keeper(tmp_path, url):
        wait_until(lambda: len(read_jsonl(out)) >= 2)
        hits = site.hits["/new"]
        wait_until(lambda: site.hits["/new"] >= hits + 2)
    assert [a["title"] for a in read_jsonl(out)] == ["C", "D"]


def test_failures_alert_after_fail_after_then_recover(tmp_path: Path, site: Site) -> None:
    out = tmp_path / "alerts.jsonl"
    state = tmp_path / "wk.db"
    url = site.html("/new", links("a"))
    with keeper(tmp_path, url, fail_after=3):
        wait_until(lambda: checks(state, "shop") >= 1)
        site.pages["/new"] = Page("boom", status=500)
        wait_until(lambda: site.hits["/new"] >= 3)
        wait_until(lambda: read_jsonl(out), timeout=15)
        with Store(state) as store:
            record = store.watcher("shop")
            assert record is not None
            assert record.failures >= 3
            assert f"{site.base}/p/a" in record.checkpoint["items"]  # the old checkpoint stays
        site.html("/new", links("a"))
        wait_until(lambda: len(read_jsonl(out)) >= 2, timeout=15)
    failing, recovered = read_jsonl(out)
    assert failing["status"] == "firing"
    assert failing["severity"] == "error"
    assert "HTTP 500" in failing["title"]
    assert failing["key"] == recovered["key"]
    assert recovered["status"] == "resolved"
    assert len(read_jsonl(out)) == 2  # "a" was never reported as new: the checkpoint survived


JS_PAGE = """<html><body><ul id="list"></ul><script>
  setTimeout(() => {
    for (const name of ["alpha", "beta"]) {
      const li = document.createElement("li");
      li.className = "item";
      li.innerHTML = `<a href="/js/${name}">${name}</a>`;
      document.getElementById("list").appendChild(li);
    }
  }, 100);
</script></body></html>"""


def test_render_with_chromium_sees_items_built_by_javascript(tmp_path: Path, site: Site) -> None:
    pytest.importorskip("playwright.sync_api", reason="the 'browser' extra is not installed")
    if not shutil.which("chromium") and not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (scripts/setup.sh installs it as root)")
    site.pages["/js"] = Page(JS_PAGE)
    plain = run_cli("page", site.url("/js"), "--items", "li.item", cwd=tmp_path)
    assert plain.returncode == 1
    assert "matched nothing" in plain.stderr
    rendered = run_cli(
        "page", site.url("/js"), "--items", "li.item", "--render", "--json", cwd=tmp_path
    )
    assert rendered.returncode == 0, rendered.stderr
    items = json.loads(rendered.stdout)["items"]
    assert [(i["title"], i["url"]) for i in items] == [
        ("alpha", f"{site.base}/js/alpha"),
        ("beta", f"{site.base}/js/beta"),
    ]


def test_cli_page_prints_items_and_diffs_against_the_state(tmp_path: Path, site: Site) -> None:
    url = site.html("/new", links("a", "b"))
    state = tmp_path / "wk.db"
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        f'[keeper]\nstate = "wk.db"\n\n[[page]]\nname = "shop"\nurl = "{url}"\n'
        'items = "li.item"\nevery = "1h"\nstagger = "0s"\n'
    )
    listing = run_cli("page", url, "--items", "li.item", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "2 items (html)" in listing.stdout
    assert f"{site.base}/p/a" in listing.stdout
    with Keeper.from_config(config):
        wait_until(lambda: state.exists() and checks(state, "shop") >= 1)
    site.html("/new", links("c", "a", "b"))
    diff = run_cli("page", url, "--items", "li.item", "--diff", "--json", cwd=tmp_path)
    assert diff.returncode == 0, diff.stderr
    rows = json.loads(diff.stdout)["items"]
    assert [(r["title"], r["new"]) for r in rows] == [("C", True), ("A", False), ("B", False)]
    shown = run_cli("page", url, "--items", "li.item", "--diff", cwd=tmp_path)
    assert "1 not in the stored state" in shown.stdout
    by_config = run_cli("page", url, "--diff", cwd=tmp_path)  # the watcher's own settings
    assert by_config.returncode == 0, by_config.stderr
    assert "1 not in the stored state" in by_config.stdout
    bad = run_cli("page", url, "--items", "li[", cwd=tmp_path)
    assert bad.returncode == 1
    assert "items: 'li[' is not a valid CSS selector" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_first_check_waits_for_its_stagger_slot_unless_asked(tmp_path: Path, site: Site) -> None:
    url = site.html("/new", links("a"))
    wk = Keeper(state=tmp_path / "wk.db")
    wk.page(url, items="li.item", name="shop", every="1h", stagger="1h")
    with wk:
        delay = wk.watchers[0].first_delay()
        assert 0 < delay < 3600
        if delay > 1:  # (for this name it is: about 40 minutes)
            assert not wait_for_hit(site, "/new", within=0.5)
        wk.check_now("shop")  # cuts the wait short, as stop() does
        assert wait_for_hit(site, "/new", within=10)


def wait_for_hit(site: Site, path: str, within: float) -> bool:
    try:
        wait_until(lambda: site.hits[path] >= 1, timeout=within)
    except AssertionError:
        return False
    return True


def test_page_watcher_example_reports_each_new_item_once_per_source() -> None:
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "examples" / "page_watcher.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=True
    )
    alerts = [line.split(" ", 2) for line in result.stdout.splitlines()]
    by_source: dict[str, list[str]] = {}
    for _, source, rest in alerts:
        by_source.setdefault(source, []).append(rest)
    assert set(by_source) == {"html", "json", "feed"}
    for lines in by_source.values():
        assert len(lines) >= 3
        assert len(lines) == len(set(lines))  # no item twice
        for line in lines:  # "sextant #3 http://127.0.0.1:PORT/item/3": title and link agree
            match = re.fullmatch(r".+ #(\d+) http://127\.0\.0\.1:\d+/item/(\d+)", line)
            assert match is not None, line
            assert match.group(1) == match.group(2)


def test_two_keepers_asking_one_host_wait_for_slots_without_timing_out(
    tmp_path: Path, site: Site
) -> None:
    """The per-host limit is the process's; waiting for it is not part of a page's timeout."""
    for n in range(6):
        site.pages[f"/p{n}"] = Page("<li class='item'>x</li>", delay=0.6)
    keepers = []
    for k in range(2):
        keeper = Keeper(state=tmp_path / f"k{k}.db")
        for n in range(3 * k, 3 * k + 3):
            keeper.page(
                site.url(f"/p{n}"),
                items="li.item",
                name=f"p{n}",
                every="1h",
                stagger="0s",
                timeout="1s",
                max_per_host=1,
            )
        keepers.append(keeper.start())
    try:
        for k in range(2):
            wait_until(
                lambda k=k: all(
                    checks(tmp_path / f"k{k}.db", f"p{n}") for n in range(3 * k, 3 * k + 3)
                )
            )
    finally:
        for keeper in keepers:
            keeper.stop()
    assert site.max_in_flight == 1
    for k in range(2):
        with Store(tmp_path / f"k{k}.db") as store:
            assert [w.failures_total for w in store.watchers()] == [0, 0, 0]


def test_reload_restarts_the_page_pool_from_checkpoints(tmp_path: Path, site: Site) -> None:
    from watchkeeper.config import parse_config

    out = tmp_path / "alerts.jsonl"
    first = site.html("/one", links("a"))
    second = site.html("/two", links("x"))

    def config(*urls: str) -> Any:
        pages = [
            {"name": u.rsplit("/", 1)[-1], "url": u, "items": "li.item", "every": "100ms"}
            for u in urls
        ]
        notify = [{"kind": "jsonl", "name": "out", "path": str(out)}]
        return parse_config({"notify": notify, "page": pages})

    wk = Keeper.from_config(config(first), state=tmp_path / "wk.db")
    with wk:
        wait_until(lambda: site.hits["/one"] >= 2)
        changes = wk.reload(config(first, second))
        assert changes.describe() == ["added watcher 'two'"]
        assert changes.plan.pools == {"page"}  # the pool restarts whole, "one" from its checkpoint
        wait_until(lambda: site.hits["/two"] >= 2)
        site.html("/one", links("b", "a"))
        site.html("/two", links("y", "x"))
        wait_until(lambda: len(read_jsonl(out)) >= 2)
        assert wk.reload(config(first, second)).plan.empty  # the same config changes nothing
        hits = site.hits["/one"]
        wait_until(lambda: site.hits["/one"] >= hits + 2)
    titles = sorted((a["watcher"], a["title"]) for a in read_jsonl(out))
    assert titles == [("one", "B"), ("two", "Y")]  # A and X: known
