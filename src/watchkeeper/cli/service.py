"""The agent as a service: what ``run`` does on SIGHUP, and ``watchkeeper reload``.

A reload reads the config file again and hands it to :meth:`Keeper.reload`; an invalid file is
refused whole and the running config stays. Either way the outcome is logged and written to the
agent's note (:mod:`watchkeeper.agentnote`), where ``status`` and ``reload`` read it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from watchkeeper.agentnote import AgentNote, read_note, write_note
from watchkeeper.cli.helpers import DEFAULT_CONFIG, ConfigOption, StateOption, app, fail, out
from watchkeeper.errors import ConfigError

if TYPE_CHECKING:
    from watchkeeper.keeper import Keeper

log = logging.getLogger("watchkeeper")


class Reloader:
    """Reloads a running agent's keeper from its config file, and keeps the note up to date."""

    def __init__(self, keeper: Keeper, config: Path) -> None:
        self.keeper = keeper
        self.config = config
        now = time.time()
        self.note = AgentNote(os.getpid(), str(config.absolute()), now, keeper.loaded_at)

    def started(self) -> None:
        """Write the first note, once the keeper runs."""
        self.note.loaded_at = self.keeper.loaded_at
        self._write()

    def __call__(self) -> None:
        """Reload now (from the main loop, on SIGHUP)."""
        from watchkeeper.config import load_config

        log.info("reload: reading %s", self.config)
        try:
            changes = self.keeper.reload(load_config(self.config))
        except ConfigError as exc:
            lines = [f"refused; still running the config loaded before: {e}" for e in exc.errors]
            self._record(False, lines)
            for line in lines:
                log.error("reload %s", line)
            return
        except RuntimeError as exc:  # a watcher that did not stop in time
            self._record(False, [str(exc)])
            log.error("%s", exc)
            return
        lines = changes.describe() or ["no change"]
        self._record(True, lines)
        log.info("reload: done (%s)", "; ".join(lines))

    def _record(self, ok: bool, lines: list[str]) -> None:
        self.note.reload_at = time.time()
        self.note.reload_ok = ok
        self.note.reload_lines = lines
        self.note.loaded_at = self.keeper.loaded_at
        self._write()

    def _write(self) -> None:
        self.note.watchers = [w.name for w in self.keeper.watchers]
        try:
            write_note(self.keeper.state_path, self.note)
        except OSError as exc:
            log.warning("cannot write the agent note beside %s: %s", self.keeper.state_path, exc)


@app.command()
def reload(
    config: ConfigOption = DEFAULT_CONFIG,
    state: StateOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 30.0,
) -> None:
    """Check the config, make the running agent re-read it (SIGHUP), print what changed."""
    from watchkeeper.config import default_state_path, load_config
    from watchkeeper.store import Store

    try:
        path = state or load_config(config).keeper.state or default_state_path()
    except ConfigError as exc:
        fail("\n".join([*exc.errors, "not reloaded: the agent keeps running its config"]))
    pid = Store.holder(path)
    if pid is None:
        fail(f"no agent is running with state file {path}")
    before = read_note(path)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        fail(f"cannot signal the agent (pid {pid}): {exc.strerror}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        note = read_note(path)
        if note is not None and note.reload_at != (before.reload_at if before else None):
            for line in note.reload_lines:
                out.print(Text(line, style="green" if note.reload_ok else "red"))
            if not note.reload_ok:
                raise typer.Exit(1)
            return
        time.sleep(0.1)  # polling another process's file: nothing to wait on
    fail(f"the agent (pid {pid}) did not report a reload within {timeout:.0f}s; see its log")
