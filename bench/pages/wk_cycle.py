"""watchkeeper's side of the benchmark: one full check cycle of 1,000 page watchers.

``python wk_cycle.py keeper|pool urls.json state.db``

- ``keeper``: a Keeper with one ``[[page]]`` watcher per URL, each in its own daemon thread as in
  an agent; it waits until every watcher has committed one check to the SQLite state, then stops.
- ``pool``: the same watchers and the same per-check code path (``WatcherThread.cycle``: fetch,
  extract, rules, commit to the state), driven by a pool of ``fetch.MAX_TOTAL`` (100) threads
  instead of 1,000.

Either way the first check of each page records its baseline, as urlwatch's first run stores each
page. ``stagger = "0s"``: this measures a cycle's throughput, not the start-up spread.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from watchkeeper import Keeper
from watchkeeper.runtime import WatcherThread
from watchkeeper.store import Store
from watchkeeper.watchers import fetch


def main(mode: str, urls_file: str, state: str) -> None:
    urls = json.loads(Path(urls_file).read_text())
    keeper = Keeper(state=state, shutdown_timeout=30)
    for n, url in enumerate(urls):
        keeper.page(url, items="li.item", name=f"page-{n}", every="1h", stagger="0s")
    if mode == "keeper":
        keeper.start()
        threads = list(keeper._threads.values())
        # A thread's checkpoint is set once its first check is committed (fresh state: None
        # before); a failed check counts up ``failures`` instead.
        while any(t.checkpoint is None and not t.failures for t in threads):
            time.sleep(0.05)
        keeper.stop()
    else:
        store = Store(state)
        threads = [WatcherThread(w, store, list, lambda alerts: None) for w in keeper.watchers]
        with ThreadPoolExecutor(fetch.MAX_TOTAL) as pool:
            list(pool.map(WatcherThread.cycle, threads))
        for watcher in keeper.watchers:
            watcher.close()
        store.close()
    failed = sum(1 for t in threads if t.failures)
    items = sum(len((t.checkpoint or {}).get("items", {})) for t in threads)
    print(json.dumps({"pages": len(threads), "failed": failed, "items": items}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
