"""The log watcher: follow files through rotation, truncation and restarts, alert exactly once.

Each check reconciles the followed files with the globs (see :mod:`logfiles` for how a file is
recognised), reads what is new up to ``read_limit`` bytes, and returns the observations of the
complete lines read plus a checkpoint holding every file's identity and offset. The runtime
commits both in one transaction, so after a crash the next check starts exactly after the last
line whose alert was committed: no line is lost, none alerts twice.

Between checks the thread blocks on inotify (or polls where inotify is unavailable); a backlog
larger than ``read_limit`` is read in several checks without waiting, each committed on its own.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import replace
from typing import Any

from watchkeeper.alerts import Observation, Severity
from watchkeeper.watchers.base import PARTS, CheckResult, Watcher, register
from watchkeeper.watchers.logconfig import LogConfig
from watchkeeper.watchers.logfiles import (
    Files,
    Tracked,
    agrees,
    digest,
    end_offset,
    first_bytes,
    holds,
    members,
    part_changes,
    part_key,
    place,
    remember,
)
from watchkeeper.watchers.loginotify import Ended, FolderWatch
from watchkeeper.watchers.logread import Reading
from watchkeeper.watchers.logrisk import catastrophic
from watchkeeper.watchers.logrotated import done_record
from watchkeeper.watchers.logscan import RecordStart, Scanner

log = logging.getLogger("watchkeeper")

SLOW_EPISODE = 600.0
"""Seconds without a line running out of ``line_timeout`` that end a slow-pattern episode."""
PIN_WAIT = 3
"""Checks a pinned file still on disk waits for the sibling search before it is read anyway."""
PIN_RETRY = 0.2
"""Seconds until the next check while pinned files wait."""
SLICES = 10
"""The safety sweep is spread over ``every`` in this many slices: each looks at that share of
the followed files, one every ``every / SLICES``, instead of all of them at once."""
DONE = 64
"""Rotated files read to their end that the checkpoint remembers, so that a sibling search
(``_unseen``) never reads one again when its modification time ties with a newer rotation's."""


@register
class LogWatcher(Reading, Watcher):
    """Follows log files and alerts on the lines its rules match."""

    kind = "log"
    local = True
    config_model = LogConfig
    config: LogConfig
    shape_titles = True
    parted = True

    def __init__(self, config: LogConfig, use_hyperscan: bool = True) -> None:
        super().__init__(config)
        self.scanner = Scanner(config, use_hyperscan)
        self.files = Files(config.rotated, config.max_open_files)
        self.watch = FolderWatch(config.name, config.linger, self.files) if config.inotify else None
        self.more = False
        self.due: float | None = None
        self.done: list[tuple[Any, ...]] = []
        self.buffer: bytearray | None = None
        self.lost: dict[str, int] = {}
        self.losses: list[Observation] = []
        self.generations = 0
        """New files met (not copies of content read already)."""
        self.base: int | None = None
        """Generations created less those met, at the end of the first check that counted."""
        self.deficit: float | None = None
        self.reported = (0, 0, 0)
        """Generations missed and inotify overflows reported, and the thread's lateness when
        the counts last balanced (see ``_missed``)."""
        self.pins: dict[tuple[int, int], tuple[str, int]] = {}
        self.watching: set[str] = set()
        """Files inotify's thread opened that no check has reached yet: path, checks waited."""
        self.settled = False
        """The last check left nothing pending (no backlog, pinned or rotated-away file, partial
        line, loss to confirm): the next may look only at the files written (``_written``)."""
        self.swept = 0.0
        """When the sweep last looked at a slice of the files (a full check looks at all)."""
        self.turn = 0
        """The sweep's next slice; at 0, the globs are listed too (see :meth:`_slice`)."""
        self.full_checks = 0
        """Full checks run (each lists the globs and reconciles every followed file)."""

    def warnings(self) -> list[str]:
        """Patterns prone to catastrophic backtracking, and where they run here."""
        found = []
        for rule in self.scanner.rules:
            starts = rule.shape.record_start if rule.shape is not None else None
            record = starts.pattern if isinstance(starts, RecordStart) else None
            patterns = (("match", rule.match), ("unless", rule.unless), ("record_start", record))
            for key, pattern in patterns:
                shape = None if pattern is None else catastrophic(pattern.source)
                if pattern is None or shape is None:
                    continue
                where = f"[[log]] {self.name!r}: rules.{rule.index}.{key} {pattern.source!r}"
                if pattern.linear:
                    found.append(
                        f"{where} has {shape}: catastrophic in a backtracking engine (Python's "
                        "re); here it runs on RE2, in linear time"
                    )
                else:
                    found.append(
                        f"{where} has {shape} and needs a backtracking engine: lines that take "
                        f"longer than line_timeout ({self.config.line_timeout}s) are skipped "
                        "by this rule and reported"
                    )
        return found

    @property
    def engine(self) -> str:
        """The prefilter in use: "hyperscan" or "re2"."""
        return self.scanner.prefilter.engine

    def initial_checkpoint(self) -> Any:
        """Where reading starts in the files there are now, taken as the keeper starts.

        The first check runs a moment later on the watcher's thread; a program that writes and
        rotates its log at once must not lose what was rotated away in between, so the files are
        identified here and rotations from then on are chased like any other.
        """
        entries: list[Tracked] = []
        for path in members(self.config.paths):
            opened = self.files.open(path)
            if opened is None:
                continue
            fd, info = opened
            entry = self._first_seen(path, fd, info, self.config.start_at == "end")
            remember(fd, entry, info.st_size)
            entries.append(entry)
        self.files.keep_only({(e.dev, e.ino) for e in entries})
        if not entries:
            log.warning(
                "watcher %s: no file matches %s yet; waiting for one",
                self.name,
                ", ".join(str(p) for p in self.config.paths),
            )
        return {
            "files": [e.to_json() for e in entries],
            "counts": {},
            "done": [],
            "paths": self.patterns,
        }

    def check(self, checkpoint: Any) -> CheckResult:
        """Read what is new and return alerts and offsets: in the files written, or in all.

        Each followed file is a part of the checkpoint, under its identity (see
        :attr:`Watcher.parted`), and only the parts a check changed are returned, so a commit
        writes what changed however many files are followed. The checkpoint the keeper takes
        at start (and one from before parts) lists the files instead: they all become parts.
        """
        now = time.time()
        if self.watch is not None:
            self.watch.read()
        state = checkpoint or {}
        parts: dict[str, Any] = state.get(PARTS) or {}
        self._restore(state)
        if "files" not in state and state.get("paths") == self.patterns:
            written = self._written(now, parts)
            if written is not None:
                focused = self._focused(state, parts, written, now)
                if focused is not None:
                    return focused
                self._restore(state)  # it read nothing: start again from the checkpoint
        return self._full(checkpoint, state, parts, now)

    def _restore(self, state: dict[str, Any]) -> None:
        """The checkpoint's watcher-wide state (rule windows, slow lines, rotated files done,
        loss totals), to start a check from."""
        self.scanner.counts = {int(k): list(v) for k, v in state.get("counts", {}).items()}
        self.scanner.slow = dict(state.get("slow", {}))
        self.scanner.slow_spent, self.scanner.yielded = 0.0, False
        self.done = [tuple(d) for d in state.get("done", [])]
        self.lost, self.losses = dict(state.get("lost") or {}), []
        self.more, self.due = False, None

    def _written(self, now: float, parts: dict[str, Any]) -> set[str] | None:
        """The paths to look at: those inotify saw written since the last check, when that is
        all that happened, plus the sweep's slice when one is due.

        None asks for a full check: inotify off or not yet complete, the last check left work
        pending, anything but writes happened (see :meth:`FolderWatch.take_written`), or the
        sweep's slice found something out of place.
        """
        if self.watch is None or not self.watch.usable or not self.watch.complete:
            return None
        written = self.watch.take_written()
        if written is None or not self.settled:
            return None
        if now - self.swept >= self.config.every / SLICES:
            swept = self._slice(parts, now)
            if swept is None:
                return None
            written |= swept
        return written

    def _slice(self, parts: dict[str, Any], now: float) -> set[str] | None:
        """The sweep's next slice: the paths of a ``SLICES``-th of the followed files.

        The sweep is the safety net for what inotify cannot say (a write over NFS, a lost
        event): each followed file's path is looked at once per ``every``, and once per
        ``every`` the globs are listed (names only, no ``stat``) for files not followed yet.
        Spread this way, a sweep over 10,000 files costs a few milliseconds at a time instead
        of a tenth of a second at once, during which every write waits. A name not followed
        (a new file inotify did not report, a folder that appeared) returns None: a full check.
        """
        turn, self.turn, self.swept = self.turn, (self.turn + 1) % SLICES, now
        if turn == 0:
            followed = {os.path.normpath(stored["path"]) for stored in parts.values()}
            for pattern in self.config.paths:
                for name in glob.iglob(str(pattern), recursive=True):
                    if os.path.normpath(name) not in followed:
                        return None
        return {
            os.path.normpath(stored["path"])
            for key, stored in parts.items()
            if hash(key) % SLICES == turn
        }

    def _focused(
        self, state: dict[str, Any], parts: dict[str, Any], written: set[str], now: float
    ) -> CheckResult | None:
        """Read the files inotify saw written, each found by its identity; None: check all.

        Each path is stat'ed now, and its file must be one followed under that very path, not
        rotated away, read up to an offset it still holds (same fingerprint and marker). Only
        then is it read here. Anything else (an unknown file, a followed one at another name,
        a truncation, a path gone) is a full check's to sort out: a name says where a write
        happened, never which file it was (inotify's thread may lag a burst by then).
        """
        watch = self.watch
        assert watch is not None  # only called when it is (see _written)
        ready: list[tuple[Tracked, int, os.stat_result]] = []
        looked: list[Tracked] = []
        # Each file opened stays open until read: a later open must not close it for room.
        with self.files.keeping() as in_hand:
            for path in sorted(written):
                try:
                    info = os.stat(path)
                except OSError:
                    return None
                stored = parts.get(part_key(info.st_dev, info.st_ino))
                if stored is None or os.path.normpath(stored["path"]) != path:
                    return None
                entry = Tracked.from_json(stored)
                if entry.gone is not None or entry.wait is not None or entry.skip:
                    return None
                looked.append(entry)
                if info.st_size == entry.size == entry.offset and info.st_mtime_ns == entry.mtime:
                    continue  # written before the last check read it (or idle: the sweep's)
                opened = self.files.open(entry.path)
                if opened is None:
                    return None
                fd, info = opened
                key = (info.st_dev, info.st_ino)
                if (
                    key != (entry.dev, entry.ino)
                    or info.st_size < entry.offset
                    or not holds(fd, entry)
                    or watch.shrank(key, fd, info.st_size)
                ):
                    return None
                ready.append((entry, fd, info))
                in_hand.add(key)
        slow_before = self.scanner.slow.get("lines", 0)
        budget = [self.config.read_limit]
        found: list[Observation] = []
        changes: dict[str, Any] = {}
        followed: dict[str, tuple[int, tuple[int, int]]] = {}
        for entry, fd, info in ready:
            entry.mtime = info.st_mtime_ns
            found += self._read(entry, fd, info.st_size, now, budget)
            remember(fd, entry, info.st_size)
            changes[entry.key] = entry.to_json()
            followed[entry.path] = (fd, (entry.dev, entry.ino))
            if entry.wait is not None or entry.skip:
                self.settled = False  # a partial line: the full check keeps its time
        watch.follow(followed, merge=True)
        self._close_inactive(looked, now)
        self.settled = self.settled and not self.more
        found += self._slow_lines(now, slow_before)
        return CheckResult(self.losses + found, self._main(), changes)

    def _main(self) -> dict[str, Any]:
        """The checkpoint but its parts: what is watcher-wide."""
        counts = {str(k): v for k, v in self.scanner.counts.items() if v}
        main = {"counts": counts, "done": self.done, "paths": self.patterns}
        if self.scanner.slow:
            main["slow"] = self.scanner.slow
        if self.lost:
            main["lost"] = self.lost
        return main

    def _full(
        self, checkpoint: Any, state: dict[str, Any], parts: dict[str, Any], now: float
    ) -> CheckResult:
        """Reconcile every followed file with the globs, read what is new in each."""
        if self.watch is not None:
            self.watch.take_written()  # what it names, this check looks at anyway
        # It lists the globs and looks at every file: the sweep goes on from its second slice.
        self.swept, self.turn = now, 1 % SLICES
        self.full_checks += 1
        stored = state["files"] if "files" in state else sorted(parts.values(), key=place)
        queue = [Tracked.from_json(d) for d in stored]
        # Each entry's checkpoint form as it came: an idle entry goes back out unchanged.
        as_stored = {id(e): d for e, d in zip(queue, stored, strict=True)}
        idle: set[int] = set()
        slow_before = self.scanner.slow.get("lines", 0)
        pinned = self._take_pinned()
        self.files.protected = set(self.pins) | {(e.dev, e.ino) for e in queue if e.gone}
        held = set(self.files.fds)
        kept_open = held - pinned  # since before this check
        if self.watch is not None:
            self.watch.hold(held)
        current = members(self.config.paths)
        # The paths were changed since the checkpoint (an edited config, another `tail`): files
        # no longer named are dropped, and files newly named start where start_at says.
        reconfigured = "paths" in state and state["paths"] != self.patterns
        if reconfigured:
            queue = [e for e in queue if self._named(e.origin, current)]
        self._watch(queue)
        if checkpoint is not None:
            unseen = self._rotated_unseen(queue, current)
            queue = self._in_order(queue, unseen, current, kept_open)
        by_key = {(info.st_dev, info.st_ino): path for path, info in current.items()}
        budget = [self.config.read_limit]
        found: list[Observation] = []
        kept: list[Tracked] = []
        seen: set[tuple[int, int]] = set()
        i = 0
        while i < len(queue):
            entry = queue[i]
            i += 1
            if (entry.dev, entry.ino) in seen:
                continue
            if self._unchanged(entry, current):  # idle since the last look
                seen.add((entry.dev, entry.ino))
                kept.append(entry)
                idle.add(id(entry))
                continue
            located = self.files.locate(entry, by_key)
            if located is None:
                # Moved out of sight (an olddir, a compressed archive): look for it by content.
                copy = self.files.find_copy(entry, None)
                if copy is None or copy[3] > copy[2].st_size:
                    self._gone(entry, copy)
                    continue
                entry = replace(entry, path=copy[0], dev=copy[2].st_dev, ino=copy[2].st_ino)
                entry.gone = entry.gone or now
                located = copy[:3]
            path, fd, info = located
            # Truncated (copytruncate) or another file under the same inode, as the check
            # tells by the offset and marker, or as inotify's thread saw (see FolderWatch).
            own = info.st_size < entry.offset or not holds(fd, entry)
            ended = []
            if self.watch is not None:
                ended = self.watch.shrunk_from((entry.dev, entry.ino), fd, info.st_size, own)
            if own or ended:
                # Read what each ended content left unread (in memory, in a copy where rotated
                # files go), then this file from 0.
                i -= 1
                fresh: Tracked | None = Tracked(path, info.st_dev, info.st_ino)
                if entry.gone is not None or path not in current:
                    # Not a followed path: the inode was freed and reused by a file rotated
                    # here, perhaps one whose content was read already.
                    fresh = self._recognise(path, fd, info, self._known(queue))
                if fresh is None:
                    del queue[i]
                else:
                    queue[i] = fresh
                found += self._truncated(entry, ended, path, info, (queue, i, current), now)
                continue
            seen.add((entry.dev, entry.ino))
            member = current.get(path)
            here = member is not None and (member.st_dev, member.st_ino) == (entry.dev, entry.ino)
            entry.path, entry.gone = path, (None if here else entry.gone or now)
            if entry.gone is not None:  # it cannot be opened again by path: hold it
                self.files.protected.add((entry.dev, entry.ino))
            entry.origin, entry.mtime = (path if here else entry.origin), info.st_mtime_ns
            found += self._read(entry, fd, info.st_size, now, budget)
            remember(fd, entry, info.st_size)
            drained = entry.offset >= info.st_size and entry.wait is None
            if entry.gone is not None and drained and now - entry.gone >= self.config.rotate_wait:
                self.done = [*self.done, tuple(done_record(entry, info.st_mtime_ns))][-DONE:]
                continue
            kept.append(entry)
        found += self._read_pinned(seen, kept, now, budget)
        for path, info in current.items():
            if (info.st_dev, info.st_ino) in seen:
                continue
            opened = self.files.open(path)
            if opened is None:
                continue
            if (opened[1].st_dev, opened[1].st_ino) != (info.st_dev, info.st_ino):
                # Rotated between the listing and the open: the file listed is now a sibling.
                # Look again at once, so that it is read (by the sibling search) before this one.
                self.more = True
                continue
            fd, info = opened  # noqa: PLW2901 - the open file's own stat, not the glob's
            seen.add((info.st_dev, info.st_ino))
            at_end = (checkpoint is None or reconfigured) and self.config.start_at == "end"
            entry = self._first_seen(path, fd, info, at_end)
            self.generations += 1
            found += self._read(entry, fd, info.st_size, now, budget)
            remember(fd, entry, info.st_size)
            kept.append(entry)
        self._carry_pins(seen, kept)
        self.files.keep_only({(e.dev, e.ino) for e in kept} | set(self.pins))
        self._close_inactive(kept, now)
        self._watch(kept)
        if self.watch is not None:
            # Files opened by this check are said at the next one: by then inotify's thread
            # has counted their creation (see FolderWatch._relevant).
            self.watch.hold(held & set(self.files.fds))
            self.watch.follow(
                {
                    e.path: (self.files.fds[(e.dev, e.ino)], (e.dev, e.ino))
                    for e in kept
                    if (e.dev, e.ino) in self.files.fds
                }
            )
            self._missed(now)
        if any(e.gone is not None for e in kept):
            self._due_at(now + self.config.rotate_wait)
        if self.pins:  # held for the sibling search: look again soon, or read them anyway
            self._due_at(now + PIN_RETRY)
        if not self.more:
            self.buffer = None  # caught up: no need to hold a chunk's memory while idle
        found += self._slow_lines(now, slow_before)
        self.settled = not (self.more or self.pins or self.due is not None)
        changes = part_changes(kept, as_stored, idle, parts)
        return CheckResult(self.losses + found, self._main(), changes)

    def _truncated(
        self,
        entry: Tracked,
        ended: list[Ended],
        path: str,
        info: os.stat_result,
        at: tuple[list[Tracked], int, dict[str, os.stat_result]],
        now: float,
    ) -> list[Observation]:
        """Read, or report lost, what each content of a truncated file left unread.

        ``ended`` are the contents inotify's thread saw truncates end since the last check,
        oldest first (none without inotify). The entry's own comes first: its rest is read
        from the thread's memory, then from its copy where rotated files go (queued at ``at``:
        the queue, the place, the members), and what neither holds is reported lost. Each
        later one (two truncates between two checks) no check ever saw: it is read the same
        way from 0, its copy known by the first bytes the thread kept.

        The thread's first record is the entry's own unless its bytes say otherwise: after the
        last check took what ended, the entry's content may have ended before the thread's
        first look at the file, which then began with the next one.
        """
        queue, i, current = at
        here = (info.st_dev, info.st_ino)
        found: list[Observation] = []
        rests: list[Tracked] = []
        known = {here}
        copied: tuple[str, int, os.stat_result, int] | None = None
        if not ended or not agrees(entry, ended[0][1]):
            ended = [(0, None), *ended]
        for n, (peak, cut) in enumerate(ended):
            content = entry
            if n:  # a content no check saw: from 0
                content = Tracked(entry.path, *here, origin=entry.origin, mtime=entry.mtime)
            content.size = max(content.size, peak)
            head = first_bytes(content, cut)
            found += self._read_cut(content, cut, now)
            copy = self.files.find_copy(content, here, head)
            if n == 0:
                copied = copy
            if copy is not None and copy[3] <= copy[2].st_size:
                self._lost(content, content.size - copy[2].st_size, "truncated before the copy")
                rest = replace(content, path=copy[0], dev=copy[2].st_dev, ino=copy[2].st_ino)
                if copy[2].st_size < rest.fp_len:  # a short copy, known by its bytes
                    rest.fp, rest.fp_len = digest(head[: copy[2].st_size]), copy[2].st_size
                rests.append(replace(rest, gone=rest.gone or now))
                known.add((copy[2].st_dev, copy[2].st_ino))
            elif copy is not None:  # a copy of what was read already: nothing to read in it
                self._lost(content, content.size - content.offset, "truncated")
                done = replace(content, dev=copy[2].st_dev, ino=copy[2].st_ino)
                self.done = [*self.done, tuple(done_record(done, copy[2].st_mtime_ns))][-DONE:]
                self.files.release((copy[2].st_dev, copy[2].st_ino))
            elif content.offset or content.size:
                reason = "truncated, and no copy found"
                self._lost(content, content.size - content.offset, reason)
        if copied is not None and copied[3] <= copied[2].st_size:
            # Generations rotated after it were modified after the last look at it (an
            # archive's own time is when it was compressed: no bound).
            since = entry.mtime or copied[2].st_mtime_ns
            rests += self._unseen(entry.path, since, queue, current, known)
        elif copied is None and entry.mtime:
            # The file was deleted and its inode reused by a newer one at this path: files
            # rotated away in between are its siblings, newer than it was when last seen.
            rests += self._unseen(path, entry.mtime, queue, current, known)
        queue[i:i] = rests
        return found

    def _slow_lines(self, now: float, before: int) -> list[Observation]:
        """While lines keep running out of ``line_timeout``, one condition says so.

        It holds until ``SLOW_EPISODE`` passes without another such line, so an episode is one
        alert (and one recovery), however many lines it had; the count is in the checkpoint.
        """
        slow = self.scanner.slow
        if not slow or now - float(slow["last"]) >= SLOW_EPISODE:
            return []
        rules = self.config.line_rules
        index = int(slow["rule"])
        pattern = rules[index].match if index < len(rules) else "(a rule since removed)"
        if slow["lines"] != before:
            log.warning(
                "watcher %s: %d line(s) took longer than line_timeout (%ss) for rule %d (%r); "
                "that rule skipped them; the last at byte %d of %s",
                self.name,
                slow["lines"] - before,
                self.config.line_timeout,
                slow["rule"],
                pattern,
                slow["byte"],
                slow["file"],
            )
        return [
            Observation(
                title="a rule's pattern is too slow on some lines",
                severity=Severity.WARNING,
                key="__slow_pattern__",
                body=f"{slow['lines']} line(s) so far took longer than line_timeout "
                f"({self.config.line_timeout}s) for rule {slow['rule']} ({pattern!r}) and "
                f"were skipped by it; the last at byte {slow['byte']} of {slow['file']}. "
                "A pattern without backreferences or lookarounds runs in linear time.",
                data={"slow_lines": slow["lines"], "rule": slow["rule"], "path": slow["file"]},
            )
        ]

    def _unchanged(self, entry: Tracked, current: dict[str, os.stat_result]) -> bool:
        """Whether a followed file read to its end is still as it was at the last look.

        Same identity at its path, same size, same modification time: nothing to read, nothing
        to check (its descriptor, if held, is not even touched). This is what keeps a check
        over thousands of idle files cheap: one dictionary lookup each, on the listing the
        check made anyway.
        """
        key = (entry.dev, entry.ino)
        if entry.gone is not None or entry.wait is not None or entry.skip:
            return False
        info = current.get(entry.path)
        return (
            info is not None
            and (info.st_dev, info.st_ino) == key
            and info.st_size == entry.size == entry.offset
            and info.st_mtime_ns == entry.mtime
        )

    def _close_inactive(self, kept: list[Tracked], now: float) -> None:
        """Close the files read to their end and not written for ``close_inactive``."""
        idle = now - self.config.close_inactive
        for entry in kept:
            key = (entry.dev, entry.ino)
            quiet = entry.mtime / 1e9 < idle and entry.offset == entry.size
            if quiet and entry.gone is None and entry.wait is None and key in self.files.fds:
                self.files.release(key)

    def _read_pinned(
        self, seen: set[tuple[int, int]], kept: list[Tracked], now: float, budget: list[int]
    ) -> list[Observation]:
        """Read the pinned files no other way can reach: rotated away and deleted since.

        A pinned file still on disk is left to the members' loop and the sibling search, which
        read each path's generations in order (and bound their search by the newest one read:
        reading a later generation here first would hide the ones before it), for at most
        ``PIN_WAIT`` checks. One whose content was read already (a copy) is dropped.
        """
        found: list[Observation] = []
        if not self.pins:
            return found
        records = self._known(kept)
        for key, (path, waited) in list(self.pins.items()):
            fd = self.files.fds.get(key)
            if key in seen or fd is None:
                del self.pins[key]
                continue
            info = os.fstat(fd)
            if info.st_nlink and waited < PIN_WAIT:
                continue
            del self.pins[key]
            entry = self._recognise(path, fd, info, records)
            if entry is None:
                continue
            self.generations += not entry.fp_len
            seen.add(key)
            entry.gone, entry.origin = now, path
            found += self._read(entry, fd, info.st_size, now, budget)
            remember(fd, entry, info.st_size)
            kept.append(entry)
        return found

    @staticmethod
    def _first_seen(path: str, fd: int, info: os.stat_result, at_end: bool) -> Tracked:
        """A file met for the first time: read from its start, or after its last full line."""
        entry = Tracked(path, info.st_dev, info.st_ino, origin=path, mtime=info.st_mtime_ns)
        if at_end:
            entry.offset = end_offset(fd, info.st_size)
        return entry

    def wait(self, wake: Any, timeout: float) -> None:
        """Return at once with a backlog; else block on inotify (or poll) until work or wake."""
        if self.more:
            return
        if self.due is not None:
            timeout = min(timeout, max(0.0, self.due - time.time()) + 0.01)
        if self.watch is not None and self.watch.usable:
            self.watch.wait(wake, timeout)
        else:
            wake.wait(min(timeout, self.config.poll_interval))

    def gathering(self) -> bool:
        """inotify named writes that no check has read yet (within ``linger``, or during the
        last check). Not with a backlog: that is read in steps, and the stop's budget is for
        one check; the rest waits for the next start, as before."""
        return not self.more and self.watch is not None and self.watch.changed.is_set()

    def close(self) -> None:
        """Close the followed files and the inotify descriptor."""
        self.files.close()
        if self.watch is not None:
            self.watch.close()
