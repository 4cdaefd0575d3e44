"""The schema and its migrations: each version's statements, applied in order at start.

A state file records its version (``PRAGMA user_version``); a start migrates an older file
forward in one transaction and refuses a newer one.
"""

from __future__ import annotations

from watchkeeper import tallies

SCHEMA_VERSION = 3


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
}
