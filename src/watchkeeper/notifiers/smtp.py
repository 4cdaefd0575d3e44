"""Email through stdlib smtplib.

Why stdlib: it needs no thread and no event loop, so it also works in the interpreter's exit
path. Headers are built by ``email.message.EmailMessage`` with the SMTP policy, and every header
value made from alert text has its control characters replaced first, so an alert title such as
``"x\\r\\nBcc: someone"`` can neither add a header nor a recipient: recipients come only from
the config, passed to the server as the envelope.
"""

from __future__ import annotations

import base64
import contextlib
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, FilePath, SecretStr, model_validator

from watchkeeper.alerts import Alert
from watchkeeper.errors import PermanentDeliveryError, TransientDeliveryError
from watchkeeper.notifiers.base import (
    Notifier,
    NotifierConfig,
    TemplateProblem,
    TemplateText,
    check_renders,
    register,
    render,
    template,
)
from watchkeeper.notifiers.deadline import DeadlineSocket, DeadlineSSLSocket, attempt, left
from watchkeeper.units import Duration

DEFAULT_SUBJECT = (
    "{% if status == 'resolved' %}[RESOLVED]{% else %}[{{ severity_upper }}]{% endif %} "
    "{{ watcher }}: {{ title }}"
)
DEFAULT_BODY = """{{ title }}

{% if body %}{{ body }}

{% endif %}watcher:  {{ watcher }} ({{ kind }})
severity: {{ severity }}
status:   {{ status }}
time:     {{ created_at }}
{% for name, value in data.items() if name != 'alerts' %}{{ name }}: {{ value }}
{% endfor %}
-- watchkeeper alert {{ uid }}
"""

MAX_TRACKED = 10_000
"""Alerts whose recipients are remembered between attempts, at most (a digest whose members
change between attempts is a new alert, so old entries must age out)."""

_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")


def _address(value: str) -> str:
    """A bare address like ``ops@example.com`` (no display name, no list): no header tricks."""
    if not _ADDRESS.match(value):
        raise ValueError(f"{value!r} is not an email address like ops@example.com")
    return value


Address = Annotated[str, AfterValidator(_address)]


class SmtpConfig(NotifierConfig):
    """``[[notify]] kind = "smtp"``: send each alert as an email."""

    kind: Literal["smtp"] = "smtp"
    host: str = Field(default="localhost", description="SMTP server host.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Default: 25, 587 with starttls, 465 with ssl."
    )
    tls: Literal["none", "starttls", "ssl"] = Field(
        default="none", description="Plain, STARTTLS upgrade, or TLS from the first byte."
    )
    ca_file: FilePath | None = Field(
        default=None,
        description="Trust this CA bundle (PEM) for the server's certificate, for private CAs. "
        "Default: the system's trust store.",
    )
    username: str | None = Field(default=None, description="Log in as this user.")
    password: SecretStr | None = Field(default=None, description="Password; use ${VAR}.")
    sender: Address = Field(description="The From address.")
    to: list[Address] = Field(min_length=1, description="Recipients.")
    subject: TemplateText = Field(
        default=DEFAULT_SUBJECT, description="Jinja2 template of the subject."
    )
    body: TemplateText = Field(
        default=DEFAULT_BODY, description="Jinja2 template of the text body."
    )
    timeout: Duration = Field(default=10.0, description="Socket timeout for each SMTP step.")
    deadline: Duration = Field(
        default=60.0,
        description="Longest time one attempt may take, all steps together (a server that "
        "drips its answers is cut off here).",
    )

    @model_validator(mode="after")
    def _templates_render(self) -> SmtpConfig:
        check_renders(self.subject, "subject")
        check_renders(self.body, "body")
        return self

    @property
    def effective_port(self) -> int:
        """The port to use, defaulted by the TLS mode."""
        return self.port or {"none": 25, "starttls": 587, "ssl": 465}[self.tls]


@register
class SmtpNotifier(Notifier):
    """Sends alerts as plain-text emails with a stable Message-ID per alert.

    Recipients are tracked one by one: a server may take some and refuse others. Those it took
    are not sent the alert again; a 4xx for one is retried for that one only, a 5xx fails that
    one only. That record is kept in memory (see docs/guarantees.md for what a restart means).
    """

    kind = "smtp"
    config_model = SmtpConfig
    config: SmtpConfig

    def __init__(self, config: SmtpConfig) -> None:
        super().__init__(config)
        self._subject = template(config.subject, "subject")
        self._body = template(config.body, "body")
        self._recipients: dict[str, Recipients] = {}
        """Alert uid -> what happened to its recipients so far, while some are still to do."""
        self._sessions: set[smtplib.SMTP] = set()
        self._sessions_lock = threading.Lock()

    def abort(self) -> bool:
        """End the sessions in progress from another thread (the stop ran out of time): their
        sockets are shut down, so a send blocked on a silent server fails at once and stays
        pending for the next start. True when there was one."""
        with self._sessions_lock:
            sessions = list(self._sessions)
        for client in sessions:
            client.aborted = True  # type: ignore[attr-defined]  # one still connecting gives up
            sock = getattr(client, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return bool(sessions)

    def describe(self) -> str:
        """``smtp://host:port -> a@x, b@y``."""
        cfg = self.config
        return f"smtp://{cfg.host}:{cfg.effective_port} ({cfg.tls}) -> {', '.join(cfg.to)}"

    def message(self, alert: Alert) -> EmailMessage:
        """The email for an alert; exposed so tests and ``notify-test`` can show it."""
        cfg = self.config
        msg = EmailMessage(policy=SMTP)
        msg.set_raw("Subject", encoded_words(header_safe(render(self._subject, alert))))
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.to)
        msg["Date"] = formatdate(alert.created_at, usegmt=True)
        domain = cfg.sender.rpartition("@")[2] or "watchkeeper"
        msg["Message-ID"] = f"<{alert.uid}@{domain}>"
        msg["X-Watchkeeper-Alert"] = alert.uid
        msg["X-Watchkeeper-Severity"] = str(alert.severity)
        msg.set_content(render(self._body, alert))
        return msg

    def send(self, alert: Alert) -> None:
        """Send to the recipients still to do; errors sorted into transient and permanent."""
        cfg = self.config
        try:
            msg = self.message(alert)
        except (ValueError, TemplateProblem) as exc:
            raise PermanentDeliveryError(f"cannot build the email: {exc}") from exc
        state = self._recipients.pop(alert.uid, None) or Recipients()
        todo = [r for r in cfg.to if r not in state.sent and r not in state.refused]
        try:
            with attempt(cfg.deadline):
                if todo:
                    refused = self._transmit(msg, todo)
                    state.sent.update(r for r in todo if r not in refused)
                    state.record(refused)
        except smtplib.SMTPRecipientsRefused as exc:
            state.record(exc.recipients)
        except smtplib.SMTPNotSupportedError as exc:  # e.g. a non-ASCII address, no SMTPUTF8
            raise PermanentDeliveryError(f"the server cannot take this message: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP {exc.smtp_code}: {_decode(exc.smtp_error)}{state.so_far()}"
            if 500 <= exc.smtp_code < 600:
                raise PermanentDeliveryError(text) from exc
            self._keep(alert.uid, state)
            raise TransientDeliveryError(text) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self._keep(alert.uid, state)
            raise TransientDeliveryError(
                f"{type(exc).__name__} talking to {cfg.host}:{cfg.effective_port}: {exc}"
            ) from exc
        if state.later:
            self._keep(alert.uid, state)
            raise TransientDeliveryError(
                f"{state.describe(state.later)}; retrying those{state.so_far()}"
            )
        if state.refused:
            raise PermanentDeliveryError(f"refused {state.describe(state.refused)}{state.so_far()}")

    def _keep(self, uid: str, state: Recipients) -> None:
        """Remember an alert's recipients for its retry, if any is done (at most MAX_TRACKED)."""
        if state.sent or state.refused:
            self._recipients[uid] = state
            while len(self._recipients) > MAX_TRACKED:  # the oldest first: a dict keeps order
                del self._recipients[next(iter(self._recipients))]

    def _transmit(self, msg: EmailMessage, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
        """One SMTP session: connect, authenticate, send to ``recipients``; the refused ones."""
        cfg = self.config
        context = ssl.create_default_context(cafile=cfg.ca_file)
        context.sslsocket_class = DeadlineSSLSocket
        timeout = left(cfg.timeout)
        opened: list[smtplib.SMTP] = []  # the client, known before it connects (for abort)

        def track(client: smtplib.SMTP) -> None:
            opened.append(client)
            with self._sessions_lock:
                self._sessions.add(client)

        try:
            client: smtplib.SMTP
            if cfg.tls == "ssl":
                client = _SSLClient(
                    track, cfg.host, cfg.effective_port, timeout=timeout, context=context
                )
            else:
                client = _Client(track, cfg.host, cfg.effective_port, timeout=timeout)
            return self._session(client, context, msg, recipients)
        finally:
            with self._sessions_lock:
                self._sessions.difference_update(opened)

    def _session(
        self,
        client: smtplib.SMTP,
        context: ssl.SSLContext,
        msg: EmailMessage,
        recipients: list[str],
    ) -> dict[str, tuple[int, bytes]]:
        """Talk to the connected server on ``client`` and send ``msg``."""
        cfg = self.config
        with client:
            if cfg.tls == "starttls":
                client.starttls(context=context)
            if cfg.username:
                password = cfg.password.get_secret_value() if cfg.password else ""
                client.login(cfg.username, password)
            client.ehlo_or_helo_if_needed()
            options = _eight_bit(client, msg)
            return client.send_message(
                msg, from_addr=cfg.sender, to_addrs=recipients, mail_options=options
            )


class Recipients:
    """One alert's recipients so far: sent, put off (4xx) and refused for good (5xx)."""

    def __init__(self) -> None:
        self.sent: set[str] = set()
        self.later: dict[str, tuple[int, bytes]] = {}
        self.refused: dict[str, tuple[int, bytes]] = {}

    def record(self, answers: dict[str, tuple[int, bytes]]) -> None:
        """The server's answers for refused recipients, sorted by code."""
        self.later = {}
        for recipient, (code, text) in answers.items():
            if 500 <= code < 600:
                self.refused[recipient] = (code, text)
            else:
                self.later[recipient] = (code, text)

    def so_far(self) -> str:
        """`` (sent to a@x, b@y)``, or nothing when nobody got it yet."""
        return f" (sent to {', '.join(sorted(self.sent))})" if self.sent else ""

    @staticmethod
    def describe(answers: dict[str, tuple[int, bytes]]) -> str:
        """``SMTP 450 for b@x: mailbox busy; ...``."""
        return "; ".join(
            f"SMTP {code} for {recipient}: {_decode(text)}"
            for recipient, (code, text) in sorted(answers.items())
        )


class _Client(smtplib.SMTP):
    """smtplib.SMTP whose socket keeps the attempt's deadline; ``track`` learns of it before
    it connects, so an abort can reach a connection still waiting for the greeting."""

    def __init__(self, track: Callable[[smtplib.SMTP], None], *args: Any, **kwargs: Any) -> None:
        track(self)
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, left(timeout))  # type: ignore[misc]
        return _unless_aborted(self, DeadlineSocket.adopt(sock))


class _SSLClient(smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL whose socket keeps the attempt's deadline (its context makes it so)."""

    def __init__(self, track: Callable[[smtplib.SMTP], None], *args: Any, **kwargs: Any) -> None:
        track(self)
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, left(timeout))  # type: ignore[misc]
        return _unless_aborted(self, sock)


def _unless_aborted(client: smtplib.SMTP, sock: socket.socket) -> socket.socket:
    """The new connection, or an error if :meth:`SmtpNotifier.abort` came while it was made."""
    if getattr(client, "aborted", False):
        sock.close()
        raise ConnectionAbortedError("the send was aborted: the keeper is stopping")
    return sock


def _eight_bit(client: smtplib.SMTP, msg: EmailMessage) -> list[str]:
    """MAIL FROM options for a message with 8-bit text, which goes as the server allows.

    ``BODY=8BITMIME`` (and ``SMTPUTF8``) when the server offers it; else the text is sent
    quoted-printable, so no 8-bit byte reaches a server that did not say it takes them.
    """
    body = msg.get_body()
    if body is None or body.get("Content-Transfer-Encoding", "7bit") != "8bit":
        return []
    options = []
    if client.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
        if client.has_extn("smtputf8"):
            options.append("SMTPUTF8")
        return options
    msg.set_content(msg.get_content(), cte="quoted-printable")
    return options


def encoded_words(text: str) -> str:
    """``text`` as RFC 2047 encoded words, always, folded onto lines a mail reader takes.

    Always encoding means text that merely looks like an encoded word (``=?utf-8?q?…?=``) in an
    alert title reaches the reader as the literal text it is: the reader decodes one layer, ours.
    """
    words, chunk = [], ""
    for char in text:
        if len((chunk + char).encode()) > 36:  # 48 base64 characters: a line under 78
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(word.encode()).decode()}?=" for word in words)


def header_safe(text: str, limit: int = 250) -> str:
    """One line with no control or line-breaking characters, cut to a sane length.

    ``str.isprintable`` is False for every character the email package treats as a line break
    (CR, LF, U+0085, U+2028, U+2029) and for all other control and format characters.
    """
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _decode(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
