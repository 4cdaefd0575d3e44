"""A real ``watchkeeper run`` child process with its dashboard, for the web and follow tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Agent:
    """One agent: its folder (config, state, fire dir), process and dashboard URL."""

    folder: Path
    bind: str = "127.0.0.1:0"
    token: str | None = None
    extra: str = ""
    """More TOML tables for the config (the detail views' watchers)."""
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    fired: int = field(default=0)

    @property
    def fire_dir(self) -> Path:
        return self.folder / "fire"

    @property
    def log(self) -> Path:
        return self.folder / "agent.log"

    def write_config(self) -> Path:
        self.fire_dir.mkdir(parents=True, exist_ok=True)
        token = f'token = "{self.token}"\n' if self.token else ""
        config = self.folder / "watchkeeper.toml"
        config.write_text(
            f'[keeper]\nstate = "state.db"\ndashboard = "{self.bind}"\n{token}'
            'shutdown_timeout = "2s"\n\n'
            '[[custom]]\nname = "probe"\nevery = "200ms"\ncall = "tests.agent_checks:fire"\n\n'
            '[[custom]]\nname = "steady"\nevery = "30s"\ncall = "tests.agent_checks:steady"\n\n'
            '[[notify]]\nkind = "jsonl"\npath = "alerts.jsonl"\n' + self.extra,
            encoding="utf-8",
        )
        return config

    def start(self) -> Agent:
        """Start (or restart, on the same state) and wait for the dashboard's URL."""
        config = self.write_config()
        if self.log.exists():
            self.log.unlink()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WK_FIRE_DIR": str(self.fire_dir)}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        found = wait_until(self._url, timeout=20)
        self.url = found
        return self

    def _url(self) -> str | None:
        assert self.proc is not None
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{text}")
        match = re.search(r"dashboard: (http://\S+)$", text, re.MULTILINE)
        return match.group(1) if match else None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def fire(self, title: str, severity: str = "warning", body: str = "") -> None:
        """Make the agent raise one alert (at its next check, within ~200 ms)."""
        self.fired += 1
        target = self.fire_dir / f"{self.fired:06d}.json"
        temp = target.with_suffix(".tmp")
        temp.write_text(json.dumps({"title": title, "severity": severity, "body": body}))
        temp.rename(target)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the agent and return its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
