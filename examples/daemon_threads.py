"""Daemon-thread basics, side by side: why watchkeeper's watchers are daemon threads with an outbox.

Run it: ``python examples/daemon_threads.py``. It runs the same background job three ways, each in
a child process, and shows how long the program took to exit after main() returned and whether
the job's last alert reached its destination (a JSON-lines file):

1. plain thread:  keeps the program alive until the job ends on its own (here 3 s).
2. daemon thread: the program exits at once, but the alert in flight is lost.
3. Keeper:        the program exits at once *and* the last alert is delivered (or kept in the
                  outbox for the next start if delivery cannot finish within shutdown_timeout).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def slow_delivery(path: Path, title: str) -> None:
    """Stands for a slow notifier: the alert is written a moment after it was decided."""
    time.sleep(0.5)
    with path.open("a") as f:
        f.write(json.dumps({"title": title}) + "\n")


def job_with_thread(path: Path, daemon: bool) -> None:
    def work() -> None:
        slow_delivery(path, "job finished")
        time.sleep(2.5)  # the job goes on with other work after alerting

    threading.Thread(target=work, daemon=daemon).start()


def job_with_keeper(path: Path) -> None:
    from watchkeeper import Keeper, Observation

    keeper = Keeper(
        state=path.with_suffix(".db"),
        notify=[{"kind": "jsonl", "path": str(path)}],
        shutdown_timeout=5,
    )
    keeper.every("1h", lambda: Observation("job finished", event=True), name="job")
    keeper.start()
    assert keeper.store is not None
    while not keeper.store.alerts():  # main's own work; the alert is decided meanwhile
        time.sleep(0.01)


def child(mode: str, path: Path) -> None:
    """One program: start the background job, then return from main."""
    if mode == "keeper":
        job_with_keeper(path)
    else:
        job_with_thread(path, daemon=mode == "daemon")
    print(time.time(), flush=True)  # main returns now


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="wk-daemon-threads-"))
    print(f"{'mode':<8} {'exit after main returned':>26}   last alert delivered")
    for mode in ("plain", "daemon", "keeper"):
        path = folder / f"{mode}.jsonl"
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        took = time.time() - float(proc.stdout.split()[-1])
        delivered = path.exists() and "job finished" in path.read_text()
        print(f"{mode:<8} {took:>25.2f}s   {'yes' if delivered else 'NO (lost)'}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
