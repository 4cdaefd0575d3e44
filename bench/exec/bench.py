"""The exec notifier's cost per alert, against the obvious way to run a command per alert.

The peer is a plain ``subprocess.run(cmd, input=json, env=..., capture_output=True,
timeout=...)`` per alert: what a script that pipes alerts into a command does. watchkeeper's
notifier adds the WATCHKEEPER_* environment, bounded output, a process group per command and its
exit-status rules; ``parallel`` runs several commands at once. Each mode delivers N alerts to a
``/bin/sh`` hook that reads its stdin, at N and 10 N, round after round so the machine's noise
falls on every mode alike (the direct modes take turns every 40 alerts); the figure is the
median of the rounds. "keeper" is end to end: N
event alerts committed by a real Keeper, timed until the outbox says all are sent.

    .venv/bin/python bench/exec/bench.py            # --sizes 200 2000 --rounds 3
    .venv/bin/python bench/exec/bench.py --process-groups 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from watchkeeper import Keeper, Observation
from watchkeeper.alerts import Alert, Severity
from watchkeeper.build import build_notifier
from watchkeeper.notifiers.exec import alert_environment

CHUNK = 40
"""Alerts each direct mode delivers before the next mode's turn."""


def alerts(count: int) -> list[Alert]:
    return [
        Alert(
            watcher="bench",
            kind="custom",
            severity=Severity.WARNING,
            title=f"event {i}",
            key=f"k{i}",
            body="a body line\n" * 5,
            id=i,
        )
        for i in range(count)
    ]


def peer(hook: str, batch: list[Alert]) -> None:
    for alert in batch:
        done = subprocess.run(
            [hook],
            input=json.dumps(alert.to_dict()).encode() + b"\n",
            env={**os.environ, **alert_environment(alert)},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0


def notifier(hook: str, parallel: int) -> Callable[[list[Alert]], None]:
    exec_notifier = build_notifier({"kind": "exec", "command": [hook], "parallel": parallel})

    def deliver(batch: list[Alert]) -> None:
        for start in range(0, len(batch), parallel):  # as the dispatcher hands them over
            outcomes = exec_notifier.send_each(batch[start : start + parallel])
            assert outcomes == [None] * len(outcomes)

    return deliver


def keeper(hook: str, count: int, parallel: int, folder: Path) -> float:
    spec = {"kind": "exec", "command": [hook], "parallel": parallel}
    wk = Keeper(state=folder / f"wk-{count}-{parallel}-{time.monotonic_ns()}.db", notify=[spec])
    wk.every(3600, lambda: [Observation(f"e{i}", event=True) for i in range(count)], name="b")
    started = time.perf_counter()
    with wk:
        store = wk.store
        assert store is not None
        while store.delivery_counts().get("exec") != {"sent": count}:
            time.sleep(0.01)
        took = time.perf_counter() - started
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--process-groups",
        type=int,
        metavar="N",
        help="instead: N Popen().communicate() pairs, a new session against a process group",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hook = folder / "hook"
        hook.write_text("#!/bin/sh\ncat > /dev/null\n")
        hook.chmod(0o755)
        if args.process_groups:
            process_groups(str(hook), args.process_groups)
            return
        for size in args.sizes:
            batch = alerts(size)
            direct: dict[str, Callable[[list[Alert]], None]] = {
                "subprocess.run per alert (peer)": lambda b: peer(str(hook), b),
                "exec notifier, parallel 1": notifier(str(hook), 1),
                "exec notifier, parallel 4": notifier(str(hook), 4),
            }
            times: dict[str, list[float]] = {name: [] for name in direct}
            times |= {f"keeper end to end, parallel {p}": [] for p in (1, 4)}
            for _ in range(args.rounds):
                spent = dict.fromkeys(direct, 0.0)
                # Chunk by chunk, every mode in turn: a burst of load falls on all of them.
                for start in range(0, size, CHUNK):
                    for name, deliver in direct.items():
                        spent[name] += timed(deliver, batch[start : start + CHUNK])
                for name, took in spent.items():
                    times[name].append(took)
                for parallel in (1, 4):
                    took = keeper(str(hook), size, parallel, folder)
                    times[f"keeper end to end, parallel {parallel}"].append(took)
            base = statistics.median(times["subprocess.run per alert (peer)"])
            print(f"\n{size} alerts, median of {args.rounds} rounds")
            for name, got in times.items():
                took = statistics.median(got)
                print(
                    f"  {name:34} {took:7.2f} s  {size / took:7.0f} alerts/s  "
                    f"peer/this {base / took:4.2f}x"
                )


def process_groups(hook: str, pairs: int) -> None:
    """Why the notifier uses ``process_group=0``: what each way of leading a group costs."""
    options: dict[str, tuple[bool, int | None]] = {  # start_new_session, process_group
        "start_new_session=True": (True, None),
        "process_group=0": (False, 0),
        "neither": (False, None),
    }
    spent = dict.fromkeys(options, 0.0)
    for _ in range(pairs):
        for name, (session, group) in options.items():
            started = time.perf_counter()
            child = subprocess.Popen(
                [hook],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=session,
                process_group=group,
            )
            child.communicate(b"x\n")
            spent[name] += time.perf_counter() - started
    for name, took in spent.items():
        print(f"  {name:24} {took:6.2f} s for {pairs} commands")


def timed(run: Callable[..., None], *args: object) -> float:
    started = time.perf_counter()
    run(*args)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
