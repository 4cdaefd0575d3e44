"""watchkeeper's side of the benchmark: one full cycle of 1,000 page watchers in a Keeper.

``python wk_cycle.py urls.json state.db``: builds a Keeper with one ``[[page]]`` watcher (its own
daemon thread) per URL, exactly as an agent config would, starts it, waits until every watcher
has committed one check to the SQLite state, stops, and prints how many items it recorded.
The first check of each page records its baseline, as urlwatch's first run stores each page.
``stagger = "0s"``: the benchmark measures a full cycle's throughput, not the start-up spread.
"""

from __future__ import annotations

import json
import sys
import time

from watchkeeper import Keeper


def main(urls_file: str, state: str) -> None:
    urls = json.loads(open(urls_file).read())
    keeper = Keeper(state=state, shutdown_timeout=30)
    for n, url in enumerate(urls):
        keeper.page(url, items="li.item", name=f"page-{n}", every="1h", stagger="0s")
    keeper.start()
    threads = list(keeper._threads.values())
    while sum(1 for t in threads if t.checks_run) < len(threads):
        time.sleep(0.01)
    failed = sum(1 for t in threads if t.failures)
    items = sum(len((t.checkpoint or {}).get("items", {})) for t in threads)
    keeper.stop()
    print(json.dumps({"pages": len(threads), "failed": failed, "items": items}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
