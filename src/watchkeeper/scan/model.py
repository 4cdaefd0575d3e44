"""What a scan is made of: port lists, options, per-port results and per-host reports.

Plain data with no I/O, shared by the engine (:mod:`watchkeeper.scan.engine`), the output formats
and the ports watcher.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from watchkeeper.errors import WatchkeeperError

MAX_PORT = 65535

Progress = Callable[[int, int], None]


class ScanError(WatchkeeperError):
    """A scan cannot start: bad port list, unknown host."""


class PortState(StrEnum):
    """What a probe learned about a port (nmap's words)."""

    OPEN = "open"
    CLOSED = "closed"
    FILTERED = "filtered"
    ERROR = "error"


@dataclass(frozen=True)
class PortResult:
    """One port's state, why (``syn-ack``, ``conn-refused``, ``no-response``, an errno name...),
    and what the service said first when banners were asked for."""

    state: PortState
    reason: str
    banner: str | None = None


@dataclass
class HostScan:
    """The outcome of scanning one host."""

    host: str
    address: str
    started: float
    elapsed: float = 0.0
    results: dict[int, PortResult] = field(default_factory=dict)
    fd_waits: int = 0
    """How often socket() found no free descriptor and the probe was put back (EMFILE etc.)."""

    def ports(self, state: PortState) -> list[int]:
        """The ports in ``state``, ascending."""
        return sorted(p for p, r in self.results.items() if r.state is state)

    @property
    def open_ports(self) -> list[int]:
        """The open ports, ascending."""
        return self.ports(PortState.OPEN)

    def counts(self) -> dict[str, int]:
        """How many ports ended in each state."""
        tally = Counter(result.state for result in self.results.values())
        return {state.value: tally[state] for state in PortState}


@dataclass(frozen=True)
class ScanOptions:
    """How to probe. ``rate`` caps connection attempts per second (None: as fast as the pool)."""

    timeout: float = 1.0
    concurrency: int = 1000
    retries: int = 1
    banner: bool = False
    banner_timeout: float = 2.0
    banner_bytes: int = 1024
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.banner_timeout <= 0:
            raise ScanError("timeouts must be longer than 0s")
        if self.concurrency < 1:
            raise ScanError("concurrency must be at least 1")
        if self.retries < 0:
            raise ScanError("retries cannot be negative")
        if self.banner_bytes < 1:
            raise ScanError("banner_bytes must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ScanError("rate must be above 0 connections per second")


def parse_ports(spec: str | int | Iterable[int]) -> list[int]:
    """Ports from ``"22,80,1000-2000"``; ranges inclusive; ``"-"`` is 1-65535, ``"-1024"`` and
    ``"60000-"`` are open-ended as in nmap. Sorted, without duplicates."""
    if isinstance(spec, int):
        spec = [spec]
    if not isinstance(spec, str):
        ports = set()
        for port in spec:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
                raise ScanError(f"port {port!r} is not a number from 1 to {MAX_PORT}")
            ports.add(port)
        return sorted(ports)
    found: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise ScanError(f"port list {spec!r} has an empty item")
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text) if low_text.strip() else 1
            high = (int(high_text) if high_text.strip() else MAX_PORT) if dash else low
        except ValueError:
            raise ScanError(
                f"port list {spec!r}: {part!r} is not a port or a range like 1000-2000"
            ) from None
        if not (1 <= low <= MAX_PORT and 1 <= high <= MAX_PORT):
            raise ScanError(f"port list {spec!r}: {part!r} is outside 1-{MAX_PORT}")
        if low > high:
            raise ScanError(f"port list {spec!r}: range {part!r} runs backwards")
        found.update(range(low, high + 1))
    return sorted(found)


def port_ranges(ports: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3,7"``."""
    parts: list[str] = []
    run: list[int] = []
    for port in sorted(set(ports)):
        if run and port == run[-1] + 1:
            run.append(port)
            continue
        if run:
            parts.append(_span(run))
        run = [port]
    if run:
        parts.append(_span(run))
    return ",".join(parts)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
