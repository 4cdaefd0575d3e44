"""Run a Python snippet in a private network namespace (``unshare -n``), where it may scan any
port range and add iptables rules without touching anything the test did not start."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import pytest


def _probe(command: list[str], failure: str) -> str | None:
    """Run ``command`` in a fresh namespace; ``failure`` and its stderr when it fails."""
    probe = subprocess.run(["unshare", "-n", *command], capture_output=True, text=True, check=False)
    return f"{failure}: {probe.stderr.strip()}" if probe.returncode != 0 else None


@functools.cache
def netns_problem() -> str | None:
    """Why a private network namespace cannot be made here, or None when it can."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) not installed"
    return _probe(["ip", "link", "set", "lo", "up"], "cannot create a network namespace")


@functools.cache
def iptables_problem() -> str | None:
    """Why an iptables DROP rule cannot be added inside a namespace, or None when it can."""
    if netns_problem():
        return netns_problem()
    if shutil.which("iptables") is None:
        return "iptables not installed (Debian package iptables)"
    return _probe(
        ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"],
        "iptables does not work in a namespace here",
    )


def require_netns(iptables: bool = False) -> None:
    """Skip the test, saying why, when the namespace (or iptables in it) is unavailable."""
    problem = iptables_problem() if iptables else netns_problem()
    if problem:
        pytest.skip(problem)


def run_in_netns(
    code: str, setup: Sequence[str] = (), timeout: float = 60.0, env: dict[str, str] | None = None
) -> Any:
    """Run ``code`` with this interpreter inside a fresh namespace (lo up, then ``setup`` shell
    commands); it must print one JSON document as its last line, which is returned."""
    commands = " && ".join(["ip link set lo up", *setup, 'exec "$0" -c "$1"'])
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", commands, sys.executable, textwrap.dedent(code)],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, f"namespace child failed ({done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])
