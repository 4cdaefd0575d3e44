"""TCP service names and the ``--top-ports`` order, from the list shipped in ``data/``.

The list (``data/tcp-ports.txt``, made by ``scripts/gen_tcp_ports.py``) holds IANA service names
as Debian's /etc/services has them, in our own order: commonly exposed services first, then the
rest by port number. Past its end, ``top_ports`` continues with the remaining ports ascending. It
does not depend on nmap at runtime, and does not copy nmap's frequency data (see docs/ports.md).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from watchkeeper.scan.model import MAX_PORT, ScanError


@cache
def _table() -> tuple[tuple[int, str], ...]:
    text = resources.files("watchkeeper.scan").joinpath("data/tcp-ports.txt").read_text("utf-8")
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            port, _, name = line.partition(" ")
            rows.append((int(port), name.strip()))
    return tuple(rows)


@cache
def _names() -> dict[int, str]:
    return {port: name for port, name in _table() if name}


def service_name(port: int) -> str:
    """The IANA name of a TCP port (``"ssh"`` for 22), or ``""`` when the list has none."""
    return _names().get(port, "")


def top_ports(count: int) -> list[int]:
    """The first ``count`` ports in the shipped order, sorted ascending for scanning."""
    if not 1 <= count <= MAX_PORT:
        raise ScanError(f"--top-ports takes 1 to {MAX_PORT}, not {count}")
    chosen = [port for port, _ in _table()][:count]
    if len(chosen) < count:
        listed = set(chosen)
        rest = (p for p in range(1, MAX_PORT + 1) if p not in listed)
        chosen.extend(next(rest) for _ in range(count - len(chosen)))
    return sorted(chosen)
