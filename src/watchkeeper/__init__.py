"""watchkeeper: keep watch in the background of a Python program.

Watchers are daemon threads that never hold your program open; alerts go through rules into a
durable SQLite outbox and out through notifiers, and none is lost or sent twice.
"""

from watchkeeper.alerts import Alert, Observation, Rules, Severity
from watchkeeper.config import Config, load_config
from watchkeeper.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    StoreError,
    TransientDeliveryError,
    WatchkeeperError,
)
from watchkeeper.keeper import Keeper
from watchkeeper.notifiers import Notifier, NotifierConfig
from watchkeeper.watchers import CheckResult, Watcher, WatcherConfig

__version__ = "0.1.0"

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
