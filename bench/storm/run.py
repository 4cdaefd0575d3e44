"""Storm benchmark: a real agent under a flood of matching log lines, and the outbox's backlog.

1. ``throughput``: ``watchkeeper run`` (its own process: log watcher, SQLite, jsonl notifier)
   and N CRITICAL lines appended at once (20,000, then 200,000); time from the first write to
   the last alert line in the jsonl file.
2. ``lag``: 10,000 lines/s for 10 s, paced, each line carrying its write time; the jsonl file is
   read as it grows and each alert's lag is its arrival minus its line's write time (p50/p99/max).
3. ``backlog``: the outbox filled through the store's own API (``Store.commit_check``, 1,000
   alerts per commit, one jsonl delivery each) to 10,000 and to 900,000 pending; then a real
   Dispatcher with the jsonl notifier, in this process, drains 10,000 (best of three rounds;
   the rates compared) and, with ``--full``, the whole backlog.
4. ``smtp``: 100,000 lines of 3 distinct CRITICAL messages (numbers varying) in 10 s to an agent
   with the default smtp notifier (to an aiosmtpd sink in this process) and a jsonl notifier:
   when the first email arrives after the first line, how many emails in ``--minutes``, whether
   their counts (``X-Watchkeeper-Alerts``) add up, and whether the jsonl file has every alert.
5. ``start``: a keeper of 1,000 and of 10,000 page watchers built and started, in this process
   (the pages are on a closed port; their first checks fail at once).

Usage: ``python bench/storm/run.py [throughput|lag|backlog|smtp|start ...] [--lines 100000]
[--minutes 10] [--full]``
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

from agent import count_lines, cpu, fill, start_agent, stop

from watchkeeper import Keeper
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.dispatch import Dispatcher
from watchkeeper.notifiers.jsonl import JsonlConfig, JsonlNotifier
from watchkeeper.store import Store

MESSAGES = [
    "CRITICAL db timeout after {n} ms on db-{m}",
    "CRITICAL payment {n} declined by gateway 10.0.{m}.1",
    "CRITICAL worker {m} out of memory ({n} MB)",
]


def line(i: int, stamp: float | None = None) -> str:
    text = MESSAGES[i % 3].format(n=i * 7, m=i % 13)
    return f"{text} t={stamp!r}\n" if stamp is not None else text + "\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(lines: int) -> None:
    for n in (lines, lines * 10):
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            folder = Path(tmp)
            out = folder / "out.jsonl"
            agent = start_agent(folder, f'[[notify]]\nkind = "jsonl"\npath = "{out}"\n')
            text = "".join(line(i) for i in range(n))
            started, used = time.perf_counter(), cpu(agent.pid)
            with (folder / "app.log").open("a") as handle:
                handle.write(text)
            while count_lines(out) < n:
                time.sleep(0.2)
            took, used = time.perf_counter() - started, cpu(agent.pid) - used
            stop(agent)
            print(
                f"throughput {n:>9,} lines -> jsonl: {took:6.2f} s, {n / took:9,.0f} alerts/s; "
                f"agent CPU {used:.2f} s, {n / used:,.0f} alerts per CPU second"
            )


def lag(rate: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        folder = Path(tmp)
        out = folder / "out.jsonl"
        out.touch()
        agent = start_agent(folder, f'[[notify]]\nkind = "jsonl"\npath = "{out}"\n')
        total = int(rate * seconds)
        lags: list[float] = []
        done = threading.Event()

        def read() -> None:
            with out.open("rb") as handle:
                rest = b""
                while len(lags) < total:
                    chunk = handle.read()
                    if not chunk:
                        if done.is_set() and len(lags) >= total:
                            return
                        time.sleep(0.005)
                        continue
                    now = time.time()
                    parts = (rest + chunk).split(b"\n")
                    rest = parts.pop()
                    for part in parts:
                        title = json.loads(part)["title"]
                        lags.append(now - float(title.rsplit("t=", 1)[1]))

        reader = threading.Thread(target=read)
        reader.start()
        started = time.time()
        with (folder / "app.log").open("a") as handle:
            for tick in range(int(seconds * 100)):  # 100 writes a second, rate/100 lines each
                target = started + tick / 100
                pause = target - time.time()
                if pause > 0:
                    time.sleep(pause)
                now = time.time()
                first = tick * rate // 100
                handle.write("".join(line(i, now) for i in range(first, first + rate // 100)))
                handle.flush()
        done.set()
        reader.join(timeout=120)
        stop(agent)
        print(
            f"lag at {rate:,} lines/s for {seconds:.0f} s ({len(lags):,} alerts): "
            f"p50 {pct(lags, 0.5) * 1000:.0f} ms, p99 {pct(lags, 0.99) * 1000:.0f} ms, "
            f"max {max(lags) * 1000:.0f} ms"
        )


def drain(store: Store, out: Path, count: int) -> float:
    """Seconds a real Dispatcher takes to deliver ``count`` alerts from the backlog."""
    notifier = JsonlNotifier(JsonlConfig(kind="jsonl", path=out))
    dispatcher = Dispatcher(notifier, store)
    started = time.perf_counter()
    dispatcher.start()
    seen = 0
    out.touch()
    with out.open("rb") as handle:  # read as it grows: counting the whole file each time is slow
        while seen < count:
            chunk = handle.read(1 << 20)
            if chunk:
                seen += chunk.count(b"\n")
            else:
                time.sleep(0.01)
    took = time.perf_counter() - started
    dispatcher.flush(time.time())  # end the thread (what is left stays pending)
    dispatcher.join()
    return took


def backlog(full: bool, rounds: int = 3) -> None:
    """The drain rate of 10,000 deliveries from a backlog of 10,000 and of 900,000, best of
    ``rounds`` (the 10,000 refilled before each round; the 900,000 drained 10,000 at a time)."""
    title = MESSAGES[0].replace("{n}", "{i}").replace("{m}", "7")
    rates = {}
    for pending in (10_000, 900_000):
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            folder = Path(tmp)
            with Store(folder / "wk.db") as store:
                started = time.perf_counter()
                fill(store, pending, title)
                filled = time.perf_counter() - started
                times = []
                for number in range(rounds):
                    if number and pending == 10_000:
                        fill(store, pending, title)
                    times.append(drain(store, folder / f"out{number}.jsonl", 10_000))
                rates[pending] = 10_000 / min(times)
                print(
                    f"backlog {pending:>7,} pending (filled in {filled:.0f} s): 10,000 delivered "
                    f"in {', '.join(f'{t:.2f}' for t in times)} s; best "
                    f"{rates[pending]:,.0f} alerts/s"
                )
                if full and pending > 10_000:
                    left = store.delivery_counts()["jsonl"].get("pending", 0)
                    took = drain(store, folder / "all.jsonl", left)
                    print(f"  the other {left:,} in {took:.1f} s = {left / took:,.0f} alerts/s")
    print(f"backlog rate at 900,000 / at 10,000 pending: {rates[900_000] / rates[10_000]:.2f}")


class TimedSink(SmtpSink):
    """The demo's SMTP sink, noting when each message arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    def received(self, sender: str, recipients: list[str], content: bytes) -> None:
        self.arrivals.append(time.time())
        super().received(sender, recipients, content)


def smtp(lines: int, minutes: float) -> None:
    sink = TimedSink().start()
    try:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            folder = Path(tmp)
            out = folder / "out.jsonl"
            agent = start_agent(
                folder,
                f'[[notify]]\nkind = "smtp"\nhost = "127.0.0.1"\nport = {sink.port}\n'
                'sender = "wk@example.com"\nto = ["ops@example.com"]\n\n'
                f'[[notify]]\nkind = "jsonl"\npath = "{out}"\n',
            )
            started = time.time()
            with (folder / "app.log").open("a") as handle:
                for tick in range(100):  # 10 s, a write every 0.1 s
                    pause = started + tick / 10 - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    first = tick * lines // 100
                    handle.write("".join(line(i) for i in range(first, (tick + 1) * lines // 100)))
                    handle.flush()
            wrote = time.time() - started
            deadline = started + minutes * 60
            while time.time() < deadline:
                time.sleep(1)
            arrivals = list(sink.arrivals)
            in_window = [m for m, t in zip(sink.messages, arrivals, strict=False) if t <= deadline]
            counts = [int(m["X-Watchkeeper-Alerts"]) for m in in_window]
            sizes = [len(m.as_bytes()) for m in in_window]
            took = stop(agent)
            print(
                f"smtp storm: {lines:,} lines in {wrote:.1f} s; first email "
                f"{(arrivals[0] - started) * 1000:.0f} ms after the first line; "
                f"{len(in_window)} emails in {minutes:g} min, counts {counts} "
                f"(sum {sum(counts):,}), largest {max(sizes):,} bytes; "
                f"jsonl has {count_lines(out):,}; SIGTERM took {took:.1f} s"
            )
    finally:
        sink.stop()


def start(pages: int) -> None:
    """Build and start a keeper of ``pages`` page watchers (and of 10 times as many)."""
    logging.getLogger("watchkeeper").setLevel(logging.CRITICAL)  # their checks are refused
    for count in (pages, pages * 10):
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            started, used = time.perf_counter(), time.process_time()
            keeper = Keeper(state=Path(tmp) / "wk.db")
            for i in range(count):
                keeper.page(f"http://127.0.0.1:9/p{i}", "li", name=f"p{i}", every="1h")
            built = time.perf_counter()
            keeper.start()
            took, used = time.perf_counter(), time.process_time() - used
            keeper.stop(timeout=5)
            print(
                f"start {count:>6,} page watchers: built in {built - started:.2f} s, started in "
                f"{took - built:.2f} s, {took - started:.2f} s in all (CPU {used:.2f} s, the "
                "first checks' included)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "parts", nargs="*", default=["throughput", "lag", "backlog", "smtp", "start"]
    )
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--full", action="store_true", help="also drain the whole backlog")
    args = parser.parse_args()
    for part in args.parts:
        if part == "throughput":
            throughput(args.lines // 5)
        elif part == "lag":
            lag(10_000, 10.0)
        elif part == "backlog":
            backlog(args.full)
        elif part == "smtp":
            smtp(args.lines, args.minutes)
        elif part == "start":
            start(1000)
        else:
            parser.error(f"unknown part {part!r}")


if __name__ == "__main__":
    main()
