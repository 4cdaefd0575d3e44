"""The dashboard stands up to the network: capped bodies, header timeouts, a connection limit,
a login rate limit, long tokens off loopback, TLS with Secure cookies.

Real sockets against a real uvicorn on 127.0.0.1, and for the descriptor claim a real agent
process under a low ``ulimit -n``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli, wait_until
from watchkeeper import Keeper
from watchkeeper.web import Dashboard, serve_dashboard
from watchkeeper.web.limits import GuardedH11Protocol

TOKEN = "a-long-enough-test-token"


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(3600, lambda: None, name="idle")
    served = serve_dashboard(keeper, "127.0.0.1:0", token=TOKEN)
    with keeper:
        yield served


def connect(dashboard: Dashboard) -> socket.socket:
    assert dashboard.port is not None
    sock = socket.create_connection(("127.0.0.1", dashboard.port), timeout=10)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_huge_login_body_is_refused_before_it_is_read(dashboard: Dashboard) -> None:
    with connect(dashboard) as sock:
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 400000000\r\n\r\ntoken=" + b"x" * 1000
        )
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_is_cut_off_at_the_cap(dashboard: Dashboard) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(100):  # 6.4 MB, no Content-Length
            yield b"token=" + b"x" * 65536

    reply = httpx.post(
        dashboard.url + "/login",
        content=body(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 413
    api = httpx.post(
        dashboard.url + "/api/watchers/idle/pause",
        content=b"x" * 70_000,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert api.status_code == 413


def test_unfinished_headers_are_timed_out(
    dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GuardedH11Protocol, "header_timeout", 0.5)
    started = time.monotonic()
    with connect(dashboard) as sock:
        sock.sendall(b"GET /api/watchers HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        assert answer(sock) == b""  # closed by the server
    assert time.monotonic() - started < 10  # 0.5 s, with room for a loaded machine
    with connect(dashboard) as sock:  # a finished request is answered, then the next one waits
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 200"
        assert answer(sock)  # the rest, then the close once the keep-alive or header time ends


def test_the_login_form_is_rate_limited_per_client(dashboard: Dashboard) -> None:
    with httpx.Client(base_url=dashboard.url) as http:
        for _ in range(5):
            assert http.post("/login", data={"token": "guess"}).status_code == 401
        limited = http.post("/login", data={"token": TOKEN})  # even the right one, for now
        assert limited.status_code == 429
        assert 0 < int(limited.headers["retry-after"]) <= 60
        # Bearer clients are not held up by someone else's guessing.
        api = http.get("/api/watchers", headers={"Authorization": f"Bearer {TOKEN}"})
        assert api.status_code == 200


def test_a_short_token_is_refused_off_loopback_and_watchkeeper_token_makes_a_good_one(
    tmp_path: Path,
) -> None:
    made = run_cli("token", cwd=tmp_path)
    assert made.returncode == 0
    token = made.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", token)
    config = tmp_path / "wk.toml"
    config.write_text('[keeper]\ndashboard = "0.0.0.0:8470"\ntoken = "a"\n')
    checked = run_cli("check", "-c", str(config), cwd=tmp_path)
    assert checked.returncode == 1
    assert "at least 16 characters" in checked.stderr
    config.write_text(f'[keeper]\ndashboard = "0.0.0.0:8470"\ntoken = "{token}"\n')
    assert "at least 16" not in run_cli("check", "-c", str(config), cwd=tmp_path).stderr


def test_tls_serves_https_and_the_session_cookie_is_secure(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(3600, lambda: None, name="idle")
    served = serve_dashboard(keeper, "127.0.0.1:0", token=TOKEN, tls=(cert, key))
    with keeper:
        assert served.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=served.url, verify=trusted) as http:
            login = http.post("/login", data={"token": TOKEN})
            assert login.status_code == 303
            assert "secure" in login.headers["set-cookie"].lower()
        with pytest.raises(httpx.HTTPError):
            httpx.get(served.url.replace("https", "http") + "/login")


def test_plain_http_cookies_are_secure_only_when_a_local_proxy_says_https(
    dashboard: Dashboard,
) -> None:
    with httpx.Client(base_url=dashboard.url) as http:
        plain = http.post("/login", data={"token": TOKEN})
        assert "secure" not in plain.headers["set-cookie"].lower()
        proxied = http.post("/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"})
        assert "secure" in proxied.headers["set-cookie"].lower()


def test_a_flood_of_slow_sockets_under_a_low_descriptor_limit_starves_nothing(
    tmp_path: Path,
) -> None:
    """The issue's finding at scale: more idle sockets than the agent has descriptors."""
    log = tmp_path / "app.log"
    log.write_text("")
    jsonl = tmp_path / "alerts.jsonl"
    config = tmp_path / "wk.toml"
    config.write_text(
        f"""
[keeper]
state = "{tmp_path / "wk.db"}"
dashboard = "127.0.0.1:0"
token = "{TOKEN}"

[[notify]]
kind = "jsonl"
path = "{jsonl}"

[[log]]
name = "app"
paths = ["{log}"]
every = "0.2s"
rules = [{{ match = "ERROR" }}]
"""
    )
    limit = 256
    agent_command = [sys.executable, "-m", "watchkeeper", "run", "-c", str(config)]
    agent = subprocess.Popen(
        ["sh", "-c", f'ulimit -n {limit} && exec "$0" "$@"', *agent_command],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    sockets: list[socket.socket] = []
    try:
        assert agent.stderr is not None
        line = ""
        while "dashboard:" not in line:
            line = agent.stderr.readline()
            assert line, "the agent ended before serving its dashboard"
        port = int(line.rsplit(":", 1)[1])
        for _ in range(limit * 2):  # twice its descriptors, idle: no request ever comes
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))  # the kernel queues what is not accepted
            sockets.append(sock)
        with log.open("a") as out:
            out.write("ERROR while the sockets are open\n")
        wait_until(lambda: jsonl.exists() and "while the sockets" in jsonl.read_text(), 20)
        for sock in sockets:
            sock.close()
        health = wait_until(lambda: _try_json(f"http://127.0.0.1:{port}/api/health"), timeout=20)
        assert all(u["state"] == "running" for u in health["threads"])
    finally:
        for sock in sockets:
            sock.close()
        agent.terminate()
        _, errors = agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert "Traceback" not in errors
    assert len(errors) < 20_000


def _try_json(url: str) -> object:
    try:
        return httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    except (httpx.HTTPError, json.JSONDecodeError):
        return None


def test_a_body_trickled_too_slowly_is_answered_408(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchkeeper.web.limits import BodyLimitMiddleware

    real_init = BodyLimitMiddleware.__init__

    def quick(self: BodyLimitMiddleware, app: Any, limit: int = 65536) -> None:
        real_init(self, app, limit)
        self.timeout = 0.5

    monkeypatch.setattr(BodyLimitMiddleware, "__init__", quick)
    keeper = Keeper(state=tmp_path / "wk.db")
    keeper.every(3600, lambda: None, name="idle")
    served = serve_dashboard(keeper, "127.0.0.1:0", token=TOKEN)
    with keeper, connect(served) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\ntoken=abc"  # and the other 91 bytes never come
        )
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 10
