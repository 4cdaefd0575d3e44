"""Watch a shop's new arrivals three ways: its HTML list, its JSON API and its RSS feed.

The shop is watchkeeper's demo shop on 127.0.0.1: it adds an item every 0.3 seconds. Each page
watcher takes a baseline at its first check (the items already there alert nothing), then
alerts once per item that appears, naming it and linking to it. The script stops after three
new items per watcher and prints each alert as ``new <watcher> <title> <link>``.

    python examples/page_watcher.py
"""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from pathlib import Path

from watchkeeper import Alert, Keeper
from watchkeeper.demo.world import Shop

WANTED = 3


def main() -> None:
    shop = Shop(every=0.3).start()
    seen: Counter[str] = Counter()
    done = threading.Event()
    lock = threading.Lock()

    def show(alerts: list[Alert]) -> None:  # called from the watcher's thread after each commit
        with lock:
            for alert in alerts:
                print(f"new {alert.watcher} {alert.data['item_title']} {alert.data['item_url']}")
                seen[alert.watcher] += 1
            if len(seen) == 3 and min(seen.values()) >= WANTED:
                done.set()

    with tempfile.TemporaryDirectory() as folder:
        keeper = Keeper(state=Path(folder) / "wk.db")
        quick = {"every": "200ms", "stagger": "0s"}
        keeper.page(f"{shop.url}/new", items="li.product", title="h2", name="html", **quick)
        keeper.page(f"{shop.url}/api/items", items="items", name="json", **quick)
        keeper.page(f"{shop.url}/feed", name="feed", **quick)
        keeper.subscribe(show)
        with keeper:
            done.wait(30)
    shop.stop()


if __name__ == "__main__":
    main()
