"""Any service apprise knows (Slack, Telegram, ntfy, Matrix, ...), from the optional extra.

apprise is not exit-safe: it dispatches through a ``concurrent.futures`` executor, which refuses
work while the interpreter shuts down. This notifier calls each target's synchronous ``notify()``
itself, so no pool thread is left behind, but a target may still use one; so it says
``exit_safe = False`` and its deliveries stay in the outbox at exit, for the next start, instead of
failing. apprise also
throttles each target to one message per 5.5 s by default; the outbox already paces retries, so
that throttle is switched off (it would stall the dispatcher thread in ``time.sleep``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from watchkeeper.alerts import Alert, Severity
from watchkeeper.errors import ConfigError, TransientDeliveryError
from watchkeeper.notifiers.base import Notifier, NotifierConfig, redact_url, register


class AppriseConfig(NotifierConfig):
    """``[[notify]] kind = "apprise"``: any apprise URL (needs ``watchkeeper[apprise]``)."""

    kind: Literal["apprise"] = "apprise"
    url: SecretStr = Field(description="An apprise URL such as ntfy://topic; treated as a secret.")


@register
class AppriseNotifier(Notifier):
    """Delivers through apprise, one target per notifier."""

    kind = "apprise"
    config_model = AppriseConfig
    config: AppriseConfig
    exit_safe = False

    def __init__(self, config: AppriseConfig) -> None:
        super().__init__(config)
        try:
            import apprise
        except ImportError as exc:
            raise ConfigError(
                f"notifier {config.name!r}: kind 'apprise' needs the extra: "
                "pip install 'watchkeeper[apprise]'"
            ) from exc
        self._apprise: Any = apprise
        self._app = apprise.Apprise()
        if not self._app.add(config.url.get_secret_value()):
            raise ConfigError(
                f"notifier {config.name!r}: apprise does not understand the URL "
                f"{redact_url(config.url.get_secret_value())}"
            )
        for server in self._app:
            server.request_rate_per_sec = 0

    def describe(self) -> str:
        """The URL's scheme and host only."""
        return f"apprise {redact_url(self.config.url.get_secret_value())}"

    def send(self, alert: Alert) -> None:
        """Notify; apprise reports failure as False, which we retry."""
        notify_type = self._apprise.NotifyType
        if alert.status == "resolved":
            kind = notify_type.SUCCESS
        elif alert.severity >= Severity.ERROR:
            kind = notify_type.FAILURE
        elif alert.severity >= Severity.WARNING:
            kind = notify_type.WARNING
        else:
            kind = notify_type.INFO
        try:
            # Each target's own notify() is synchronous; Apprise.notify() would hand the work to
            # its shared thread pool, a thread that outlives the call.
            ok = all(
                server.notify(  # titles leave out the watcher: name it, as email subjects do
                    title=f"{alert.watcher}: {alert.title}",
                    body=alert.body or alert.title,
                    notify_type=kind,
                )
                for server in self._app
            )
        except RuntimeError as exc:  # "cannot schedule new futures after interpreter shutdown"
            raise TransientDeliveryError(f"apprise could not send now: {exc}") from exc
        if not ok:
            raise TransientDeliveryError(f"apprise reported failure for {self.describe()}")
