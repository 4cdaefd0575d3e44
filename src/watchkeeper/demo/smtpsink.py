"""A tiny SMTP server that saves each message it receives as an .eml file.

The demo uses it so that a fresh machine without a mail server still shows real email going out
through the real SMTP notifier; tests use it as the receiving end. It is aiosmtpd's Controller,
which runs its own event-loop thread, bound to loopback on a free port.
"""

from __future__ import annotations

import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sink.received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        return "250 Message accepted for delivery"


class _Controller(Controller):
    """aiosmtpd's Controller, able to listen on port 0 (it pings its own port once started)."""

    def _trigger_server(self) -> None:
        server: Any = self.server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SmtpSink:
    """Accept mail on 127.0.0.1; keep it in ``messages`` and, if given a folder, as .eml files."""

    def __init__(self, inbox: Path | None = None, host: str = "127.0.0.1") -> None:
        self.inbox = inbox
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.changed = threading.Condition()
        self._controller = _Controller(_Handler(self), hostname=host, port=0)

    @property
    def port(self) -> int:
        """The port the sink listens on (chosen by the OS)."""
        port: int = self._controller.port
        return port

    def start(self) -> SmtpSink:
        """Start listening in aiosmtpd's own thread."""
        if self.inbox is not None:
            self.inbox.mkdir(parents=True, exist_ok=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop the server thread."""
        self._controller.stop()

    def received(self, sender: str, recipients: list[str], content: bytes) -> None:
        """Store one message (called from the server thread)."""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.changed:
            self.messages.append(message)
            self.envelopes.append((sender, recipients))
            if self.inbox is not None:
                path = self.inbox / f"{len(self.messages):04d}.eml"
                path.write_bytes(content)
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[EmailMessage]:
        """Block until at least ``count`` messages arrived (or the timeout); return them all."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)
