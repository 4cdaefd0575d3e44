"""Port-scan benchmark: watchkeeper against nmap, full 1-65535 TCP connect scans of 127.0.0.1.

Runs itself inside a private network namespace (``unshare -n``; needs root or user namespaces),
so it touches nothing but the 20 listeners it opens there. Two cases, each tool several times:

1. open/closed: 20 open ports, 65515 closed;
2. filtered: the same plus an iptables DROP rule on 10,000 ports (20001-30000).

Tools: ``watchkeeper scan -p- --json`` (the CLI, a whole process, as nmap is), the engine
in-process (no interpreter start-up), an asyncio engine (``asyncio_engine.py``, the alternative
design, open/closed case only), ``nmap -sT -p- -T4 -n`` and ``nmap -sT -p- --min-rate 10000 -n``.
Every run's open ports are checked: all 20 found, no false positive. Prints medians and ratios.

Usage: python bench/scan/bench.py [--repeats 5] [--filtered-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LISTEN = [1, 7, 22, 80, 443, 3306, 5432, 8080, 9000, 12345, 19999, 30001, 32768, 40000, 45678,
          50000, 55555, 60999, 65000, 65535]  # fmt: skip
DROPPED = "20001:30000"
WK = [sys.executable, "-m", "watchkeeper", "scan", "127.0.0.1", "-p-", "--json"]
NMAP_T4 = ["nmap", "-sT", "-p-", "-T4", "-n", "-oX", "-", "127.0.0.1"]
NMAP_RATE = ["nmap", "-sT", "-p-", "--min-rate", "10000", "-n", "-oX", "-", "127.0.0.1"]


def in_namespace() -> None:
    """Re-run this script inside a fresh network namespace with loopback up."""
    if os.environ.get("WK_BENCH_NETNS") == "1":
        return
    if shutil.which("unshare") is None:
        sys.exit("needs unshare (util-linux) to make a private network namespace")
    env = {**os.environ, "WK_BENCH_NETNS": "1"}
    script = 'ip link set lo up && exec "$0" "$@"'
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", script, sys.executable, __file__, *sys.argv[1:]],
        env=env,
        check=False,
    )
    sys.exit(done.returncode)


def open_ports_nmap(xml: str) -> list[int]:
    ports = re.findall(r'<port protocol="tcp" portid="(\d+)"><state state="open"', xml)
    return sorted(int(p) for p in ports)


def open_ports_wk(text: str) -> list[int]:
    doc = json.loads(text)
    return [p["port"] for p in doc["hosts"][0]["ports"] if p["state"] == "open"]


def timed_process(cmd: list[str], parse: Callable[[str], list[int]]) -> tuple[float, list[int]]:
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - began, parse(done.stdout)


def timed_engine() -> tuple[float, list[int]]:
    from watchkeeper.scan import parse_ports, scan_host

    began = time.perf_counter()
    report = scan_host("127.0.0.1", parse_ports("-"))
    return time.perf_counter() - began, report.open_ports


def timed_asyncio() -> tuple[float, list[int]]:
    sys.path.insert(0, str(HERE))
    from asyncio_engine import scan_open

    began = time.perf_counter()
    found = scan_open("127.0.0.1", range(1, 65536), concurrency=1000, timeout=1.0)
    return time.perf_counter() - began, found


def check(name: str, found: list[int]) -> None:
    if found != LISTEN:
        missed = sorted(set(LISTEN) - set(found))
        extra = sorted(set(found) - set(LISTEN))
        sys.exit(f"{name}: wrong result: missed {missed}, false positives {extra}")


def case(title: str, repeats: int, with_asyncio: bool) -> None:
    """Run every tool once per round, round after round, so machine noise hits all alike."""
    tools: dict[str, Callable[[], tuple[float, list[int]]]] = {
        "watchkeeper scan -p- (CLI)": lambda: timed_process(WK, open_ports_wk),
        "watchkeeper engine (in-process)": timed_engine,
        "nmap -sT -p- -T4 -n": lambda: timed_process(NMAP_T4, open_ports_nmap),
        "nmap -sT -p- --min-rate 10000 -n": lambda: timed_process(NMAP_RATE, open_ports_nmap),
    }
    if with_asyncio:
        tools["asyncio engine (in-process)"] = timed_asyncio
    times: dict[str, list[float]] = {name: [] for name in tools}
    print(f"\n{title} ({repeats} rounds, tools interleaved)")
    for _ in range(repeats):
        for name, run in tools.items():
            seconds, found = run()
            check(name, found)
            times[name].append(seconds)
    medians = {name: statistics.median(runs) for name, runs in times.items()}
    for name, runs in times.items():
        listed = " ".join(f"{t:.2f}" for t in runs)
        print(f"  {name:<34} median {medians[name]:6.2f} s   runs: {listed}   20/20 open, 0 false")
    cli, engine = medians["watchkeeper scan -p- (CLI)"], medians["watchkeeper engine (in-process)"]
    for peer in ("nmap -sT -p- -T4 -n", "nmap -sT -p- --min-rate 10000 -n"):
        print(
            f"  {peer} / watchkeeper: {medians[peer] / cli:.2f}x (CLI), "
            f"{medians[peer] / engine:.2f}x (engine)   (>1: watchkeeper faster)"
        )
    if with_asyncio:
        ratio = medians["asyncio engine (in-process)"] / engine
        print(f"  asyncio engine / epoll engine: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, choices=range(1, 51))
    parser.add_argument("--filtered-repeats", type=int, default=3, choices=range(0, 51))
    args = parser.parse_args()
    in_namespace()
    if shutil.which("nmap") is None:
        sys.exit("needs nmap (Debian package nmap) as the peer")
    listeners = []
    for port in LISTEN:
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        listeners.append(sock)
    nmap_version = subprocess.run(
        ["nmap", "--version"], capture_output=True, text=True, check=True
    ).stdout
    print(f"{nmap_version.splitlines()[0]}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    case("open/closed: 20 open, 65515 closed", args.repeats, with_asyncio=True)
    if not args.filtered_repeats:
        return
    rule = ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", DROPPED, "-j", "DROP"]
    if shutil.which("iptables") is None or subprocess.run(rule, check=False).returncode != 0:
        print("\nfiltered case skipped: iptables (Debian package iptables) not usable here")
        return
    case(
        f"filtered: 20 open, 10,000 dropped ({DROPPED}), 55515 closed",
        args.filtered_repeats,
        with_asyncio=False,
    )
    for sock in listeners:
        sock.close()


if __name__ == "__main__":
    main()
