"""Notifiers: where alerts go. A kind's module is imported when the kind is looked up."""

from watchkeeper.notifiers.base import NOTIFIERS, Notifier, NotifierConfig, register

__all__ = ["NOTIFIERS", "Notifier", "NotifierConfig", "register"]
