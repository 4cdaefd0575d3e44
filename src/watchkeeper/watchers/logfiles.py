"""Which file is which: identity through rotation, truncation, deletion and inode reuse.

A followed file is known by device + inode + a fingerprint (a hash of its first bytes, up to
1 KiB), and its read position by the byte offset plus a *marker*: a hash of the 64 bytes just
before the offset (Fluent Bit's offset marker). Together they tell apart:

- the same file, grown: identity and marker hold -> continue at the offset;
- rename rotation (logrotate's default): the inode is in its folder or where the ``rotated``
  globs point (or still open here) -> read it to its end, then the new file at the path from 0;
- copytruncate: same inode, but the marker no longer matches (or the file is shorter than the
  offset, which catches truncated-and-rewritten-past-the-offset too) -> the copy is found by
  fingerprint + marker (:func:`resumes`), its unread rest is read, then the file from 0;
- compressed or moved away while nothing held it: found the same way, by content, in a ``.gz``
  archive or an olddir (see :mod:`logrotated`);
- delete-and-recreate, inode reuse: the fingerprint differs -> a new file, from its start.

The search by identity also works after a restart, so a rotation that happened while
watchkeeper was down loses nothing as long as the rotated file (or its archive) is still there.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import itertools
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from watchkeeper.watchers.logrotated import Known, is_archive, open_archive, rotated_files

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
    size: int = 0
    """Its size at the last look: what is known to have been written, for loss reports."""
    seq: float = 0.0
    """Its place in the order files are read in (each is a part of the checkpoint, and parts
    are kept unordered): a path's older generations come first (see ``order``)."""

    @property
    def key(self) -> str:
        """Its part key in the checkpoint: its identity (see ``LogWatcher.check``)."""
        return part_key(self.dev, self.ino)

    def to_json(self) -> dict[str, Any]:
        """The checkpoint form (``asdict`` without its deep copies: a check makes thousands)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tracked:
        """Back from the checkpoint form."""
        wait = data.get("wait")
        return cls(**{**data, "wait": (int(wait[0]), float(wait[1])) if wait else None})


_FIELDS = tuple(f.name for f in fields(Tracked))
SPACING = 1e-6
"""The smallest gap between two files' places before every place is given out afresh."""


def part_key(dev: int, ino: int) -> str:
    """A followed file's part key: found again from a ``stat`` of its path in one lookup."""
    return f"{dev}:{ino}"


def order(entries: Sequence[Tracked]) -> None:
    """Give the entries places (``seq``) that sort them as listed, changing as few as possible.

    A check reorders rarely (a rotated generation found and queued before its path's newer
    file), so most entries keep their place and their part is not written again: an entry keeps
    its place while places rise along the list; the ones that do not (new, moved) get places
    between their neighbours'. When two neighbours leave no room, all are numbered afresh.
    """
    last, gap = 0.0, []
    for entry in entries:
        if entry.seq <= last:
            gap.append(entry)
            continue
        step = (entry.seq - last) / (len(gap) + 1)
        if gap and step < SPACING:
            for place, each in enumerate(entries, 1):
                each.seq = float(place)
            return
        for place, each in enumerate(gap, 1):
            each.seq = last + step * place
        last, gap = entry.seq, []
    for place, each in enumerate(gap, 1):
        each.seq = last + place


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
    """Open files by identity. Holding the descriptor lets a deleted file be read to its end.

    ``rotated`` are the globs (see :mod:`logrotated`) where a file moved away is looked for.
    At most ``limit`` descriptors are held: past it, the one used longest ago among the files
    that can be opened again by path (not ``protected``: rotated away, pinned) is closed, so
    that thousands of files never starve the rest of the program (notifiers, SQLite, sockets).
    """

    def __init__(self, rotated: Sequence[str] | None = None, limit: int = 1 << 30) -> None:
        self.fds: dict[tuple[int, int], int] = {}
        """By identity, the least recently used first."""
        self.warned: set[tuple[str, int]] = set()
        self.rotated = rotated
        self.limit = limit
        self.protected: set[tuple[int, int]] = set()
        self.closed = 0
        """Descriptors closed so far: inotify's thread reads through the ones it was given, and
        a number closed meanwhile may have been given to another file (see FolderWatch), then
        back to the file."""
        self.in_hand: set[tuple[int, int]] = set()
        """Files whose descriptors a check holds in hand across further opens (see
        :meth:`keeping`): never closed for room meanwhile."""

    @contextlib.contextmanager
    def keeping(self, keys: Iterable[tuple[int, int]] = ()) -> Iterator[set[tuple[int, int]]]:
        """Keep these files' descriptors open while the block runs (it may add more).

        A descriptor closed for room while a check still holds its number would fail with
        EBADF, or worse, once the number is reused by the next open, read another file.
        """
        before = self.in_hand
        self.in_hand = before | set(keys)
        try:
            yield self.in_hand
        finally:
            self.in_hand = before

    def touch(self, key: tuple[int, int]) -> None:
        """Mark a held file as just used (the last to be closed for room)."""
        fd = self.fds.pop(key, None)
        if fd is not None:
            self.fds[key] = fd

    def _room(self) -> None:
        """Close the least recently used reopenable files until one more fits."""
        self.shed(len(self.fds) + 1 - self.limit)

    def shed(self, count: int) -> None:
        """Close up to ``count`` of the least recently used files that can be reopened."""
        if count <= 0:
            return
        # Only as many as needed, from the least recently used end: an open past the limit
        # (each open, with thousands of files) must not walk every held file.
        spare = (k for k in self.fds if k not in self.protected and k not in self.in_hand)
        for key in list(itertools.islice(spare, count)):
            self.release(key)

    def open(self, path: str) -> tuple[int, os.stat_result] | None:
        """Open (or reuse) the file at ``path``; None when it is gone or unreadable.

        An unreadable file (permissions) is logged once and skipped, so that one bad file does
        not stop the watcher from following the others. A ``.gz`` archive is opened as its
        decompressed text, under the archive's device and inode.
        """
        if is_archive(path):
            return self._open_archive(path)
        self._room()
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                # The process is out of descriptors (a lower ulimit than max_open_files):
                # give half of ours back and try once more.
                self.shed(len(self.fds) // 2 + 1)
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
            self.drop(fd)
            self.touch(key)
            return held, info
        self.fds[key] = fd
        return fd, info

    def _open_archive(self, path: str) -> tuple[int, os.stat_result] | None:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            held = self.fds.get((info.st_dev, info.st_ino))
            if held is not None:
                fields = (*info[:6], os.fstat(held).st_size, *info[7:10])
                return held, os.stat_result(fields, {"st_mtime_ns": info.st_mtime_ns})
        opened = open_archive(path)
        if opened is not None:
            self.fds[(opened[1].st_dev, opened[1].st_ino)] = opened[0]
        return opened

    def candidates(self, entry: Tracked) -> list[tuple[str, os.stat_result]]:
        """Files where the entry's file may be now: its folder and its rotated globs."""
        found = dict(rotated_files(entry.origin or entry.path, self.rotated))
        folder = Path(entry.path).parent
        for path in folder_files(folder, lambda item: item.is_file(follow_symlinks=False)):
            if path not in found:
                with contextlib.suppress(OSError):
                    found[path] = os.stat(path)
        return sorted(found.items())

    def locate(
        self, entry: Tracked, by_key: dict[tuple[int, int], str]
    ) -> tuple[str, int, os.stat_result] | None:
        """Where the entry's inode is now: its path, a glob member, a held fd, or its folder.

        ``by_key`` are the glob members just listed, by identity.
        """
        key = (entry.dev, entry.ino)
        member = by_key.get(key)
        held = self.fds.get(key)
        if member is not None and held is not None:  # the usual case: one dict lookup
            self.touch(key)
            # Its size now, not the listing's: a fast writer may have written on and rotated
            # since, and the files rotated meanwhile are read after it, so all of it comes first.
            return member, held, os.fstat(held)
        candidates = [entry.path] if member is None else [entry.path, member]
        for path in candidates:
            with contextlib.suppress(OSError):
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == key:
                    opened = self.open(path)
                    if opened and (opened[1].st_dev, opened[1].st_ino) == key:
                        return path, opened[0], opened[1]
        for moved, info in self.candidates(entry):
            # An archive is a new inode: one with the same number is another file (reused).
            if (info.st_dev, info.st_ino) == key and is_archive(moved) == is_archive(entry.path):
                opened = self.open(moved)
                if opened and (opened[1].st_dev, opened[1].st_ino) == key:
                    return moved, opened[0], opened[1]
        held = self.fds.get(key)
        if held is not None:  # deleted, but still open here: its rest can be read
            return entry.path, held, os.fstat(held)
        return None

    def find_copy(
        self, entry: Tracked, exclude: tuple[int, int] | None, head: bytes = b""
    ) -> tuple[str, int, os.stat_result, int] | None:
        """A copy of the entry's file (copytruncate's, a move, an archive) and where to go on.

        A copy goes on at the entry's offset (see :func:`resumes`: one shorter than that holds
        nothing unread). One shorter than the fingerprint (taken while the file was, before a
        check read further and the fingerprint grew) is known by ``head``, the file's first
        bytes as inotify's thread kept them (see :func:`first_bytes`), if it kept them.
        """
        if not entry.fp_len:
            return None
        for path, listed in self.candidates(entry):
            if (listed.st_dev, listed.st_ino) == exclude or path == entry.path:
                continue
            if listed.st_size < entry.fp_len and not is_archive(path) and not head:
                continue
            held = set(self.fds)
            opened = self.open(path)
            if opened is None:
                continue
            fd, info = opened
            if info.st_size >= entry.fp_len or is_archive(path):
                known = Known(entry.fp, entry.fp_len, entry.offset, entry.mark)
                at = resumes(fd, info.st_size, known)
            else:
                size = info.st_size
                at = entry.offset if 0 < size <= len(head) and starts(fd, head[:size]) else None
            if at is not None:
                return path, fd, info, at
            if (info.st_dev, info.st_ino) not in held:
                self.release((info.st_dev, info.st_ino))
        return None

    def release(self, key: tuple[int, int]) -> None:
        """Close the descriptor of a file no longer followed."""
        fd = self.fds.pop(key, None)
        if fd is not None:
            self.drop(fd)

    def drop(self, fd: int) -> None:
        """Close a descriptor, counted (see :attr:`closed`): every close, even of a second one
        on a file held already, frees a number the next open may be given."""
        self.closed += 1
        os.close(fd)

    def keep_only(self, keys: set[tuple[int, int]]) -> None:
        """Close every descriptor but these."""
        for key in [k for k in self.fds if k not in keys]:
            self.release(key)

    def close(self) -> None:
        """Close everything."""
        self.keep_only(set())


def rotated_siblings(
    path: str, newer_than: int, known: set[tuple[int, int]], rotated: Sequence[str] | None
) -> list[tuple[str, os.stat_result]]:
    """Files rotated away from ``path`` that were never followed, oldest first.

    When a writer rotated more than once between two looks (or while watchkeeper was down), the
    files in between were never seen at ``path``. They are where the ``rotated`` globs point
    (``app.log.1``, ``app.log-20261127``, an olddir), modified no earlier than the rotated file
    we knew. Whether one holds content already read is for the caller to tell (by content).
    """
    found = [
        (name, info)
        for name, info in rotated_files(path, rotated)
        if (info.st_dev, info.st_ino) not in known and info.st_mtime_ns >= newer_than
    ]
    return sorted(found, key=lambda f: (f[1].st_mtime_ns, f[0]))


def resumes(fd: int, size: int, known: Known) -> int | None:
    """Where a file with ``known``'s content goes on (its offset), or None.

    A file shorter than the offset that starts with the fingerprint is a copy taken before the
    rest was written (and read): the offset is returned all the same, past its end, so that it
    is read only if it ever grows past the offset. None: the file does not start with the
    fingerprint, or it does but has other bytes before the offset (another file that began the
    same way).
    """
    if not known.fp_len or size < known.fp_len:
        return None
    if digest(os.pread(fd, known.fp_len, 0)) != known.fp:
        return None
    if size < known.offset:
        return known.offset
    if known.offset and known.mark:
        start = max(0, known.offset - MARKER)
        if digest(os.pread(fd, known.offset - start, start)) != known.mark:
            return None
    return known.offset


def starts(fd: int, head: bytes) -> bool:
    """Whether the open file begins with these bytes."""
    return os.pread(fd, len(head), 0) == head


def first_bytes(entry: Tracked, cut: tuple[int, bytes] | None) -> bytes:
    """The first bytes of the entry's file, from inotify's read-ahead of it (``cut``: where the
    bytes kept start, the bytes) when it kept them from 0 (b"": it did not, or they are another
    content's); the entry's fingerprint grows from them.

    A content a truncate ended before a check read it (at offset 0, or between two truncates)
    has no fingerprint or a short one: these are what its copy is known by.
    """
    if cut is None or cut[0]:
        return b""
    data = cut[1][:FINGERPRINT]
    if entry.fp_len and (len(data) < entry.fp_len or digest(data[: entry.fp_len]) != entry.fp):
        return b""
    if len(data) > entry.fp_len:
        entry.fp, entry.fp_len = digest(data), len(data)
    return data


def agrees(entry: Tracked, cut: tuple[int, bytes] | None) -> bool:
    """Whether bytes inotify's thread kept of a content that ended (``cut``: where they start,
    the bytes) may be the entry's: they agree with its fingerprint and its marker wherever they
    cover them. Only a disagreement says no; bytes that cover neither cannot tell."""
    if cut is None:
        return True
    start, data = cut
    head = data[: entry.fp_len] if not start and entry.fp_len else b""
    if len(head) == entry.fp_len and head and digest(head) != entry.fp:
        return False
    before = max(0, entry.offset - MARKER)
    if entry.mark and start <= before and entry.offset <= start + len(data):
        return digest(data[before - start : entry.offset - start]) == entry.mark
    return True


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
    """Refresh the fingerprint (it grows up to FINGERPRINT bytes), the marker and the size.

    A read that comes back short means the file shrank since it was read (a copytruncate at
    that very moment): what is there now is not what was read, so it is not taken for the
    fingerprint, and the marker is left empty (the offset, the fingerprint and the size still
    tell a copy and a truncation) rather than made from other bytes, which would make the file
    look truncated and its copy unknown, and the copy be read again from 0.
    """
    entry.size = size
    if entry.fp_len < FINGERPRINT and size > entry.fp_len:
        head = os.pread(fd, min(size, FINGERPRINT), 0)
        if len(head) == min(size, FINGERPRINT):
            entry.fp, entry.fp_len = digest(head), len(head)
    start = max(0, entry.offset - MARKER)
    before = os.pread(fd, entry.offset - start, start) if entry.offset else b""
    entry.mark = digest(before) if entry.offset and len(before) == entry.offset - start else ""


def place(stored: dict[str, Any]) -> float:
    """A part's place in the reading order (see :func:`order`)."""
    return float(stored.get("seq", 0.0))


def part_changes(
    kept: list[Tracked], as_stored: dict[int, Any], idle: set[int], parts: dict[str, Any]
) -> dict[str, Any]:
    """The parts a full check changed: files whose entry differs from its part, new files, and
    None for each file no longer followed."""
    order(kept)
    changes: dict[str, Any] = {}
    keys: set[str] = set()
    for entry in kept:
        key = entry.key
        while key in keys:  # one inode twice (never seen): neither entry may be lost
            key += "+"
        keys.add(key)
        stored = parts.get(key)
        as_was = id(entry) in idle and stored is not None and as_stored[id(entry)] is stored
        if as_was and stored is not None and stored.get("seq") == entry.seq:
            continue  # idle: its part is as it was (the common case, no dict built)
        data = entry.to_json()
        if data != stored:
            changes[key] = data
    changes.update({key: None for key in parts if key not in keys})
    return changes


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


def end_offset(fd: int, size: int) -> int:
    """Where "start at the end" starts: after the last complete line, so a partial one is new."""
    start = max(0, size - 65536)
    tail = os.pread(fd, size - start, start)
    cut = tail.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else (size if start else 0)
