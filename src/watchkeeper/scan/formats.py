"""What a scan looks like outside the engine: JSON, nmap XML, a table, and the diff of two scans.

The JSON document lists every port that is not closed (closed ones are counted, as nmap's
``extraports`` does) plus the scanned ports as compact ranges, so ``--diff`` can tell "closed
since" from "not scanned this time". The XML follows nmap's ``-oX`` format closely enough for
``ndiff`` and other nmap tooling to read it.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from watchkeeper.quantities import iso_utc
from watchkeeper.scan.model import (
    HostScan,
    PortResult,
    PortState,
    ScanError,
    parse_ports,
    port_ranges,
)
from watchkeeper.scan.services import service_name

FORMAT = "watchkeeper-scan/1"


def to_json(reports: Sequence[HostScan], args: str) -> dict[str, Any]:
    """The ``--json`` document."""
    return {
        "format": FORMAT,
        "args": args,
        "hosts": [
            {
                "host": r.host,
                "address": r.address,
                "started": iso_utc(r.started),
                "elapsed": round(r.elapsed, 3),
                "scanned": port_ranges(r.results),
                "counts": r.counts(),
                "ports": [
                    {
                        "port": port,
                        "state": str(res.state),
                        "reason": res.reason,
                        "service": service_name(port),
                        **({"banner": res.banner} if res.banner is not None else {}),
                    }
                    for port, res in _not_closed(r)
                ],
            }
            for r in reports
        ],
    }


def _not_closed(report: HostScan) -> list[tuple[int, PortResult]]:
    """The ports worth listing, in order; filtered before sorting: most of a scan is closed."""
    return sorted((p, r) for p, r in report.results.items() if r.state is not PortState.CLOSED)


@dataclass(frozen=True)
class Snapshot:
    """One host's open ports, and which ports were looked at, from a scan or a saved file."""

    host: str
    scanned: frozenset[int]
    open: frozenset[int]
    unknown: frozenset[int] = frozenset()
    """Ports whose probe ended in an error: neither open nor closed, so never a change."""


def snapshots(reports: Sequence[HostScan]) -> dict[str, Snapshot]:
    """Snapshots of finished scans, by host as given."""
    return {
        r.host: Snapshot(
            r.host,
            frozenset(r.results),
            frozenset(r.open_ports),
            frozenset(p for p, res in r.results.items() if res.state is PortState.ERROR),
        )
        for r in reports
    }


def load_snapshots(path: Path) -> dict[str, Snapshot]:
    """Snapshots from a ``--json`` file; errors say which file and what is wrong with it."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ScanError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScanError(f"{path}: not a JSON document: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ScanError(f"{path}: not a `watchkeeper scan --json` document (format {FORMAT})")
    found: dict[str, Snapshot] = {}
    try:
        for index, host in enumerate(doc["hosts"]):
            where = f"{path}: hosts[{index}]"
            try:
                scanned = parse_ports(host["scanned"]) if host["scanned"] else []
                open_ports = [p["port"] for p in host["ports"] if p["state"] == "open"]
                unknown = [p["port"] for p in host["ports"] if p["state"] == "error"]
                found[host["host"]] = Snapshot(
                    host["host"],
                    frozenset(scanned),
                    frozenset(parse_ports(open_ports)),
                    frozenset(parse_ports(unknown)) if unknown else frozenset(),
                )
            except ScanError as exc:
                raise ScanError(f"{where}: {exc}") from exc
    except (KeyError, TypeError) as exc:
        raise ScanError(f"{path}: malformed scan document ({exc!r} missing or wrong)") from exc
    return found


@dataclass(frozen=True)
class Change:
    """A port that opened or closed between two scans."""

    host: str
    port: int
    change: str  # "opened" | "closed"

    @property
    def service(self) -> str:
        """The port's IANA service name, or ``""``."""
        return service_name(self.port)


def diff(before: dict[str, Snapshot], after: dict[str, Snapshot]) -> list[Change]:
    """Ports that opened, and ports that closed among those scanned both times."""
    changes: list[Change] = []
    for host, now in after.items():
        then = before.get(host)
        if then is None:
            continue
        both = (then.scanned & now.scanned) - then.unknown - now.unknown
        changes += [Change(host, p, "opened") for p in sorted((now.open - then.open) & both)]
        changes += [Change(host, p, "closed") for p in sorted((then.open - now.open) & both)]
    return sorted(changes, key=lambda c: (c.host, c.port))


def to_nmap_xml(reports: Sequence[HostScan], args: str) -> str:
    """The scan in nmap's ``-oX`` format (what ``ndiff`` reads)."""
    started = min((r.started for r in reports), default=time.time())
    ended = max((r.started + r.elapsed for r in reports), default=started)
    scanned = sorted({p for r in reports for p in r.results})
    root = ET.Element(
        "nmaprun",
        scanner="watchkeeper",
        args=args,
        start=str(int(started)),
        startstr=time.ctime(started),
        version="0.1.0",
        xmloutputversion="1.05",
    )
    ET.SubElement(
        root,
        "scaninfo",
        type="connect",
        protocol="tcp",
        numservices=str(len(scanned)),
        services=port_ranges(scanned),
    )
    for r in reports:
        _xml_host(root, r)
    stats = ET.SubElement(root, "runstats")
    ET.SubElement(
        stats,
        "finished",
        time=str(int(ended)),
        timestr=time.ctime(ended),
        elapsed=f"{ended - started:.2f}",
        exit="success",
    )
    ET.SubElement(stats, "hosts", up=str(len(reports)), down="0", total=str(len(reports)))
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE nmaprun>\n{body}\n'


def _xml_host(root: ET.Element, r: HostScan) -> None:
    host = ET.SubElement(
        root, "host", starttime=str(int(r.started)), endtime=str(int(r.started + r.elapsed))
    )
    ET.SubElement(host, "status", state="up", reason="user-set", reason_ttl="0")
    family = "ipv6" if ":" in r.address else "ipv4"
    ET.SubElement(host, "address", addr=r.address, addrtype=family)
    names = ET.SubElement(host, "hostnames")
    if r.host != r.address:
        ET.SubElement(names, "hostname", name=r.host, type="user")
    ports = ET.SubElement(host, "ports")
    closed = r.ports(PortState.CLOSED)
    if closed:
        extra = ET.SubElement(ports, "extraports", state="closed", count=str(len(closed)))
        ET.SubElement(
            extra, "extrareasons", reason="conn-refused", count=str(len(closed)), proto="tcp"
        )
    for number, res in sorted(r.results.items()):
        if res.state is PortState.CLOSED:
            continue
        port = ET.SubElement(ports, "port", protocol="tcp", portid=str(number))
        ET.SubElement(port, "state", state=str(res.state), reason=res.reason, reason_ttl="0")
        name = service_name(number)
        if name:
            service = ET.SubElement(port, "service", name=name, method="table", conf="3")
            if res.banner:
                service.set("extrainfo", res.banner.splitlines()[0][:200])


def results_table(reports: Sequence[HostScan]) -> Table:
    """The human summary: the open ports with service names (and banners when read)."""
    banners = any(res.banner for r in reports for res in r.results.values())
    table = Table(title="open ports", title_justify="left")
    for column in ("host", "port", "service", *(["banner"] if banners else [])):
        table.add_column(column, justify="right" if column == "port" else "left")
    for r in reports:
        for number in r.open_ports:
            row = [Text(r.host), Text(str(number)), Text(service_name(number))]
            if banners:
                banner = r.results[number].banner or ""
                row.append(Text(banner.splitlines()[0][:60] if banner else ""))
            table.add_row(*row)
    return table


def summary(report: HostScan) -> str:
    """One line per host: how many ports in each state, and how long it took."""
    counts = ", ".join(f"{n} {state}" for state, n in report.counts().items() if n)
    return (
        f"{report.host} ({report.address}): {len(report.results)} ports in "
        f"{report.elapsed:.2f}s: {counts or 'nothing scanned'}"
    )
