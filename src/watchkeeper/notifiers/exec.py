"""Run a command for each alert, as Monit's ``exec``, swatch's ``exec`` and fail2ban's actions do.

The command is an argv list, run without a shell, so nothing in an alert can become shell syntax;
a string run by ``/bin/sh -c`` only when the config says ``shell = true``. The alert goes to the
command twice: as one JSON object on stdin (the jsonl form) and as ``WATCHKEEPER_*`` environment
variables for scripts that just want the title.

Its exit status decides, as Postfix's pipe(8) reads sysexits(3): 0 is sent; 75 (``EX_TEMPFAIL``),
a timeout and death by a signal are retried with backoff; anything else fails for good. The first
and last 2 KB of what it printed (stdout and stderr together) become the delivery's error, so
``watchkeeper status`` shows why.

No thread and no executor: each command leads a process group of its own, so a timeout kills
it and whatever it started (``process_group=0``: a new session, ``start_new_session``, made each
start twice as slow on CPython 3.11 here), and one ``selectors`` loop feeds the stdin and reads
the output of every running command against the deadline. So this notifier also delivers in the
interpreter's exit path. It runs one command at a time, in order, unless ``parallel`` lets the
dispatcher hand it up to that many due alerts at once (:meth:`send_each`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from watchkeeper.alerts import Alert
from watchkeeper.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from watchkeeper.notifiers.base import Notifier, NotifierConfig, register
from watchkeeper.textsafe import terminal_safe
from watchkeeper.units import Duration

EX_TEMPFAIL = 75
"""sysexits(3): "temporary failure; try again later"."""
OUTPUT_LIMIT = 4096
"""Bytes of the command's output kept for the delivery's error: the first and last half."""
BODY_LIMIT = 8192
"""Characters of the body in ``WATCHKEEPER_BODY``; stdin always has all of it."""
VALUE_LIMIT = 16384
"""Bytes of any other ``WATCHKEEPER_*`` value (Linux refuses one variable over 128 KiB)."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OURS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""systemd's channel to the agent: not for the commands it runs."""
EXIT_GRACE = 1.0
"""After the command exits, how long to read output that a process it left behind still holds."""


class ExecConfig(NotifierConfig):
    """``[[notify]] kind = "exec"``: run a command per alert, the alert as JSON on its stdin."""

    kind: Literal["exec"] = "exec"
    command: list[str] | str = Field(
        description='The program and its arguments, e.g. ["/usr/local/bin/on-alert", "--page"]; '
        "a string only with shell = true."
    )
    shell: bool = Field(
        default=False, description="Run command, a string, with /bin/sh -c. Off: no shell at all."
    )
    timeout: Duration = Field(
        default=30.0, description="Kill the command (its process group) and retry after this long."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the command."
    )
    parallel: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Run up to this many commands at once when several alerts are due "
        "(they may then finish out of order).",
    )

    @model_validator(mode="after")
    def _command_form(self) -> ExecConfig:
        for name, value in self.env.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env: {name!r} is not a variable name (letters, digits, _)")
            if "\x00" in value:
                raise ValueError(f"env: {name} holds a NUL character, which no variable can")
        words = [self.command] if isinstance(self.command, str) else self.command
        if any("\x00" in word for word in words):
            raise ValueError("command: holds a NUL character, which no argument can")
        if self.shell and not isinstance(self.command, str):
            raise ValueError('command: with shell = true, write one string: "cmd --flag | tee x"')
        if not self.shell and isinstance(self.command, str):
            raise ValueError(
                f"command: write the program and its arguments as a list, e.g. "
                f"{json.dumps(shlex.split(self.command) or ['/usr/local/bin/on-alert'])}; "
                "or set shell = true to run a string through /bin/sh"
            )
        if not self.command or (isinstance(self.command, list) and not self.command[0]):
            raise ValueError("command: empty; name the program to run")
        return self


def alert_environment(alert: Alert) -> dict[str, str]:
    """``WATCHKEEPER_ID``, ``_TITLE``, …: the alert's fields a script needs, as text.

    Values lose the NUL characters an environment cannot hold; the body is cut at
    :data:`BODY_LIMIT` characters (stdin has all of it), since one variable may not exceed
    128 KiB on Linux.
    """
    doc = alert.to_dict()
    fields = ("id", "uid", "watcher", "kind", "severity", "title", "key", "status", "created_at")
    env = {f"WATCHKEEPER_{f.upper()}": str(doc[f]) for f in fields if doc[f] is not None}
    url = alert.data.get("item_url") or alert.data.get("url")
    if url:
        env["WATCHKEEPER_URL"] = str(url)
    body = alert.body
    env["WATCHKEEPER_BODY"] = body if len(body) <= BODY_LIMIT else body[: BODY_LIMIT - 1] + "…"
    return {name: _env_safe(value) for name, value in env.items()}


def _env_safe(value: str) -> str:
    """No NUL (an environment string ends there), no lone surrogate (not encodable), and at
    most :data:`VALUE_LIMIT` bytes (a longer title or URL would make the command unstartable)."""
    data = value.replace("\x00", "\ufffd").encode("utf-8", "replace")
    if len(data) > VALUE_LIMIT:
        data = data[: VALUE_LIMIT - 3] + "…".encode()
    return data.decode("utf-8", "ignore")


class Output:
    """The first and last :data:`OUTPUT_LIMIT` / 2 bytes of a stream, and how much was cut."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        """Keep the head, slide the tail; never hold more than the limit."""
        half = OUTPUT_LIMIT // 2
        self.total += len(chunk)
        room = half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail = (self.tail + chunk)[-half:]

    def text(self) -> str:
        """The kept output as one stripped text, with a marker where bytes were cut."""
        cut = self.total - len(self.head) - len(self.tail)
        middle = f"\n[… {cut} bytes cut …]\n".encode() if cut else b""
        text = bytes(self.head + middle + self.tail).decode(errors="replace").strip()
        # It reaches logs, status and terminals: controls shown, not obeyed (lines kept).
        return "\n".join(terminal_safe(line) for line in text.split("\n"))


@register
class ExecNotifier(Notifier):
    """Runs the configured command once per alert (or digest)."""

    kind = "exec"
    config_model = ExecConfig
    config: ExecConfig

    def __init__(self, config: ExecConfig) -> None:
        super().__init__(config)
        self._running: set[Run] = set()
        self._running_lock = threading.Lock()
        if isinstance(config.command, list):
            program = config.command[0]
            found = _executable(program)
            if found is None:
                raise ConfigError(  # where: the caller says (the file, the table)
                    f"command {program!r} "
                    + ("is not an executable file" if "/" in program else "is not on PATH")
                )

    def describe(self) -> str:
        """The program, not its arguments: they may hold secrets, and this reaches status."""
        cfg = self.config
        if isinstance(cfg.command, str):
            return "sh -c (a shell command)"
        extra = len(cfg.command) - 1
        return cfg.command[0] + (f" (+{extra} argument{'s' * (extra > 1)})" if extra else "")

    @property
    def concurrency(self) -> int:
        """``parallel``: how many commands run at once when several alerts are due."""
        return self.config.parallel

    def send(self, alert: Alert) -> None:
        """Run the command with the alert; sort its end into sent, retry later, or failed."""
        (outcome,) = self.send_each([alert])
        if outcome is not None:
            raise outcome

    def send_each(self, alerts: Sequence[Alert]) -> list[Exception | None]:
        """Run the command once per alert, all at once, and wait for them all (or the timeout)."""
        outcomes: list[Exception | None] = [None] * len(alerts)
        running: dict[int, Run] = {}
        try:
            for index, alert in enumerate(alerts):
                try:
                    running[index] = self._start(alert)
                except DeliveryError as exc:
                    outcomes[index] = exc
            with self._running_lock:
                self._running.update(running.values())
            _communicate(list(running.values()), self.config.timeout)
        finally:
            with self._running_lock:
                self._running.difference_update(running.values())
            for run in running.values():  # what an error above left running does not outlive us
                if run.child.poll() is None:
                    run.close()
                    _kill_group(run.child)
        for index, run in running.items():
            outcomes[index] = self._outcome(run)
        return outcomes

    def abort(self) -> bool:
        """Kill the commands still running (and what they started): the program is ending, and a
        command left behind would run beside its retry at the next start."""
        with self._running_lock:
            running = list(self._running)
        for run in running:
            run.aborted = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.child.pid, signal.SIGKILL)
        return bool(running)

    def _start(self, alert: Alert) -> Run:
        cfg = self.config
        stdin = (json.dumps(alert.to_dict(), ensure_ascii=False, default=str) + "\n").encode(
            errors="replace"
        )
        inherited = {k: v for k, v in os.environ.items() if k not in _OURS}
        env = {**inherited, **cfg.env, **alert_environment(alert)}
        try:
            child = subprocess.Popen(
                cfg.command,
                shell=cfg.shell,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,  # its own process group: a timeout kills it all
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise PermanentDeliveryError(f"cannot run {self.describe()}: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.E2BIG:  # the same alert will never fit
                raise PermanentDeliveryError(f"cannot start {self.describe()}: {exc}") from exc
            # out of processes or memory: that may pass
            raise TransientDeliveryError(f"cannot start {self.describe()}: {exc}") from exc
        return Run(child, stdin)

    def _outcome(self, run: Run) -> DeliveryError | None:
        """None when the command succeeded, else the error its end means."""
        shown = run.output.text()
        said = f": {shown}" if shown else " (no output)"
        if run.aborted:
            return TransientDeliveryError(f"{self.describe()} was stopped: the program ended")
        if run.timed_out:
            return TransientDeliveryError(
                f"{self.describe()} timed out after {self.config.timeout:g}s and was killed{said}"
            )
        status = run.child.returncode
        if status == 0:
            return None
        if status < 0:
            name = signal.Signals(-status).name if -status in signal.valid_signals() else -status
            return TransientDeliveryError(f"{self.describe()} was killed by {name}{said}")
        text = f"{self.describe()} exited with status {status}{said}"
        return (TransientDeliveryError if status == EX_TEMPFAIL else PermanentDeliveryError)(text)


def _executable(program: str) -> str | None:
    """The path ``program`` runs as, or None when there is no such executable."""
    import shutil

    if "/" in program:
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    return shutil.which(program)


class Run:
    """One running command: the stdin still to write, its output so far, and how it ended."""

    def __init__(self, child: subprocess.Popen[bytes], stdin: bytes) -> None:
        assert child.stdin is not None
        assert child.stdout is not None
        self.child = child
        self.stdin = child.stdin
        self.stdout = child.stdout
        self.pending = memoryview(stdin)
        self.output = Output()
        self.ended: float | None = None
        self.timed_out = False
        self.aborted = False
        self.exited = _exit_fd(child.pid)
        """Readable once the command has exited (a Linux pidfd): the loop wakes for its end."""
        os.set_blocking(self.stdin.fileno(), False)

    def feed(self) -> bool:
        """Write what the pipe takes of the alert; True when all is written (or unwanted)."""
        try:
            self.pending = self.pending[os.write(self.stdin.fileno(), self.pending) :]
        except BlockingIOError:
            return False
        except BrokenPipeError:  # it does not read its stdin: that is its choice
            self.pending = self.pending[:0]
        return not self.pending

    def read(self) -> bool:
        """Read what is there; True at the end of its output."""
        chunk = os.read(self.stdout.fileno(), 65536)
        self.output.add(chunk)
        return not chunk

    def close(self) -> None:
        """Close both pipes (what a process left behind still writes goes nowhere)."""
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        if self.exited is not None:
            os.close(self.exited)
            self.exited = None


def _exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits, where the system has one.

    Without it (not Linux, or before 5.3) the loop asks the process at every wake-up instead,
    and waits for it after its output ends with ``Popen.wait``, which polls with short sleeps.
    """
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _communicate(runs: list[Run], timeout: float) -> None:
    """Feed every command its stdin and keep its bounded output until all end or the deadline.

    One ``selectors`` loop serves them all, on this thread. A command may not read its stdin
    (the rest is dropped) and may leave a process behind that holds its output open (reading
    stops :data:`EXIT_GRACE` after the command itself ended). At the deadline a command still
    running is killed with its process group and marked ``timed_out``.
    """
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for run in runs:
            selector.register(run.stdin, selectors.EVENT_WRITE, run)
            selector.register(run.stdout, selectors.EVENT_READ, run)
            if run.exited is not None:
                selector.register(run.exited, selectors.EVENT_READ, run)
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                break
            for run in runs:
                if run.ended is None and run.exited is None and run.child.poll() is not None:
                    run.ended = now
                if run.ended is not None and now >= run.ended + EXIT_GRACE:
                    for stream in (run.stdin, run.stdout):  # what lingers is not waited for
                        with contextlib.suppress(KeyError, ValueError):  # not (or no longer) in
                            selector.unregister(stream)
            for key, _ in selector.select(min(deadline - now, 0.1)):
                ready: Run = key.data
                if key.fileobj is ready.stdin and ready.feed():
                    selector.unregister(ready.stdin)
                    ready.stdin.close()
                elif key.fileobj is ready.stdout and ready.read():
                    selector.unregister(ready.stdout)
                elif key.fileobj == ready.exited:
                    ready.ended = now
                    selector.unregister(ready.exited)
    for run in runs:
        run.close()
        with contextlib.suppress(subprocess.TimeoutExpired):  # it may have closed its output
            run.child.wait(max(deadline - time.monotonic(), 0.0))
        if run.child.poll() is None:
            run.timed_out = True
            _kill_group(run.child)


def _kill_group(child: subprocess.Popen[Any]) -> None:
    """SIGKILL the command's process group (it leads it: ``process_group=0``) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
