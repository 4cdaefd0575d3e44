"""Every notifier against a real receiver: one test body, parametrized over the backends."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RecordingServer, smtp_spec, wait_until
from watchkeeper import Keeper, Observation, PermanentDeliveryError, TransientDeliveryError
from watchkeeper.alerts import Alert, Severity
from watchkeeper.build import build_notifier
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.notifiers.console import ConsoleNotifier
from watchkeeper.store import Store


@dataclass
class Backend:
    """A notifier config plus a way to read the titles its receiver got."""

    spec: dict[str, Any]
    titles: Callable[[], list[str]]


@pytest.fixture(params=["smtp", "webhook", "jsonl", "exec", "apprise"])
def backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    http_receiver: RecordingServer,
) -> Iterator[Backend]:
    kind = request.param
    if kind == "smtp":
        yield Backend(
            {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": smtp_sink.port,
                "sender": "wk@example.com",
                "to": ["ops@example.com"],
            },
            lambda: [str(m["Subject"]) for m in smtp_sink.messages],
        )
    elif kind == "webhook":
        yield Backend(
            {"kind": "webhook", "url": http_receiver.url},
            lambda: [r.json()["title"] for r in http_receiver.requests],
        )
    elif kind == "jsonl":
        path = tmp_path / "a.jsonl"
        yield Backend(
            {"kind": "jsonl", "path": str(path)},
            lambda: (
                [json.loads(x)["title"] for x in path.read_text().splitlines()]
                if path.exists()
                else []
            ),
        )
    elif kind == "exec":  # a real script that appends the alert it reads on stdin to a file
        path = tmp_path / "exec.jsonl"
        yield Backend(
            {"kind": "exec", "command": ["/bin/sh", "-c", f"cat >> {path}"]},
            lambda: (
                [json.loads(x)["title"] for x in path.read_text().splitlines()]
                if path.exists()
                else []
            ),
        )
    else:
        pytest.importorskip("apprise")
        yield Backend(
            {"kind": "apprise", "url": "json://" + http_receiver.url.removeprefix("http://")},
            lambda: [r.json()["title"] for r in http_receiver.requests],
        )


def test_each_alert_arrives_once_in_order(backend: Backend, tmp_path: Path) -> None:
    titles = iter(["first", "second", "third"])
    # Without grouping ("0s"), every alert goes out as itself, in order (with it, a recovery
    # waits for its group's interval: see the grouping tests).
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{**backend.spec, "group_interval": "0s"}])
    keeper.every(0.01, lambda: Observation(next(titles, "third"), event=False), name="w")
    with keeper:
        wait_until(lambda: sum("third" in t for t in backend.titles()) >= 1)
    # Each title is a condition of its own: it fires, and recovers when the next replaces it.
    expected = ["first", "first: recovered", "second", "second: recovered", "third"]
    got = backend.titles()
    assert len(got) == len(expected)
    assert all(title.endswith(want) for title, want in zip(got, expected, strict=True))


def test_min_severity_routes_alerts(backend: Backend, tmp_path: Path) -> None:
    spec = {**backend.spec, "min_severity": "error"}
    keeper = Keeper(state=tmp_path / "wk.db", notify=[spec])
    keeper.every(
        3600,
        lambda: [Observation("minor", severity="info"), Observation("major", severity="critical")],
        name="w",
    )
    with keeper:
        wait_until(backend.titles)
    assert len(backend.titles()) == 1
    assert "major" in backend.titles()[0]


def test_batch_sends_one_digest(backend: Backend, tmp_path: Path) -> None:
    spec = {**backend.spec, "batch": "300ms"}
    keeper = Keeper(state=tmp_path / "wk.db", notify=[spec])
    keeper.every(3600, lambda: [Observation(f"item {i}", event=True) for i in range(5)], name="w")
    with keeper:
        wait_until(backend.titles)
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts()[spec.get("name") or spec["kind"]] == {"sent": 5})
    titles = backend.titles()
    if spec["kind"] == "jsonl":  # a file has no use for digests: one line each, one write
        assert titles == [f"item {i}" for i in range(5)]
    else:  # `batch` is the old name of group_wait + group_interval: one message, five groups
        assert len(titles) == 1
        # The watcher is named once: the subject puts it before the title, as for one alert.
        named = {"smtp": "[WARNING] w: ", "apprise": "w: "}.get(spec["kind"], "")
        assert titles[0] == named + "5 alerts in 5 groups"


def alert(title: str = "disk full", **kw: Any) -> Alert:
    return Alert(watcher="w", kind="custom", severity=Severity.CRITICAL, title=title, key="k", **kw)


def test_smtp_header_injection_adds_no_header_and_no_recipient(smtp_sink: SmtpSink) -> None:
    notifier = build_notifier(smtp_spec(smtp_sink.port))
    notifier.send(alert("x\r\nBcc: someone@example.com\r\nX-Evil: 1"))
    (msg,) = smtp_sink.wait_for(1, timeout=10)
    assert smtp_sink.envelopes == [("wk@example.com", ["ops@example.com"])]
    assert msg["Bcc"] is None
    assert msg["X-Evil"] is None
    assert "\n" not in str(msg["Subject"])
    assert "Bcc: someone@example.com" in str(msg["Subject"])  # kept as harmless text


def test_smtp_subject_and_body_templates(smtp_sink: SmtpSink) -> None:
    notifier = build_notifier(
        {
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": smtp_sink.port,
            "sender": "wk@example.com",
            "to": ["a@example.com", "b@example.com"],
            "subject": "{{ watcher }} says {{ title }}",
            "body": "severity={{ severity }} path={{ data.path }}",
        }
    )
    notifier.send(alert("hello", data={"path": "/var/log/app.log"}))
    (msg,) = smtp_sink.wait_for(1, timeout=10)
    assert msg["Subject"] == "w says hello"
    assert msg.get_content().strip() == "severity=critical path=/var/log/app.log"
    assert smtp_sink.envelopes[0][1] == ["a@example.com", "b@example.com"]


def test_smtp_rejection_is_permanent_and_refused_connection_transient(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    class Rejecting:
        async def handle_RCPT(
            self,
            server: Any,
            session: Any,
            envelope: Any,
            address: str,
            options: Any,
        ) -> str:
            return "550 no such user"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    controller = Controller(Rejecting(), hostname="127.0.0.1", port=free)
    controller.start()
    try:
        notifier = build_notifier(
            {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": free,
                "sender": "wk@example.com",
                "to": ["ops@example.com"],
            }
        )
        with pytest.raises(PermanentDeliveryError, match="550"):
            notifier.send(alert())
    finally:
        controller.stop()
    closed = build_notifier(
        {
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": free,
            "sender": "wk@example.com",
            "to": ["ops@example.com"],
        }
    )
    with pytest.raises(TransientDeliveryError, match="ConnectionRefusedError"):
        closed.send(alert())


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, TransientDeliveryError), (429, TransientDeliveryError), (404, PermanentDeliveryError)],
)
def test_webhook_answers(http_receiver: RecordingServer, status: int, error: type) -> None:
    http_receiver.status = status
    notifier = build_notifier({"kind": "webhook", "url": http_receiver.url + "/secret-token"})
    with pytest.raises(error) as info:
        notifier.send(alert())
    assert str(status) in str(info.value)
    assert "secret-token" not in str(info.value)
    notifier.close()


def test_webhook_body_template_and_headers(http_receiver: RecordingServer) -> None:
    notifier = build_notifier(
        {
            "kind": "webhook",
            "url": http_receiver.url,
            "headers": {"Authorization": "Bearer t0k"},
            "body": '{"text": {{ (severity_upper ~ ": " ~ title) | tojson }}}',
        }
    )
    notifier.send(alert('quote " and <tag>'))
    (request,) = http_receiver.wait_for(1)
    assert request.json() == {"text": 'CRITICAL: quote " and <tag>'}
    assert request.headers["Authorization"] == "Bearer t0k"
    assert "t0k" not in notifier.describe()
    notifier.close()


def test_a_failing_webhook_is_retried_until_it_works(
    tmp_path: Path, http_receiver: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("watchkeeper.runtime.RETRY_BASE", 0.05)
    http_receiver.status = 503
    keeper = Keeper(
        state=tmp_path / "wk.db", notify=[{"kind": "webhook", "url": http_receiver.url}]
    )
    keeper.every(3600, lambda: Observation("flaky"), name="w")
    with keeper:
        http_receiver.wait_for(2)
        http_receiver.status = 200
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts()["webhook"] == {"sent": 1})
    statuses = {r.headers["Idempotency-Key"] for r in http_receiver.requests}
    assert len(statuses) == 1  # every try carried the same idempotency key


def test_a_webhook_with_a_list_body_gets_a_backlog_as_lists(
    tmp_path: Path, http_receiver: RecordingServer
) -> None:
    hook = {"kind": "webhook", "url": http_receiver.url, "list_body": True, "group_interval": "0s"}
    keeper = Keeper(state=tmp_path / "wk.db", notify=[hook])
    keeper.every(
        3600, lambda: [Observation(f"item {i}", event=True) for i in range(2500)], name="w"
    )
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("webhook") == {"sent": 2500})
    bodies = [r.json() for r in http_receiver.requests]
    assert [len(b) for b in bodies] == [1000, 1000, 500]  # three requests, not 2,500
    assert [a["title"] for b in bodies for a in b] == [f"item {i}" for i in range(2500)]
    keys = {r.headers["Idempotency-Key"] for r in http_receiver.requests}
    assert len(keys) == 3


def test_a_permanent_failure_stays_visible(tmp_path: Path, http_receiver: RecordingServer) -> None:
    http_receiver.status = 400
    keeper = Keeper(
        state=tmp_path / "wk.db", notify=[{"kind": "webhook", "url": http_receiver.url}]
    )
    keeper.every(3600, lambda: Observation("bad request"), name="w")
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("webhook") == {"failed": 1})
        assert "400" in store.last_delivery_errors()["webhook"]
    with Store(tmp_path / "wk.db") as store:
        assert store.retry_failed("webhook") == 1


def test_console_line_has_no_escape_sequences(capsys: pytest.CaptureFixture[str]) -> None:
    notifier = build_notifier({"kind": "console"})
    assert isinstance(notifier, ConsoleNotifier)
    notifier.send(alert("evil \x1b[2J\x1b]0;title\x07 text"))
    line = capsys.readouterr().err
    assert "\x1b" not in line
    assert "CRITICAL" in line
    assert "evil" in line


def test_apprise_throttle_is_off_and_exit_is_unsafe(http_receiver: RecordingServer) -> None:
    pytest.importorskip("apprise")
    notifier = build_notifier(
        {"kind": "apprise", "url": "json://" + http_receiver.url.removeprefix("http://")}
    )
    assert notifier.exit_safe is False
    done = threading.Event()

    def two() -> None:
        notifier.send(alert("one"))
        notifier.send(alert("two"))
        done.set()

    worker = threading.Thread(target=two)
    worker.start()
    assert done.wait(3.0), "apprise's 5.5 s per-target throttle is still on"
    worker.join()
    assert [r.json()["title"] for r in http_receiver.requests] == ["w: one", "w: two"]


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_smtp_tls_modes_with_login(certificate: tuple[Path, Path], mode: str) -> None:
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    got: list[tuple[str, list[str]]] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.append((envelope.mail_from, envelope.rcpt_tos))
            return "250 OK"

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == b"s3cret"
        return AuthResult(success=ok)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options: dict[str, Any] = {"authenticator": authenticator}
    if mode == "starttls":  # AUTH is only offered once the connection is upgraded
        options |= {"tls_context": server_tls, "require_starttls": True, "auth_require_tls": True}
    else:  # aiosmtpd does not count implicit TLS as TLS for auth_require_tls
        options |= {"ssl_context": server_tls, "auth_require_tls": False}
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        spec = {
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "tls": mode,
            "ca_file": str(cert),
            "username": "wk",
            "password": "s3cret",
            "sender": "wk@example.com",
            "to": ["ops@example.com"],
            "timeout": "5s",
        }
        build_notifier(spec).send(alert("over TLS"))
        assert got == [("wk@example.com", ["ops@example.com"])]
        untrusted = build_notifier({**spec, "ca_file": None})
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.send(alert())
    finally:
        controller.stop()


def test_unicode_line_breaks_in_a_title_still_deliver_one_line(smtp_sink: SmtpSink) -> None:
    notifier = build_notifier(smtp_spec(smtp_sink.port))
    notifier.send(alert("a\u2028Bcc: x@example.com\u2029b\x85c\u200bd"))
    (msg,) = smtp_sink.wait_for(1, timeout=10)
    assert msg["Bcc"] is None
    assert str(msg["Subject"]) == "[CRITICAL] w: a Bcc: x@example.com b c d"


def test_template_mistakes_fail_at_load_and_render_errors_are_permanent(
    http_receiver: RecordingServer,
) -> None:
    from watchkeeper import ConfigError

    with pytest.raises(
        ConfigError, match="body: template uses unknown name 'titel'; templates see alert, body"
    ):
        build_notifier(
            {"kind": "webhook", "url": http_receiver.url, "body": '{"text": {{ titel | tojson }}}'}
        )
    with pytest.raises(ConfigError, match="does not produce JSON for a sample alert"):
        build_notifier(
            {"kind": "webhook", "url": http_receiver.url, "body": '{"text": "{{ title }}"}'}
        )
    with pytest.raises(ConfigError, match="subject: template uses unknown name 'nope'"):
        build_notifier(
            {"kind": "smtp", "sender": "a@b.c", "to": ["a@b.c"], "subject": "{{ nope.deeper }}"}
        )
    # data keys depend on the watcher, so they pass at load; a real alert can still break it:
    notifier = build_notifier(
        {"kind": "webhook", "url": http_receiver.url, "body": '{"n": {{ data.count + 1 }}}'}
    )
    with pytest.raises(PermanentDeliveryError, match="template error"):
        notifier.send(alert(data={"count": "many"}))
    notifier.close()
    assert http_receiver.requests == []


def test_webhook_urls_are_redacted_from_library_logs(
    http_receiver: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    notifier = build_notifier({"kind": "webhook", "url": http_receiver.url + "/T0/B0/s3cr3t"})
    with caplog.at_level(logging.DEBUG):
        notifier.send(alert())
    notifier.close()
    assert "HTTP Request" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_subjects_name_the_watcher_once(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """A log line's email: ``[ERROR] app-log: ERROR disk full``, not ``app-log: app-log: …``."""
    log = tmp_path / "app.log"
    log.write_text("INFO started\nERROR disk full on /var\n")
    keeper = Keeper(state=tmp_path / "wk.db", notify=[smtp_spec(smtp_sink.port)])
    rules = [{"match": "ERROR", "severity": "error"}]
    keeper.log(str(log), rules=rules, name="app-log", start_at="beginning")
    with keeper:
        wait_until(lambda: smtp_sink.messages)
    assert [str(m["Subject"]) for m in smtp_sink.messages] == [
        "[ERROR] app-log: ERROR disk full on /var"
    ]


def test_apprise_titles_name_the_watcher(http_receiver: RecordingServer, tmp_path: Path) -> None:
    """Alert titles leave out the watcher; a chat message must still say where it came from."""
    pytest.importorskip("apprise")
    url = "json://" + http_receiver.url.removeprefix("http://")
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "apprise", "url": url}])
    keeper.every(3600, lambda: Observation("replica lag 40s", severity="error"), name="db-primary")
    with keeper:
        (request,) = http_receiver.wait_for(1)
    assert request.json()["title"] == "db-primary: replica lag 40s"
