"""watchkeeper's side of the benchmark: one full check cycle of 1,000 page watchers.

``python wk_cycle.py urls.json state.db``

A Keeper with one ``[[page]]`` watcher per URL, run as an agent runs them (page watchers share
one pool of daemon threads); it waits until every watcher has committed one check to the SQLite
state, then stops. The first check of each page records its baseline, as urlwatch's first run
stores each page. ``stagger = "0s"``: this measures a cycle's throughput, not the start-up spread.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from watchkeeper import Keeper
from watchkeeper.store import Store


def main(urls_file: str, state: str) -> None:
    urls = json.loads(Path(urls_file).read_text())
    keeper = Keeper(state=state, shutdown_timeout=30)
    for n, url in enumerate(urls):
        keeper.page(url, items="li.item", name=f"page-{n}", every="1h", stagger="0s")
    keeper.start()
    assert keeper.store is not None
    # Every watcher has committed a check (or a failed one); polled from the state, sparingly.
    done = "SELECT count(*) FROM watchers WHERE checks > 0"
    while keeper.store.query(done)[0][0] < len(urls):
        time.sleep(0.05)
    failed = keeper.store.query("SELECT count(*) FROM watchers WHERE failures > 0")[0][0]
    keeper.stop()
    with Store(state, readonly=True) as store:
        items = sum(
            len((store.checkpoint(f"page-{n}") or {}).get("items", {})) for n in range(len(urls))
        )
    print(json.dumps({"pages": len(urls), "failed": failed, "items": items}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
