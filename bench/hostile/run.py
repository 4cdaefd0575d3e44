"""Benchmark: what hostile receivers cost a notifier, watchkeeper against plain httpx/smtplib.

    python bench/hostile/run.py [--flood-mib 1024] [--posts 2000] [--drip 0.5]

Each case runs in a child process (so its peak RSS is its own, from wait4) against a receiver
on 127.0.0.1 run by this process:

- **flood**: a webhook receiver answers 200 with ``--flood-mib`` MiB of body. watchkeeper's
  webhook notifier ``send()`` against ``httpx.Client().post()`` (what the notifier did before).
  Peak RSS and wall time.
- **drip**: the receiver sends its answer one byte every ``--drip`` seconds. Both clients use a
  10 s per-step timeout; watchkeeper's ``deadline`` is 30 s (webhook) and 60 s (smtp). Wall time
  until the client gives up (the peer is cut off at 120 s by this script).
- **posts**: ``--posts`` POSTs to a quick receiver, to see what the overall deadline (a wrapped
  httpcore stream) costs per request: CPU seconds of each child.

Prints one line per case with the ratio watchkeeper / peer. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

CHILD_LIMIT = 120.0


def serve(
    behave: str, port_holder: list[int], stop: threading.Event, args: argparse.Namespace
) -> None:
    """Accept clients and run one behaviour for each, until ``stop``."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    port_holder.append(server.getsockname()[1])
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(conn, behave, stop, args), daemon=True).start()
    server.close()


def handle(
    conn: socket.socket, behave: str, stop: threading.Event, args: argparse.Namespace
) -> None:
    with conn:
        try:
            if behave == "smtp-drip":
                greeting = b"220-slow\r\n" * 100_000
                for byte in greeting:
                    if stop.wait(args.drip):
                        return
                    conn.sendall(bytes([byte]))
                return
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = content_length(head)
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                if behave == "quick":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                elif behave == "flood":
                    size = args.flood_mib << 20
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    chunk = b"x" * (1 << 20)
                    for _ in range(args.flood_mib):
                        conn.sendall(chunk)
                    return
                elif behave == "drip":
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100_000:
                        if stop.wait(args.drip):
                            return
                        conn.sendall(bytes([byte]))
                    return
        except OSError:
            return


def content_length(head: bytes) -> int:
    """The Content-Length of a request head (0 without one)."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


CHILD = {
    ("flood", "watchkeeper"): """
from watchkeeper.build import build_notifier
from watchkeeper.alerts import Alert, Severity
n = build_notifier({"kind": "webhook", "url": URL})
n.send(Alert(watcher="w", kind="custom", severity=Severity.ERROR, title="t", key="k"))
""",
    ("flood", "httpx"): """
import httpx
httpx.Client(timeout=10).post(URL, json={"title": "t"})
""",
    ("drip", "watchkeeper"): """
from watchkeeper.build import build_notifier
from watchkeeper.alerts import Alert, Severity
n = build_notifier({"kind": "webhook", "url": URL, "timeout": "10s"})
try:
    n.send(Alert(watcher="w", kind="custom", severity=Severity.ERROR, title="t", key="k"))
except Exception as exc:
    print(type(exc).__name__, exc)
""",
    ("drip", "httpx"): """
import httpx
try:
    httpx.Client(timeout=10).post(URL, json={"title": "t"})
except Exception as exc:
    print(type(exc).__name__, exc)
""",
    ("smtp-drip", "watchkeeper"): """
from watchkeeper.build import build_notifier
from watchkeeper.alerts import Alert, Severity
n = build_notifier(
    {"kind": "smtp", "host": "127.0.0.1", "port": PORT, "sender": "a@b.c", "to": ["d@e.f"],
     "timeout": "10s"}
)
try:
    n.send(Alert(watcher="w", kind="custom", severity=Severity.ERROR, title="t", key="k"))
except Exception as exc:
    print(type(exc).__name__, exc)
""",
    ("smtp-drip", "smtplib"): """
import smtplib
try:
    client = smtplib.SMTP("127.0.0.1", PORT, timeout=10)
    client.sendmail("a@b.c", ["d@e.f"], "Subject: t\\r\\n\\r\\nx")
except Exception as exc:
    print(type(exc).__name__, exc)
""",
    ("quick", "watchkeeper"): """
from watchkeeper.build import build_notifier
from watchkeeper.alerts import Alert, Severity
n = build_notifier({"kind": "webhook", "url": URL})
a = Alert(watcher="w", kind="custom", severity=Severity.ERROR, title="t", key="k")
for _ in range(POSTS):
    n.send(a)
""",
    ("quick", "httpx"): """
import httpx
from watchkeeper.alerts import Alert, Severity
a = Alert(watcher="w", kind="custom", severity=Severity.ERROR, title="t", key="k")
c = httpx.Client(timeout=10)
for _ in range(POSTS):
    c.post(URL, json=a.to_dict(), headers={"Idempotency-Key": a.uid}).read()
""",
}


def run_child(code: str, port: int, posts: int) -> tuple[float, float, float, str]:
    """(wall s, cpu s, peak RSS MiB, output) of one child."""
    prelude = f"URL = 'http://127.0.0.1:{port}/hook'\nPORT = {port}\nPOSTS = {posts}\n"
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", prelude + code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = started + CHILD_LIMIT
    while True:
        pid, _, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            child.kill()
            pid, _, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.05)
    wall = time.monotonic() - started
    output = child.stdout.read().decode(errors="replace").strip() if child.stdout else ""
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood-mib", type=int, default=1024)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--drip", type=float, default=0.5)
    args = parser.parse_args()
    for case, peer in (
        ("flood", "httpx"),
        ("drip", "httpx"),
        ("smtp-drip", "smtplib"),
        ("quick", "httpx"),
    ):
        stop = threading.Event()
        holder: list[int] = []
        server = threading.Thread(target=serve, args=(case, holder, stop, args), daemon=True)
        server.start()
        while not holder:
            time.sleep(0.01)
        results = {}
        for tool in ("watchkeeper", peer):
            results[tool] = run_child(CHILD[(case, tool)], holder[0], args.posts)
        stop.set()
        server.join(5)
        wk, other = results["watchkeeper"], results[peer]
        print(
            f"{case:>9}: watchkeeper {wk[0]:7.2f}s wall {wk[1]:6.2f}s cpu {wk[2]:7.1f} MiB | "
            f"{peer} {other[0]:7.2f}s wall {other[1]:6.2f}s cpu {other[2]:7.1f} MiB | "
            f"ratio wall {wk[0] / other[0]:.2f} cpu {wk[1] / max(other[1], 1e-9):.2f} "
            f"rss {wk[2] / other[2]:.2f}"
        )
        for tool, result in results.items():
            if result[3]:
                print(f"{'':>11}{tool}: {result[3][:150]}")


if __name__ == "__main__":
    main()
