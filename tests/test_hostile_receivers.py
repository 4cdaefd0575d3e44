"""Notifiers hold their ground against receivers that drip, flood, put off or half refuse.

Every server here is real and listens on 127.0.0.1: raw sockets that drip or flood, an HTTP
server answering 429, aiosmtpd answering per recipient.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RecordingServer, smtp_spec, wait_until
from watchkeeper import Keeper, Observation
from watchkeeper.alerts import Alert, Severity
from watchkeeper.build import build_notifier
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.errors import PermanentDeliveryError, TransientDeliveryError


def alert(title: str = "disk full", body: str = "") -> Alert:
    return Alert(
        watcher="w", kind="custom", severity=Severity.ERROR, title=title, key="k", body=body
    )


class RawServer:
    """A TCP server on 127.0.0.1 that runs ``behave(connection)`` for each client."""

    def __init__(self, behave: Callable[[socket.socket, RawServer], None]) -> None:
        self.behave = behave
        self.sent = 0  # bytes the behaviour managed to send
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, name="raw-server", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client gave up on us: the point
            self.behave(conn, self)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, RawServer], None]], RawServer]]:
    made: list[RawServer] = []

    def make(behave: Callable[[socket.socket, RawServer], None]) -> RawServer:
        server = RawServer(behave)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def drip(prefix: bytes) -> Callable[[socket.socket, RawServer], None]:
    """Send ``prefix`` a byte every 0.2 s, for as long as the client listens."""

    def behave(conn: socket.socket, server: RawServer) -> None:
        conn.settimeout(0.05)
        with_request = prefix.startswith(b"HTTP")
        if with_request:
            conn.recv(65536)
        for byte in (prefix * 1000)[:100_000]:
            if server.stop.wait(0.2):  # the server's own slowness, not test synchronisation
                return
            conn.sendall(bytes([byte]))
            server.sent += 1

    return behave


def test_a_webhook_that_drips_its_answer_is_cut_off_at_the_deadline(raw_server: Any) -> None:
    server = raw_server(drip(b"HTTP/1.1 200 OK\r\nX-Slow: "))
    notifier = build_notifier(
        {
            "kind": "webhook",
            "url": f"http://127.0.0.1:{server.port}/",
            "timeout": "1s",
            "deadline": "1.5s",
        }
    )
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match=r"timed out|deadline"):
        notifier.send(alert())
    assert time.monotonic() - started < 10  # not 60 s: every byte came within the step timeout
    notifier.close()


def test_a_webhook_answering_a_gigabyte_is_read_64_kb_deep(raw_server: Any) -> None:
    def flood(conn: socket.socket, server: RawServer) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
        chunk = b"x" * 65536
        while server.sent < 1 << 30 and not server.stop.is_set():
            conn.sendall(chunk)
            server.sent += len(chunk)

    server = raw_server(flood)
    notifier = build_notifier({"kind": "webhook", "url": f"http://127.0.0.1:{server.port}/"})
    notifier.send(alert())  # a 200: delivered
    notifier.close()
    # The rest was never read: the server could only fill the socket buffers.
    assert server.sent < 64 * 1024 * 1024


def test_a_429_with_retry_after_waits_that_long(
    tmp_path: Path, http_receiver: RecordingServer
) -> None:
    http_receiver.status = 429
    http_receiver.headers["Retry-After"] = "20"
    keeper = Keeper(
        state=tmp_path / "wk.db", notify=[{"kind": "webhook", "url": http_receiver.url}]
    )
    fire = iter([Observation("once", event=True)])
    keeper.every(0.01, lambda: next(fire, None), name="w")
    with keeper:
        wait_until(lambda: http_receiver.requests)
        store = keeper.store
        assert store is not None
        (row,) = wait_until(
            lambda: store.query("SELECT next_try, last_error FROM deliveries WHERE attempts = 1")
        )
        assert row["next_try"] - time.time() > 15  # not the 2 s backoff
        assert "Retry-After: 20s" in row["last_error"]


def test_an_smtp_server_that_drips_its_greeting_is_cut_off_at_the_deadline(
    raw_server: Any,
) -> None:
    server = raw_server(drip(b"220-slow greeting\r\n"))
    notifier = build_notifier(smtp_spec(server.port, timeout="1s", deadline="1.5s"))
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match=r"timed out|deadline"):
        notifier.send(alert())
    assert time.monotonic() - started < 10  # the deadline (1.5 s), with room for a loaded machine


class PerRecipient:
    """aiosmtpd handler: answers RCPT from ``answers`` (address -> list of codes, in turn)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.got: list[tuple[list[str], bytes, list[str]]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        turns = self.answers.get(address, [])
        answer = turns.pop(0) if turns else "250 OK"
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.got.append((list(envelope.rcpt_tos), envelope.original_content, envelope.mail_options))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[Callable[[PerRecipient], int]]:
    from aiosmtpd.controller import Controller

    controllers: list[Controller] = []

    def start(handler: PerRecipient) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


def test_smtp_4xx_for_one_recipient_retries_that_one_only_and_5xx_fails_only_its_own(
    smtp_server: Callable[[PerRecipient], int],
) -> None:
    handler = PerRecipient(
        {"b@example.com": ["450 mailbox busy"], "c@example.com": ["550 no such user"] * 5}
    )
    port = smtp_server(handler)
    notifier = build_notifier(
        smtp_spec(port, to=["a@example.com", "b@example.com", "c@example.com"])
    )
    one = alert()
    with pytest.raises(TransientDeliveryError, match=r"SMTP 450 for b@example.com.*sent to a@"):
        notifier.send(one)
    with pytest.raises(PermanentDeliveryError, match=r"refused SMTP 550 for c@example.com"):
        notifier.send(one)  # the retry
    assert [rcpts for rcpts, _, _ in handler.got] == [["a@example.com"], ["b@example.com"]]


def test_smtp_declares_8bit_bodies_and_keeps_encoded_word_lookalikes_literal(
    smtp_server: Callable[[PerRecipient], int], smtp_sink: SmtpSink
) -> None:
    handler = PerRecipient({})
    port = smtp_server(handler)
    notifier = build_notifier(smtp_spec(port))
    title = "=?utf-8?q?=E2=9C=85_all_good?= — café"
    notifier.send(alert(title, body="naïve text " * 3))
    ((_, content, options),) = handler.got
    assert "BODY=8BITMIME" in options
    assert "SMTPUTF8" in options
    received = message_from_bytes(content, policy=policy.default)
    assert received["Subject"] == f"[ERROR] w: {title}"  # not "✅ all good"
    assert "naïve text" in received.get_body().get_content()  # type: ignore[union-attr]
    for line in content.split(b"\r\n"):
        if line.lower().startswith(b"subject"):
            assert line.isascii()


def plain_smtp(got: dict[str, bytes]) -> Callable[[socket.socket, RawServer], None]:
    """An RFC 5321 server with no extensions, keeping the MAIL line and the DATA in ``got``."""

    def behave(conn: socket.socket, server: RawServer) -> None:
        reader = conn.makefile("rb")
        conn.sendall(b"220 plain ESMTP\r\n")
        while line := reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250 plain\r\n")
            elif verb == b"MAIL":
                got["mail"] = line
                conn.sendall(b"250 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go on\r\n")
                data = b""
                while (part := reader.readline()) != b".\r\n":
                    data += part
                got["data"] = data
                conn.sendall(b"250 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")

    return behave


def test_smtp_sends_no_8bit_byte_to_a_server_that_does_not_offer_8bitmime(
    raw_server: Any,
) -> None:
    got: dict[str, bytes] = {}
    server = raw_server(plain_smtp(got))
    notifier = build_notifier(smtp_spec(server.port))
    notifier.send(alert("café", body="naïve text"))
    assert b"8BITMIME" not in got["mail"]
    assert got["data"].isascii()
    received = message_from_bytes(got["data"], policy=policy.default)
    assert "naïve text" in received.get_body().get_content()  # type: ignore[union-attr]
    # A non-ASCII address needs SMTPUTF8, which this server lacks: retrying cannot help.
    international = build_notifier(smtp_spec(server.port, to=["jörg@example.com"]))
    with pytest.raises(PermanentDeliveryError, match="cannot take this message"):
        international.send(alert())


@pytest.fixture(scope="module")
def answering_smtp() -> Iterator[tuple[PerRecipient, int]]:
    """One aiosmtpd server for many examples; its handler's answers are set per example."""
    from aiosmtpd.controller import Controller

    handler = PerRecipient({})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


RECIPIENTS = [f"r{n}@example.com" for n in range(3)]
ANSWERS = {"250": "250 OK", "450": "450 busy", "550": "550 no such user"}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(st.sampled_from(sorted(ANSWERS)), min_size=4, max_size=4), min_size=3, max_size=3
    )
)
def test_smtp_per_recipient_outcomes_match_an_oracle(
    answering_smtp: tuple[PerRecipient, int], plans: list[list[str]]
) -> None:
    """Random RCPT answers per recipient and attempt; each recipient gets the mail at most once,
    exactly when the oracle says, and the delivery ends as the oracle says."""
    handler, port = answering_smtp
    handler.got.clear()
    handler.answers = {
        r: [ANSWERS[a] for a in plan] for r, plan in zip(RECIPIENTS, plans, strict=True)
    }
    # The oracle: a recipient is asked once per attempt until it got a 250 or a 550.
    expected_sent, refused = set(), set()
    for attempt in range(4):
        for recipient, plan in zip(RECIPIENTS, plans, strict=True):
            if recipient in expected_sent or recipient in refused:
                continue
            if plan[attempt] == "250":
                expected_sent.add(recipient)
            elif plan[attempt] == "550":
                refused.add(recipient)
        if len(expected_sent) + len(refused) == len(RECIPIENTS):
            break
    notifier = build_notifier(smtp_spec(port, to=RECIPIENTS))
    one = alert()
    outcome = "pending"
    for _ in range(4):
        try:
            notifier.send(one)
        except TransientDeliveryError:
            continue
        except PermanentDeliveryError:
            outcome = "failed"
            break
        outcome = "sent"
        break
    got = [r for rcpts, _, _ in handler.got for r in rcpts]
    assert sorted(got) == sorted(expected_sent)  # once each, and only those
    done = len(expected_sent) + len(refused) == len(RECIPIENTS)
    assert outcome == ("pending" if not done else "failed" if refused else "sent")


def send_in_thread(notifier: Any) -> tuple[threading.Thread, list[BaseException]]:
    """Send one alert on a thread of its own; the list gets the TransientDeliveryError."""
    failed: list[BaseException] = []

    def send() -> None:
        try:
            notifier.send(alert())
        except TransientDeliveryError as exc:
            failed.append(exc)

    sender = threading.Thread(target=send, name="sender")
    sender.start()
    return sender, failed


def test_an_smtp_send_waiting_on_a_silent_server_is_aborted_at_once(raw_server: Any) -> None:
    """The keeper's stop ran out of time: abort() ends the session, the send fails now."""

    def silent(conn: socket.socket, server: RawServer) -> None:
        server.stop.wait(30)  # accepts, never says a word

    server = raw_server(silent)
    notifier = build_notifier(smtp_spec(server.port, timeout="60s"))
    sender, failed = send_in_thread(notifier)
    wait_until(lambda: any(getattr(c, "sock", None) for c in notifier._sessions))  # connected
    notifier.abort()
    sender.join(5)
    assert not sender.is_alive()
    assert failed


def test_a_webhook_send_waiting_on_a_silent_receiver_is_aborted_at_once(raw_server: Any) -> None:
    """A receiver that takes the request and never answers; the stop ran out of time."""
    asked = threading.Event()

    def silent(conn: socket.socket, server: RawServer) -> None:
        conn.recv(65536)
        asked.set()
        server.stop.wait(30)

    server = raw_server(silent)
    notifier = build_notifier({"kind": "webhook", "url": f"http://127.0.0.1:{server.port}/"})
    sender, failed = send_in_thread(notifier)
    wait_until(asked.is_set)
    notifier.abort()
    sender.join(5)
    assert not sender.is_alive()
    assert failed
    notifier.close()
