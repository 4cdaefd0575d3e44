"""inotify for the log watcher: wake on relevant names, and hold new files open the moment they
appear.

A writer that rotates fast (``RotatingFileHandler`` with small files, a burst) can create a file,
rotate it away and delete it between two checks; once deleted, no tool can read it. What keeps it
readable is a descriptor opened before the delete. So a small daemon thread reads the inotify
events as they come and *pins* each file created (or moved in) under a followed name: it opens
it at once, before the check that reads it has even started, and hands the descriptors to the
next check (:meth:`FolderWatch.take`). The check reads a pinned file like any other, and drops it
if its content was read already.

Waking only for relevant names matters too: the state file may live in a watched folder, and its
own writes must not trigger checks. A queue overflow wakes unconditionally (the next check is a
full reconcile anyway). When inotify is missing or a watch limit is hit, ``usable`` turns False
and the watcher polls.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import logging
import os
import select
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

try:
    import inotify_simple
except ImportError:  # pragma: no cover - not on Linux
    inotify_simple = None

from watchkeeper.watchers.logfiles import FINGERPRINT, Files
from watchkeeper.watchers.logrotated import COMPRESSED

log = logging.getLogger("watchkeeper")

_EVENTS = 0
_ARRIVED = 0
_MODIFY = 0
_WRITTEN = 0
"""Events that only say a file was written: the rest change which file a name holds."""
if inotify_simple is not None:
    _flags = inotify_simple.flags
    _ARRIVED = _flags.CREATE | _flags.MOVED_TO
    _MODIFY = _flags.MODIFY
    _WRITTEN = _flags.MODIFY
    # Not CLOSE_WRITE: the writes before it woke the watcher already, and a writer that opens,
    # writes a line and closes (a script's ``>>``) would wake the thread twice per line.
    _EVENTS = _ARRIVED | _flags.MODIFY | _flags.MOVED_FROM | _flags.DELETE | _flags.ATTRIB

Key = tuple[int, int]
Cut = tuple[int, bytes]
"""A file's newest bytes as inotify's thread read them: (offset of the first, the bytes)."""
Ended = tuple[int, Cut | None]
"""One content of a followed file that a truncate ended: the largest size it reached, and its
newest bytes just before (None: none kept)."""
AHEAD = 64 * 1024
"""Bytes of each followed file's newest writes the thread keeps in memory (see ``_measure``)."""
EVENTS_READ = 64 * 1024
"""Bytes of inotify events read at once (an event is at most 272)."""
MTIME_SLACK = 50_000_000
"""Nanoseconds a file's modification time may lag the clock (timestamps are per tick)."""


class FolderWatch:
    """inotify on the folders of the followed files, filtered to the names that matter."""

    def __init__(self, name: str = "log", linger: float = 0.0, files: Files | None = None) -> None:
        self.name = name
        self.linger = linger
        self.files = files
        """The check's open files, whose descriptors the thread reads through (see _measure)."""
        self.quiet_until = 0.0
        """Monotonic time before which writes are gathered for the next check, not woken for:
        ``linger`` after the last check began (see :meth:`wait`)."""
        self.notify: Any = None
        self.usable = inotify_simple is not None
        self.watched: dict[str, int] = {}
        self.names: set[str] = set()
        self.globs: list[str] = []
        self.changed = threading.Event()
        self.waker: threading.Event | None = None
        """The waiting watcher's wake event, set with ``changed``: it blocks on that one event
        (stop, check-now and changes alike) instead of waking every so often to look at both."""
        self.lock = threading.Lock()
        self.looking: Key | None = None
        """The file the thread is looking at (see :meth:`_measure`), which a check waits for."""
        self.looked = threading.Condition(self.lock)
        self.pinned: dict[Key, tuple[int, str]] = {}
        self.followed: dict[str, tuple[int, Key]] = {}
        self.sizes: dict[Key, tuple[int]] = {}
        """Per followed file: the last size seen, by the thread or by a check that took what
        ended (boxed: a new tuple per look, by whose identity a look tells that a check took
        what ended while it looked)."""
        self.ahead: dict[Key, tuple[int, bytearray]] = {}
        """Per followed file: its newest bytes as they were written (offset of the first, the
        bytes), the last ``AHEAD`` to twice that."""
        self.ended: dict[Key, list[Ended]] = {}
        """Per followed file that shrank: each content a truncate ended since a check last took
        them (see :meth:`shrunk_from`), oldest first. Every one is kept: two truncates between
        two checks end two contents, and the bytes of both are the check's to read or report."""
        self.members: list[str] = []
        """Glob basenames of the followed paths: a file created under one is a generation."""
        self.rotated: list[str] = []
        """Where rotated files go (full-path globs), swept when the thread fell behind."""
        self.held: set[Key] = set()
        """Files the check held open when it last said (see :meth:`hold`)."""
        self.written: set[str] = set()
        """Paths of relevant names written to since the last :meth:`take_written`."""
        self.moved = True
        """Anything but a write happened since then (a name created, moved, deleted, its
        attributes changed, the queue overflowed): only a full look can tell what it did."""
        self.created = 0
        """Files created under a followed name since the thread started: generations."""
        self.overflows = 0
        self.late = 0
        """Files created under a followed name that the thread found replaced when it looked."""
        self.started = self.since = time.time_ns()
        self.complete = False
        """Every folder asked for at the last :meth:`update` is watched."""
        self.stopping = threading.Event()
        self._stop_pipe: tuple[int, int] | None = None
        """Written to by :meth:`close`: the thread blocks in ``select`` with no timeout."""
        self.busy = False
        """The thread has read a batch of events it has not finished handling."""
        self.thread: threading.Thread | None = None
        if self.usable:
            try:
                self.notify = inotify_simple.INotify()
            except OSError as exc:
                log.warning("inotify unavailable (%s); polling instead", exc)
                self.usable = False

    def update(
        self,
        folders: Sequence[str],
        names: Iterable[str],
        globs: Iterable[str],
        members: Iterable[str] = (),
        rotated: Iterable[str] = (),
    ) -> None:
        """Watch these folders; wake (and pin) for these file names and glob basenames.

        ``members`` are the followed paths' glob basenames (a file created under one is a new
        generation, counted), ``rotated`` the full globs where rotated files go.
        """
        self.names = set(names)
        self.globs = list(globs)
        self.members = list(members)
        self.rotated = list(rotated)
        if not self.usable:
            return
        self.complete = True
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
                self.complete = False  # a folder that does not exist yet: tried again later
        if self.thread is None:
            self._stop_pipe = os.pipe()
            self.thread = threading.Thread(
                target=self._run, name=f"watchkeeper-inotify-{self.name}", daemon=True
            )
            self.thread.start()

    def wait(self, wake: Any, timeout: float) -> None:
        """Block until a relevant event, ``wake`` is set, or ``timeout`` passes."""
        if self.thread is None:  # nothing watched yet: only the sweep can find files
            wake.wait(timeout)
            return
        self.waker = wake
        if not self.changed.is_set():
            wake.wait(timeout)  # the thread sets it, ``linger`` after the last check at the soonest
        else:  # set before this wait began: the watcher has work, due once the linger is over
            gather = self.quiet_until - time.monotonic()
            if gather > 0:
                wake.wait(min(timeout, gather))  # a stop or check-now cuts it short
        self.quiet_until = time.monotonic() + self.linger  # ``changed`` stays set: see read()

    def read(self) -> None:
        """A check begins, and reads whatever inotify named so far: cleared here, not when the
        wait ends, so that a stop which ends the wait still sees there is something to read."""
        self.changed.clear()

    def follow(self, files: dict[str, tuple[int, Key]], merge: bool = False) -> None:
        """The followed files by path: (descriptor, identity), whose sizes the thread tracks.

        ``merge``: these are only the files a check that looked at a few read; the rest stay.

        On every write the thread looks at the size (one ``fstat``); when the file shrinks
        (copytruncate), the size it had just before is kept: bytes past what the copy holds
        were written before the truncate and are lost, and this says how many.
        """
        named = {os.path.normpath(path): held for path, held in files.items()}
        if merge:  # in place: a copy per check would cost as much as the files followed
            self.followed.update(named)
            return
        self.followed = named
        keys = {key for _, key in files.values()}
        with self.lock:
            self.sizes = {k: v for k, v in self.sizes.items() if k in keys}
            self.ahead = {k: v for k, v in self.ahead.items() if k in keys}
            self.ended = {k: v for k, v in self.ended.items() if k in keys}

    def shrank(self, key: Key, fd: int, size: int) -> bool:
        """Whether the file (``size`` bytes when the check looked) shrank since a check last
        took what ended."""
        with self.lock:
            self._after_look(key)
            return bool(self.ended.get(key)) or bool(self._unnoted(key, fd, size))

    def _after_look(self, key: Key) -> None:
        """Wait until the thread is not looking at this file. Called with the lock held.

        A look reads first and notes after: one in flight may hold the last bytes of a content
        a truncate ended, read just before it. A check that took what ended meanwhile would
        start the history afresh, the look's bytes dropped with it, neither read nor counted.
        A look takes microseconds (its timeout is a safeguard, never reached).
        """
        self.looked.wait_for(lambda: self.looking != key, timeout=1.0)

    def _unnoted(self, key: Key, fd: int, size: int) -> int:
        """The size the thread saw last, if the file is smaller now (a truncate the thread has
        yet to note); else 0. Called with the lock held.

        The check's look at the size may be older than the thread's last (it looked between
        the two), and the file grew since: so a smaller size is asked again, here, where it is
        no older than any the thread noted.
        """
        last = self.sizes.get(key, (0,))[0]
        return last if last > size and last > os.fstat(fd).st_size else 0

    def shrunk_from(self, key: Key, fd: int, size: int, truncated: bool) -> list[Ended]:
        """The contents of the file (now ``size`` bytes) that truncates ended since a check last
        asked, oldest first: the size each reached, and its newest bytes (see :data:`Ended`).

        A check asks whenever it looks at a file it is about to read, for the thread may know
        of a truncate the check cannot tell: a check that has read nothing of a file yet (at
        offset 0) has no marker to find missing. ``truncated``: the check found one itself.

        The check may meet a truncate before the thread does (it was reading when the truncate
        came, the thread still waits for its turn): then the size the thread noted last is
        larger than the file now, and what it kept, all read before the truncate, is the old
        content's newest bytes, which it would have set aside at its next look. And it may meet
        one the thread never will (the file grew past the size the thread noted before it
        looked again): then what it kept may be two contents' bytes.

        In both cases the history starts afresh from the size the check saw (``size``, the
        content it is about to read): bytes kept before must not pass for the new content's,
        and should that content end before the thread's next look, the look still finds the
        file shorter than that size and notes its end. Otherwise the thread saw every end: what
        it kept since the last one is the content the check is about to read, and stays.
        (So ``size`` must be the file's own, not a glob listing's made before: that may be the
        size of a content a truncate ended since, and the next look, finding the file shorter,
        would take the content the check reads for ended too.)
        """
        with self.lock:
            self._after_look(key)
            last = self._unnoted(key, fd, size)
            ended = self.ended.pop(key, [])
            if not last and (ended or not truncated):
                return ended
            self.sizes[key] = (size,)
            kept = self.ahead.pop(key, None)
        if last:  # not seen by the thread yet
            ended.append(
                (last, (kept[0], bytes(kept[1])) if kept is not None and kept[1] else None)
            )
        return ended

    def heads(self) -> dict[Key, list[bytes]]:
        """Per file, the first bytes of each content that ended, where the thread kept them
        from the start (up to ``FINGERPRINT``): what a copy of one is known by."""
        with self.lock:
            if not self.ended:
                return {}
            return {
                key: [cut[1][:FINGERPRINT] for _, cut in ended if cut is not None and not cut[0]]
                for key, ended in self.ended.items()
            }

    def hold(self, keys: set[Key]) -> None:
        """The files the check holds open (and so has counted as generations already)."""
        with self.lock:
            self.held = set(keys)

    def idle(self) -> bool:
        """Whether every event queued so far has been handled: none unread, no batch in hand.

        Only then are the counts exact: a check may meet a file whose creation the thread has
        yet to count, or that it is about to pin a second time.
        """
        notify = self.notify
        if notify is None or self.thread is None:
            return True
        try:  # unread events first: a batch read after this look was queued after it too
            ready, _, _ = select.select([notify.fileno()], [], [], 0)
        except (OSError, ValueError):  # closed: stopping
            return True
        return not ready and not self.busy

    def counts(self) -> tuple[int, int, int, int]:
        """Generations created, files pinned not yet taken, queue overflows, lateness."""
        with self.lock:
            return self.created, len(self.pinned), self.overflows, self.late

    def take(self) -> dict[Key, tuple[int, str]]:
        """The files pinned since the last take, in the order they appeared: (fd, path) by key.

        The caller owns the descriptors from now on.
        """
        with self.lock:
            pinned, self.pinned = self.pinned, {}
            # Held from now on: a batch that looks before the check says so (see :meth:`hold`)
            # must not take them for new files (a creation that meets one is late).
            self.held.update(pinned)
        return pinned

    def take_written(self) -> set[str] | None:
        """The paths written to since the last call; None if anything else happened meanwhile.

        A write names the path, not the file: the caller stats each path again to learn which
        file is there now (the thread may lag a burst, and by the time the check looks, the name
        may belong to another file). None (a creation, move, delete, overflow, or the thread
        not running) asks for a full look.
        """
        with self.lock:
            written, moved = self.written, self.moved
            self.written, self.moved = set(), self.thread is None
        return None if moved else written

    def _run(self) -> None:
        """Read events as they come: pin arrivals, wake the watcher for relevant names."""
        notify = self.notify
        fd = notify.fileno()
        assert self._stop_pipe is not None
        folders = {wd: folder for folder, wd in self.watched.items()}
        gather: float | None = None  # until the linger is over; None: block until an event
        while not self.stopping.is_set():
            try:
                ready, _, _ = select.select([fd, self._stop_pipe[0]], [], [], gather)
                mark = time.time_ns()
                self.busy = fd in ready  # before the read: see idle()
                # One read, no size asked first: each call is a turn at the interpreter's lock.
                events = (
                    inotify_simple.parse_events(os.read(fd, EVENTS_READ)) if fd in ready else []
                )
            except (OSError, ValueError):  # closed under us: stopping
                self.busy = False
                return
            if len(folders) != len(self.watched):
                folders = {wd: folder for folder, wd in self.watched.items()}
            if events and self._relevant(events, folders):
                self.changed.set()
            gather = self._wake() if self.changed.is_set() else None
            if events:  # what the next batch names was created after this read (less a tick)
                self.since = mark - MTIME_SLACK
            self.busy = False

    def _wake(self) -> float | None:
        """Wake the waiting watcher, unless its linger is not over: then how long until it is.

        Under a steady trickle of writes, each would otherwise cost a check of its own (a
        commit, a notifier's read, send and mark); gathered, one check takes them all.
        """
        gather = self.quiet_until - time.monotonic()
        if gather > 0:
            return gather
        waker = self.waker
        if waker is not None:
            waker.set()
        return None

    def _relevant(self, events: Sequence[Any], folders: dict[int, str]) -> bool:
        """Handle one batch of events; whether any concerns a followed or rotated name.

        Each file created under a followed name is a generation (counted: the check compares
        the count with the generations it read). Each should be a file this batch opened that
        nobody held before; when the thread fell behind (a later generation was already at the
        name when it looked), the rotated globs are swept for the files it missed.
        """
        flags = inotify_simple.flags
        relevant = False
        with self.lock:
            before = self.held | set(self.pinned)
        created = late = 0
        got: set[Key] = set()
        for event in events:
            if event.mask & (flags.Q_OVERFLOW | flags.IGNORED):
                with self.lock:
                    self.moved = True
                if event.mask & flags.IGNORED:
                    self.watched = {f: w for f, w in self.watched.items() if w != event.wd}
                else:
                    with self.lock:
                        self.overflows += 1
                relevant = True
                continue
            if event.name in self.names or any(fnmatch.fnmatch(event.name, g) for g in self.globs):
                relevant = True
                folder = folders.get(event.wd)
                if folder is None:
                    continue
                path = os.path.normpath(os.path.join(folder, event.name))
                with self.lock:
                    if event.mask & ~_WRITTEN:
                        self.moved = True
                    else:
                        self.written.add(path)
                if event.mask & _ARRIVED:
                    key = self._pin(path)
                    fresh = key is not None and key not in before and key not in got
                    if key is not None and fresh:
                        got.add(key)
                    if event.mask & flags.CREATE and any(
                        fnmatch.fnmatch(event.name, g) for g in self.members
                    ):
                        created += 1
                        late += not fresh
                elif event.mask & _MODIFY:
                    followed = self.followed.get(path)
                    if followed is not None:
                        self._measure(*followed)
        if created > len(got):
            self._sweep(before | got)
        with self.lock:
            self.created += created
            self.late += late
        return relevant

    def _sweep(self, known: set[Key]) -> None:
        """Pin the files where rotated files go that appeared since the last batch."""
        for pattern in self.rotated:
            for path in glob.glob(pattern):
                with contextlib.suppress(OSError):
                    info = os.stat(path)
                    if info.st_mtime_ns >= self.since and (info.st_dev, info.st_ino) not in known:
                        self._pin(path)

    def _measure(self, fd: int, key: Key) -> None:
        """Note a followed file's size now, the size it had before it shrank, and its newest
        bytes.

        The bytes are what ``tail -F`` has and a check may not yet: with copytruncate, what is
        written between logrotate's copy and its truncate is in no file once the truncate is
        done, and a check comes a millisecond or two after a write. Read here as they come (the
        last ``AHEAD`` of them), they are kept when the file shrinks, for the check that meets
        the truncate (see :meth:`shrunk_from`).

        Once the file was looked at, what was written since is read *first*, and its size
        looked at after: every system call is a turn at the interpreter's lock to wait for,
        and the window before the truncate is a millisecond or so.
        """
        try:
            self._look(fd, key)
        finally:
            with self.lock:
                self.looking = None
                self.looked.notify_all()

    def _look(self, fd: int, key: Key) -> None:
        """One look of :meth:`_measure`'s (which ends it, for the checks that wait)."""
        with self.lock:
            self.looking = key
            noted = self.sizes.get(key)
            last = noted[0] if noted is not None else 0
            held = self.ahead.get(key)
        closed = self.files.closed if self.files is not None else 0
        start, kept = held or (last, bytearray())
        # From where the bytes kept end; after a burst larger than AHEAD, only the newest.
        begin = max(start + len(kept), last - AHEAD)
        try:
            data = os.pread(fd, 2 * AHEAD, begin) if held is not None else b""
            info = os.fstat(fd)
        except OSError:
            return  # closed by the check meanwhile
        if (info.st_dev, info.st_ino) != key:
            return  # the descriptor number was reused for another file
        size = info.st_size
        ended: Ended | None = None
        if held is None:  # the first look (since a check took what ended): its newest bytes
            if size < last:  # shorter than the check saw it: that content ended
                ended = (last, None)
            begin = max(0, size - AHEAD)
            data = _read_at(fd, begin, size) or b""  # shrunk meanwhile: the next look says
            start, kept = begin, bytearray()
        else:
            # Shrunk (a truncate) since the last look, or since the read. Bytes read past the
            # size now were the old content's, read in time (the new one cannot have grown past
            # them meanwhile): kept for the check. Bytes the new content covers may be its own.
            # The size before the truncate is then known up to what was read: more than one
            # read's worth written since the last look, and truncated in the microseconds
            # between this read and this look, is counted short (the old order had the same
            # window between its look and its read).
            shrunk = size < last or size < begin + len(data)
            if shrunk and size >= begin + len(data):
                data = b""
            if data and begin != start + len(kept):  # a gap before them: they alone are kept
                start, kept = begin, bytearray()
            if shrunk:
                cut = (start, bytes(kept) + data) if kept or data else None
                ended, start, kept = (max(last, begin + len(data)), cut), size, bytearray()
                data = b""
        with self.lock:
            if self.sizes.get(key) is not noted:
                return  # a check took what was noted meanwhile (it met the truncate first)
            if self.files is not None and self.files.closed != closed:
                # The check closed a descriptor meanwhile: the bytes may have been read through
                # its number given to another file in between. The next look reads them again.
                return
            # Added here, under the lock, once no check took the bytes kept: one that did (it
            # met a truncate first) holds this very bytearray, as the old content's, and what
            # was read since may be the new content's.
            kept += data  # in place: no copy of what is kept per write
            if len(kept) > 2 * AHEAD:
                del kept[: len(kept) - AHEAD]
                start = begin + len(data) - len(kept)
            self.sizes[key] = (size,)
            self.ahead[key] = (start, kept)
            if ended is not None:
                self.ended.setdefault(key, []).append(ended)

    def _pin(self, path: str) -> Key | None:
        """Hold the file now at ``path`` open (once per file), for the next check.

        Compressed files are not: their text is read from the archive (decompressed), which
        outlives any descriptor held on it.
        """
        if path.endswith(COMPRESSED):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None  # gone already, or unreadable: the check says so
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        with self.lock:
            if key in self.pinned or key in self.held or self.stopping.is_set():
                os.close(fd)
            else:
                self.pinned[key] = (fd, path)
        return key

    def close(self) -> None:
        """Stop the thread, release the inotify descriptor and the files pinned but not taken."""
        self.stopping.set()
        if self._stop_pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_pipe[1], b"x")
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)
        self.thread = None
        if self._stop_pipe is not None:
            for end in self._stop_pipe:
                os.close(end)
            self._stop_pipe = None
        if self.notify is not None:
            with contextlib.suppress(OSError):
                self.notify.close()
            self.notify = None
        self.watched = {}
        for fd, _ in self.take().values():
            os.close(fd)


def _read_at(fd: int, begin: int, end: int) -> bytes | None:
    """The bytes ``[begin, end)`` of the file, or None if it shrank meanwhile (a truncate
    between the ``fstat`` and the read: what came back may be the new content)."""
    try:
        data = os.pread(fd, end - begin, begin)
        if len(data) != end - begin or os.fstat(fd).st_size < end:
            return None
    except OSError:
        return None
    return data
