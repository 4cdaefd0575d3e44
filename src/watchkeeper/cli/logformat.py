"""How the agent's own log records look: for a person at a terminal, or for a machine.

Rich's handler is made for a terminal: local dates, columns, tracebacks wrapped to the width. Under
journald, Docker or a pipe into a log shipper those become noise, so ``--log-format auto`` (the
default) uses rich only when stderr is a terminal and otherwise one line per record::

    2026-11-30T16:07:01.123Z WARNING watchkeeper: notifier smtp: SMTP 451: try later; retry in 2s
        Traceback (most recent call last):
        ...

An ISO 8601 UTC time, the level, the logger and the message; every further line of the record (a
multi-line message, a traceback) is indented, so a reader or a parser knows where a record ends.
``json`` writes one object per line for shippers (Vector, Fluent Bit, Promtail) with the stdlib,
which does this well enough that python-json-logger would not earn its place. When stderr is
journald's own stream (``$JOURNAL_STREAM``), each text line starts with the sd-daemon priority
prefix (``<4>``), which journald strips and records as the entry's priority, so ``journalctl -p
warning`` works.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Literal, TextIO

from watchkeeper.quantities import iso_utc

LogFormat = Literal["auto", "text", "json", "rich"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "text", "json", "rich")

_PRIORITY = {  # syslog(3) priorities, as journald reads them from a "<N>" line prefix
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _details(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The traceback and stack of a record, as text (empty when it has neither)."""
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


class TextFormatter(logging.Formatter):
    """One line per record, continuation lines indented; ``journald`` adds priority prefixes."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        """``TIME LEVEL LOGGER: MESSAGE`` and the record's further lines, indented."""
        lines = record.getMessage().splitlines() or [""]
        details = _details(self, record)
        if details:
            lines += details.splitlines()
        head = f"{iso_utc(record.created)} {record.levelname} {record.name}: {lines[0]}"
        rest = ["    " + line.rstrip() for line in lines[1:]]
        if not self.journald:
            return "\n".join([head, *rest])
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in [head, *rest])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, message, and traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON (newlines in values are escaped)."""
        doc = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        details = _details(self, record)
        if details:
            doc["traceback"] = details
        return json.dumps(doc, ensure_ascii=False, default=str)


def under_journald(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError):  # a stream without a descriptor (pytest's capture)
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def for_machines(logger: logging.Logger) -> bool:
    """Whether ``logger`` writes through one of these formatters (text or json), not rich."""
    return any(isinstance(h.formatter, TextFormatter | JsonFormatter) for h in logger.handlers)


def log_handler(fmt: LogFormat, stream: TextIO) -> logging.Handler:
    """A handler writing records to ``stream`` in ``fmt``: ``auto`` is rich on a terminal only."""
    if fmt == "auto":
        fmt = "rich" if stream.isatty() else "text"
    if fmt == "rich":
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console(file=stream, highlight=False, soft_wrap=True)
        return RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journald=under_journald(stream)))
    return handler
