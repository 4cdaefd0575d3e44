"""``/metrics``: Prometheus text format, read from the store at scrape time.

A custom collector rather than counters bumped in the hot path: the store already holds every
number (checks, alerts, deliveries), it survives restarts, and it also counts what other
processes sharing the state file did. Counters stay monotonic because the store only adds rows
and ``checks`` / ``failures_total`` only grow (``failures_total`` is schema migration 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchkeeper.store import Store
from watchkeeper.watchers.logrotated import lost_totals
from watchkeeper.web.details import file_size, lag


class StoreCollector(Collector):
    """Collects watchkeeper's numbers from the state file on every scrape."""

    def __init__(
        self,
        store: Store,
        stream_clients: Callable[[], int],
        health: Callable[[], dict[str, Any]] | None = None,
        agents: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.store = store
        self.stream_clients = stream_clients
        self.health = health
        self.agents = agents

    def collect(self) -> Iterator[Metric]:
        """One family per number; see docs/dashboard.md for the list."""
        watchers = self.store.watchers()
        checks = CounterMetricFamily(
            "watchkeeper_checks", "Checks run, by watcher.", labels=["watcher", "kind"]
        )
        failures = CounterMetricFamily(
            "watchkeeper_check_failures", "Checks that raised, by watcher.", labels=["watcher"]
        )
        failing = GaugeMetricFamily(
            "watchkeeper_watcher_consecutive_failures",
            "Failed checks in a row (0: healthy).",
            labels=["watcher"],
        )
        paused = GaugeMetricFamily(
            "watchkeeper_watcher_paused", "1 when the watcher is paused.", labels=["watcher"]
        )
        last = GaugeMetricFamily(
            "watchkeeper_watcher_last_check_timestamp_seconds",
            "When the watcher last checked (Unix time).",
            labels=["watcher"],
        )
        lag = GaugeMetricFamily(
            "watchkeeper_log_lag_bytes",
            "Bytes written to a watched file beyond the committed offset.",
            labels=["watcher", "path"],
        )
        lost = CounterMetricFamily(
            "watchkeeper_log_bytes_lost",
            "Bytes of watched files that vanished before they were read (each episode is also "
            "a health alert).",
            labels=["watcher"],
        )
        slow = CounterMetricFamily(
            "watchkeeper_log_slow_lines",
            "Lines on which a log rule's pattern ran out of line_timeout (that rule skipped them).",
            labels=["watcher"],
        )
        for w in watchers:
            totals = lost_totals(w.checkpoint)
            if totals is not None:
                lost.add_metric([w.name], totals["bytes"])
            if isinstance(w.checkpoint, dict) and isinstance(w.checkpoint.get("slow"), dict):
                slow.add_metric([w.name], w.checkpoint["slow"].get("lines", 0))
            checks.add_metric([w.name, w.kind], w.checks)
            failures.add_metric([w.name], w.failures_total)
            failing.add_metric([w.name], w.failures)
            paused.add_metric([w.name], int(w.paused))
            if w.last_check is not None:
                last.add_metric([w.name], w.last_check)
            # A log watcher's files are its checkpoint's parts (one per file).
            parts = self.store.checkpoint_parts(w.name) if totals is not None else {}
            for path, behind in file_lags([w.checkpoint, *parts.values()]):
                lag.add_metric([w.name, path], behind)
        yield from (checks, failures, failing, paused, last, lag, lost, slow)

        alerts = CounterMetricFamily(
            "watchkeeper_alerts",
            "Alerts made, by severity and watcher.",
            labels=["severity", "watcher"],
        )
        for watcher, severity, count in self.store.alert_totals():
            alerts.add_metric([str(severity), watcher], count)
        yield alerts

        deliveries = CounterMetricFamily(
            "watchkeeper_deliveries",
            "Deliveries that ended, by notifier and outcome (sent, failed).",
            labels=["notifier", "outcome"],
        )
        pending = GaugeMetricFamily(
            "watchkeeper_deliveries_pending",
            "Deliveries waiting in the outbox.",
            labels=["notifier"],
        )
        attempts = CounterMetricFamily(
            "watchkeeper_delivery_attempts",
            "Tries to deliver, failed ones included.",
            labels=["notifier"],
        )
        for notifier, counts in sorted(self.store.delivery_counts().items()):
            for outcome in ("sent", "failed"):
                deliveries.add_metric([notifier, outcome], counts.get(outcome, 0))
            pending.add_metric([notifier], counts.get("pending", 0))
        for notifier, total in sorted(self.store.delivery_attempts().items()):
            attempts.add_metric([notifier], total)
        yield from (deliveries, pending, attempts)

        clients = GaugeMetricFamily(
            "watchkeeper_stream_clients", "Clients connected to /api/stream."
        )
        clients.add_metric([], self.stream_clients())
        yield clients
        if self.health is not None:  # a keeper's own threads: not for a state file alone
            yield from health_metrics(self.health())
        if self.agents is not None:
            yield from agent_metrics(self.agents())


def agent_metrics(agents: list[dict[str, Any]]) -> Iterator[Metric]:
    """The fleet: each agent's heartbeat, what it runs, the commits its lost leases refused."""
    up = GaugeMetricFamily(
        "watchkeeper_agent_up",
        "1 while the agent's heartbeat is within its lease.",
        labels=["agent"],
    )
    age = GaugeMetricFamily(
        "watchkeeper_agent_heartbeat_age_seconds",
        "Seconds since the agent's last heartbeat (database clock).",
        labels=["agent"],
    )
    running = GaugeMetricFamily(
        "watchkeeper_agent_watchers", "Watchers the agent runs now.", labels=["agent"]
    )
    lost = CounterMetricFamily(
        "watchkeeper_agent_leases_lost",
        "Commits refused because the agent's lease had gone to another agent (fencing).",
        labels=["agent"],
    )
    for doc in agents:
        labels = [doc["name"]]
        up.add_metric(labels, int(doc["alive"]))
        age.add_metric(labels, doc["seen_ago"])
        running.add_metric(labels, len(doc["watchers"]))
        lost.add_metric(labels, doc["leases_lost"] if isinstance(doc["leases_lost"], int) else 0)
    yield from (up, age, running, lost)


def health_metrics(report: dict[str, Any]) -> Iterator[Metric]:
    """The supervisor's report: thread states and restarts, the store's write fault."""
    crashed = GaugeMetricFamily(
        "watchkeeper_thread_crashed",
        "1 while a thread is crashed (waiting to be restarted).",
        labels=["thread", "kind"],
    )
    restarting = GaugeMetricFamily(
        "watchkeeper_thread_restarting",
        "1 while a restarted thread has not yet run for a minute.",
        labels=["thread", "kind"],
    )
    restarts = CounterMetricFamily(
        "watchkeeper_thread_restarts", "Restarts after a crash.", labels=["thread", "kind"]
    )
    for unit in report.get("threads", []):
        labels = [unit["name"], unit["kind"]]
        crashed.add_metric(labels, int(unit["state"] == "crashed"))
        restarting.add_metric(labels, int(unit["state"] == "restarting"))
        restarts.add_metric(labels, unit["restarts"])
    store = report.get("store", {})
    failing = GaugeMetricFamily(
        "watchkeeper_store_write_failing", "1 while writes to the state file fail."
    )
    failing.add_metric([], int(store.get("state") == "failing"))
    unmarked = GaugeMetricFamily(
        "watchkeeper_unmarked_sends",
        "Deliveries sent whose mark the state file could not take yet (kept in memory).",
    )
    unmarked.add_metric([], store.get("unmarked_sends", 0))
    yield from (crashed, restarting, restarts, failing, unmarked)


def file_lags(checkpoint: Any) -> Iterator[tuple[str, int]]:
    """(path, bytes behind) for each ``{"path": ..., "offset": ...}`` found in a checkpoint.

    The log watcher's checkpoint records a byte offset per file; the lag is how much has been
    written since. A file smaller than its offset was truncated: its lag is its size. When the
    entry names an inode (``ino``) and the path now holds another file (rotated away), the entry
    says nothing about the file at that path and is skipped.
    """
    if isinstance(checkpoint, dict):
        path, offset = checkpoint.get("path"), checkpoint.get("offset")
        if isinstance(path, str) and isinstance(offset, int):
            size = file_size(path, checkpoint.get("ino"))
            if size is not None:
                yield path, lag(size, offset)
        for value in checkpoint.values():
            yield from file_lags(value)
    elif isinstance(checkpoint, list):
        for value in checkpoint:
            yield from file_lags(value)


def metrics_registry(
    store: Store,
    stream_clients: Callable[[], int],
    health: Callable[[], dict[str, Any]] | None = None,
    agents: Callable[[], list[dict[str, Any]]] | None = None,
) -> CollectorRegistry:
    """A registry of our own (not the process-global one) holding the store collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, stream_clients, health, agents))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)
