"""The TCP connect scanner: ``watchkeeper scan`` and the ports watcher both use this face only.

- :mod:`~watchkeeper.scan.model`: port lists, options, results (plain data);
- :mod:`~watchkeeper.scan.engine`: the loop that probes one address;
- :mod:`~watchkeeper.scan.hosts`: ``scan_host``/``scan`` (resolve, run, time);
- :mod:`~watchkeeper.scan.services`: service names and the ``--top-ports`` order;
- :mod:`~watchkeeper.scan.formats`: JSON, nmap XML, tables and diffs, for the CLI. Its names are
  imported on first use (it needs rich), so the ports watcher never pays for them.

Imports run one way, model <- engine <- hosts, and model <- services, formats.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from watchkeeper.scan.hosts import resolve, scan, scan_host
from watchkeeper.scan.model import (
    MAX_PORT,
    HostScan,
    PortResult,
    PortState,
    Progress,
    ScanError,
    ScanOptions,
    parse_ports,
    port_ranges,
)
from watchkeeper.scan.services import service_name, top_ports

if TYPE_CHECKING:
    from watchkeeper.scan.formats import (
        Change,
        Snapshot,
        diff,
        load_snapshots,
        results_table,
        snapshots,
        summary,
        to_json,
        to_nmap_xml,
    )

_FORMATS = (
    "Change",
    "Snapshot",
    "diff",
    "load_snapshots",
    "results_table",
    "snapshots",
    "summary",
    "to_json",
    "to_nmap_xml",
)

__all__ = [
    "MAX_PORT",
    "Change",
    "HostScan",
    "PortResult",
    "PortState",
    "Progress",
    "ScanError",
    "ScanOptions",
    "Snapshot",
    "diff",
    "load_snapshots",
    "parse_ports",
    "port_ranges",
    "resolve",
    "results_table",
    "scan",
    "scan_host",
    "service_name",
    "snapshots",
    "summary",
    "to_json",
    "to_nmap_xml",
    "top_ports",
]


def __getattr__(name: str) -> Any:
    """The output formats, imported on first use (PEP 562)."""
    if name in _FORMATS:
        return getattr(importlib.import_module("watchkeeper.scan.formats"), name)
    raise AttributeError(f"module 'watchkeeper.scan' has no attribute {name!r}")
