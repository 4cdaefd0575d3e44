"""A program that embeds a Keeper and returns from main, as a user's script would.

argv: STATE SMTP_PORT SHUTDOWN_TIMEOUT. Prints "main returns <time>" just before returning.
"""

from __future__ import annotations

import sys
import time

from watchkeeper import Keeper, Observation


def main() -> None:
    state, port, shutdown_timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    keeper = Keeper(
        state=state,
        notify=[
            {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "timeout": "60s",
                "sender": "wk@example.com",
                "to": ["ops@example.com"],
            }
        ],
        shutdown_timeout=shutdown_timeout,
    )
    keeper.every(3600, lambda: Observation("last words", severity="critical"), name="job")
    keeper.start()
    assert keeper.store is not None
    while not keeper.store.alerts():
        time.sleep(0.01)  # the program's "real work": here, until the first check committed
    print(f"main returns {time.time()}", flush=True)


if __name__ == "__main__":
    main()
