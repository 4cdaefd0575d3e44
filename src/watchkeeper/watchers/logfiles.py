"""Which file is which: identity through rotation, truncation, deletion and inode reuse.

A followed file is known by device + inode + a fingerprint (a hash of its first bytes, up to
1 KiB), and its read position by the byte offset plus a *marker*: a hash of the 64 bytes just
before the offset (Fluent Bit's offset marker). Together they tell apart:

- the same file, grown: identity and marker hold -> continue at the offset;
- rename rotation (logrotate's default): the inode is elsewhere in the folder (or still open
  here) -> read it to its end, then the new file at the path from its start;
- copytruncate: same inode, but the marker no longer matches (or the file is shorter than the
  offset, which catches truncated-and-rewritten-past-the-offset too) -> the copy is found in the
  folder by fingerprint + marker, its unread rest is read, then the file from its start;
- delete-and-recreate, inode reuse: the fingerprint differs -> a new file, from its start.

The search by identity in the folder also works after a restart, so a rotation that happened
while watchkeeper was down loses nothing as long as the rotated file is still in the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import hashlib
import logging
import os
import select
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import inotify_simple
except ImportError:  # pragma: no cover - not on Linux
    inotify_simple = None

log = logging.getLogger("watchkeeper")

FINGERPRINT = 1024
"""Bytes at the start of a file that identify it (with device and inode)."""
MARKER = 64
"""Bytes just before the offset whose hash must still be there for the offset to be valid."""


def digest(data: bytes) -> str:
    """A short, stable hash for fingerprints and markers."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass
class Tracked:
    """One followed file, as stored in the checkpoint."""

    path: str
    dev: int
    ino: int
    fp: str = ""
    fp_len: int = 0
    offset: int = 0
    mark: str = ""
    skip: bool = False
    """Inside an over-long line whose head was emitted: discard up to the next newline."""
    wait: tuple[int, float] | None = None
    """(offset, since): held there for a partial line or for a block that may still grow."""
    gone: float | None = None
    """When the file stopped being a member of the globs (rotated away): read it, then drop it."""
    origin: str = ""
    """The glob member path it was last seen at (``app.log`` for a file now named ``app.log.1``)."""
    mtime: int = 0
    """Its modification time (ns) at the last look."""

    def to_json(self) -> dict[str, Any]:
        """The checkpoint form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tracked:
        """Back from the checkpoint form."""
        wait = data.get("wait")
        return cls(**{**data, "wait": (int(wait[0]), float(wait[1])) if wait else None})


def members(patterns: Iterable[Path]) -> dict[str, os.stat_result]:
    """The regular files the paths and globs name right now, by path, in a stable order."""
    found: dict[str, os.stat_result] = {}
    for pattern in patterns:
        text = str(pattern)
        names = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        for name in names:
            with contextlib.suppress(OSError):
                info = os.stat(name)
                if stat.S_ISREG(info.st_mode):
                    found.setdefault(name, info)
    return found


class Files:
    """Open files by identity. Holding the descriptor lets a deleted file be read to its end."""

    def __init__(self) -> None:
        self.fds: dict[tuple[int, int], int] = {}
        self.warned: set[tuple[str, int]] = set()

    def open(self, path: str) -> tuple[int, os.stat_result] | None:
        """Open (or reuse) the file at ``path``; None when it is gone or unreadable.

        An unreadable file (permissions) is logged once and skipped, so that one bad file does
        not stop the watcher from following the others.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if (path, exc.errno or 0) not in self.warned:
                self.warned.add((path, exc.errno or 0))
                log.warning("cannot read %s: %s; skipping it", path, exc.strerror or exc)
            return None
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        held = self.fds.get(key)
        if held is not None:
            os.close(fd)
            return held, info
        self.fds[key] = fd
        return fd, info

    def locate(
        self, entry: Tracked, current: dict[str, os.stat_result]
    ) -> tuple[str, int, os.stat_result] | None:
        """Where the entry's inode is now: its path, a glob member, a held fd, or its folder."""
        key = (entry.dev, entry.ino)
        candidates = [entry.path]
        candidates += [p for p, s in current.items() if (s.st_dev, s.st_ino) == key]
        for path in candidates:
            with contextlib.suppress(OSError):
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == key:
                    opened = self.open(path)
                    if opened and (opened[1].st_dev, opened[1].st_ino) == key:
                        return path, opened[0], opened[1]
        moved = find_in_folder(Path(entry.path).parent, lambda e: e.inode() == entry.ino)
        if moved is not None:
            opened = self.open(moved)
            if opened and (opened[1].st_dev, opened[1].st_ino) == key:
                return moved, opened[0], opened[1]
        held = self.fds.get(key)
        if held is not None:  # deleted, but still open here: its rest can be read
            return entry.path, held, os.fstat(held)
        return None

    def find_copy(self, entry: Tracked, exclude: int) -> tuple[str, int, os.stat_result] | None:
        """A copy (copytruncate's) of the entry's file holding its prefix and its offset marker."""

        def is_copy(item: os.DirEntry[str]) -> bool:
            if item.inode() == exclude or not item.is_file():
                return False
            return item.stat().st_size >= entry.offset

        for path in folder_files(Path(entry.path).parent, is_copy):
            held = set(self.fds)
            opened = self.open(path)
            if opened is None:
                continue
            fd, info = opened
            if holds(fd, entry):
                return path, fd, info
            if (info.st_dev, info.st_ino) not in held:
                self.release((info.st_dev, info.st_ino))
        return None

    def release(self, key: tuple[int, int]) -> None:
        """Close the descriptor of a file no longer followed."""
        fd = self.fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def keep_only(self, keys: set[tuple[int, int]]) -> None:
        """Close every descriptor but these."""
        for key in [k for k in self.fds if k not in keys]:
            self.release(key)

    def close(self) -> None:
        """Close everything."""
        self.keep_only(set())


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


def rotated_siblings(
    path: str, newer_than: int, known: set[tuple[int, int]]
) -> list[tuple[str, os.stat_result]]:
    """Files rotated away from ``path`` that were never followed, oldest first.

    When a writer rotated more than once between two looks (or while watchkeeper was down), the
    files in between were never seen at ``path``. They are in the same folder, named after it
    (``app.log.1``, ``app.log-20261127``), modified no earlier than the rotated file we knew.
    Compressed ones are skipped: their text is not readable as appended lines.
    """
    folder, name = os.path.split(path)
    found: list[tuple[str, os.stat_result]] = []

    def accept(item: os.DirEntry[str]) -> bool:
        if item.name == name or not item.name.startswith(name) or item.name.endswith(COMPRESSED):
            return False
        info = item.stat()
        fresh = (info.st_dev, info.st_ino) not in known and info.st_mtime_ns >= newer_than
        if fresh and stat.S_ISREG(info.st_mode):
            found.append((item.path, info))
        return False

    folder_files(Path(folder or "."), accept)
    return sorted(found, key=lambda f: (f[1].st_mtime_ns, f[0]))


def holds(fd: int, entry: Tracked) -> bool:
    """Whether the open file still starts with the entry's fingerprint and has its marker."""
    if entry.fp_len:
        head = os.pread(fd, entry.fp_len, 0)
        if len(head) < entry.fp_len or digest(head) != entry.fp:
            return False
    if entry.offset and entry.mark:
        start = max(0, entry.offset - MARKER)
        before = os.pread(fd, entry.offset - start, start)
        if len(before) < entry.offset - start or digest(before) != entry.mark:
            return False
    return True


def remember(fd: int, entry: Tracked, size: int) -> None:
    """Refresh the fingerprint (it grows up to FINGERPRINT bytes) and the marker at the offset."""
    if entry.fp_len < FINGERPRINT and size > entry.fp_len:
        head = os.pread(fd, min(size, FINGERPRINT), 0)
        entry.fp, entry.fp_len = digest(head), len(head)
    start = max(0, entry.offset - MARKER)
    entry.mark = digest(os.pread(fd, entry.offset - start, start)) if entry.offset else ""


def folder_files(folder: Path, accept: Any) -> list[str]:
    """Paths of the folder's entries that ``accept(dir_entry)``, sorted; [] if unreadable."""
    found: list[str] = []
    try:
        with os.scandir(folder) as items:
            for item in items:
                with contextlib.suppress(OSError):
                    if accept(item):
                        found.append(item.path)
    except OSError:
        return []
    return sorted(found)


def find_in_folder(folder: Path, accept: Any) -> str | None:
    """The first path in the folder whose entry ``accept`` takes."""
    found = folder_files(folder, accept)
    return found[0] if found else None


def end_offset(fd: int, size: int) -> int:
    """Where "start at the end" starts: after the last complete line, so a partial one is new."""
    start = max(0, size - 65536)
    tail = os.pread(fd, size - start, start)
    cut = tail.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else (size if start else 0)


_EVENTS = 0
if inotify_simple is not None:
    _flags = inotify_simple.flags
    _EVENTS = (
        _flags.MODIFY
        | _flags.CREATE
        | _flags.MOVED_TO
        | _flags.MOVED_FROM
        | _flags.DELETE
        | _flags.CLOSE_WRITE
        | _flags.ATTRIB
    )


class FolderWatch:
    """inotify on the folders of the followed files, filtered to the names that matter.

    Waking only for relevant names matters: the state file may live in a watched folder, and its
    own writes must not trigger checks. A queue overflow wakes unconditionally (the next check is
    a full reconcile anyway). When inotify is missing or a watch limit is hit, ``usable`` turns
    False and the watcher polls.
    """

    SLICE = 0.1
    """How often a blocked wait looks at the wake event (stop, check-now): ~10 cheap wakeups/s."""

    def __init__(self) -> None:
        self.notify: Any = None
        self.usable = inotify_simple is not None
        self.watched: dict[str, int] = {}
        self.names: set[str] = set()
        self.globs: list[str] = []
        if self.usable:
            try:
                self.notify = inotify_simple.INotify()
            except OSError as exc:
                log.warning("inotify unavailable (%s); polling instead", exc)
                self.usable = False

    def update(self, folders: Sequence[str], names: Iterable[str], globs: Iterable[str]) -> None:
        """Watch these folders; wake for these file names and glob basenames."""
        self.names = set(names)
        self.globs = list(globs)
        if not self.usable:
            return
        for folder in folders:
            if folder in self.watched:
                continue
            try:
                self.watched[folder] = self.notify.add_watch(folder, _EVENTS)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    log.warning("inotify watch limit reached at %s; polling instead", folder)
                    self.close()
                    self.usable = False
                    return
                # A folder that does not exist yet is found by the sweep later.

    def wait(self, wake: Any, timeout: float) -> None:
        """Block until a relevant event, ``wake`` is set, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        fd = self.notify.fileno()
        while not wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([fd], [], [], min(left, self.SLICE))
            if ready and self._relevant(self.notify.read(timeout=0)):
                return

    def _relevant(self, events: Sequence[Any]) -> bool:
        overflow = inotify_simple.flags.Q_OVERFLOW | inotify_simple.flags.IGNORED
        for event in events:
            if event.mask & overflow:
                if event.mask & inotify_simple.flags.IGNORED:
                    self.watched = {f: w for f, w in self.watched.items() if w != event.wd}
                return True
            if event.name in self.names or any(fnmatch.fnmatch(event.name, g) for g in self.globs):
                return True
        return False

    def close(self) -> None:
        """Release the inotify descriptor."""
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        self.watched = {}
