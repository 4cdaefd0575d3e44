"""The log watcher's search for its files after rotation, and its accounting of what was lost.

A mixin of :class:`~watchkeeper.watchers.log.LogWatcher`, kept apart from the reading and the
matching: where the files of a path went (the sibling search bounded by modification time, the
``rotated`` globs, files recognised by content, see :mod:`logrotated`), the files inotify's
thread pinned (see :mod:`loginotify`), and loss reports — bytes known unread that vanished, and
generations created under a followed name that were deleted before anyone could open them.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import time
from dataclasses import replace
from typing import Any

from watchkeeper.alerts import Observation
from watchkeeper.watchers.logconfig import LogConfig
from watchkeeper.watchers.logfiles import (
    FINGERPRINT,
    Files,
    Tracked,
    digest,
    resumes,
    rotated_siblings,
    starts,
)
from watchkeeper.watchers.loginotify import FolderWatch
from watchkeeper.watchers.logrotated import (
    Known,
    count_loss,
    known_from_done,
    loss,
    rotated_folders,
    rotated_globs,
)

log = logging.getLogger("watchkeeper")

EMPTY_WAIT = 50
"""Checks an empty pinned file is held before it is let go (it may never be written)."""
CONFIRM = 2.0
"""Seconds a shortfall of generations must last before it is reported as loss."""


class Rotations:
    """File search and loss accounting; the state lives on the watcher (set in its __init__)."""

    config: LogConfig
    files: Files
    watch: FolderWatch | None
    done: list[tuple[Any, ...]]
    pins: dict[tuple[int, int], tuple[str, int]]
    generations: int
    base: int | None
    deficit: float | None
    """Since when generations have been missing (not yet reported)."""
    more: bool
    reported: tuple[int, int, int]
    lost: dict[str, int]
    losses: list[Observation]
    due: float | None
    watching: set[str]
    """The paths inotify was last told about (see ``_watch``)."""

    def _take_pinned(self) -> set[tuple[int, int]]:
        """The files inotify's thread held open as they appeared: now the check's to read.
        Returns those the check did not hold already."""
        added: set[tuple[int, int]] = set()
        if self.watch is None:
            return added
        for key, (fd, path) in self.watch.take().items():
            if key in self.files.fds:
                self.files.drop(fd)
            else:
                self.files.fds[key] = fd
                added.add(key)
            self.pins.setdefault(key, (path, 0))
            self.files.protected.add(key)
        return added

    def _carry_pins(self, seen: set[tuple[int, int]], kept: list[Tracked]) -> None:
        """Keep holding the pinned files no loop reached, unless their content is known."""
        if not self.pins:
            return
        records = self._known(kept)
        for key, (path, waited) in list(self.pins.items()):
            fd = self.files.fds.get(key)
            keep = False
            if fd is not None and key not in seen:
                info = os.fstat(fd)
                # An empty file is nothing to tell by yet (a copy just begun, a new
                # generation): held a while longer.
                empty = not info.st_size and waited < EMPTY_WAIT
                keep = empty or self._recognise(path, fd, info, records) is not None
            if not keep:
                del self.pins[key]
            else:
                self.pins[key] = (path, waited + 1)

    def _known(self, entries: list[Tracked]) -> list[Known]:
        """The content of these entries and of the rotated files finished, for recognition.

        An entry whose file is still at its path or held open is *live*: its own file will be
        read, so a copy of it (an archive made meanwhile, copytruncate's copy in progress) is
        not. One that had no fingerprint yet (it was empty at the last look) gets one now from
        its held file, or a copy of its first lines would not be known as one.

        The contents of their files that truncates ended since the last check, as inotify's
        thread kept them, are live too: the check reads them from memory, and finds their copies
        (see ``LogWatcher._truncated``); a sibling search must not read those as new files.
        """
        records = []
        ended = self.watch.heads() if self.watch is not None else {}
        for e in entries:
            held = self.files.fds.get((e.dev, e.ino))
            live = e.gone is None or held is not None
            fd = held if live else None
            if e.fp_len:
                records.append(Known(e.fp, e.fp_len, e.offset, e.mark, live=live, fd=fd))
            elif held is not None and (head := os.pread(held, FINGERPRINT, 0)):
                records.append(Known(digest(head), len(head), e.offset, "", live=live, fd=fd))
            for head in ended.get((e.dev, e.ino), ()):
                records.append(Known(digest(head), len(head), 0, "", live=True, head=head))
        return records + known_from_done(self.done)

    def _missed(self, now: float) -> None:
        """Report generations created under a followed name that no one ever opened.

        inotify's thread counts the files created; the checks count the new files they met,
        plus those held and not met yet. The difference only means loss if the thread fell
        behind (it found a later file at the name than the one created) since the counts last
        balanced: otherwise it is drift (an inode reused by the next file, met as the old one
        truncated) and is absorbed. Each lost file makes the thread late, but the shortfall may
        show checks later, and dip meanwhile: while the thread has events in hand or files
        pinned are not met yet, a file can be counted twice for a while (met by a check before
        the thread counted its creation, or pinned again by the thread after a check met it).
        So a shortfall is decided only when the counts are exact (nothing pinned or unread,
        the thread idle): let go when they balance, absorbed as drift when the thread was not
        late since they last did, else reported with the number missing. One that began after
        lateness is held through any dip. A file still on its way (renamed while a check
        looked, not met yet) also makes a shortfall: only one that lasts ``CONFIRM`` seconds is
        reported; checks are planned meanwhile to decide it.
        """
        assert self.watch is not None
        created, untaken, overflows, late = self.watch.counts()
        raw = created - self.generations - len(self.pins) - untaken
        missed, overflowed, balanced = self.reported
        if self.base is None:  # files there before the thread began were not created
            self.base = raw - missed
        deficit = raw - self.base
        settled = not (self.more or self.pins or untaken)
        exact = settled and self.watch.idle()
        if deficit > missed and self.deficit is None and late > balanced:
            self.deficit = now  # the thread was behind since the counts balanced: suspect
        if exact and deficit <= missed:  # balanced: a suspect shortfall was a file on its way
            self.deficit, balanced = None, late
        elif exact and self.deficit is None:  # a shortfall without lateness: drift
            self.base, deficit, balanced = raw - missed, missed, late
        elif exact and self.deficit is not None and now - self.deficit >= CONFIRM:
            reason = "created, rotated away and deleted before they could be opened (size unknown)"
            self._report(", ".join(self.patterns), None, reason, files=deficit - missed)
            missed, self.deficit, balanced = deficit, None, late
        if self.deficit is not None or deficit > missed:
            self._due_at(now + CONFIRM / 2)
        if overflows > overflowed:
            reason = "inotify's queue overflowed: files created meanwhile may be lost, uncounted"
            self._report(", ".join(self.patterns), None, reason)
        self.reported = (missed, overflows, balanced)

    def _gone(self, entry: Tracked, copy: tuple[str, int, os.stat_result, int] | None) -> None:
        """A followed file that is nowhere to be found: forget it, reporting what was unread."""
        if copy is not None:  # only a copy of what was read is left
            return
        if entry.size > entry.offset:
            self._lost(
                entry,
                entry.size - entry.offset,
                "the file is gone (deleted or moved out of the paths and the rotated globs)",
            )
            return
        log.warning(
            "watcher %s: %s is gone; it was read up to byte %d",
            self.config.name,
            entry.path,
            entry.offset,
        )

    def _lost(self, entry: Tracked, lost: int, reason: str) -> None:
        """Report ``lost`` bytes of the entry's file (nothing when there are none)."""
        if lost > 0:
            self._report(entry.path, lost, reason)

    def _report(self, path: str, lost: int | None, reason: str, files: int | None = None) -> None:
        """One loss episode: a health observation, and the totals the checkpoint keeps."""
        what = f"{lost} bytes" if lost is not None else f"{files or 'some'} files"
        log.warning("watcher %s: %s lost from %s: %s", self.config.name, what, path, reason)
        self.losses.append(loss(path, lost, reason, files=files))
        self.lost = count_loss(self.lost, lost, None, files)

    @property
    def patterns(self) -> list[str]:
        """The configured paths and globs, as the checkpoint records them."""
        return [str(p) for p in self.config.paths]

    def _named(self, origin: str | None, current: dict[str, os.stat_result]) -> bool:
        """Whether the configured paths still name this file's path."""
        if origin is None:
            return False
        return origin in current or any(fnmatch.fnmatchcase(origin, p) for p in self.patterns)

    def _in_order(
        self,
        queue: list[Tracked],
        unseen: list[Tracked],
        current: dict[str, os.stat_result],
        held: set[tuple[int, int]],
    ) -> list[Tracked]:
        """Queue the unseen rotated files so that each path's files are read oldest first.

        They follow the file we knew at their path, unless that file was empty when we knew it
        and its inode now belongs to a newer file (it was deleted, and a later generation got
        its inode): then they precede it — all of them if that file is the newest at the path,
        else those modified before it (it was rotated on too; restarts free an inode the
        watcher held, so any later generation may get it).

        A file ``held`` open since before this check cannot be such a newer file: its inode was
        never freed. It is the one we knew, older than any rotated since, even while the glob
        listing still shows it at the path (a fast writer rotates between the listing and the
        search for siblings).
        """
        members = {(s.st_dev, s.st_ino) for s in current.values()}
        ordered: list[Tracked] = []
        for entry in queue:
            key = (entry.dev, entry.ino)
            if not entry.fp_len and unseen and key not in held:
                now_at = None if key in members else self._sibling_mtime(entry)
                first = [
                    u
                    for u in unseen
                    if u.origin == entry.origin
                    and (key in members or (now_at is not None and u.mtime <= now_at))
                ]
                ordered += first
                taken = {id(u) for u in first}
                unseen = [u for u in unseen if id(u) not in taken]
            ordered.append(entry)
        return ordered + unseen

    def _sibling_mtime(self, entry: Tracked) -> int | None:
        """The modification time of the file rotated away from the entry's path that now has
        its inode (None: no such file)."""
        rotated = rotated_siblings(entry.origin or entry.path, 0, set(), self.config.rotated)
        for _, info in rotated:
            if (info.st_dev, info.st_ino) == (entry.dev, entry.ino):
                return info.st_mtime_ns
        return None

    def _rotated_unseen(
        self, queue: list[Tracked], current: dict[str, os.stat_result]
    ) -> list[Tracked]:
        """Files rotated away from a glob member's path that no look ever saw at that path.

        A new file at a path we followed means the path rotated. If the writer rotated more than
        once since the last look (or while watchkeeper was down), the files in between were
        never members; they are the path's siblings modified after the newest file we knew there.
        """
        # A file that was empty when last seen has no fingerprint: if its inode was freed and
        # reused by a newer file at the same path, only its siblings can tell it rotated.
        proven = {(e.dev, e.ino) for e in queue if e.fp_len}
        found: list[Tracked] = []
        for path, info in current.items():
            if (info.st_dev, info.st_ino) in proven:
                continue
            known = [e.mtime for e in queue if e.origin == path]
            known += [int(d[2]) for d in self.done if len(d) > 3 and d[3] == path]
            if known:
                found += self._unseen(path, max(known), [*queue, *found], current)
        return found

    def _unseen(
        self,
        path: str,
        newer_than: int,
        queue: list[Tracked],
        current: dict[str, os.stat_result],
        known: set[tuple[int, int]] | None = None,
    ) -> list[Tracked]:
        """Entries for files rotated away from ``path``, modified since ``newer_than``, unread.

        A glob member is the members' loop's to read, where the listing saw it. One found here
        under another name was rotated away since the listing (a fast writer): it is a rotated
        file like the others, read in its turn, before the files rotated after it.
        """
        known = set(known or ()) | {(e.dev, e.ino) for e in queue}
        listed = {(s.st_dev, s.st_ino): name for name, s in current.items()}
        finished = {tuple(d[:3]) for d in self.done}
        records = self._known(queue)
        now = time.time()
        found = []
        # The records hold the entries' descriptors: the opens below must not close them.
        with self.files.keeping(k for e in queue if (k := (e.dev, e.ino)) in self.files.fds):
            for name, info in rotated_siblings(path, newer_than, known, self.config.rotated):
                if listed.get((info.st_dev, info.st_ino)) == name:
                    continue
                entry = self._sibling(name, info, finished, records)
                if entry is not None:
                    self.generations += not entry.fp_len
                    found.append(replace(entry, gone=now, origin=path))
        return found

    def _sibling(
        self,
        name: str,
        info: os.stat_result,
        finished: set[tuple[Any, ...]],
        records: list[Known],
    ) -> Tracked | None:
        """An entry for a rotated file found by the sibling search, if it holds unread text."""
        if (info.st_dev, info.st_ino, info.st_mtime_ns) in finished:
            return None
        held = set(self.files.fds)
        opened = self.files.open(name)
        if opened is None:
            return None
        entry = self._recognise(name, opened[0], opened[1], records)
        if entry is None and (info.st_dev, info.st_ino) not in held:
            self.files.release((info.st_dev, info.st_ino))
        return entry

    @staticmethod
    def _recognise(
        path: str, fd: int, info: os.stat_result, records: list[Known]
    ) -> Tracked | None:
        """An entry for a rotated file found at ``path``: from 0, or where its content was read.

        None when it holds nothing unread, or when it is a copy of a file still followed (a
        copytruncate in progress, even one still shorter than the fingerprint: its bytes are
        the followed file's first ones; the copy is read from the offset once the truncate is
        seen).
        """
        if not info.st_size:  # nothing to read, nothing to tell it by: not an entry yet
            return None
        entry = Tracked(path, info.st_dev, info.st_ino, mtime=info.st_mtime_ns)
        for record in records:
            if record.head and 0 < info.st_size < record.fp_len:
                if starts(fd, record.head[: info.st_size]):
                    return None  # a short copy of a content read from memory
            elif record.fd is not None and 0 < info.st_size < record.fp_len:
                other = os.fstat(record.fd)
                head = os.pread(fd, info.st_size, 0)
                copying = (other.st_dev, other.st_ino) != (info.st_dev, info.st_ino)
                if copying and head == os.pread(record.fd, info.st_size, 0):
                    return None  # the start of a copy of a followed file, still being written
            at = resumes(fd, info.st_size, record)
            if at is None:
                continue
            if record.live or at >= info.st_size:
                return None
            entry.fp, entry.fp_len, entry.offset, entry.mark = (
                record.fp,
                record.fp_len,
                at,
                record.mark,
            )
            return entry
        return entry

    def _due_at(self, when: float) -> None:
        self.due = when if self.due is None else min(self.due, when)

    def _watch(self, entries: list[Tracked]) -> None:
        """Keep inotify on the folders of the globs, of the followed files and rotated globs.

        Rotated names count too: a generation is pinned under whichever name inotify's thread
        meets it first (``app.log``, then ``app.log.1`` ... as a fast writer renames it along),
        so a thread that falls behind a burst has several chances at each file.
        """
        if self.watch is None or not self.watch.usable:
            return
        paths = {e.path for e in entries}
        if paths == self.watching and self.watch.complete:  # the usual check: nothing new
            return
        self.watching = paths
        patterns = self.patterns
        folders = [os.path.dirname(p) or "." for p in patterns]
        folders += rotated_folders(patterns, self.config.rotated)
        folders = [f for f in folders if not glob.has_magic(f)]
        folders += [os.path.dirname(path) or "." for path in paths]
        rotated = [g for p in patterns for g in rotated_globs(p, self.config.rotated)]
        members = [os.path.basename(p) for p in patterns]
        self.watch.update(
            list(dict.fromkeys(folders)),
            {os.path.basename(path) for path in paths},
            list(dict.fromkeys([*members, *(os.path.basename(p) for p in rotated)])),
            members,
            rotated,
        )
