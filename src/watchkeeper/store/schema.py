"""The schema and its migrations, for both backends: each version's statements, in order.

A state records its version (SQLite: ``PRAGMA user_version``; PostgreSQL: the ``schema_version``
table); a start migrates an older one forward in one transaction and refuses a newer one.

SQLite files have a history (versions 1 to 3 exist in the field); a PostgreSQL database starts at
:data:`POSTGRES_BASE`, the whole schema of that version in one step, with PostgreSQL's types
(``DOUBLE PRECISION`` for times: its ``REAL`` is only 4 bytes; identity columns; ``BIGINT``
counters). Versions after it are one migration per backend, kept side by side.
"""

from __future__ import annotations

from watchkeeper import tallies

SCHEMA_VERSION = 6


FLEET_TABLES = """;
CREATE TABLE agents (
    name        TEXT PRIMARY KEY,
    instance    TEXT NOT NULL,          -- one run of the agent (a start makes a new one)
    started_at  {time} NOT NULL,
    last_seen   {time} NOT NULL,        -- the database's clock
    info        TEXT NOT NULL           -- JSON: host, pid, version, watchers, dashboard
);
CREATE TABLE leases (
    watcher     TEXT PRIMARY KEY,
    agent       TEXT,                   -- NULL: released
    token       BIGINT NOT NULL,        -- grows each time the lease changes hands
    expires_at  {time} NOT NULL         -- the database's clock
)
"""
"""Agents and leases (schema 4), with the backend's type for times."""
LEASE_RUNS = """
ALTER TABLE leases ADD COLUMN instance TEXT NOT NULL DEFAULT ''
"""
"""Schema 5, both backends: which run of its agent holds a lease (``agents.instance``), so a
new run of the same name takes it with a new fencing token."""

CHECKPOINT_PARTS = """
CREATE TABLE checkpoint_parts (
    watcher         TEXT NOT NULL,
    part            TEXT NOT NULL,
    value           TEXT NOT NULL,      -- JSON
    PRIMARY KEY (watcher, part)
){options};
"""
"""Schema 6, both backends (``options``: SQLite's WITHOUT ROWID): a checkpoint's parts (see
``watchers.base.CheckResult.parts``), one row each, so that a check commits the parts it
changed, not all of them."""

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE watchers (
        name            TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,
        checkpoint      TEXT,               -- JSON, watcher-specific
        rule_state      TEXT,               -- JSON, see alerts.RuleEngine
        failures        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        last_check      REAL,
        next_check      REAL,
        checks          INTEGER NOT NULL DEFAULT 0,
        paused          INTEGER NOT NULL DEFAULT 0,
        muted_until     REAL
    );
    CREATE TABLE alerts (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        uid             TEXT NOT NULL UNIQUE,
        watcher         TEXT NOT NULL,
        kind            TEXT NOT NULL,
        severity        INTEGER NOT NULL,
        status          TEXT NOT NULL,
        key             TEXT NOT NULL,
        title           TEXT NOT NULL,
        body            TEXT NOT NULL,
        data            TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE INDEX alerts_watcher ON alerts (watcher, id);
    CREATE INDEX alerts_created ON alerts (created_at);
    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_id        INTEGER NOT NULL REFERENCES alerts (id),
        notifier        TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | failed
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_try        REAL NOT NULL,
        last_error      TEXT,
        sent_at         REAL,
        UNIQUE (alert_id, notifier)
    );
    CREATE INDEX deliveries_due ON deliveries (notifier, status, next_try);
    """,
    # 2: a failure counter that never resets, for /metrics (``failures`` counts a streak).
    2: """
    ALTER TABLE watchers ADD COLUMN failures_total INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: fingerprints (grouping, throttles); due deliveries from a partial index in due order,
    # so taking the next ones never sorts the backlog and the index holds only pending rows;
    # failed ones in one too (status pages list their errors); counters (see tallies.py).
    3: """
    ALTER TABLE alerts ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    DROP INDEX deliveries_due;
    CREATE INDEX deliveries_pending ON deliveries (notifier, next_try, id)
        WHERE status = 'pending';
    CREATE INDEX deliveries_failed ON deliveries (notifier, id) WHERE status = 'failed';
    """
    + tallies.SCHEMA,
    # 4: fleets: who registered a watcher (NULL: shared), agents' heartbeats, shared watchers'
    # leases, and deliveries claimed by one agent's dispatcher until a time.
    4: """
    ALTER TABLE watchers ADD COLUMN owner TEXT;
    ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
    ALTER TABLE deliveries ADD COLUMN claim_until REAL;
    """
    + FLEET_TABLES.format(time="REAL"),
    5: LEASE_RUNS,
    6: CHECKPOINT_PARTS.format(options=" WITHOUT ROWID"),
}

POSTGRES_BASE = 4
"""The version a new PostgreSQL database starts at."""

POSTGRES_MIGRATIONS: dict[int, str] = {
    4: """
    CREATE TABLE watchers (
        name            TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,
        checkpoint      TEXT,
        rule_state      TEXT,
        failures        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        last_check      DOUBLE PRECISION,
        next_check      DOUBLE PRECISION,
        checks          BIGINT NOT NULL DEFAULT 0,
        paused          INTEGER NOT NULL DEFAULT 0,
        muted_until     DOUBLE PRECISION,
        failures_total  BIGINT NOT NULL DEFAULT 0,
        owner           TEXT
    );
    CREATE TABLE alerts (
        id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        uid             TEXT NOT NULL UNIQUE,
        watcher         TEXT NOT NULL,
        kind            TEXT NOT NULL,
        severity        INTEGER NOT NULL,
        status          TEXT NOT NULL,
        key             TEXT NOT NULL,
        title           TEXT NOT NULL,
        body            TEXT NOT NULL,
        data            TEXT NOT NULL,
        created_at      DOUBLE PRECISION NOT NULL,
        fingerprint     TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX alerts_watcher ON alerts (watcher, id);
    CREATE INDEX alerts_created ON alerts (created_at);
    CREATE TABLE deliveries (
        id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        alert_id        BIGINT NOT NULL REFERENCES alerts (id),
        notifier        TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_try        DOUBLE PRECISION NOT NULL,
        last_error      TEXT,
        sent_at         DOUBLE PRECISION,
        claimed_by      TEXT,
        claim_until     DOUBLE PRECISION,
        UNIQUE (alert_id, notifier)
    );
    CREATE INDEX deliveries_pending ON deliveries (notifier, next_try, id)
        WHERE status = 'pending';
    CREATE INDEX deliveries_failed ON deliveries (notifier, id) WHERE status = 'failed';
    CREATE TABLE alert_totals (
        watcher TEXT NOT NULL, severity INTEGER NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (watcher, severity)
    );
    CREATE TABLE alert_hours (
        watcher TEXT NOT NULL, hour BIGINT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (watcher, hour)
    );
    CREATE TABLE delivery_totals (
        notifier TEXT NOT NULL, status TEXT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (notifier, status)
    )
    """
    + FLEET_TABLES.format(time="DOUBLE PRECISION"),
    5: LEASE_RUNS,
    6: CHECKPOINT_PARTS.format(options=""),
}
