"""copytruncate under load: `watchkeeper run` and `tail -F` on one file, the lines each loses.

A writer appends numbered lines (every ``--match-every``-th one matches the rule: 1, all of them,
by default) at ``--rate`` lines a second to
``logs/app.log``, unbuffered and in append mode, as an application does; the real ``logrotate
-f`` runs every ``--every`` seconds with ``copytruncate``. Between logrotate's copy and its
truncate the writer goes on writing: whatever a follower has not read by the truncate is gone
from the file (it is in no copy either). Counted at the end, against the written numbers:

- watchkeeper: lines that never alerted, and the loss it reported (health alerts' bytes);
- ``tail -q -n0 -F``: lines missing from its output (the peer on the same run).

Only matching lines are counted, for both (the others alert nothing, so a loss of them cannot be
seen in the alerts). With every line an alert, 1,000 alerts a second keep the agent busy (about
1.2 ms of CPU each): its inotify thread then waits for the interpreter while the truncate comes.

Usage: ``python bench/logfiles/copytruncate.py [--seconds 60] [--rate 1000] [--every 3]
[--match-every 1]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import start  # the sibling script: its agent config and startup wait

WRITER = """
import sys, time
path, rate, seconds, share = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
out = open(path, "a", buffering=1)
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = start + n / rate
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    level = "CRITICAL" if n % share == 0 else "INFO"
    out.write(f"{n} {level} payload {'x' * 40}\\n")
    n += 1
print(n)
"""


def numbers(path: Path, field: str | None) -> set[int]:
    """The line numbers in a file of lines (``field``: JSON lines, the line under data.line)."""
    found: set[int] = set()
    for line in path.read_text(errors="replace").splitlines():
        try:
            text = json.loads(line)["data"].get("line", "") if field else line
            if " CRITICAL " in text:
                found.add(int(text.split()[0]))
        except (ValueError, IndexError, KeyError, TypeError, AttributeError):
            continue
    return found


def reported(path: Path) -> int:
    """Bytes the agent's health alerts reported lost."""
    total = 0
    for line in path.read_text().splitlines():
        data = json.loads(line).get("data", {})
        if data.get("lost"):
            total += int(data.get("bytes") or 0)
    return total


def run(seconds: float, rate: float, every: float, share: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="wk-copytruncate-"))
    try:
        logs = folder / "logs"
        logs.mkdir()
        log = logs / "app.log"
        log.touch()
        conf = folder / "logrotate.conf"
        conf.write_text(f"{log} {{\n  copytruncate\n  rotate 1000\n  missingok\n}}\n")
        out, tailed = folder / "alerts.jsonl", folder / "tail.out"
        out.touch()
        agent = start(folder, out)
        with tailed.open("wb") as sink:
            tail = subprocess.Popen(["tail", "-q", "-n0", "-F", str(log)], stdout=sink)
            time.sleep(1)  # tail -F has no readiness signal
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(log), str(rate), str(seconds), str(share)],
                stdout=subprocess.PIPE,
                text=True,
            )
            rotations = 0
            while writer.poll() is None:
                time.sleep(every)
                if writer.poll() is None:
                    subprocess.run(
                        ["logrotate", "-f", "-s", str(folder / "state"), str(conf)], check=True
                    )
                    rotations += 1
            written = int(writer.communicate()[0])
            deadline, last = time.monotonic() + 120, -1
            while time.monotonic() < deadline:  # until both stop growing
                now = out.stat().st_size + tailed.stat().st_size
                if now == last:
                    break
                last = now
                time.sleep(2)
            tail.terminate()
            tail.wait()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        ours, theirs = numbers(out, "data"), numbers(tailed, None)
        everything = set(range(0, written, share))
        print(
            f"{written:,} lines at {rate:.0f}/s, {len(everything):,} matching, copytruncate "
            f"every {every:g}s ({rotations}x):"
        )
        print(
            f"  watchkeeper run  {len(everything - ours):5d} lines lost, "
            f"{reported(out):,} bytes reported lost, {len(ours - everything)} unknown"
        )
        print(f"  tail -F          {len(everything - theirs):5d} lines lost")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--every", type=float, default=3.0)
    parser.add_argument("--match-every", type=int, default=1, help="1 line in N matches")
    args = parser.parse_args()
    run(args.seconds, args.rate, args.every, args.match_every)


if __name__ == "__main__":
    main()
