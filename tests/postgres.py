"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder.

One cluster per test session (per xdist worker), listening on 127.0.0.1 at a free port with
trust authentication, stopped at the end. PostgreSQL refuses to run as root, so under root the
cluster belongs to ``nobody`` and its commands run through ``runuser``. Each test gets a database
of its own (``CREATE DATABASE``, a copy of template1: milliseconds), so tests never see each
other's rows.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path


def bindir() -> Path | None:
    """Where initdb, pg_ctl and psql are: Debian's versioned folder (newest), else PATH."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running server; ``database()`` makes a fresh database and returns its URL."""

    folder: Path
    port: int
    bindir: Path
    user: str | None

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
                self.url(database),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout

    def database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def start_command(self) -> list[str]:
        """pg_ctl's command line that starts this server (and waits until it takes queries)."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        data, log = str(self.folder / "data"), str(self.folder / "server.log")
        return [
            str(self.bindir / "pg_ctl"),
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        ]

    def start(self) -> None:
        """Start the server again after :meth:`stop` (a test of the database going away)."""
        subprocess.run(
            self._as_owner(*self.start_command()), check=True, capture_output=True, timeout=120
        )

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``fast`` ends its sessions and flushes what was committed (the
        cluster runs with ``synchronous_commit=off``: ``immediate`` may lose the last commits,
        as a crash of a server set up that way would)."""
        subprocess.run(
            self._as_owner(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                mode,
                "stop",
            ),
            check=False,
            capture_output=True,
            timeout=60,
        )


def start_cluster(folder: Path) -> Cluster:
    """initdb and start a server in ``folder``; raises RuntimeError saying why it cannot."""
    where = bindir()
    if where is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    user = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root without runuser: cannot start PostgreSQL as nobody")
        user = "nobody"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)  # the owner (nobody) writes its data, socket and log here
    data = folder / "data"
    port = _free_port()
    cluster = Cluster(folder, port, where, user)
    log = folder / "server.log"
    steps = [
        [
            str(where / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ],
        cluster.start_command(),
    ]
    for step in steps:
        done = subprocess.run(
            cluster._as_owner(*step), check=False, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(step[0]).name} failed: {done.stderr.strip()} {tail}".strip())
    return cluster
