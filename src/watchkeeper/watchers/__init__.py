"""Watchers: what to keep watch over. Importing this package fills the registry by kind."""

from watchkeeper.watchers import custom, log, page, ports
from watchkeeper.watchers.base import WATCHERS, CheckResult, Watcher, WatcherConfig, register

__all__ = [
    "WATCHERS",
    "CheckResult",
    "Watcher",
    "WatcherConfig",
    "custom",
    "log",
    "page",
    "ports",
    "register",
]
