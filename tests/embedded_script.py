"""A program that embeds a Keeper and returns from main, as a user's script would.

argv: STATE SHUTDOWN_TIMEOUT NOTIFIER-AS-JSON [drain]. Main returns once the first check has
committed (with "drain": once, also, nothing is pending) and prints "main returns <time>" then.
"""

from __future__ import annotations

import json
import sys
import time

from watchkeeper import Keeper, Observation


def main() -> None:
    state, shutdown_timeout, notifier = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
    keeper = Keeper(state=state, notify=[notifier], shutdown_timeout=shutdown_timeout)
    keeper.every(3600, lambda: Observation("last words", severity="critical"), name="job")
    keeper.start()
    assert keeper.store is not None
    store = keeper.store

    def busy() -> bool:
        record = store.watcher("job")
        if record is None or not record.checks:
            return True
        pending = store.delivery_counts().get(notifier.get("name") or notifier["kind"], {})
        return "drain" in sys.argv[4:] and bool(pending.get("pending"))

    while busy():
        time.sleep(0.01)  # the program's "real work": here, until the first check committed
    print(f"main returns {time.time()}", flush=True)


if __name__ == "__main__":
    main()
