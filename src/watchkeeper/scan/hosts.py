"""Scanning named hosts: resolve a name, run the engine over its ports, time the report."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from watchkeeper.scan.engine import Run, pool_size
from watchkeeper.scan.model import HostScan, Progress, ScanError, ScanOptions


def resolve(host: str) -> tuple[socket.AddressFamily, str]:
    """The address family and address to scan for ``host`` (a name, IPv4 or IPv6 address)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ScanError(f"cannot resolve host {host!r}: {exc}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4, as nmap does
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


def scan_host(
    host: str,
    ports: Sequence[int],
    options: ScanOptions | None = None,
    progress: Progress | None = None,
) -> HostScan:
    """Probe ``ports`` of ``host`` and return every port's state."""
    opts = options or ScanOptions()
    family, address = resolve(host)
    report = HostScan(host=host, address=address, started=time.time())
    began = time.monotonic()

    Run(family, address, ports, opts, pool_size(opts.concurrency), report, progress).run()
    report.elapsed = time.monotonic() - began
    return report


def scan(
    hosts: Sequence[str],
    ports: Sequence[int],
    options: ScanOptions | None = None,
    progress: Progress | None = None,
) -> list[HostScan]:
    """Scan each host in turn; ``progress(done, total)`` counts probes over all hosts."""
    total = len(hosts) * len(ports)
    reports = []
    for index, host in enumerate(hosts):
        offset = index * len(ports)
        step = None if progress is None else _offset(progress, offset, total)
        reports.append(scan_host(host, ports, options, step))
    return reports


def _offset(progress: Progress, offset: int, total: int) -> Progress:
    return lambda done, _total: progress(offset + done, total)
