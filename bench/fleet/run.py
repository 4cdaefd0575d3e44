"""Benchmark: a fleet of agents on one PostgreSQL, against one agent, and against SQLite.

    python bench/fleet/run.py [--pages 3000] [--hosts 50] [--delay 0.5] [--window 20] [--lease 6]

A local site (bench/pages/server.py, its own process, ``fresh`` mode) serves the pages over
loopback addresses, each reply ``--delay`` late and listing one item no earlier reply listed, so
every check after the first makes exactly one alert. A throwaway PostgreSQL cluster
(tests/postgres.py: initdb + pg_ctl) holds the state. Then, each on a fresh database:

1. 1, 2 and 3 ``watchkeeper run`` agents share ``--pages`` page watchers (``every = "1s"``: more
   than the agents can do, so the rate is what they can do); once every page has had its first
   check and the leases are spread, checks/s and alerts/s are read from the store over
   ``--window`` seconds, and the agents' CPU seconds from /proc.
2. With 3 agents, one is SIGKILLed: the failover time is from the kill until every watcher it
   ran has been checked by another agent.
3. The one-agent run again on a SQLite state file: the same workload, PostgreSQL against SQLite.

Prints the table and the ratios (2 agents / 1: target >= 1.7). Talks only to 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from tests.postgres import Cluster, start_cluster  # noqa: E402

from watchkeeper.fleetview import agent_docs, runners  # noqa: E402
from watchkeeper.store import Store, StoreError  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One measurement: the agents, the rates, their CPU."""

    label: str
    checks_per_s: float
    alerts_per_s: float
    cpu_per_s: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def totals(store: Store) -> tuple[int, int]:
    """(checks, alerts) committed so far."""
    return sum(r.checks for r in store.watchers()), store.count_alerts()


def migrated(state: str) -> bool:
    """The agent has made the state file and its tables."""
    try:
        Store(state, readonly=True).close()
    except StoreError:
        return False
    return True


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def agents(
    work: Path, state: str, count: int, urls: list[str], lease: float
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """``count`` agents sharing one page watcher per URL; killed on the way out."""
    tables = "".join(
        f'[[page]]\nname = "page-{n}"\nurl = "{url}"\nitems = "li.item"\nevery = "1s"\n'
        'stagger = "0s"\nmax_per_host = 4\n'
        for n, url in enumerate(urls)
    )
    (work / "fleet.toml").write_text(tables)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for number in range(1, count + 1):
            name = f"a{number}"
            config = work / f"{name}.toml"
            config.write_text(
                f'[keeper]\nagent = "{name}"\nstate = "{state}"\nlease = "{lease}s"\n'
                'dashboard = false\ninclude = ["fleet.toml"]\nshutdown_timeout = "2s"\n'
            )
            with (work / f"{name}.log").open("ab") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                )
        yield procs
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)


def measure(
    label: str,
    store: Store,
    procs: dict[str, subprocess.Popen[bytes]],
    pages: int,
    window: float,
    lease: float,
) -> Run:
    """Rates over ``window`` once every page was checked and (in a fleet) the spread holds."""

    def checked() -> bool:
        return sum(1 for r in store.watchers() if r.checks > 0) >= pages

    wait_for(checked, 300, "every page's first check")
    if store.fleet_capable and len(procs) > 1:
        share = pages / len(procs)

        def spread() -> bool:
            docs = agent_docs(store, lease)
            held = list(runners(store, docs).values())
            return all(held.count(name) >= 0.9 * share for name in procs)

        wait_for(spread, 120, "the leases to spread")
    checks0, alerts0 = totals(store)
    cpu0 = sum(cpu_seconds(p.pid) for p in procs.values())
    started = time.monotonic()
    time.sleep(window)  # a benchmark's window, not a test's synchronisation
    checks1, alerts1 = totals(store)
    elapsed = time.monotonic() - started
    cpu1 = sum(cpu_seconds(p.pid) for p in procs.values())
    run = Run(
        label,
        (checks1 - checks0) / elapsed,
        (alerts1 - alerts0) / elapsed,
        (cpu1 - cpu0) / elapsed,
    )
    print(
        f"{label:28s} {run.checks_per_s:9.1f} checks/s {run.alerts_per_s:9.1f} alerts/s "
        f"{run.cpu_per_s:6.2f} CPU s/s",
        flush=True,
    )
    return run


def failover(
    store: Store, procs: dict[str, subprocess.Popen[bytes]], lease: float
) -> tuple[float, float]:
    """SIGKILL one agent; seconds until the others hold the leases of every watcher it ran,
    and until each of those was checked by them (which waits its turn in their queues: the
    workload is more than the agents can do)."""
    victim = "a2"
    docs = agent_docs(store, lease)
    theirs = {n for n, agent in runners(store, docs).items() if agent == victim}
    killed_at = time.time()
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(10)
    started = time.monotonic()

    def taken() -> bool:
        held = {r.watcher for r in store.leases() if r.agent not in (None, victim)}
        return theirs <= held

    wait_for(taken, 10 * lease + 60, "the takeover")
    takeover = time.monotonic() - started

    def continued() -> bool:
        records = {r.name: r for r in store.watchers()}
        return all((records[n].last_check or 0) > killed_at for n in theirs)

    wait_for(continued, 10 * lease + 120, "the failover")
    checked = time.monotonic() - started
    print(
        f"failover of {len(theirs)} watchers after SIGKILL (lease {lease}s): leases taken over "
        f"in {takeover:.1f}s, every one checked again in {checked:.1f}s"
    )
    return takeover, checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--lease", type=float, default=6.0)
    args = parser.parse_args()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "pages" / "server.py"),
            str(args.pages),
            str(args.hosts),
            str(args.delay),
            "fresh",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # asyncio's noise about connections cut at the end
        text=True,
    )
    cluster: Cluster | None = None
    runs: list[Run] = []
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        urls = [f"http://127.0.0.{n % args.hosts + 2}:{port}/page/{n}" for n in range(args.pages)]
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            # Its own folder, not under tmp (0700): the server runs as nobody under root.
            cluster = start_cluster(Path(tempfile.mkdtemp(prefix="bench-fleet-pg-")))
            seconds = (0.0, 0.0)
            for count in (1, 2, 3):
                work = Path(tmp) / f"fleet-{count}"
                work.mkdir()
                url = cluster.database()
                with Store.open(url) as store, agents(work, url, count, urls, args.lease) as procs:
                    label = f"{count} agent{'s' if count > 1 else ''} on PostgreSQL"
                    runs.append(measure(label, store, procs, args.pages, args.window, args.lease))
                    if count == 3:
                        seconds = failover(store, procs, args.lease)
            work = Path(tmp) / "sqlite"
            work.mkdir()
            state = str(work / "wk.db")
            with agents(work, state, 1, urls, args.lease) as procs:
                wait_for(lambda: migrated(state), 60, "the state file")
                with Store(state, readonly=True) as store:
                    runs.append(
                        measure("1 agent on SQLite", store, procs, args.pages, args.window, 0)
                    )
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.folder, ignore_errors=True)
        if server.stdin:
            server.stdin.close()
        server.wait(10)
    one, two, three, sqlite = runs
    print(
        f"\n{args.pages} pages on {args.hosts} loopback addresses, {args.delay * 1000:.0f} ms per "
        f"reply, every 1s; {args.window:.0f}s windows; lease {args.lease}s"
    )
    print(f"2 agents / 1: {two.checks_per_s / one.checks_per_s:.2f}x checks (target >= 1.7)")
    print(f"3 agents / 1: {three.checks_per_s / one.checks_per_s:.2f}x checks")
    print(f"1 agent, PostgreSQL / SQLite: {one.checks_per_s / sqlite.checks_per_s:.2f}x checks")
    print(f"failover after SIGKILL: leases {seconds[0]:.1f}s, checked {seconds[1]:.1f}s")


if __name__ == "__main__":
    main()
