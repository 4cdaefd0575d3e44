"""A program that logs with the standard library and watches its own log for trouble.

Run it: ``python examples/log_monitor.py``. The program logs through ``logging`` with a
``RotatingFileHandler`` (which rotates by renaming, as logrotate does), and embeds a Keeper whose
log watcher follows ``app.log*`` and alerts on CRITICAL lines and on Python tracebacks (a whole
traceback is one alert). The file rotates several times while it works; each CRITICAL line and
each traceback still alerts exactly once. Alerts go to the console and to ``alerts.jsonl``; the
script prints what arrived.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

from watchkeeper import Keeper


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="wk-log-monitor-"))
    jsonl = folder / "alerts.jsonl"

    # The application's own logging: a 4 KB file that rotates to app.log.1, app.log.2 ...
    handler = RotatingFileHandler(folder / "app.log", maxBytes=4000, backupCount=5)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("app")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    keeper = Keeper(
        state=folder / "state.db",
        notify=[{"kind": "console"}, {"kind": "jsonl", "path": str(jsonl)}],
    )
    keeper.log(
        str(folder / "app.log"),
        rules=[
            {"match": r" CRITICAL ", "severity": "critical"},
            {
                "match": r"Traceback \(most recent call last\)",
                "severity": "error",
                "block": "python",
            },
        ],
        name="app-log",
        start_at="beginning",
    )
    with keeper:
        for n in range(300):  # the program's real work, logging as it goes
            log.info("handled request %d in %d ms", n, n % 37)
            if n % 100 == 50:
                log.critical("disk almost full after request %d", n)
            if n == 120:
                try:
                    {}["missing"]
                except KeyError:
                    log.exception("request %d failed", n)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # give the watcher a moment to catch up
            lines = jsonl.read_text().splitlines() if jsonl.exists() else []
            if len(lines) >= 4:
                break
            time.sleep(0.05)

    rotated = sorted(p.name for p in folder.glob("app.log.*"))
    print(f"the log rotated {len(rotated)} times: {', '.join(rotated)}")
    for line in jsonl.read_text().splitlines():
        alert = json.loads(line)
        print(f"{alert['severity']:>8}  {alert['title'][:70]}")


if __name__ == "__main__":
    main()
