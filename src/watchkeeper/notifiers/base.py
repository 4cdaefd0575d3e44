"""The Notifier contract, its config base, the registry by kind, and shared templating.

A notifier delivers one alert (or a digest of several) and says how it failed:
:class:`~watchkeeper.errors.TransientDeliveryError` keeps the delivery in the outbox for a retry
with backoff, :class:`~watchkeeper.errors.PermanentDeliveryError` marks it failed (kept, visible).
Any other exception counts as transient: an unexpected bug must not lose an alert.

Notifiers run on their own dispatcher thread each, so a slow one never delays another, and they
must not start threads or executors of their own: they also run in the interpreter's exit path,
where ``concurrent.futures`` refuses work. One that cannot help it sets ``exit_safe = False`` and
its deliveries wait in the outbox for the next start.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from watchkeeper.alerts import Alert, Severity
from watchkeeper.quantities import iso_utc
from watchkeeper.registry import Registry
from watchkeeper.units import Duration

if TYPE_CHECKING:
    import jinja2


class NotifierConfig(BaseModel):
    """Settings every notifier has. Subclasses add their own and fix ``kind``."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="Which notifier: one of the kinds below.")
    name: str = Field(default="", description="Unique name; defaults to the kind.")
    min_severity: Severity = Field(
        default=Severity.DEBUG, description="Only alerts at or above this severity."
    )
    batch: Duration | None = Field(
        default=None,
        description="Alerts pending together for this long go out as one digest message.",
    )

    @field_validator("min_severity", mode="before")
    @classmethod
    def _severity(cls, value: Any) -> Severity:
        return Severity.parse(value)

    def model_post_init(self, context: Any, /) -> None:
        """Default the name to the kind, so a single ``[[notify]] kind = "smtp"`` needs no name."""
        if not self.name:
            self.name = self.kind


class Notifier(ABC):
    """Delivers alerts somewhere. One instance per configured ``[[notify]]`` table."""

    kind: ClassVar[str]
    config_model: ClassVar[type[NotifierConfig]]
    exit_safe: ClassVar[bool] = True
    """False if delivery may need a thread or executor, which the interpreter's exit refuses."""

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        """The configured name; deliveries are addressed by it."""
        return self.config.name

    @abstractmethod
    def send(self, alert: Alert) -> None:
        """Deliver one alert, or raise a DeliveryError."""

    def send_digest(self, alerts: Sequence[Alert]) -> None:
        """Deliver several alerts as one message. The default folds them into one alert."""
        self.send(digest_alert(alerts))

    @property
    def concurrency(self) -> int:
        """How many due alerts the dispatcher hands :meth:`send_each` at once (1: one by one)."""
        return 1

    def send_each(self, alerts: Sequence[Alert]) -> list[Exception | None]:
        """Deliver each alert on its own, at once where the notifier can (``exec``'s
        ``parallel``); one outcome per alert: None when sent, else the error. The default sends
        them in turn.
        """
        outcomes: list[Exception | None] = []
        for alert in alerts:
            try:
                self.send(alert)
            except Exception as exc:  # each alert's outcome is recorded on its own
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    def describe(self) -> str:
        """Where this notifier delivers, without secrets: for status and notify-test."""
        return self.kind

    def abort(self) -> bool:
        """Give up the send in progress, from another thread: the keeper's stop ran out of time.

        The keeper calls it on a notifier whose dispatcher is still sending at the end of
        ``shutdown_timeout``; the delivery stays pending and goes out at the next start. Most
        sends end by themselves with their own deadline (False: nothing was done); one that can
        leave something running past the program (a command) ends it here and returns True.
        """
        return False

    def close(self) -> None:
        """Release connections. Called once when the keeper stops."""


NOTIFIERS: Registry[type[Notifier]] = Registry(
    "notifier",
    {
        kind: f"watchkeeper.notifiers.{kind}"
        for kind in ("apprise", "console", "exec", "jsonl", "smtp", "webhook")
    },
)
"""Kind -> notifier class; a built-in kind's module is imported when the kind is looked up."""

N = TypeVar("N", bound=type[Notifier])


def register(cls: N) -> N:
    """Class decorator: make a notifier available to config files under its ``kind``."""
    NOTIFIERS.register(cls)
    return cls


def digest_alert(alerts: Sequence[Alert]) -> Alert:
    """One alert standing for several: the worst severity, a count title, every alert's text.

    Its uid is derived from the member uids, so a retried digest keeps its Message-ID.
    """
    worst = max(alerts, key=lambda a: a.severity)
    uid = hashlib.sha256("".join(a.uid for a in alerts).encode()).hexdigest()[:32]
    watchers = sorted({a.watcher for a in alerts})
    lines = [
        f"[{a.severity!s:>8}] {iso_utc(a.created_at)} {a.watcher}: {a.title}"
        + (f"\n{indent(a.body)}" if a.body else "")
        for a in alerts
    ]
    return Alert(
        watcher=", ".join(watchers),
        kind="digest",
        severity=worst.severity,
        title=f"{len(alerts)} alerts",  # the watchers are its `watcher`: subjects show them
        key="digest",
        body="\n".join(lines),
        data={"alerts": [a.to_dict() for a in alerts]},
        created_at=alerts[-1].created_at,
        uid=uid,
    )


def indent(text: str, prefix: str = "    ") -> str:
    """Indent every line, for bodies nested in digests."""
    return "\n".join(prefix + line for line in text.splitlines())


@functools.cache
def _templates() -> jinja2.Environment:
    """The one Jinja2 environment, made (and jinja2 imported) when a config has a template."""
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    environment.filters["iso"] = iso_utc
    return environment


def template(source: str, where: str) -> jinja2.Template:
    """Compile a user's template, with an error that says which setting is wrong."""
    import jinja2

    try:
        return _templates().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{where}: template error on line {exc.lineno}: {exc.message}") from exc


class TemplateProblem(Exception):
    """A template failed to render (an undefined name, a filter applied to the wrong type)."""


def _compiles(value: str) -> str:
    template(value, "template")
    return value


def check_renders(source: str, where: str) -> str | None:
    """Check a template's names, so a misspelt one fails at load, not at 3 am.

    Returns the template rendered for a sample alert, or None when that sample cannot tell:
    which keys ``data`` holds depends on the watcher kind, so a sample renders every data key as
    empty text, and arithmetic on one may fail here yet work on real alerts.
    """
    sample = Alert(
        watcher="sample",
        kind="custom",
        severity=Severity.WARNING,
        title='sample "quoted" <title>',  # quotes and a newline catch JSON without |tojson
        key="sample",
        body="line 1\nline 2",
        id=1,
    )
    from jinja2 import meta

    names = _context(sample, permissive_data=True)
    unknown = sorted(meta.find_undeclared_variables(_templates().parse(source)) - set(names))
    if unknown:
        raise ValueError(
            f"{where}: template uses unknown name {unknown[0]!r}; templates see "
            + ", ".join(sorted(names))
        )
    try:
        return render(template(source, where), sample, permissive_data=True)
    except TemplateProblem:
        return None


TemplateText = Annotated[str, AfterValidator(_compiles)]
"""A pydantic field type: a Jinja2 template, checked to compile when the config is loaded."""


def _context(alert: Alert, permissive_data: bool) -> dict[str, Any]:
    """What templates see: the alert's fields at top level and as ``alert``."""
    context = alert.to_dict()
    if permissive_data:
        context["data"] = collections.defaultdict(str, context["data"])
    context["alert"] = context.copy()
    context["severity_upper"] = str(alert.severity).upper()
    return context


def render(tmpl: jinja2.Template, alert: Alert, permissive_data: bool = False) -> str:
    """Render a template with the alert's fields at top level and as ``alert``.

    Raises TemplateProblem, never a Jinja2 or type error, so notifiers can fail the delivery
    permanently: retrying a template that cannot render would never help.
    """
    import jinja2

    try:
        return tmpl.render(_context(alert, permissive_data))
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
        raise TemplateProblem(f"template error: {exc}") from exc


def redact_url(url: str) -> str:
    """``https://hooks.example.com/…``: enough to recognise a URL, none of its secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…" if parts.scheme else "…"
