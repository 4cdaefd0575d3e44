"""watchkeeper: keep watch in the background of a Python program.

Watchers are daemon threads that never hold your program open; alerts go through rules into a
durable SQLite outbox and out through notifiers, and none is lost or sent twice.

The public names below are imported on first use (PEP 562): ``import watchkeeper`` alone, which
every ``watchkeeper`` command and ``python -m watchkeeper`` runs first, then costs almost nothing,
and a command such as ``watchkeeper scan`` never imports pydantic, the watchers or the notifiers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from watchkeeper.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    StoreError,
    TransientDeliveryError,
    WatchkeeperError,
)

if TYPE_CHECKING:
    from watchkeeper.alerts import Alert, Observation, Rules, Severity
    from watchkeeper.config import Config, load_config
    from watchkeeper.keeper import Keeper
    from watchkeeper.notifiers import Notifier, NotifierConfig
    from watchkeeper.watchers import CheckResult, Watcher, WatcherConfig

__version__ = "0.1.0"

_LAZY = {
    "Alert": "watchkeeper.alerts",
    "Observation": "watchkeeper.alerts",
    "Rules": "watchkeeper.alerts",
    "Severity": "watchkeeper.alerts",
    "Config": "watchkeeper.config",
    "load_config": "watchkeeper.config",
    "Keeper": "watchkeeper.keeper",
    "Notifier": "watchkeeper.notifiers",
    "NotifierConfig": "watchkeeper.notifiers",
    "CheckResult": "watchkeeper.watchers",
    "Watcher": "watchkeeper.watchers",
    "WatcherConfig": "watchkeeper.watchers",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access, then keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Alert",
    "CheckResult",
    "Config",
    "ConfigError",
    "DeliveryError",
    "Keeper",
    "Notifier",
    "NotifierConfig",
    "Observation",
    "PermanentDeliveryError",
    "Rules",
    "Severity",
    "StoreError",
    "TransientDeliveryError",
    "Watcher",
    "WatcherConfig",
    "WatchkeeperError",
    "__version__",
    "load_config",
]
