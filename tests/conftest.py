"""Shared fixtures: real servers on 127.0.0.1, a thread-leak check, and condition waits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.postgres import Cluster, start_cluster
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.demo.world import QuietHandler


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, must: bool = True
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline.

    ``must=False`` returns the last (falsy) value instead, for callers whose own assertions
    afterwards say better what went wrong.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if not must:
                return value
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete records of a JSON-lines file that may be being appended to right now.

    A reader polling while the jsonl notifier writes can see the head of a record before its
    tail; like ``tail -F`` piped into ``jq``, only lines ending in a newline are records yet.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def run_cli(
    *args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m watchkeeper ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "watchkeeper", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def smtp_spec(port: int, **overrides: Any) -> dict[str, Any]:
    """An smtp notifier config for a server on 127.0.0.1."""
    return {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "sender": "wk@example.com",
        "to": ["ops@example.com"],
        **overrides,
    }


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Every thread a test starts must be gone (within a grace period) when it ends."""
    before = set(threading.enumerate())
    yield

    def leaked() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith("pytest_timeout")
        ]

    wait_until(lambda: not leaked(), timeout=5.0, must=False)
    assert not leaked(), f"threads leaked: {[t.name for t in leaked()]}"


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    """A real aiosmtpd server on 127.0.0.1 that keeps what it receives."""
    sink = SmtpSink(tmp_path / "inbox").start()
    yield sink
    sink.stop()


@dataclass
class Recorded:
    """One request a RecordingServer received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingServer:
    """A real HTTP server on 127.0.0.1 that records requests and answers with ``status``."""

    server: ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0  # seconds the server takes to answer, like a slow receiver
    arrived: int = 0  # requests whose body was read (recorded once answered)
    headers: dict[str, str] = field(default_factory=dict)  # sent with every answer
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"expected {count} requests, got {len(self.requests)}"
            )
            return list(self.requests)


@pytest.fixture
def http_receiver() -> Iterator[RecordingServer]:
    """A webhook receiver: records every request, answers ``receiver.status``."""
    holder: dict[str, RecordingServer] = {}

    class Handler(QuietHandler):
        def _handle(self) -> None:
            rec = holder["server"]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with rec.changed:
                rec.arrived += 1
                rec.changed.notify_all()
            if rec.delay:
                time.sleep(rec.delay)  # the receiver's own slowness, not test synchronisation
            with rec.changed:
                rec.requests.append(
                    Recorded(self.command, self.path, dict(self.headers.items()), body)
                )
                rec.changed.notify_all()
            self.send_response(rec.status)
            for name, value in rec.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_GET = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder = RecordingServer(server)
    holder["server"] = recorder
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="http-receiver", daemon=True
    )
    thread.start()
    yield recorder
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate (setup.sh installs it)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A real PostgreSQL server for this session (see tests/postgres.py); skipped, saying why,
    where PostgreSQL cannot run. Its folder is outside pytest's (mode 0700 under root), where
    the server's owner can reach it."""
    folder = Path(tempfile.mkdtemp(prefix="watchkeeper-pg-"))
    try:
        try:
            cluster = start_cluster(folder)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            pytest.skip(f"no PostgreSQL server: {exc}")
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres_cluster.database()


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """A fresh state on each backend: a SQLite file, then a PostgreSQL database (the same test
    body runs against both; the postgres run is skipped, saying why, without PostgreSQL)."""
    if request.param == "sqlite":
        return tmp_path / "wk.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
