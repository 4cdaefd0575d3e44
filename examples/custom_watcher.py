"""Your own watchers, two ways: a plain function, and a Watcher class with a checkpoint.

Run it: ``python examples/custom_watcher.py``. It makes a spool folder in a temporary directory,
drops files into it, and watches it with:

1. ``keeper.every("200ms", spool_backlog)``: a function returning a *condition* ("the spool holds
   more than 3 files"), which alerts once when it starts holding and recovers when it stops.
2. ``NewFiles``, a ``Watcher`` subclass whose checkpoint is the set of names already seen, so each
   new file alerts exactly once, even across restarts (the checkpoint commits with the alert).

Alerts print on the console and land in ``alerts.jsonl``; the script prints what arrived.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from watchkeeper import CheckResult, Keeper, Observation, Watcher, WatcherConfig


class NewFilesConfig(WatcherConfig):
    """Settings for NewFiles: which folder to watch."""

    folder: Path


class NewFiles(Watcher):
    """Alerts once for every new file in a folder; the checkpoint is the list of names seen."""

    kind = "new-files"
    config_model = NewFilesConfig
    config: NewFilesConfig

    def check(self, checkpoint: Any) -> CheckResult:
        seen = set(checkpoint or [])
        names = {p.name for p in self.config.folder.iterdir()}
        fresh = sorted(names - seen)
        observations = [
            Observation(
                f"new file {name}",
                severity="info",
                key=name,
                event=True,
                data={"path": str(self.config.folder / name)},
            )
            for name in fresh
        ]
        return CheckResult(observations, checkpoint=sorted(names | seen))


def main() -> None:
    world = Path(tempfile.mkdtemp(prefix="wk-custom-"))
    spool = world / "spool"
    spool.mkdir()
    jsonl = world / "alerts.jsonl"

    def spool_backlog() -> Observation | None:
        count = len(list(spool.iterdir()))
        if count > 3:
            return Observation(f"spool backlog: {count} files", severity="warning", key="backlog")
        return None

    def received() -> list[dict[str, Any]]:
        if not jsonl.exists():
            return []
        return [json.loads(line) for line in jsonl.read_text().splitlines()]

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(received()) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    keeper = Keeper(
        state=world / "state.db",
        notify=[{"kind": "console"}, {"kind": "jsonl", "path": str(jsonl)}],
    )
    keeper.every("200ms", spool_backlog, name="spool-backlog")
    keeper.add(NewFiles(NewFilesConfig(name="spool-files", every=0.2, folder=spool)))
    with keeper:
        for i in range(5):  # five new files: five "new file" alerts...
            (spool / f"job-{i}.txt").write_text("work")
        wait_for(6)  # ...and one backlog alert (5 > 3)
        for path in spool.iterdir():  # the backlog clears: one recovery
            path.unlink()
        wait_for(7)

    for alert in received():
        print(f"{alert['status']:>8}  {alert['watcher']:<14} {alert['title']}")


if __name__ == "__main__":
    main()
