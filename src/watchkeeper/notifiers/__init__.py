"""Notifiers: where alerts go. Importing this package fills the registry by kind."""

from watchkeeper.notifiers import apprise, console, jsonl, smtp, webhook
from watchkeeper.notifiers.base import NOTIFIERS, Notifier, NotifierConfig, register

__all__ = [
    "NOTIFIERS",
    "Notifier",
    "NotifierConfig",
    "apprise",
    "console",
    "jsonl",
    "register",
    "smtp",
    "webhook",
]
