"""Watchers: what to keep watch over. A kind's module is imported when the kind is looked up."""

from watchkeeper.watchers.base import WATCHERS, CheckResult, Watcher, WatcherConfig, register

__all__ = ["WATCHERS", "CheckResult", "Watcher", "WatcherConfig", "register"]
