"""Long life: a real agent on a state file holding millions of alerts, and many stream clients.

The history is filled through the store's own API (``Store.commit_check``, 1,000 alerts per
commit, each with a jsonl delivery, then ``Store.mark_sent``), not through the log pipeline: five
million lines would take minutes to match and are not what is measured here. Then, against
``watchkeeper run`` (its own process, dashboard on loopback, ``max_alerts`` above the fill so
nothing is pruned):

- start-up: from spawning the agent to its log watcher's first committed check;
- GET ``/``, ``/alerts``, ``/api/alerts`` and ``/metrics``: the median of 20 requests each;
- idle CPU of the agent over ``--idle`` seconds with nobody looking;
- one alert: a matching line appended, until its line is in the jsonl file (p50 of 30);
- SIGTERM: until the agent has exited;
- fan-out: 100 SSE clients on ``/api/stream`` during a 10,000-line burst; each must get every
  alert once, in order; the agent's CPU for the burst, next to the same burst with no client.

Usage: ``python bench/storm/history.py [--alerts 5000000] [--idle 30] [--clients 100]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from agent import count_lines, cpu, fill, start_agent, stop

from watchkeeper.store import Store


def filled(state: Path, count: int) -> float:
    """``count`` delivered alerts through the store's API; returns the seconds it took."""
    started = time.perf_counter()
    with Store(state) as store:
        fill(store, count, "CRITICAL request {i} failed", spread=0.1)
        now = time.time()
        while True:
            due = store.due("jsonl", now + 1, limit=5000)
            if not due:
                break
            store.mark_sent([d.id for d in due], now)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> float:
    """Seconds for one GET (the body read in full); it must answer 200."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")
    return time.perf_counter() - started


class SseClient(threading.Thread):
    """Reads /api/stream and keeps the alert ids it gets."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.request("GET", "/api/stream")
        self.response = self.conn.getresponse()
        self.ids: list[int] = []
        self.cursor = 0
        self.ready = threading.Event()

    def run(self) -> None:
        event = ""
        try:
            for raw in self.response:
                text = raw.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: "):
                    if event == "ready":
                        self.cursor = int(json.loads(text[6:])["cursor"])
                        self.ready.set()
                    elif event == "alert":
                        self.ids.append(int(json.loads(text[6:])["id"]))
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            return  # closed by close(), or by the agent

    def close(self) -> None:
        self.conn.sock.shutdown(socket.SHUT_RDWR) if self.conn.sock else None
        self.conn.close()


def burst(folder: Path, out: Path, pid: int, lines: int, start: int) -> float:
    """Agent CPU seconds for ``lines`` matching lines written at once, until all are in jsonl."""
    before_lines = count_lines(out)
    before = cpu(pid)
    with (folder / "app.log").open("a") as handle:
        handle.write("".join(f"CRITICAL burst {start + i}\n" for i in range(lines)))
    while count_lines(out) < before_lines + lines:
        time.sleep(0.05)
    time.sleep(0.5)  # let the stream hand-over finish
    return cpu(pid) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5_000_000)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        folder = Path(tmp)
        state = folder / "wk.db"
        took = filled(state, args.alerts)
        print(
            f"history: {args.alerts:,} alerts filled through Store.commit_check in {took:.0f} s; "
            f"state file {state.stat().st_size / 2**30:.2f} GiB"
        )
        port = free_port()
        out = folder / "out.jsonl"
        out.touch()
        started = time.perf_counter()
        agent = start_agent(
            folder,
            f'[[notify]]\nkind = "jsonl"\npath = "{out}"\n',
            f'dashboard = "127.0.0.1:{port}"\nmax_alerts = {args.alerts * 2}',
        )
        print(f"start-up: {time.perf_counter() - started:.2f} s to the first committed check")
        while True:
            try:
                get(port, "/api/watchers")
                break
            except OSError:
                time.sleep(0.05)
        for path in ("/", "/alerts", "/api/alerts", "/metrics"):
            times = [get(port, path) for _ in range(20)]
            print(f"GET {path:<12} median {statistics.median(times) * 1000:6.1f} ms")
        time.sleep(2)
        cpu_before = cpu(agent.pid)
        time.sleep(args.idle)
        idle = (cpu(agent.pid) - cpu_before) / args.idle
        print(f"idle CPU over {args.idle:.0f} s: {idle * 100:.2f}% of a core")
        lags = []
        with (folder / "app.log").open("a") as handle:
            for trial in range(30):
                seen = count_lines(out)
                sent = time.perf_counter()
                handle.write(f"CRITICAL single {trial}\n")
                handle.flush()
                while count_lines(out) <= seen:
                    time.sleep(0.0005)
                lags.append(time.perf_counter() - sent)
                time.sleep(0.1)
        print(f"one alert: p50 {statistics.median(lags) * 1000:.1f} ms (30 trials)")
        alone = burst(folder, out, agent.pid, 10_000, 0)
        clients = [SseClient(port) for _ in range(args.clients)]
        for client in clients:
            client.start()
        for client in clients:
            client.ready.wait(30)
        watched = burst(folder, out, agent.pid, 10_000, 10_000)
        deadline = time.monotonic() + 60  # the clients read in this process: let them catch up
        while time.monotonic() < deadline and any(len(c.ids) < 10_000 for c in clients):
            time.sleep(0.1)
        complete = sum(c.ids == list(range(c.cursor + 1, c.cursor + 10_001)) for c in clients)
        for c in clients:
            if c.ids != list(range(c.cursor + 1, c.cursor + 10_001)):
                print("  a client:", c.cursor, len(c.ids), c.ids[:3], c.ids[-3:], len(set(c.ids)))
                break
        print(
            f"fan-out: 10,000-alert burst, agent CPU {alone:.2f} s alone, {watched:.2f} s with "
            f"{args.clients} SSE clients ({watched / alone:.2f}x); {complete}/{args.clients} "
            "clients got every alert once, in order"
        )
        for client in clients:
            client.close()
        print(f"SIGTERM: exited in {stop(agent):.2f} s (shutdown_timeout 5 s)")


if __name__ == "__main__":
    main()
