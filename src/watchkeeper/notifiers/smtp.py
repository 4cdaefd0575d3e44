"""Email through stdlib smtplib.

Why stdlib: it needs no thread and no event loop, so it also works in the interpreter's exit
path. Headers are built by ``email.message.EmailMessage`` with the SMTP policy, and every header
value made from alert text has its control characters replaced first, so an alert title such as
``"x\\r\\nBcc: someone"`` can neither add a header nor a recipient: recipients come only from
the config, passed to the server as the envelope.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from typing import Annotated, ClassVar, Literal

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
{% for name, value in data.items() if kind != 'digest' %}{{ name }}: {{ value }}
{% endfor %}
-- watchkeeper alert {{ uid }}
"""

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

    default_group_interval: ClassVar[float] = 300.0

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
    """Sends alerts as plain-text emails with a stable Message-ID per alert."""

    kind = "smtp"
    config_model = SmtpConfig
    config: SmtpConfig

    def __init__(self, config: SmtpConfig) -> None:
        super().__init__(config)
        self._subject = template(config.subject, "subject")
        self._body = template(config.body, "body")

    def describe(self) -> str:
        """``smtp://host:port -> a@x, b@y``."""
        cfg = self.config
        return f"smtp://{cfg.host}:{cfg.effective_port} ({cfg.tls}) -> {', '.join(cfg.to)}"

    def message(self, alert: Alert) -> EmailMessage:
        """The email for an alert; exposed so tests and ``notify-test`` can show it."""
        cfg = self.config
        msg = EmailMessage(policy=SMTP)
        msg["Subject"] = header_safe(render(self._subject, alert))
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.to)
        msg["Date"] = formatdate(alert.created_at, usegmt=True)
        domain = cfg.sender.rpartition("@")[2] or "watchkeeper"
        msg["Message-ID"] = f"<{alert.uid}@{domain}>"
        msg["X-Watchkeeper-Alert"] = alert.uid
        msg["X-Watchkeeper-Severity"] = str(alert.severity)
        msg["X-Watchkeeper-Alerts"] = str(
            alert.data.get("count", 1) if alert.kind == "digest" else 1
        )
        msg.set_content(render(self._body, alert))
        return msg

    def send(self, alert: Alert) -> None:
        """Connect, authenticate, send and quit; errors sorted into transient and permanent."""
        cfg = self.config
        try:
            msg = self.message(alert)
        except (ValueError, TemplateProblem) as exc:
            raise PermanentDeliveryError(f"cannot build the email: {exc}") from exc
        try:
            client: smtplib.SMTP
            context = ssl.create_default_context(cafile=cfg.ca_file)
            if cfg.tls == "ssl":
                client = smtplib.SMTP_SSL(
                    cfg.host, cfg.effective_port, timeout=cfg.timeout, context=context
                )
            else:
                client = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=cfg.timeout)
            with client:
                if cfg.tls == "starttls":
                    client.starttls(context=context)
                if cfg.username:
                    password = cfg.password.get_secret_value() if cfg.password else ""
                    client.login(cfg.username, password)
                refused = client.send_message(msg, from_addr=cfg.sender, to_addrs=list(cfg.to))
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP {exc.smtp_code}: {_decode(exc.smtp_error)}"
            raise (
                PermanentDeliveryError if 500 <= exc.smtp_code < 600 else TransientDeliveryError
            )(text) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            text = f"all recipients refused: {exc.recipients}"
            permanent = all(500 <= c < 600 for c in codes)
            raise (PermanentDeliveryError if permanent else TransientDeliveryError)(text) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(
                f"{type(exc).__name__} talking to {cfg.host}:{cfg.effective_port}: {exc}"
            ) from exc
        if refused:
            raise PermanentDeliveryError(f"some recipients refused: {refused}")


def header_safe(text: str, limit: int = 250) -> str:
    """One line with no control or line-breaking characters, cut to a sane length.

    ``str.isprintable`` is False for every character the email package treats as a line break
    (CR, LF, U+0085, U+2028, U+2029) and for all other control and format characters.
    """
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _decode(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
