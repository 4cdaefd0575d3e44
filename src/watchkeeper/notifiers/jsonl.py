"""Append one JSON object per alert to a file: the simplest durable feed for other tools.

Each batch of alerts is appended with one ``write()`` on a file opened with O_APPEND, so
concurrent writers never interleave within a line. Fields: id, uid, watcher, kind, severity,
status, key, title, body, created_at (ISO 8601 UTC), fingerprint and data (kind-specific).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from watchkeeper.alerts import Alert
from watchkeeper.errors import TransientDeliveryError
from watchkeeper.notifiers.base import Notifier, NotifierConfig, register


class JsonlConfig(NotifierConfig):
    """``[[notify]] kind = "jsonl"``: append alerts to a JSON-lines file."""

    kind: Literal["jsonl"] = "jsonl"
    path: Path = Field(description="The file to append to; created with its folder if missing.")

    feed: ClassVar[bool] = True


@register
class JsonlNotifier(Notifier):
    """Writes alerts as JSON lines."""

    kind = "jsonl"
    config_model = JsonlConfig
    config: JsonlConfig

    def describe(self) -> str:
        """The file path."""
        return str(self.config.path)

    def send(self, alert: Alert) -> None:
        """Append the alert's line."""
        self._write([alert])

    @property
    def batches(self) -> bool:
        """Always: many alerts are as easy to write as one."""
        return True

    def send_batch(self, alerts: Sequence[Alert]) -> None:
        """One line per alert, in one write."""
        self._write(alerts)

    def _write(self, alerts: Sequence[Alert]) -> None:
        data = "".join(
            json.dumps(a.to_dict(), ensure_ascii=False, default=str) + "\n" for a in alerts
        ).encode()
        path = self.config.path
        try:
            fd = _open(path)
            try:
                _append_whole(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TransientDeliveryError(f"cannot append to {path}: {exc}") from exc


def _open(path: Path) -> int:
    """The file opened for appending, created with its folder if missing: the folder is made
    only when the open says it is missing, not tried before every write."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def _append_whole(fd: int, data: bytes) -> None:
    """Append all of ``data`` or nothing of it.

    A full disk can take part of a batch before failing; the retry then writes the batch again,
    so the torn head is cut off first (when no one else appended since) lest readers meet half
    a record followed by its whole copy.
    """
    start = os.fstat(fd).st_size
    written = 0
    try:
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError:
        if written and os.fstat(fd).st_size == start + written:
            os.ftruncate(fd, start)
        raise
