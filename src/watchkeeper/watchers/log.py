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

import fnmatch
import glob
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from watchkeeper.alerts import Observation, Severity
from watchkeeper.watchers.base import CheckResult, Watcher, register
from watchkeeper.watchers.logconfig import LogConfig
from watchkeeper.watchers.logfiles import (
    Files,
    FolderWatch,
    Tracked,
    end_offset,
    holds,
    members,
    remember,
    rotated_siblings,
)
from watchkeeper.watchers.logrisk import catastrophic
from watchkeeper.watchers.logscan import RecordStart, Scanner

log = logging.getLogger("watchkeeper")

CHUNK = 4 * 1024 * 1024
"""Bytes read and searched at once (at least twice ``max_line``)."""
BUFFERED = 256 * 1024
"""Reads at least this large go to a reused buffer (see ``LogWatcher._pread``)."""
SLOW_EPISODE = 600.0
"""Seconds without a line running out of ``line_timeout`` that end a slow-pattern episode."""
DONE = 64
"""Rotated files read to their end that the checkpoint remembers, so that a sibling search
(``_unseen``) never reads one again when its modification time ties with a newer rotation's."""


@register
class LogWatcher(Watcher):
    """Follows log files and alerts on the lines its rules match."""

    kind = "log"
    config_model = LogConfig
    config: LogConfig
    shape_titles = True

    def __init__(self, config: LogConfig, use_hyperscan: bool = True) -> None:
        super().__init__(config)
        self.scanner = Scanner(config, use_hyperscan)
        self.files = Files()
        self.watch = FolderWatch() if config.inotify else None
        self.more = False
        self.due: float | None = None
        self.done: list[tuple[Any, ...]] = []
        self.buffer: bytearray | None = None

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
        """Reconcile files with the globs, read what is new, return alerts and offsets."""
        now = time.time()
        state = checkpoint or {}
        queue = [Tracked.from_json(d) for d in state.get("files", [])]
        self.scanner.counts = {int(k): list(v) for k, v in state.get("counts", {}).items()}
        self.scanner.slow = dict(state.get("slow", {}))
        self.scanner.slow_spent, self.scanner.yielded = 0.0, False
        slow_before = self.scanner.slow.get("lines", 0)
        self.done = [tuple(d) for d in state.get("done", [])]
        current = members(self.config.paths)
        # The paths were changed since the checkpoint (an edited config, another `tail`): files
        # no longer named are dropped, and files newly named start where start_at says.
        reconfigured = "paths" in state and state["paths"] != self.patterns
        if reconfigured:
            queue = [e for e in queue if self._named(e.origin, current)]
        self._watch(queue)
        if checkpoint is not None:
            queue = self._in_order(queue, self._rotated_unseen(queue, current), current)
        self.more, self.due = False, None
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
            located = self.files.locate(entry, current)
            if located is None:
                log.warning(
                    "watcher %s: %s is gone; it was read up to byte %d",
                    self.name,
                    entry.path,
                    entry.offset,
                )
                continue
            path, fd, info = located
            if info.st_size < entry.offset or not holds(fd, entry):
                # Truncated (copytruncate) or another file under the same inode: read the unread
                # rest from the copy, if there is one in the folder, then this file from 0.
                i -= 1
                queue[i] = Tracked(path, info.st_dev, info.st_ino)
                copy = self.files.find_copy(entry, info.st_ino) if entry.offset else None
                if copy is not None:
                    rest = replace(entry, path=copy[0], dev=copy[2].st_dev, ino=copy[2].st_ino)
                    known = {(copy[2].st_dev, copy[2].st_ino)}
                    later = self._unseen(entry.path, copy[2].st_mtime_ns, queue, current, known)
                    queue[i:i] = [replace(rest, gone=rest.gone or now), *later]
                elif entry.mtime:
                    # The file was deleted and its inode reused by a newer one at this path: files
                    # rotated away in between are its siblings, newer than it was when last seen.
                    known = {(info.st_dev, info.st_ino)}
                    queue[i:i] = self._unseen(path, entry.mtime, queue, current, known)
                continue
            seen.add((entry.dev, entry.ino))
            member = current.get(path)
            here = member is not None and (member.st_dev, member.st_ino) == (entry.dev, entry.ino)
            entry.path, entry.gone = path, (None if here else entry.gone or now)
            entry.origin, entry.mtime = (path if here else entry.origin), info.st_mtime_ns
            found += self._read(entry, fd, info.st_size, now, budget)
            remember(fd, entry, info.st_size)
            drained = entry.offset >= info.st_size and entry.wait is None
            if entry.gone is not None and drained and now - entry.gone >= self.config.rotate_wait:
                finished = (entry.dev, entry.ino, info.st_mtime_ns, entry.origin)
                self.done = [*self.done, finished][-DONE:]
                continue
            kept.append(entry)
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
            found += self._read(entry, fd, info.st_size, now, budget)
            remember(fd, entry, info.st_size)
            kept.append(entry)
        self.files.keep_only({(e.dev, e.ino) for e in kept})
        self._watch(kept)
        if any(e.gone is not None for e in kept):
            self._due_at(now + self.config.rotate_wait)
        if not self.more:
            self.buffer = None  # caught up: no need to hold a chunk's memory while idle
        counts = {str(k): v for k, v in self.scanner.counts.items() if v}
        files = [e.to_json() for e in kept]
        found += self._slow_lines(now, slow_before)
        checkpoint = {"files": files, "counts": counts, "done": self.done, "paths": self.patterns}
        if self.scanner.slow:
            checkpoint["slow"] = self.scanner.slow
        return CheckResult(found, checkpoint)

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

    @staticmethod
    def _first_seen(path: str, fd: int, info: os.stat_result, at_end: bool) -> Tracked:
        """A file met for the first time: read from its start, or after its last full line."""
        entry = Tracked(path, info.st_dev, info.st_ino, origin=path, mtime=info.st_mtime_ns)
        if at_end:
            entry.offset = end_offset(fd, info.st_size)
        return entry

    @property
    def patterns(self) -> list[str]:
        """The configured paths and globs, as the checkpoint records them."""
        return [str(p) for p in self.config.paths]

    def _named(self, origin: str | None, current: dict[str, os.stat_result]) -> bool:
        """Whether the configured paths still name this file's path."""
        if origin is None:
            return False
        return origin in current or any(fnmatch.fnmatchcase(origin, p) for p in self.patterns)

    @staticmethod
    def _in_order(
        queue: list[Tracked], unseen: list[Tracked], current: dict[str, os.stat_result]
    ) -> list[Tracked]:
        """Queue the unseen rotated files so that each path's files are read oldest first.

        They follow the file we knew at their path, unless that file's inode now belongs to the
        newest file there (it was empty, deleted, and its inode reused): then they precede it.
        """
        members = {(s.st_dev, s.st_ino) for s in current.values()}
        ordered: list[Tracked] = []
        for entry in queue:
            if not entry.fp_len and (entry.dev, entry.ino) in members:
                ordered += [u for u in unseen if u.origin == entry.origin]
                unseen = [u for u in unseen if u.origin != entry.origin]
            ordered.append(entry)
        return ordered + unseen

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
        """Entries for files rotated away from ``path``, modified since ``newer_than``, unread."""
        known = set(known or ()) | {(e.dev, e.ino) for e in queue}
        known |= {(s.st_dev, s.st_ino) for s in current.values()}
        finished = {tuple(d[:3]) for d in self.done}
        now = time.time()
        return [
            Tracked(found, info.st_dev, info.st_ino, gone=now, origin=path)
            for found, info in rotated_siblings(path, newer_than, known)
            if (info.st_dev, info.st_ino, info.st_mtime_ns) not in finished
        ]

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

    def _due_at(self, when: float) -> None:
        self.due = when if self.due is None else min(self.due, when)

    def _watch(self, entries: list[Tracked]) -> None:
        """Keep inotify on the folders of the globs and of the followed files."""
        if self.watch is None or not self.watch.usable:
            return
        folders = [os.path.dirname(str(p)) or "." for p in self.config.paths]
        folders = [f for f in folders if not glob.has_magic(f)]
        folders += [os.path.dirname(e.path) or "." for e in entries]
        self.watch.update(
            list(dict.fromkeys(folders)),
            {os.path.basename(e.path) for e in entries},
            {Path(p).name for p in self.config.paths},
        )

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

    def close(self) -> None:
        """Close the followed files and the inotify descriptor."""
        self.files.close()
        if self.watch is not None:
            self.watch.close()
