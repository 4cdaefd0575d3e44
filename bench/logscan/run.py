"""Log scanning benchmark: watchkeeper against GNU grep and ``tail -F | grep``, in the same run.

1. Throughput: a generated mixed-severity log (1 GiB by default, under /tmp, deleted after) is
   scanned by ``LC_ALL=C grep -E -c`` with the rules' patterns and by the log watcher (hyperscan
   prefilter, then the RE2 one), two ways: its real ``check()`` (an observation per matching
   line: what an alert costs), and, for literal rules, its prefilter alone (read, search, line
   bounds: what ``grep -c`` does). All must count the same lines. Two rule sets: 3 literal rules,
   and 12 mixed ones (anchored, ``(?i)``, classes, a ``block = "python"`` rule).
2. Latency: from ``write()`` of a matching line to the alert line in the jsonl notifier's file,
   with ``watchkeeper run`` in its own process (inotify, a committed SQLite transaction, then the
   dispatcher), against ``tail -F FILE | grep --line-buffered`` writing to a file. Arrival is
   seen through inotify on the output file; p50/p99 over the trials.
3. Idle CPU: ``watchkeeper run`` following 100 files for 60 s, next to ``tail -F`` on the same 100.

Usage: ``python bench/logscan/run.py [--size-mb 1024] [--trials 200] [--idle 60]`` (``--trials
0`` or ``--idle 0`` skips that part)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import inotify_simple

from watchkeeper.config import watcher_config
from watchkeeper.watchers.log import LogWatcher
from watchkeeper.watchers.logconfig import LogConfig
from watchkeeper.watchers.logmatch import Pattern, Prefilter, hyperscan_available
from watchkeeper.watchers.logread import CHUNK

PATTERNS = ["CRITICAL|FATAL", r"Traceback \(most recent call last\)", "ERROR"]
MIXED = [  # (rule, the same for grep -E): anchored, (?i), classes, and one block rule
    ({"match": "CRITICAL|FATAL"}, "CRITICAL|FATAL"),
    (
        {"match": r"Traceback \(most recent call last\)", "block": "python"},
        r"Traceback \(most recent call last\)",
    ),
    ({"match": r"^\S+ ERROR "}, r"^\S+ ERROR "),
    ({"match": "(?i)timeout|refused"}, "[Tt][Ii][Mm][Ee][Oo][Uu][Tt]|[Rr][Ee][Ff][Uu][Ss][Ee][Dd]"),
    ({"match": r"(?i)\bpanic\b"}, r"\b[Pp][Aa][Nn][Ii][Cc]\b"),
    ({"match": r"ms=0\.99[0-9]$"}, r"ms=0\.99[0-9]$"),
    ({"match": "^$"}, "^$"),
    ({"match": r"\[worker-1[0-6]\] slow retry"}, r"\[worker-1[0-6]\] slow retry"),
    ({"match": "(?i)^.{0,30}warning db"}, "^.{0,30}[Ww][Aa][Rr][Nn][Ii][Nn][Gg] [Dd][Bb]"),
    ({"match": "id=dead[0-9a-f]+ "}, "id=dead[0-9a-f]+ "),
    ({"match": "query slow retry ok$"}, "query slow retry ok$"),
    ({"match": "(?i)out of memory"}, "[Oo][Uu][Tt] [Oo][Ff] [Mm][Ee][Mm][Oo][Rr][Yy]"),
]
RULE_SETS = {
    "3 literal rules": [({"match": p}, p) for p in PATTERNS],
    "12 mixed rules": MIXED,
}
LEVELS = ["INFO"] * 960 + ["WARNING"] * 30 + ["ERROR"] * 8 + ["CRITICAL"] + ["DEBUG"]
TICKS = os.sysconf("SC_CLK_TCK")


def generate(path: Path, size: int) -> None:
    """A log of varied lines: 96% INFO, 3% WARNING, 0.8% ERROR, 0.1% CRITICAL, some tracebacks."""
    rng = random.Random(7)
    words = ["request", "handled", "user", "cache", "miss", "db", "query", "slow", "retry", "ok"]
    block = []
    for i in range(20000):
        level = rng.choice(LEVELS)
        text = " ".join(rng.choices(words, k=rng.randint(4, 12)))
        block.append(
            f"2026-11-27T12:{i // 600 % 60:02d}:{i // 10 % 60:02d}.{i % 1000:03d}Z {level} "
            f"[worker-{rng.randint(1, 16)}] {text} "
            f"id={rng.getrandbits(48):x} ms={rng.random():.3f}\n"
        )
        if i % 5000 == 4999:
            block.append(
                "Traceback (most recent call last):\n  File 'app.py', line 3\n    run()\n"
                "ValueError: bad input\n\n"
            )
    chunk = "".join(block).encode()
    with path.open("wb") as out:
        written = 0
        while written < size:
            out.write(chunk)
            written += len(chunk)
        # A last line: a traceback at the very end would wait for partial_timeout (it may grow).
        out.write(b"2026-11-27T13:00:00.000Z INFO [worker-1] done\n")


class Clock:
    """Wall time and CPU time (user + system) since creation, of this process and its children.

    The CPU time is what each side spent itself, whatever else the shared machine was running:
    the wall-clock ratio moves with the load, the CPU-time ratio much less.
    """

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        own, children = os.times()[:2], os.times()[2:4]
        return sum(own) + sum(children)

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


def grep_count(path: Path, rules: list[tuple[dict[str, str], str]]) -> tuple[int, float, float]:
    args = ["grep", "-E", "-c"] + [a for _, p in rules for a in ("-e", p)] + [str(path)]
    clock = Clock()
    done = subprocess.run(
        args, env={**os.environ, "LC_ALL": "C"}, capture_output=True, text=True, check=False
    )
    return int(done.stdout.strip()), *clock.stop()


def watcher_count(
    path: Path, use_hyperscan: bool, rules: list[tuple[dict[str, str], str]]
) -> tuple[int, float, float]:
    """Lines alerted by the log watcher's real check (read, prefilter, confirm, observations).

    A traceback is one block, one alert, and one line for grep: its other lines match no rule.
    """
    table = {
        "name": "bench",
        "paths": [str(path)],
        "start_at": "beginning",
        "inotify": False,
        "read_limit": "64MiB",
        "rules": [rule for rule, _ in rules],
    }
    config = watcher_config("log", table, "bench")
    assert isinstance(config, LogConfig)
    watcher = LogWatcher(config, use_hyperscan=use_hyperscan)
    checkpoint = None
    count = 0
    clock = Clock()  # after the patterns are compiled: that happens once
    try:
        while True:
            result = watcher.check(checkpoint)
            checkpoint = result.checkpoint
            count += len(result.observations)
            if not watcher.more:
                break
    finally:
        watcher.close()
    return count, *clock.stop()


def prefilter_count(
    path: Path, use_hyperscan: bool, rules: list[tuple[dict[str, str], str]]
) -> tuple[int, float, float]:
    """Lines the prefilter alone finds (read in 4 MiB chunks, search, line bounds): like grep -c.

    No ``re`` check and no observation: with these literal patterns every line it finds
    matches, so this is the search cost that ``grep -c`` pays, without the alerts.
    """
    prefilter = Prefilter([Pattern.compile(rule["match"]) for rule, _ in rules], use_hyperscan)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    count = offset = 0
    clock = Clock()
    with path.open("rb") as file:
        fd = file.fileno()
        while got := os.preadv(fd, [view], offset):
            complete = buffer.rfind(b"\n", 0, got) + 1
            count += sum(1 for _ in prefilter.lines(buffer, complete))
            offset += complete
    return count, *clock.stop()


def throughput(folder: Path, size_mb: int) -> None:
    path = folder / "big.log"
    print(f"generating {size_mb} MiB mixed-severity log ...", flush=True)
    generate(path, size_mb * 1024 * 1024)
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    try:  # the best of three runs for each, as the machine is shared
        for name, rules in RULE_SETS.items():
            rule_set(path, size, name, rules)
    finally:
        path.unlink()


def rule_set(path: Path, size: int, name: str, rules: list[tuple[dict[str, str], str]]) -> None:
    print(f"{name}:")
    runs = (grep_count(path, rules) for _ in range(3))
    expected, grep_s, grep_cpu = min(runs, key=lambda r: r[1])
    print(
        f"  grep -E -c                    {expected:>9} lines  {size / grep_s / 1e9:6.2f} GB/s"
        f"  (CPU time {grep_cpu:.3f} s)"
    )
    engines = [True, False] if hyperscan_available() else [False]
    # The prefilter alone counts what grep -c does only where every candidate is a match.
    literal = all(Pattern.compile(rule["match"]).literal for rule, _ in rules)
    measures = [("check()", watcher_count), *([("prefilter", prefilter_count)] if literal else [])]
    for use_hyperscan in engines:
        engine = "hyperscan" if use_hyperscan else "re2"
        for what, measure in measures:
            count, took, cpu = min(
                (measure(path, use_hyperscan, rules) for _ in range(3)), key=lambda r: r[1]
            )
            print(
                f"  watchkeeper {engine:<9} {what:<9} {count:>9} lines  "
                f"{size / took / 1e9:6.2f} GB/s  ratio to grep {grep_s / took:.2f}x  "
                f"(CPU time {cpu:.3f} s, ratio {grep_cpu / cpu:.2f}x)"
                + ("" if count == expected else f"  COUNT MISMATCH (grep {expected})")
            )


def arrival_times(output: Path, log: Path, trials: int, line: Callable[[int], str]) -> list[float]:
    """Write ``trials`` matching lines; for each, the seconds until ``output`` grew."""
    notify = inotify_simple.INotify()
    notify.add_watch(str(output), inotify_simple.flags.MODIFY)
    latencies = []
    with log.open("a") as writer:
        for i in range(trials):
            before = output.stat().st_size
            start = time.perf_counter()
            writer.write(line(i))
            writer.flush()
            while output.stat().st_size <= before:
                if not notify.read(timeout=5000):
                    raise TimeoutError(f"trial {i}: no output within 5s")
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)  # let both sides go idle between trials, as real lines arrive
    notify.close()
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def start_agent(folder: Path, paths: list[str], out: Path) -> subprocess.Popen[bytes]:
    config = folder / "watchkeeper.toml"
    listed = ", ".join(f'"{p}"' for p in paths)
    config.write_text(
        f'[keeper]\nstate = "{folder / "wk.db"}"\ndashboard = false\n\n'
        f'[[notify]]\nkind = "jsonl"\npath = "{out}"\n\n'
        f'[[log]]\nname = "bench"\npaths = [{listed}]\nrules = [{{match = "CRITICAL"}}]\n'
    )
    out.touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)], stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while not (folder / "wk.db").exists() or not checked(folder / "wk.db"):
        if time.monotonic() > deadline:
            raise TimeoutError("watchkeeper did not start")
        time.sleep(0.05)
    return proc


def checked(state: Path) -> bool:
    from watchkeeper.store import Store

    with Store(state) as store:
        record = store.watcher("bench")
        return record is not None and record.checks >= 1


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def latency(folder: Path, trials: int) -> None:
    log = folder / "latency.log"
    log.touch()
    out = folder / "alerts.jsonl"
    agent = start_agent(folder, [str(log)], out)
    try:
        ours = arrival_times(out, log, trials, lambda i: f"{i} CRITICAL latency probe\n")
    finally:
        stop(agent)
    grep_out = folder / "grep.out"
    grep_out.touch()
    pipeline = subprocess.Popen(
        f"tail -n0 -F {log} | grep --line-buffered CRITICAL > {grep_out}",
        shell=True,
        start_new_session=True,
    )
    try:
        time.sleep(0.5)  # tail -F has no readiness signal; give it a moment to open the file
        peer = arrival_times(grep_out, log, trials, lambda i: f"{i} CRITICAL peer probe\n")
    finally:
        os.killpg(pipeline.pid, signal.SIGTERM)
        pipeline.wait()
    print(f"latency over {trials} trials (write() -> line in the output file):")
    for name, values in [
        ("watchkeeper (jsonl, after commit)", ours),
        ("tail -F | grep --line-buffered   ", peer),
    ]:
        print(f"  {name}  p50 {pct(values, 0.5):6.2f} ms  p99 {pct(values, 0.99):6.2f} ms")


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def idle_cpu(folder: Path, seconds: float) -> None:
    logs = folder / "idle"
    logs.mkdir()
    for i in range(100):
        (logs / f"f{i:03d}.log").write_text("start\n")
    agent = start_agent(folder, [str(logs / "*.log")], folder / "idle.jsonl")
    tail = subprocess.Popen(["tail", "-q", "-n0", "-F", *map(str, sorted(logs.iterdir()))])
    try:
        time.sleep(1)
        ours0, tail0 = cpu_seconds(agent.pid), cpu_seconds(tail.pid)
        time.sleep(seconds)
        ours1, tail1 = cpu_seconds(agent.pid), cpu_seconds(tail.pid)
    finally:
        stop(agent)
        tail.terminate()
        tail.wait()
    print(f"idle CPU over {seconds:.0f}s with 100 files:")
    print(f"  watchkeeper run  {100 * (ours1 - ours0) / seconds:.3f}% of a core")
    print(f"  tail -F          {100 * (tail1 - tail0) / seconds:.3f}% of a core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="wk-logscan-"))
    try:
        throughput(folder, args.size_mb)
        if args.trials:
            latency(folder, args.trials)
        if args.idle:
            idle_cpu(folder, args.idle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
