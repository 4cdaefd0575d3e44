"""Agents and leases: who is alive, and which agent runs each shared watcher.

Every time here is the database's clock (:meth:`StoreCore.db_now`), never an agent's: agents
whose clocks disagree still agree on whose heartbeat is fresh and whose lease has run out.

A lease row per shared watcher holds its agent, the agent's run (``instance``, from
:meth:`Fleet.claim`), a fencing token and an expiry. The token grows each time the lease changes
hands, also between two runs of one agent name (never on a renewal by its holder), so a check
that ran under an older token cannot commit (:meth:`WatcherStore.commit_check` with ``fence``):
not even one of a paused run whose name a new run took over once its heartbeat was stale.
On SQLite (one agent per file) the same calls work and always grant: the keeper has one code
path.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from watchkeeper.errors import StoreError
from watchkeeper.store.backend import Tx
from watchkeeper.store.core import StoreCore
from watchkeeper.store.records import AgentRecord, LeaseRecord

LEASE = 30.0
"""Seconds without a heartbeat after which an agent's name is free again (``[keeper] lease``)."""


def default_agent() -> str:
    """An agent's name when its config gives none: the host's name."""
    return socket.gethostname() or "localhost"


class Fleet(StoreCore):
    """The agents table and the leases table; see the module docstring."""

    _instance = ""

    def claim(self, agent: str | None = None, lease: float = LEASE) -> None:
        """Start as ``agent`` (default: the host's name), or raise StoreError saying who is in
        the way.

        SQLite: become the one writer of the file (an advisory ``flock`` on ``<state>.lock``,
        dropped by the kernel when the process dies, even by SIGKILL). PostgreSQL: another live
        agent of the same name (heartbeat fresher than ``lease``) is refused, unless it is a
        process of this host that no longer exists (a restart after a crash).
        """
        name = agent or default_agent()
        self._db.claim()
        instance = uuid.uuid4().hex
        info = _this_process()
        now = self._db.dialect.now
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO agents (name, instance, started_at, last_seen, info) "
                f"VALUES (?, ?, {now}, {now}, ?) ON CONFLICT (name) DO NOTHING",
                (name, instance, json.dumps(info)),
            )
            row = conn.execute(
                f"SELECT instance, last_seen, info, {now} FROM agents WHERE name = ?"
                f"{self._db.dialect.for_update}",
                (name,),
            ).fetchone()
            if row[0] not in (instance, "") and self.fleet_capable:
                self._refuse_live(name, row[1], _json(row[2]), row[3], lease)
            conn.execute(
                f"UPDATE agents SET instance = ?, started_at = {now}, last_seen = {now}, "
                "info = ? WHERE name = ?",
                (instance, json.dumps(info), name),
            )
        self.agent = name
        self._instance = instance

    def close(self) -> None:
        """Close the store; an agent that :meth:`claim` registered leaves its name free at once
        (a crashed one frees it when its heartbeat is older than the lease)."""
        if self.agent is not None and self.fleet_capable:
            with contextlib.suppress(StoreError), self.transaction() as conn:
                conn.execute(
                    "UPDATE agents SET instance = '' WHERE name = ? AND instance = ?",
                    (self.agent, self._instance),
                )
        super().close()

    def _refuse_live(
        self, name: str, last_seen: float, info: dict[str, Any], now: float, lease: float
    ) -> None:
        """Raise StoreError if the agent row's holder may still be running."""
        if last_seen <= now - lease:
            return
        if info.get("host") == socket.gethostname() and not _same_process_alive(info):
            return
        raise StoreError(
            f"agent {name!r} is already running on {self.where} (host {info.get('host', '?')}, "
            f"pid {info.get('pid', '?')}, last heard {now - last_seen:.1f} s ago); give each "
            f"agent its own name ([keeper] agent), or wait {lease:.0f} s after it stopped"
        )

    def heartbeat(self, agent: str, info: dict[str, Any]) -> bool:
        """Record that ``agent`` is alive now (the database's clock), with what it runs (this
        process's host, pid and its start are added unless ``info`` has them). False, and
        nothing recorded, when the name is another run's now (this one was paused past its
        lease and a new run took the name): that run's row is not this one's to refresh."""
        info = {**_this_process(), **info}
        now = self._db.dialect.now
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO agents (name, instance, started_at, last_seen, info) "
                f"VALUES (?, ?, {now}, {now}, ?) ON CONFLICT (name) DO UPDATE SET "
                "last_seen = excluded.last_seen, info = excluded.info "
                "WHERE agents.instance = excluded.instance",
                (agent, self._instance, json.dumps(info, default=str)),
            )
            return bool(self._current(conn, agent))

    def agents(self) -> list[AgentRecord]:
        """Every agent that ever ran against this state, by name."""
        rows = self._read(
            "SELECT name, started_at, last_seen, info, instance FROM agents ORDER BY name"
        )
        return [AgentRecord(r[0], r[1], r[2], _json(r[3]), stopped=r[4] == "") for r in rows]

    # -- leases -------------------------------------------------------------------------------

    def take_lease(self, watcher: str, agent: str, ttl: float) -> int | None:
        """Take ``watcher``'s lease for ``ttl`` seconds if it is free, expired or already
        ``agent``'s; its fencing token, or None while another agent holds it. Held by another
        run of ``agent`` (a restart; a paused run whose name was taken), it is taken at once
        with a new token, but only by the run the agents row names as the agent's current one:
        a paused run that wakes after its name was taken must not take it back (the two would
        hand it back and forth)."""
        return self.take_leases([watcher], agent, ttl).get(watcher)

    def take_leases(self, watchers: Sequence[str], agent: str, ttl: float) -> dict[str, int]:
        """:meth:`take_lease` for many watchers in one transaction (a failover takes hundreds);
        {watcher: token} of those taken. Rows are locked in name order, so two agents taking
        overlapping sets at once wait for each other instead of deadlocking."""
        taken: dict[str, int] = {}
        with self.transaction() as conn:
            current = self._current(conn, agent)
            for watcher in sorted(set(watchers)):
                holder, token, expires, now, run = self._lease_row(conn, watcher)
                if (holder, run) != (agent, self._instance):  # changes hands, maybe between runs
                    if holder is not None and expires > now and (holder != agent or not current):
                        continue
                    token += 1
                conn.execute(
                    "UPDATE leases SET agent = ?, instance = ?, token = ?, expires_at = ? "
                    "WHERE watcher = ?",
                    (agent, self._instance, token, now + ttl, watcher),
                )
                taken[watcher] = token
        return taken

    def renew_lease(self, watcher: str, agent: str, token: int, ttl: float) -> bool:
        """Extend a lease ``agent`` holds with ``token`` by ``ttl`` seconds from now; False if it
        went to another agent (an expired lease nobody took is still ours to renew)."""
        with self.transaction() as conn:
            holder, held, _, now, _ = self._lease_row(conn, watcher)
            if holder != agent or held != token:
                return False
            conn.execute("UPDATE leases SET expires_at = ? WHERE watcher = ?", (now + ttl, watcher))
            return True

    def renew_leases(self, held: Mapping[str, int], agent: str, ttl: float) -> set[str]:
        """:meth:`renew_lease` for many leases ({watcher: token}) in one transaction (an agent
        holding a thousand renews them in one commit, not a thousand); the watchers whose lease
        went to another agent."""
        if not held:
            return set()
        now = self._db.dialect.now
        with self.transaction() as conn:
            conn.executemany(
                f"UPDATE leases SET expires_at = {now} + ? "
                "WHERE watcher = ? AND agent = ? AND token = ?",
                [(ttl, watcher, agent, token) for watcher, token in held.items()],
            )
            rows = conn.execute(
                "SELECT watcher, token FROM leases WHERE agent = ?", (agent,)
            ).fetchall()
        ours = {(row[0], int(row[1])) for row in rows}
        return {watcher for watcher, token in held.items() if (watcher, token) not in ours}

    def release_lease(self, watcher: str, agent: str, token: int) -> None:
        """Give a lease up (a clean stop): another agent may take it at once."""
        self.release_leases({watcher: token}, agent)

    def release_leases(self, held: Mapping[str, int], agent: str) -> None:
        """:meth:`release_lease` for many leases ({watcher: token}) in one transaction."""
        if not held:
            return
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE leases SET agent = NULL, expires_at = 0 "
                "WHERE watcher = ? AND agent = ? AND token = ?",
                [(watcher, agent, token) for watcher, token in held.items()],
            )

    def leases(self) -> list[LeaseRecord]:
        """Every shared watcher's lease, by watcher."""
        rows = self._read("SELECT watcher, agent, token, expires_at FROM leases ORDER BY watcher")
        return [LeaseRecord(r[0], r[1], int(r[2]), float(r[3])) for r in rows]

    def _current(self, conn: Tx, agent: str) -> bool:
        """Whether this run is ``agent``'s current one (the agents row names its instance; no
        row: a store used without :meth:`claim`, as in one process)."""
        row = conn.execute("SELECT instance FROM agents WHERE name = ?", (agent,)).fetchone()
        return row is None or row[0] == self._instance

    def _lease_row(self, conn: Tx, watcher: str) -> tuple[str | None, int, float, float, str]:
        """(agent, token, expires_at, now, instance: the agent's run) of a watcher's lease,
        row-locked (made if missing)."""
        dialect = self._db.dialect
        conn.execute(
            "INSERT INTO leases (watcher, agent, token, expires_at) VALUES (?, NULL, 0, 0) "
            "ON CONFLICT (watcher) DO NOTHING",
            (watcher,),
        )
        row = conn.execute(
            f"SELECT agent, token, expires_at, {dialect.now}, instance FROM leases "
            f"WHERE watcher = ?{dialect.for_update}",
            (watcher,),
        ).fetchone()
        return row[0], int(row[1]), float(row[2]), float(row[3]), row[4]


def _json(text: str) -> dict[str, Any]:
    """An agent's info, or {} where it does not read as a JSON object (edited by hand)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _this_process() -> dict[str, Any]:
    """What an agent row says of the process that runs it: enough to tell later whether it
    still runs (see :func:`_same_process_alive`)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": _started(pid)}


def _same_process_alive(info: dict[str, Any]) -> bool:
    """Whether the process an agent row of this host names still runs.

    Its pid alone does not say: a restarted agent in a container of its own (its own pid
    namespace) is pid 1 every run, so the crashed run's pid is the new run's own; and pids
    are reused. A process is the same only if its pid also started at the recorded time.
    """
    pid, started = info.get("pid"), info.get("pid_started")
    if not _pid_alive(pid):
        return False
    return started is None or not isinstance(pid, int) or _started(pid) in (started, None)


def _started(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux's /proc), or None where
    that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return int(fields[19])  # field 22 of stat(5); the first after the name is field 3


def _pid_alive(pid: object) -> bool:
    """Whether a process of this host with that pid exists (unknown pids count as alive)."""
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
