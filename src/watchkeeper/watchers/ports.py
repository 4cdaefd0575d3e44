"""``[[ports]]``: scan a host's TCP ports every ``every`` and alert when the open set changes.

How the alerts are shaped, and why:

- **opened / closed** are *events* (each change alerts once). The watcher, not the rule engine,
  applies ``for_cycles`` to them: a port whose state differs from the baseline must differ in
  ``for_cycles`` consecutive scans before it alerts and becomes the new baseline; if it flips back
  first, nothing is sent. (The rule engine's ``for_cycles`` counts how long a *condition* holds; a
  change is not a condition, and "port 8080 is open" as a condition would alert once and then send
  a "recovery" when it closes, which is not what "alert on opened and closed" means.)
- **expect_open / expect_closed** are *conditions* ("22 is not open, but should be"): the rule
  engine alerts once after ``for_cycles`` scans, may ``remind``, and sends a recovery when the port
  is back as expected. Ports listed there get no opened/closed events, so one change is one alert.
- The checkpoint is the baseline open set, the pending-change counters and the ports scanned,
  committed with the alerts: a restart neither repeats a change alert nor forgets a change
  half-way through ``for_cycles``. The first scan sets the baseline and sends no change alerts;
  when the port list is edited, new ports join the baseline as they are and dropped ones leave.
- A port whose probe ended in ``error`` (no descriptor, say) keeps its baseline state: unknown is
  not closed. A scan that cannot run at all (unknown host) raises, and ``fail_after`` applies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from watchkeeper.alerts import Observation, Severity
from watchkeeper.scan import (
    PortState,
    ScanError,
    ScanOptions,
    parse_ports,
    port_ranges,
    scan_host,
    service_name,
    top_ports,
)
from watchkeeper.units import Duration
from watchkeeper.watchers.base import CheckResult, Watcher, WatcherConfig, register

Change = Literal["opened", "closed"]
CHANGES: tuple[Change, ...] = ("opened", "closed")


class PortsConfig(WatcherConfig):
    """``[[ports]]``: which host and ports to scan, and which changes alert."""

    host: str = Field(min_length=1, description="Host name or address to scan.")
    ports: str | list[int] = Field(
        default="1-1024", description='Ports to scan: "22,80,1000-2000" or a list of numbers.'
    )
    top_ports: int | None = Field(
        default=None, ge=1, le=65535, description="Scan these many common ports instead of ports."
    )
    exclude_ports: str | list[int] = Field(default="", description="Ports never to scan.")
    expect_open: list[int] = Field(
        default_factory=list, description="Alert (error) while one of these is not open."
    )
    expect_closed: list[int] = Field(
        default_factory=list, description="Alert (error) while one of these is open."
    )
    alert_on: list[Change] = Field(
        default_factory=lambda: list(CHANGES),
        description="Which changes against the previous scan alert.",
    )
    severity: Severity = Field(
        default=Severity.WARNING, description="Severity of opened/closed alerts."
    )
    timeout: Duration = Field(default=1.0, description="Per-probe timeout.")
    concurrency: int = Field(default=256, ge=1, description="Probes in flight at once.")
    retries: int = Field(default=1, ge=0, description="Retries for a port that did not answer.")
    rate: float | None = Field(default=None, gt=0, description="At most this many connects/s.")
    banner: bool = Field(default=False, description="Read what a newly opened service says first.")

    @field_validator("severity", mode="before")
    @classmethod
    def _severity(cls, value: Any) -> Severity:
        return Severity.parse(value)

    @field_validator("ports", "exclude_ports")
    @classmethod
    def _port_list(cls, value: str | list[int]) -> str | list[int]:
        if value != "":
            _parse(value)
        return value

    @field_validator("expect_open", "expect_closed")
    @classmethod
    def _port_numbers(cls, value: list[int]) -> list[int]:
        return _parse(value)

    @model_validator(mode="after")
    def _expectations_agree(self) -> PortsConfig:
        both = set(self.expect_open) & set(self.expect_closed)
        if both:
            raise ValueError(f"ports {sorted(both)} are in both expect_open and expect_closed")
        if self.timeout <= 0:
            raise ValueError("timeout must be longer than 0s")
        return self

    def port_list(self) -> list[int]:
        """The ports each scan probes: ports (or top_ports) plus expectations, minus excluded."""
        base = top_ports(self.top_ports) if self.top_ports else parse_ports(self.ports)
        wanted = set(base) | set(self.expect_open) | set(self.expect_closed)
        if self.exclude_ports != "":
            wanted -= set(parse_ports(self.exclude_ports))
        return sorted(wanted)

    def scan_options(self) -> ScanOptions:
        """The engine settings."""
        return ScanOptions(
            timeout=self.timeout,
            concurrency=self.concurrency,
            retries=self.retries,
            banner=self.banner,
            rate=self.rate,
        )


def _parse(value: str | list[int]) -> list[int]:
    try:
        return parse_ports(value)
    except ScanError as exc:
        raise ValueError(str(exc)) from None


@register
class PortsWatcher(Watcher):
    """Scans one host per check; see the module docstring for how changes become alerts."""

    kind = "ports"
    config_model = PortsConfig
    config: PortsConfig

    def __init__(self, config: PortsConfig) -> None:
        super().__init__(config)
        self.ports = config.port_list()
        self.options = config.scan_options()

    def check(self, checkpoint: Any) -> CheckResult:
        """Scan, compare with the baseline, and return changes and expectation failures."""
        cfg = self.config
        report = scan_host(cfg.host, self.ports, self.options)
        results = report.results
        first = not checkpoint
        state = checkpoint or {}
        seen_open = {p for p, r in results.items() if r.state is PortState.OPEN}
        known = {p for p, r in results.items() if r.state is not PortState.ERROR}
        # A port list edited between runs: ports no longer scanned leave the baseline quietly,
        # ports scanned for the first time join it as they are (already open is not "opened").
        wanted = set(self.ports)
        before = set(parse_ports(state["scanned"])) if state.get("scanned") else wanted
        added = wanted - before
        baseline = (set(state.get("open", [])) & wanted) | (seen_open & added)
        pending: dict[str, int] = {
            p: n for p, n in state.get("pending", {}).items() if int(p) in wanted - added
        }
        observations: list[Observation] = []
        if first:
            baseline = seen_open
        else:
            expected = set(cfg.expect_open) | set(cfg.expect_closed)
            for port in sorted(known & (baseline ^ seen_open)):
                count = pending.get(str(port), 0) + 1
                if count < cfg.for_cycles:
                    pending[str(port)] = count
                    continue
                pending.pop(str(port), None)
                change: Change = "opened" if port in seen_open else "closed"
                baseline ^= {port}
                if change in cfg.alert_on and port not in expected:
                    observations.append(self._change(port, change, results[port].banner))
            for port in [int(p) for p in pending if int(p) in known]:
                if (port in baseline) == (port in seen_open):
                    del pending[str(port)]  # flipped back before for_cycles: no alert
        # An expectation on a port whose probe failed (error) holds as it did: unknown is
        # neither a failure nor a recovery, so the last known state stands in.
        for port in cfg.expect_open:
            if port not in (seen_open if port in known else baseline):
                actual = str(results[port].state) if port in known else "unknown"
                observations.append(self._expectation(port, "open", actual))
        for port in cfg.expect_closed:
            if port in (seen_open if port in known else baseline):
                observations.append(self._expectation(port, "closed", "open"))
        checkpoint = {
            "open": sorted(baseline),
            "pending": pending,
            "scanned": port_ranges(self.ports),
        }
        return CheckResult(observations, checkpoint)

    def _change(self, port: int, change: Change, banner: str | None) -> Observation:
        service = service_name(port)
        label = f"{self.config.host}:{port}" + (f" ({service})" if service else "")
        data: dict[str, Any] = {
            "host": self.config.host,
            "port": port,
            "change": change,
            "service": service,
        }
        if self.config.banner:
            data["banner"] = banner
        now = "open" if change == "opened" else "closed"
        body = f"Port {port} on {self.config.host} is now {now}."
        if banner:
            body += f"\n\nIt says: {banner}"
        return Observation(
            title=f"{label} {change}",
            severity=self.config.severity,
            key=f"port:{port}:{change}",
            body=body,
            data=data,
            event=True,
        )

    def _expectation(self, port: int, expected: str, actual: str) -> Observation:
        service = service_name(port)
        label = f"{self.config.host}:{port}" + (f" ({service})" if service else "")
        return Observation(
            title=f"{label} is {actual}, expected {expected}",
            subject=label,
            severity=Severity.ERROR,
            key=f"expect:{port}",
            body=f"Port {port} on {self.config.host} should be {expected} but is {actual}.",
            data={
                "host": self.config.host,
                "port": port,
                "change": "closed" if expected == "open" else "opened",
                "service": service,
                "expected": expected,
            },
        )
