"""The scan loop: one thread, a fixed pool of non-blocking connects, one poller.

Everything here is tuned for the hot path: a full scan runs ``_launch`` and ``_answers`` 65,535
times per host, so names are bound to locals and common results are shared objects.

The poller is epoll on Linux, poll elsewhere. This was measured against asyncio
(``loop.sock_connect`` in a fixed set of worker coroutines) and against several threads each with
its own epoll: on a full 1-65535 loopback scan the plain loop took 0.93 s, asyncio 3.07 s, and
extra threads gave nothing because the kernel's connect path, not Python, is the cost (see
docs/ports.md). Correctness traps it
handles, each one a bug in the copied "200 threads and a queue" scanner:

- every probe has a timeout, and a probe with no answer is retried before it counts as
  ``filtered`` — one silent port never blocks the scan. Attempts that will be retried use a
  timeout from the measured round trip (as TCP and nmap do, at least 100 ms); the last attempt
  always waits the full ``timeout``, so a slow answer is never lost to the shortcut;
- a connect to a closed port in the ephemeral range can connect the socket *to itself* (TCP
  simultaneous open) and look open: ``getsockname() == getpeername()`` is reported ``closed``;
- EMFILE/ENFILE/ENOBUFS when creating a socket mean "no descriptor right now": the port goes back
  to the queue and the pool shrinks; never is it reported ``closed``. At start the soft
  RLIMIT_NOFILE is raised toward the hard limit and the pool is kept below it;
- ranges are inclusive: ``1-65535`` probes 65535 ports.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

from watchkeeper.scan.model import HostScan, PortResult, PortState, Progress, ScanOptions

try:
    import resource
except ImportError:  # pragma: no cover - Windows has no RLIMIT_NOFILE
    resource = None  # type: ignore[assignment]

FD_RESERVE = 32
"""Descriptors left free for the rest of the program when the pool size is chosen."""
FD_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""Errors from socket() that mean "try again when a descriptor is free", never "closed"."""
FD_GIVE_UP = 30.0
"""With no probe in flight, wait this long for a free descriptor before marking ports error."""
EARLY_TIMEOUT_MIN = 0.1
"""Attempts that will be retried wait at least this long (nmap -T4's minimum RTT timeout)."""
STARVED_WAIT = 0.05
"""With no descriptor free and nothing in flight, look again this often."""
PROGRESS_EVERY = 0.1
"""Seconds between progress callbacks."""


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit (enough for ``wanted`` more
    descriptors); return the soft limit now in force."""
    if resource is None:  # pragma: no cover
        return wanted + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    goal = open_descriptors() + wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < goal:
        new = goal if hard == resource.RLIM_INFINITY else min(goal, hard)
        if new > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
    return soft if soft != resource.RLIM_INFINITY else goal


def open_descriptors() -> int:
    """How many descriptors this process holds (a guess of 64 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def pool_size(requested: int) -> int:
    """The number of probes to keep in flight: as asked, but below the descriptor limit."""
    limit = raise_fd_limit(requested)
    return max(1, min(requested, limit - open_descriptors() - FD_RESERVE))


class _Poller:
    """epoll where there is one, poll elsewhere; timeouts in seconds."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = select.poll() if self._epoll is None else None
        poller = self._epoll or self._poll
        assert poller is not None
        # Bound methods, not wrappers: register runs once per probe.
        self.register: Callable[[int, int], None] = poller.register
        self.modify: Callable[[int, int], None] = poller.modify

    @property
    def needs_unregister(self) -> bool:
        """Whether a closed descriptor must be unregistered (poll) or goes by itself (epoll)."""
        return self._poll is not None

    def unregister(self, fd: int) -> None:
        """Forget ``fd``; only needed by poll (epoll forgets a descriptor when it is closed)."""
        if self._poll is not None:
            self._poll.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(timeout)
        assert self._poll is not None
        return self._poll.poll(timeout * 1000)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM = socket.SOCK_STREAM | _NONBLOCK
_OUT = select.POLLOUT
_SOL_SOCKET = socket.SOL_SOCKET
_SO_ERROR = socket.SO_ERROR
_REFUSED = errno.ECONNREFUSED
_INPROGRESS = errno.EINPROGRESS
_IN = select.POLLIN


class _Probe:
    """One connect (or, once open, one banner read) in flight."""

    __slots__ = ("attempt", "deadline", "port", "reading", "sock", "started")

    def __init__(
        self, sock: _socket.socket, port: int, attempt: int, deadline: float, started: float
    ) -> None:
        self.sock = sock
        self.port = port
        self.attempt = attempt
        self.deadline = deadline
        self.started = started
        self.reading = False


class Run:
    """The loop for one host: launch while the pool has room, poll, classify, expire."""

    def __init__(
        self,
        family: socket.AddressFamily,
        address: str,
        ports: Sequence[int],
        opts: ScanOptions,
        pool: int,
        report: HostScan,
        progress: Progress | None,
    ) -> None:
        self.family = family
        self.address = address
        self.opts = opts
        self.pool = self.max_pool = pool
        self.report = report
        self.progress = progress
        self.queue: deque[tuple[int, int]] = deque((p, 0) for p in ports)
        self.total = len(ports)
        self.pending: dict[int, _Probe] = {}
        # Probes by deadline: early attempts (round-trip based timeout, nearly in order), last
        # attempts and banner reads (one fixed timeout each, so in order).
        self.deadlines: deque[_Probe] = deque()
        self.final_deadlines: deque[_Probe] = deque()
        self.banner_deadlines: deque[_Probe] = deque()
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.poller = _Poller()
        self.launched = 0
        self.began = time.monotonic()
        self.starved_since: float | None = None

    def run(self) -> None:
        try:
            self._loop()
        finally:
            for probe in self.pending.values():
                probe.sock.close()
            self.poller.close()
            if self.progress is not None:
                self.progress(len(self.report.results), self.total)

    def _loop(self) -> None:
        results = self.report.results
        next_progress = time.monotonic() + PROGRESS_EVERY
        while self.queue or self.pending:
            wait = self._launch()
            if not self.pending and not self.queue:
                break  # everything answered within connect(): nothing to wait for
            now = time.monotonic()
            for line in (self.deadlines, self.final_deadlines, self.banner_deadlines):
                if line:
                    wait = min(wait, max(0.0, line[0].deadline - now))
            self._answers(self.poller.poll(wait))
            self._expire(time.monotonic())
            if self.progress is not None and time.monotonic() >= next_progress:
                self.progress(len(results), self.total)
                next_progress = time.monotonic() + PROGRESS_EVERY

    def _launch(self) -> float:
        """Start probes while the pool and the rate allow; return how long to poll at most."""
        opts = self.opts
        queue, pending, pool = self.queue, self.pending, self.pool
        budget = len(queue)
        if opts.rate is not None:
            allowed = int(opts.rate * (time.monotonic() - self.began)) + 1 - self.launched
            if allowed <= 0:
                return (self.launched / opts.rate) - (time.monotonic() - self.began)
            budget = min(budget, allowed)
        # The hot loop of a scan: names bound to locals, bookkeeping moved out of the loop.
        target = (self.family, self.address)
        now = time.monotonic()
        early, final, last = now + self._early_timeout(), now + opts.timeout, opts.retries
        new_socket, popleft = _socket.socket, queue.popleft
        results, closed = self.report.results, _result(PortState.CLOSED, "conn-refused")
        register = self.poller.register
        track, track_final = self.deadlines.append, self.final_deadlines.append
        refused = 0
        started, wait = 0, opts.timeout
        while started < budget and len(pending) < pool:
            port, attempt = popleft()
            try:
                sock = new_socket(target[0], _STREAM)
            except OSError as exc:
                if exc.errno in FD_SHORTAGE:
                    queue.appendleft((port, attempt))
                    self._short_of_descriptors(exc, now)
                    wait = STARVED_WAIT
                    break
                raise
            started += 1
            if not _NONBLOCK:
                sock.setblocking(False)
            code = sock.connect_ex((target[1], port))
            if code == _INPROGRESS:
                # On loopback the refusal has usually arrived before connect returns: asking
                # now saves the poller round trip for most ports of a scan.
                code = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
                if code == _REFUSED:
                    sock.close()
                    results[port] = closed
                    refused += 1
                    continue
            if code in (0, _INPROGRESS):
                fd = sock.fileno()
                if attempt < last:
                    probe = _Probe(sock, port, attempt, early, now)
                    track(probe)
                else:
                    probe = _Probe(sock, port, attempt, final, now)
                    track_final(probe)
                pending[fd] = probe
                register(fd, _OUT)
            else:
                self._finish(_Probe(sock, port, attempt, now, now), code, registered=False)
        if refused:  # answered within connect(): a round trip shorter than the call itself
            self._sample((time.monotonic() - now) / started)
        if started:
            self.launched += started
            self.starved_since = None
            if self.pool < self.max_pool:  # grow back after a descriptor shortage
                self.pool = min(self.max_pool, self.pool + started)
        if opts.rate is not None and queue and len(pending) < self.pool:
            wait = min(wait, max(0.0, self.launched / opts.rate - (time.monotonic() - self.began)))
        return wait

    def _early_timeout(self) -> float:
        """The timeout of attempts that will be retried: like TCP's RTO (srtt + 4 rttvar), at
        least EARLY_TIMEOUT_MIN, at most the configured timeout. The last attempt always waits
        the full timeout, so a slow answer still counts; only silent ports get cheaper."""
        if self.srtt is None:
            return self.opts.timeout
        return min(self.opts.timeout, max(EARLY_TIMEOUT_MIN, self.srtt + 4 * self.rttvar))

    def _sample(self, rtt: float) -> None:
        """Fold one round-trip sample into the smoothed estimate (Jacobson/Karels)."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _short_of_descriptors(self, exc: OSError, now: float) -> None:
        """No descriptor: shrink the pool to what is in flight; give up only after a long wait."""
        self.report.fd_waits += 1
        self.pool = max(1, len(self.pending))
        if self.pending:
            return
        if self.starved_since is None:
            self.starved_since = now
        elif now - self.starved_since > FD_GIVE_UP:
            reason = errno.errorcode.get(exc.errno or 0, str(exc))
            while self.queue:
                port, _ = self.queue.popleft()
                self.report.results[port] = PortResult(PortState.ERROR, reason)

    def _answers(self, ready: list[tuple[int, int]]) -> None:
        """Handle what the poller reported; refused connects (most of a scan) inline."""
        pending, results = self.pending, self.report.results
        closed = _result(PortState.CLOSED, "conn-refused")
        forget = self.poller.unregister if self.poller.needs_unregister else None
        now, slowest = time.monotonic(), 0.0
        for fd, _events in ready:
            probe = pending.get(fd)
            if probe is None:
                continue
            if not probe.reading:
                slowest = max(slowest, now - probe.started)
                sock = probe.sock
                code = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
                if code == _REFUSED:
                    del pending[fd]
                    if forget is not None:
                        forget(fd)
                    sock.close()
                    results[probe.port] = closed
                    continue
                self._finish(probe, code, registered=True)
            else:
                self._read_banner(fd, probe)
        if slowest:
            self._sample(slowest)  # one sample per batch: its slowest answer

    def _read_banner(self, fd: int, probe: _Probe) -> None:
        data = b""
        with contextlib.suppress(OSError):
            data = probe.sock.recv(self.opts.banner_bytes)
        self._done(fd, probe)
        self.report.results[probe.port] = PortResult(PortState.OPEN, "syn-ack", _banner_text(data))

    def _finish(self, probe: _Probe, code: int, registered: bool) -> None:
        """Classify a connect that completed with ``code`` (0 = connected)."""
        port, sock = probe.port, probe.sock
        fd = sock.fileno()
        if code == 0:
            try:
                self_connect = sock.getsockname() == sock.getpeername()
            except OSError:  # reset between connect and now: it was open
                self_connect = False
            if self_connect:
                state, reason = PortState.CLOSED, "self-connect"
            elif self.opts.banner:
                probe.reading = True
                probe.deadline = time.monotonic() + self.opts.banner_timeout
                if registered:
                    self.poller.modify(fd, _IN)
                else:
                    self.pending[fd] = probe
                    self.poller.register(fd, _IN)
                self.banner_deadlines.append(probe)
                return
            else:
                state, reason = PortState.OPEN, "syn-ack"
                # Reset rather than FIN: leaves no TIME_WAIT behind on either side.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        elif code == errno.ECONNREFUSED:
            state, reason = PortState.CLOSED, "conn-refused"
        elif code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
            state, reason = PortState.FILTERED, _errname(code)
        elif code in (errno.ETIMEDOUT, errno.EAGAIN, errno.EADDRNOTAVAIL):
            # The stack gave up or ran out of local ports: no answer yet, so try again.
            if registered:
                self._done(fd, probe)
            else:
                sock.close()
            self._retry_or(probe, PortState.FILTERED if code == errno.ETIMEDOUT else None, code)
            return
        else:
            state, reason = PortState.ERROR, _errname(code)
        if registered:
            self._done(fd, probe)
        else:
            sock.close()
        self.report.results[port] = _result(state, reason)

    def _retry_or(self, probe: _Probe, state: PortState | None, code: int) -> None:
        if probe.attempt < self.opts.retries:
            self.queue.append((probe.port, probe.attempt + 1))
        else:
            final = state or PortState.ERROR
            reason = "no-response" if final is PortState.FILTERED else _errname(code)
            self.report.results[probe.port] = _result(final, reason)

    def _done(self, fd: int, probe: _Probe) -> None:
        del self.pending[fd]
        self.poller.unregister(fd)
        probe.sock.close()

    def _expire(self, now: float) -> None:
        """Probes past their deadline: retry (or filtered); banner reads end with what came."""
        for deadlines in (self.deadlines, self.final_deadlines, self.banner_deadlines):
            while deadlines and deadlines[0].deadline <= now:
                self._expired(deadlines.popleft(), now)

    def _expired(self, probe: _Probe, now: float) -> None:
        fd = probe.sock.fileno()
        if fd < 0 or self.pending.get(fd) is not probe:
            return  # already answered
        if probe.reading and probe.deadline > now:
            return  # the connect's deadline; the banner read has its own, queued later
        self._done(fd, probe)
        if probe.reading:
            self.report.results[probe.port] = PortResult(PortState.OPEN, "syn-ack", "")
        else:
            self._retry_or(probe, PortState.FILTERED, errno.ETIMEDOUT)


_COMMON: dict[tuple[PortState, str], PortResult] = {}


def _result(state: PortState, reason: str) -> PortResult:
    """One shared instance per (state, reason): a full scan makes 65535 of them otherwise."""
    key = (state, reason)
    found = _COMMON.get(key)
    if found is None:
        found = _COMMON[key] = PortResult(state, reason)
    return found


def _errname(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


def _banner_text(data: bytes) -> str:
    """Printable text of what a service said first, one line per line, bounded by the read."""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "." for ch in text).strip()
