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

from watchkeeper import sdnotify
from watchkeeper.agentnote import AgentNote, read_note, write_note
from watchkeeper.cli.helpers import (
    DEFAULT_CONFIG,
    ConfigOption,
    StateOption,
    app,
    fail,
    out,
    state_path,
)
from watchkeeper.errors import ConfigError, WatchkeeperError

if TYPE_CHECKING:
    from watchkeeper.config import KeeperSettings
    from watchkeeper.keeper import Keeper

log = logging.getLogger("watchkeeper")


class Reloader:
    """Reloads a running agent's keeper from its config file, and keeps the note up to date."""

    def __init__(self, keeper: Keeper, config: Path, settings: KeeperSettings) -> None:
        self.keeper = keeper
        self.config = config
        self.settings = settings
        now = time.time()
        self.note = AgentNote(os.getpid(), str(config.absolute()), now, keeper.loaded_at)

    def started(self) -> None:
        """Write the first note, once the keeper runs."""
        self.note.loaded_at = self.keeper.loaded_at
        self._write()

    def __call__(self) -> None:
        """Reload now (from the main loop, on SIGHUP)."""
        from watchkeeper.config import load_config
        from watchkeeper.reload import ReloadBusy

        log.info("reload: reading %s", self.config)
        try:
            config = load_config(self.config)
            result = self.keeper.reload(config)
        except (ConfigError, ReloadBusy) as exc:
            errors = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
            lines = [f"refused; the running config stays: {e}" for e in errors]
            self._record(False, lines)
            for line in lines:
                log.error("reload %s", line)
            return
        lines = [*(result.describe() or ["no change"]), *self._needs_restart(config.keeper)]
        self._record(True, lines)
        log.info("reload: applied (%s)", "; ".join(lines))
        sdnotify.notify(f"STATUS=watching: {len(self.keeper.watchers)} watchers (reloaded)")

    def _needs_restart(self, settings: KeeperSettings) -> list[str]:
        """What changed in ``[keeper]`` that only a restart applies."""
        keys = [
            key
            for key in ("state", "dashboard", "token")
            if getattr(settings, key) != getattr(self.settings, key)
        ]
        return [f"not applied until a restart: [keeper] {key}" for key in keys]

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
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 60.0,
) -> None:
    """Make the running agent re-read its config (SIGHUP) and print what changed.

    The agent checks the config itself, with its own environment (the service's secrets): an
    invalid one is refused and its errors printed here (exit 1). systemd's ExecReload runs this.
    """
    from watchkeeper.store import Store
    from watchkeeper.store.backend import local_path

    path = local_path(state_path(config, state))
    try:
        pid = Store.holder(path)
    except WatchkeeperError as exc:
        fail(str(exc))
    if pid is None:
        fail(
            f"no agent is running with state file {path} (the config's [keeper] state, "
            "under $STATE_DIRECTORY when relative and set; --state names another)"
        )
    before = read_note(path)
    if before is not None and before.pid == pid and Path(before.config) != config.absolute():
        fail(f"the agent using {path} runs {before.config}, not {config.absolute()}")
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
