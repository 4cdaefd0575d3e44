"""The exceptions watchkeeper raises, as one tree.

Foreign exceptions (sqlite3, smtplib, httpx, tomllib, pydantic) are translated where they enter,
with ``raise ... from exc``, so callers only ever need to catch these::

    WatchkeeperError
    ├── ConfigError              a config file or argument is wrong; the message says where
    ├── StoreError               the state (SQLite file, PostgreSQL database) cannot be used
    │   └── LeaseLost                a check's lease went to another agent: its commit is refused
    └── DeliveryError            a notifier could not deliver
        ├── TransientDeliveryError   try again later (timeouts, 4xx/5xx that may pass)
        └── PermanentDeliveryError   retrying cannot help (bad address, 4xx rejection)
"""

from __future__ import annotations


class WatchkeeperError(Exception):
    """Base class of every error watchkeeper raises on purpose."""


class ConfigError(WatchkeeperError):
    """A configuration problem; ``errors`` holds one message per problem found."""

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class StoreError(WatchkeeperError):
    """The state database could not be used.

    ``transient``: trying again may work (the database connection was lost, a transaction lost a
    serialization conflict); False for what will fail again (a bad schema, a full disk's file).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class LeaseLost(StoreError):
    """A shared watcher's lease is no longer held with the fencing token the check ran under:
    another agent has it (this one was paused or cut off past the lease), so nothing commits."""


class DeliveryError(WatchkeeperError):
    """A notifier failed to deliver an alert."""


class TransientDeliveryError(DeliveryError):
    """Delivery failed in a way that may pass: the outbox keeps it and retries with backoff.

    ``retry_after``: the receiver asked not to be tried again for this many seconds (HTTP
    Retry-After); the retry waits at least that long.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Delivery failed in a way retrying cannot fix: the delivery is marked failed, kept visible."""
