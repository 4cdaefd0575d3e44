"""Benchmark: one full check cycle of 1,000 pages, watchkeeper against urlwatch.

    python bench/pages/run.py [--pages 1000] [--hosts 50] [--delay 0.05] [--rounds 3]

A local site (server.py, its own process) serves 1,000 list pages over 50 loopback addresses
(127.0.0.2 ...), each reply 50 ms late. Each round runs, in fresh state, one ``urlwatch`` run
(installed from PyPI in bench/pages/.venv; see setup below) with a ``css: li.item`` filter over
all pages, and one watchkeeper cycle against the same server (wk_cycle.py: a Keeper with 1,000
``[[page]]`` watchers, ``items = "li.item"``, run as an agent runs them). Each tool runs as a
child process; its wall time, CPU seconds (user + system, from wait4) and peak RSS are measured
from here. Prints the medians and the ratios (watchkeeper / urlwatch). Talks only to
127.0.0.0/8; ends by itself.

Setup once: python3 -m venv bench/pages/.venv && bench/pages/.venv/bin/pip install urlwatch
cssselect lxml
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
URLWATCH = HERE / ".venv" / "bin" / "urlwatch"
TIME_LIMIT = 300.0
TOOLS = ("urlwatch", "watchkeeper")


def run_child(command: list[str], cwd: Path) -> dict[str, object]:
    """Run a child and reap it with wait4, which gives that child's own rusage."""
    started = time.monotonic()
    with open(cwd / "stdout.txt", "w+") as out, open(cwd / "stderr.txt", "w+") as err:
        child = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err)
        deadline = started + TIME_LIMIT
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                child.kill()
                raise SystemExit(f"{command[0]} ran over {TIME_LIMIT}s")
            time.sleep(0.005)
        wall = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{stderr[-3000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
        "stdout": stdout,
    }


def urlwatch_round(urls: list[str], work: Path) -> dict[str, object]:
    jobs = "".join(
        f"---\nname: page {n}\nurl: {url}\nfilter:\n  - css: li.item\n"
        for n, url in enumerate(urls)
    )
    (work / "urls.yaml").write_text(jobs.removeprefix("---\n"))
    command = [
        str(URLWATCH),
        "--urls",
        str(work / "urls.yaml"),
        "--config",
        str(work / "urlwatch.yaml"),
        "--hooks",
        str(work / "hooks.py"),
        "--cache",
        str(work / "cache.db"),
    ]
    result = run_child(command, work)
    reported = len(set(re.findall(r"^NEW: (page \d+) ", str(result["stdout"]), re.M)))
    if reported != len(urls):
        raise SystemExit(
            f"urlwatch reported {reported} of {len(urls)} pages:\n{str(result['stdout'])[-2000:]}"
        )
    return result


def watchkeeper_round(urls: list[str], work: Path) -> dict[str, object]:
    (work / "urls.json").write_text(json.dumps(urls))
    command = [
        sys.executable,
        str(HERE / "wk_cycle.py"),
        str(work / "urls.json"),
        str(work / "wk.db"),
    ]
    result = run_child(command, work)
    summary = json.loads(str(result["stdout"]).strip().splitlines()[-1])
    if summary["failed"] or summary["pages"] != len(urls):
        raise SystemExit(f"watchkeeper cycle incomplete: {summary}")
    result["items"] = summary["items"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not URLWATCH.exists():
        raise SystemExit(f"urlwatch is not installed in {HERE / '.venv'}; see this file's setup")
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "server.py"),
            str(args.pages),
            str(args.hosts),
            str(args.delay),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        urls = [f"http://127.0.0.{n % args.hosts + 2}:{port}/page/{n}" for n in range(args.pages)]
        results: dict[str, list[dict[str, object]]] = {tool: [] for tool in TOOLS}
        for round_no in range(args.rounds):
            for tool in TOOLS:
                with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
                    if tool == "urlwatch":
                        result = urlwatch_round(urls, Path(tmp))
                    else:
                        result = watchkeeper_round(urls, Path(tmp))
                results[tool].append(result)
                print(
                    f"round {round_no + 1} {tool:18s} wall {result['wall']:6.2f}s  "
                    f"cpu {result['cpu']:6.2f}s  rss {result['rss_mib']:6.1f} MiB",
                    flush=True,
                )
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(10)
    med = {
        tool: {k: statistics.median(float(r[k]) for r in rs) for k in ("wall", "cpu", "rss_mib")}
        for tool, rs in results.items()
    }
    print(
        f"\n{args.pages} pages on {args.hosts} loopback addresses, {args.delay * 1000:.0f} ms "
        f"per reply; medians of {args.rounds} rounds"
    )
    print(f"{'':28s}{'wall s':>10s}{'CPU s':>10s}{'peak RSS MiB':>14s}")
    for tool in TOOLS:
        m = med[tool]
        print(f"{tool:28s}{m['wall']:10.2f}{m['cpu']:10.2f}{m['rss_mib']:14.1f}")
    for tool in TOOLS[1:]:
        r = {k: med[tool][k] / med["urlwatch"][k] for k in ("wall", "cpu", "rss_mib")}
        label = f"ratio {tool} / urlwatch"
        print(f"{label:28s}{r['wall']:10.2f}{r['cpu']:10.2f}{r['rss_mib']:14.2f}")
    print("targets: wall <= 0.25, CPU <= 0.5, RSS <= 1.0")


if __name__ == "__main__":
    main()
