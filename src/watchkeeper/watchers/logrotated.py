"""Where rotated files go, how a file is recognised by its content there, and what was lost.

A rotation tool moves a followed file away (``app.log.1``, ``app.log-20261130``, an ``olddir``
elsewhere), copies it (copytruncate), or compresses it (``app.log.2.gz``). The ``rotated`` globs
name where such files may be found; a file found there is recognised by its *content*, the way
Vector's file source does: the checksum of its first bytes (the fingerprint, up to 1 KiB) and of
the bytes just before the offset read (the marker). So a copy or a compressed archive of bytes
already read continues at the right offset instead of being read again from 0, and a file with
other content under a reused inode is a new file.

Bytes that vanish before they are read (a file deleted or truncated with unread data, a file
rotated out of every known path) are reported: :func:`loss` makes the health observation and
the checkpoint keeps the running totals (:func:`lost_totals` reads them for status and metrics).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import logging
import os
import shutil
import stat
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watchkeeper.alerts import HEALTH_KEY, Observation, Severity

log = logging.getLogger("watchkeeper")

DEFAULT_ROTATED = ("{path}.1", "{path}-*", "{path}.*")
"""Where rotated files are looked for when the config does not say: logrotate's names (with or
without ``dateext``), Python's ``RotatingFileHandler`` and ``TimedRotatingFileHandler``."""
ARCHIVES = (".gz",)
"""Compressed rotated files that are read (decompressed) when they hold unread lines."""
UNREADABLE = (".bz2", ".xz", ".zst", ".lz4", ".zip")
"""Compressed files that are never taken for text."""
COMPRESSED = ARCHIVES + UNREADABLE
LOST_KEY = f"{HEALTH_KEY}:lost"
"""The rule key of loss reports: one alert per episode, told apart from line alerts."""


def rotated_globs(path: str, patterns: Sequence[str] | None) -> list[str]:
    """The globs where files rotated away from ``path`` may be: ``{path}``/``{name}`` filled in.

    A pattern without a placeholder (an ``olddir`` glob such as ``/var/log/old/app.log*``)
    stands as written.
    """
    folder, name = os.path.split(path)
    out = []
    for pattern in patterns or DEFAULT_ROTATED:
        text = pattern.replace("{path}", glob.escape(path)).replace("{name}", glob.escape(name))
        if not os.path.isabs(text) and "{path}" not in pattern:
            text = os.path.join(glob.escape(folder or "."), text)
        out.append(text)
    return list(dict.fromkeys(out))


def rotated_files(
    path: str, patterns: Sequence[str] | None, exclude: Iterable[str] = ()
) -> list[tuple[str, os.stat_result]]:
    """Regular files the rotated globs of ``path`` name now (never ``path`` itself)."""
    skip = {path, *exclude}
    found: dict[str, os.stat_result] = {}
    for pattern in rotated_globs(path, patterns):
        for name in glob.glob(pattern):
            if name in skip or name in found or name.endswith(UNREADABLE):
                continue
            with contextlib.suppress(OSError):
                info = os.stat(name)
                if stat.S_ISREG(info.st_mode):
                    found[name] = info
    return sorted(found.items())


def rotated_folders(paths: Iterable[str], patterns: Sequence[str] | None) -> list[str]:
    """Folders (without glob characters) the rotated globs point into, for inotify."""
    folders = []
    for path in paths:
        for pattern in rotated_globs(path, patterns):
            folder = os.path.dirname(pattern) or "."
            if not glob.has_magic(folder):
                folders.append(folder)
    return list(dict.fromkeys(folders))


def is_archive(path: str) -> bool:
    """Whether ``path`` is a compressed file that is read decompressed."""
    return path.endswith(ARCHIVES)


def open_archive(path: str) -> tuple[int, os.stat_result] | None:
    """A descriptor on the decompressed text of ``path``, with the archive's identity.

    The text goes to an anonymous temporary file, so that it is read like any other file (with
    ``pread`` at an offset); the stat result is the archive's (device, inode, times) with the
    decompressed size. None when the archive is unreadable or still being written.
    """
    try:
        info = os.stat(path)
        with gzip.open(path, "rb") as packed, tempfile.TemporaryFile() as text:
            shutil.copyfileobj(packed, text, 1024 * 1024)
            text.flush()
            fd = os.dup(text.fileno())
    except (OSError, EOFError, zlib.error) as exc:
        log.debug("cannot read archive %s yet: %s", path, exc)
        return None
    size = os.fstat(fd).st_size
    fields = (*info[:6], size, *info[7:10])
    return fd, os.stat_result(fields, {"st_mtime_ns": info.st_mtime_ns})


@dataclass(frozen=True)
class Known:
    """Content already read: a fingerprint, the offset read to, the marker before it."""

    fp: str
    fp_len: int
    offset: int
    mark: str
    live: bool = False
    """Its file is still followed where it was: a copy of it is a copy in progress."""
    fd: int | None = None
    """A live file's descriptor, to tell a copy still shorter than the fingerprint by its bytes."""
    head: bytes = b""
    """Its first bytes, when they are in memory (a content a truncate ended, as inotify's thread
    kept it): a copy shorter than the fingerprint is told by them."""


def done_record(entry: Any, mtime: int) -> list[Any]:
    """How the checkpoint remembers a rotated file read to its end."""
    return [
        entry.dev,
        entry.ino,
        mtime,
        entry.origin,
        entry.fp,
        entry.fp_len,
        entry.offset,
        entry.mark,
    ]


def known_from_done(records: Iterable[Sequence[Any]]) -> list[Known]:
    """The content of the finished files (records from before fingerprints were kept: none)."""
    return [Known(str(d[4]), int(d[5]), int(d[6]), str(d[7])) for d in records if len(d) >= 8]


def loss(
    path: str,
    lost: int | None,
    reason: str,
    lines: int | None = None,
    files: int | None = None,
) -> Observation:
    """The health alert for one episode of bytes that vanished before they were read.

    ``lost`` is None when the size is unknown (files deleted before anyone could open them);
    ``files`` then says how many, when that is known.
    """
    if lost is None:
        counted = f"{files:,} files" if files else "an unknown amount"
    else:
        counted = f"{lost:,} bytes" + (f" ({lines:,} lines)" if lines is not None else "")
    return Observation(
        title=f"{counted} lost from {path}: {reason}",
        severity=Severity.ERROR,
        key=LOST_KEY,
        body=(
            f"{counted} of {path} were gone before they could be read: {reason}. "
            "See docs/log.md (Rotation) for the settings that prevent this."
        ),
        data={
            "lost": True,
            "path": path,
            "bytes": lost,
            "lines": lines,
            "files": files,
            "reason": reason,
        },
        event=True,
    )


def count_loss(
    totals: Mapping[str, Any] | None, lost: int | None, lines: int | None, files: int | None = None
) -> dict[str, int]:
    """The checkpoint's running totals of loss, with one more episode."""
    now = dict(totals or {})
    return {
        "bytes": int(now.get("bytes", 0)) + (lost or 0),
        "lines": int(now.get("lines", 0)) + (lines or 0),
        "files": int(now.get("files", 0)) + (files or 0),
        "episodes": int(now.get("episodes", 0)) + 1,
    }


def lost_totals(checkpoint: Any) -> dict[str, int] | None:
    """The loss totals a log watcher's checkpoint holds (None for other kinds)."""
    if not isinstance(checkpoint, dict) or "paths" not in checkpoint:
        return None
    totals = checkpoint.get("lost") or {}
    return {k: int(totals.get(k, 0)) for k in ("bytes", "lines", "files", "episodes")}
