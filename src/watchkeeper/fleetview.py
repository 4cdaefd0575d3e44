"""The fleet view: the agents on a store and who runs what, as the dashboard, the API,
``/metrics`` and ``watchkeeper status`` show them. Read from the store only (the agents'
heartbeats and the leases), so any agent, or a shell with no agent, shows the whole fleet.
"""

from __future__ import annotations

from typing import Any

from watchkeeper.fleet import lease_of
from watchkeeper.store import Store


def agent_docs(store: Store, lease: float) -> list[dict[str, Any]]:
    """Every agent that sent a heartbeat to this store, by name: alive (its last heartbeat is
    younger than its lease, on the database's clock), how long ago, and what it runs.

    ``lease`` is the reader's own: used for an agent whose heartbeat does not say its lease.
    """
    now = store.db_now()
    docs = []
    for record in sorted(store.agents(), key=lambda r: r.name):
        info = record.info if isinstance(record.info, dict) else {}
        running = info.get("watchers")
        docs.append(
            {
                "name": record.name,
                "alive": record.alive(now, lease_of(record, lease)),
                "last_seen": record.last_seen,
                "seen_ago": max(0.0, now - record.last_seen),
                "started_at": record.started_at,
                "host": info.get("host"),
                "pid": info.get("pid"),
                "version": info.get("version"),
                "dashboard": info.get("dashboard"),
                "watchers": running if isinstance(running, list) else [],
                "leases_lost": info.get("leases_lost", 0),
            }
        )
    return docs


def runners(store: Store, agents: list[dict[str, Any]]) -> dict[str, str]:
    """{watcher: the agent running it}: a shared watcher's lease holder (while the lease is
    valid), else what the live agents' heartbeats say they run."""
    found: dict[str, str] = {}
    for doc in agents:
        if doc["alive"]:
            for name in doc["watchers"]:
                if isinstance(name, str):
                    found[name] = doc["name"]
    now = store.db_now()
    for lease in store.leases():
        if lease.agent is not None and lease.expires_at > now:
            found[lease.watcher] = lease.agent
        elif found.get(lease.watcher) == lease.agent or lease.agent is None:
            found.pop(lease.watcher, None)  # released, or ran out before the heartbeat did
    return found
