"""Many files benchmark: ``watchkeeper run`` following N files under one glob, next to ``tail -F``.

A writer appends 10 lines a second (``--rate``), each to a random one of the N files (every line
matches the rule), for ``--seconds``; with ``--batch K`` it writes K lines at once, to K different
files, so a check has K files to read. Measured, for N = 1,000 and 10,000 by default:

- the agent's CPU (user + system, all threads, from /proc) over the writing window, in % of a
  core, and the same for ``tail -q -n0 -F`` on the same files (the peer: it only prints);
- per-check CPU: that CPU divided by the checks the agent committed meanwhile (from the store);
- lag: from ``write()`` of a line to its alert in the jsonl notifier's file (polled every 5 ms),
  p50 and p99.

With ``--every S`` the watcher's safety sweep runs every S seconds instead of 30: at 10,000
files it shows the sweep's share of the CPU and, in the lag's maximum, whether a sweep holds up
the reading of a write.

Usage: ``python bench/logfiles/run.py [--files 1000 10000] [--seconds 30] [--rate 10] [--batch 1]
[--every S] [--idle S]``

``--idle S`` first measures the agent's CPU over S seconds with nothing written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from watchkeeper.store import Store


def _logscan() -> ModuleType:
    """bench/logscan/run.py, whose CPU accounting this benchmark shares."""
    path = Path(__file__).resolve().parent.parent / "logscan" / "run.py"
    spec = importlib.util.spec_from_file_location("logscan_run", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_seconds = _logscan().cpu_seconds


def checks(state: Path) -> int:
    with Store(state) as store:
        record = store.watcher("bench")
        return 0 if record is None else record.checks


def start(
    folder: Path, out: Path, every: float | None = None, linger: float | None = None
) -> subprocess.Popen[bytes]:
    config = folder / "watchkeeper.toml"
    sweep = "" if every is None else f"every = {every}\n"
    sweep += "" if linger is None else f"linger = {linger}\n"
    config.write_text(
        f'[keeper]\nstate = "{folder / "wk.db"}"\ndashboard = false\n\n'
        f'[[notify]]\nkind = "jsonl"\npath = "{out}"\n\n'
        f'[[log]]\nname = "bench"\npaths = ["{folder / "logs" / "*.log"}"]\n'
        f'rules = [{{match = "CRITICAL"}}]\n{sweep}'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)], stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not (folder / "wk.db").exists() or checks(folder / "wk.db") < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("watchkeeper did not start")
        time.sleep(0.1)
    return proc


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run(
    files: int,
    seconds: float,
    rate: float,
    batch: int,
    every: float | None,
    idle: float,
    linger: float | None = None,
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="wk-logfiles-"))
    try:
        logs = folder / "logs"
        logs.mkdir()
        paths = [logs / f"f{i:05d}.log" for i in range(files)]
        for path in paths:
            path.write_text("start\n")
        out = folder / "alerts.jsonl"
        out.touch()
        agent = start(folder, out, every, linger)
        tail = subprocess.Popen(
            ["tail", "-q", "-n0", "-F", *map(str, paths)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # both settle (tail -F has no readiness signal)
            if idle:
                before, began = cpu_seconds(agent.pid), time.monotonic()
                time.sleep(idle)
                spent = cpu_seconds(agent.pid) - before
                print(
                    f"idle for {idle:g}s: {100 * spent / (time.monotonic() - began):.3f}% of a core"
                )
            rng = random.Random(files)
            written: dict[int, float] = {}
            arrived: dict[int, float] = {}
            seen = 0
            checks0 = checks(folder / "wk.db")
            ours0, tail0, t0 = cpu_seconds(agent.pid), cpu_seconds(tail.pid), time.monotonic()
            n = 0
            while time.monotonic() - t0 < seconds:
                due = t0 + n / rate
                while time.monotonic() < due:
                    seen = collect(out, seen, arrived)
                    time.sleep(0.005)
                for path in rng.sample(paths, batch):
                    with path.open("a") as log:
                        written[n] = time.monotonic()
                        log.write(f"{n} CRITICAL probe\n")
                    n += 1
            ours1, tail1, t1 = cpu_seconds(agent.pid), cpu_seconds(tail.pid), time.monotonic()
            checks1 = checks(folder / "wk.db")
            deadline = time.monotonic() + 60
            while len(arrived) < n and time.monotonic() < deadline:
                seen = collect(out, seen, arrived)
                time.sleep(0.005)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
            tail.terminate()
            tail.wait()
        lags = [arrived[i] - written[i] for i in written if i in arrived]
        span = t1 - t0
        ran = max(1, checks1 - checks0)
        print(f"{files:,} files, {n} lines at {rate:g}/s ({batch} at once) over {span:.0f}s:")
        print(f"  watchkeeper run  {100 * (ours1 - ours0) / span:6.2f}% of a core")
        print(f"  tail -F          {100 * (tail1 - tail0) / span:6.2f}% of a core")
        print(f"  checks {ran}, {1000 * (ours1 - ours0) / ran:.1f} ms CPU per check", end="")
        print(f", {1000 * (ours1 - ours0) / (n / batch):.1f} ms per {batch} file(s) written")
        print(f"  lag p50 {pct(lags, 0.5):.0f} ms, p99 {pct(lags, 0.99):.0f} ms", end="")
        print(f", max {pct(lags, 1.0):.0f} ms", end="")
        print(f", {n - len(lags)} lines never alerted")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def collect(out: Path, seen: int, arrived: dict[int, float]) -> int:
    """Note the arrival time of the alerts appended to ``out`` since byte ``seen``."""
    with out.open("rb") as alerts:
        alerts.seek(seen)
        data = alerts.read()
    end = data.rfind(b"\n") + 1
    now = time.monotonic()
    for line in data[:end].splitlines():
        alert = json.loads(line)
        arrived.setdefault(int(alert["data"]["line"].split()[0]), now)
    return seen + end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=10.0, help="lines a second")
    parser.add_argument("--batch", type=int, default=1, help="lines written at once")
    parser.add_argument("--every", type=float, help="the watcher's sweep (default: 30 s)")
    parser.add_argument("--linger", type=float, help="the watcher's linger (default: 0.25 s)")
    parser.add_argument("--idle", type=float, default=0, help="first measure S idle seconds")
    args = parser.parse_args()
    for files in args.files:
        run(files, args.seconds, args.rate, args.batch, args.every, args.idle, args.linger)


if __name__ == "__main__":
    main()
