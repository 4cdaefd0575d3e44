"""POST alerts as JSON to a URL, with httpx.

httpx is imported when a webhook notifier is built, not with this module: the registry imports
every notifier module, and httpx alone would add about 16 MiB and 80 ms to every process.

The alert's uid goes in an ``Idempotency-Key`` header (and the JSON), so a receiver can drop the
rare repeat that at-least-once delivery allows. 408, 425, 429 and 5xx answers are retried with
backoff, never sooner than their ``Retry-After`` (capped at :data:`RETRY_AFTER_CAP`); other 4xx
answers mean the request itself is wrong and are not.

Replies are bounded: at most :data:`REPLY_LIMIT` bytes of a body are read (and dropped), and
one attempt has an overall ``deadline`` over all its socket steps
(:mod:`~watchkeeper.notifiers.httpdeadline`), so a receiver that answers with a gigabyte or
drips a byte at a time cannot hold the notifier or its memory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator

from watchkeeper.alerts import Alert
from watchkeeper.errors import PermanentDeliveryError, TransientDeliveryError
from watchkeeper.notifiers.base import (
    Notifier,
    NotifierConfig,
    TemplateProblem,
    TemplateText,
    check_renders,
    digest_alert,
    redact_url,
    register,
    render,
    template,
)
from watchkeeper.notifiers.deadline import attempt
from watchkeeper.quantities import retry_after_seconds
from watchkeeper.units import Duration

if TYPE_CHECKING:
    import httpx

_RETRYABLE = {408, 425, 429}
REPLY_LIMIT = 64 * 1024
"""Bytes of a reply's body read at most; the rest is never read."""
RETRY_AFTER_CAP = 3600.0
"""A Retry-After longer than this (an hour) is taken as this: alerts must not wait a day."""


class _RedactRequestLines(logging.Filter):
    """httpx logs every request's full URL at INFO; webhook URLs carry tokens, so redact them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 2:
            record.args = (record.args[0], redact_url(str(record.args[1])), *record.args[2:])
        return True


logging.getLogger("httpx").addFilter(_RedactRequestLines())


class WebhookConfig(NotifierConfig):
    """``[[notify]] kind = "webhook"``: POST each alert as JSON."""

    kind: Literal["webhook"] = "webhook"
    url: SecretStr = Field(description="Where to send; treated as a secret (tokens live in URLs).")
    method: Literal["POST", "PUT"] = Field(default="POST", description="HTTP method.")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra headers; values are secrets."
    )
    body: TemplateText | None = Field(
        default=None,
        description="Jinja2 template producing the JSON body; use |tojson for values. "
        "Default: the alert as JSON.",
    )
    timeout: Duration = Field(default=10.0, description="Timeout of each socket step.")
    deadline: Duration = Field(
        default=30.0,
        description="Longest time one attempt may take, all steps together (a receiver that "
        "drips its answer is cut off here).",
    )

    @model_validator(mode="after")
    def _body_renders_json(self) -> WebhookConfig:
        rendered = check_renders(self.body, "body") if self.body is not None else None
        if rendered is not None:
            try:
                json.loads(rendered)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"body: the template does not produce JSON for a sample alert ({exc}); "
                    "write values with | tojson"
                ) from None
        return self


@register
class WebhookNotifier(Notifier):
    """Sends alerts to an HTTP endpoint."""

    kind = "webhook"
    config_model = WebhookConfig
    config: WebhookConfig

    def __init__(self, config: WebhookConfig) -> None:
        super().__init__(config)
        import httpx

        self._body = template(config.body, "body") if config.body else None
        from watchkeeper.notifiers.httpdeadline import bounded_transport

        transport, self._connections = bounded_transport()
        self._client: httpx.Client = httpx.Client(
            timeout=config.timeout, follow_redirects=False, transport=transport
        )

    def describe(self) -> str:
        """The URL's scheme and host only: the rest may hold a token."""
        return f"{self.config.method} {redact_url(self.config.url.get_secret_value())}"

    def payload(self, alert: Alert) -> Any:
        """The JSON document sent for an alert."""
        if self._body is None:
            return alert.to_dict()
        try:
            return json.loads(render(self._body, alert))
        except TemplateProblem as exc:
            raise PermanentDeliveryError(str(exc)) from exc
        except json.JSONDecodeError as exc:
            raise PermanentDeliveryError(
                f"the body template did not produce JSON ({exc}); use |tojson for values"
            ) from exc

    def send(self, alert: Alert) -> None:
        """POST the alert; sort the answer into done, retry later, or give up."""
        import httpx  # already loaded by __init__

        headers = {k: v.get_secret_value() for k, v in self.config.headers.items()}
        headers["Idempotency-Key"] = alert.uid
        where = self.describe()
        payload = self.payload(alert)
        try:
            with (
                attempt(self.config.deadline),
                self._client.stream(
                    self.config.method,
                    self.config.url.get_secret_value(),
                    json=payload,
                    headers=headers,
                ) as response,
            ):
                read = 0
                for chunk in response.iter_raw():  # drained so the connection can be reused
                    read += len(chunk)
                    if read >= REPLY_LIMIT:
                        break  # and the connection is closed, not read to its end
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(f"{type(exc).__name__} from {where}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        text = f"{where} answered {status} {response.reason_phrase}"
        if status in _RETRYABLE or status >= 500:
            wait = retry_after_seconds(
                response.headers.get("retry-after"), time.time(), RETRY_AFTER_CAP
            )
            if wait is not None:
                text += f" (Retry-After: {wait:.0f}s)"
            raise TransientDeliveryError(text, retry_after=wait)
        raise PermanentDeliveryError(text)

    def send_digest(self, alerts: Sequence[Alert]) -> None:
        """A digest: the default payload gains an ``alerts`` list; templates see it as ``data``."""
        self.send(digest_alert(alerts))

    def abort(self) -> bool:
        """Shut the open connections down: a request waiting on its answer fails at once."""
        return self._connections.abort()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
