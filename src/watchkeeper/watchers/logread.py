"""Reading a followed file's new bytes and scanning its complete lines, for the log watcher.

A mixin of :class:`~watchkeeper.watchers.log.LogWatcher`, kept apart from the reconciling of
files (``log``) and the search for them after rotation (``logtrack``): a check's read of one
file within its byte budget (partial lines held, over-long lines cut, blocks waited for), the
buffer large reads reuse, and the read from inotify's read-ahead of what a copytruncate took
before a check could read it.
"""

from __future__ import annotations

import os

from watchkeeper.alerts import Observation
from watchkeeper.watchers.logfiles import MARKER, Tracked, digest
from watchkeeper.watchers.logscan import Scanner
from watchkeeper.watchers.logtrack import Rotations

CHUNK = 4 * 1024 * 1024
"""Bytes read and searched at once (at least twice ``max_line``)."""
BUFFERED = 256 * 1024
"""Reads at least this large go to a reused buffer (see ``Reading._pread``)."""


class Reading(Rotations):
    """Reads and scans; the state lives on the watcher (set in its __init__)."""

    scanner: Scanner
    buffer: bytearray | None
    """A chunk's memory, kept while a backlog lasts (see ``_pread``)."""

    def _read_cut(
        self, entry: Tracked, cut: tuple[int, bytes] | None, now: float
    ) -> list[Observation]:
        """Read from memory what a truncate took before this check could read it.

        With copytruncate, lines written between logrotate's copy and its truncate are in no
        file; ``tail -F`` has them because it reads each write at once. inotify's thread keeps
        each followed file's newest bytes as they are written (see ``FolderWatch._measure``):
        when those cover the entry's offset, its complete lines are read here, the offset moves
        on, and the copy then holds nothing unread (or only what a block rule still waits for).
        """
        if cut is None or entry.skip or entry.wait is not None:
            return []
        start, data = cut
        if not start <= entry.offset < start + len(data):
            return []
        # The bytes just before the offset must be the ones read (the marker), or at offset 0
        # the file's first (the fingerprint), lest what was kept be another content's.
        before = data[max(0, entry.offset - MARKER - start) : entry.offset - start]
        if entry.offset and (
            len(before) != min(MARKER, entry.offset) or digest(before) != entry.mark
        ):
            return []
        if not entry.offset and entry.fp_len and digest(data[: entry.fp_len]) != entry.fp:
            return []
        rest = data[entry.offset - start :]
        complete = rest.rfind(b"\n") + 1
        if not complete:
            return []
        scan = self.scanner.scan
        consumed, found = scan(rest, entry.path, entry.offset, None, now, size=complete)
        entry.offset += consumed
        before = data[max(0, entry.offset - MARKER - start) : entry.offset - start]
        entry.mark = digest(before) if len(before) == min(MARKER, entry.offset) else ""
        return found

    def _read(
        self, entry: Tracked, fd: int, size: int, now: float, budget: list[int]
    ) -> list[Observation]:
        """Read and scan the entry's new complete lines, within the check's byte budget."""
        config = self.config
        chunk = max(CHUNK, 2 * config.max_line)
        found: list[Observation] = []
        release = None
        if entry.wait is not None and now - entry.wait[1] >= config.partial_timeout:
            release = entry.wait[0]
        while entry.offset < size:
            if budget[0] <= 0:
                self.more = True
                break
            want = min(chunk, budget[0], size - entry.offset)
            data, got = self._pread(fd, want, entry.offset, chunk)
            if not got:
                break
            budget[0] -= got
            at_end = entry.offset + got >= size
            if entry.skip:  # the rest of an over-long line
                newline = data.find(b"\n", 0, got)
                entry.offset += got if newline < 0 else newline + 1
                entry.skip = newline < 0
                continue
            cut = data.rfind(b"\n", 0, got)
            if cut < 0:
                # No newline in as much as one read can hold (a chunk, or read_limit): a giant
                # line, matched on its head. Shorter lines wait for their newline and are matched
                # whole, however their writes were split.
                if got >= min(chunk, config.read_limit):
                    head = data[: config.max_line] + b"\n"
                    found += self.scanner.scan(head, entry.path, entry.offset, 0, now, cut=True)[1]
                    entry.offset += got
                    entry.skip = True
                elif not at_end:
                    self.more = True
                    break
                elif release == entry.offset:  # a partial last line that never got its newline
                    line = data[:got] + b"\n"
                    found += self.scanner.scan(line, entry.path, entry.offset, 0, now)[1]
                    entry.offset += got
                else:
                    self._hold(entry, now)
                    break
                continue
            complete = cut + 1
            rel = None if release is None else release - entry.offset
            scan = self.scanner.scan
            gone = entry.gone is not None
            consumed, seen = scan(
                data, entry.path, entry.offset, rel, now, size=complete, gone=gone
            )
            # A block larger than one read can hold (a chunk, or all of read_limit): cut it here,
            # or the file would stall on it for good.
            if consumed == 0 and not at_end and want >= min(chunk, config.read_limit):
                consumed, seen = scan(
                    data, entry.path, entry.offset, 0, now, size=complete, gone=gone
                )
            found += seen
            entry.offset += consumed
            if self.scanner.yielded:  # slow lines took this check's share: commit, go on
                self.more, budget[0] = True, 0
                break
            if consumed < complete:
                if at_end:
                    self._hold(entry, now)
                    break
                if consumed == 0:
                    self.more = True
                    break
        if entry.wait is not None and entry.wait[0] != entry.offset:
            entry.wait = None
        if entry.wait is not None:
            self._due_at(entry.wait[1] + config.partial_timeout)
        return found

    def _pread(self, fd: int, want: int, offset: int, chunk: int) -> tuple[bytes | bytearray, int]:
        """Up to ``want`` bytes at ``offset``, and how many came (the data may be longer).

        A large read lands in one buffer kept while a backlog lasts: a fresh 4 MiB ``bytes``
        per read measured 2-3x the cost of the copy itself (new pages to fault in and zero),
        a fifth of a backlog's whole scan time.
        """
        if want < BUFFERED:
            data = os.pread(fd, want, offset)
            return data, len(data)
        if self.buffer is None or len(self.buffer) < chunk:
            self.buffer = bytearray(chunk)
        return self.buffer, os.preadv(fd, [memoryview(self.buffer)[:want]], offset)

    def _hold(self, entry: Tracked, now: float) -> None:
        """Wait at the entry's offset (partial line or missing context), from now if not yet."""
        if entry.wait is None or entry.wait[0] != entry.offset:
            entry.wait = (entry.offset, now)
