"""The read-side commands against a state file a real agent wrote: status, alerts, notify-test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import watchkeeper
from tests.conftest import RecordingServer, wait_until
from tests.conftest import run_cli as cli
from watchkeeper import Keeper, Observation
from watchkeeper.demo.smtpsink import SmtpSink


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state file with a few alerts from two watchers, one of them failing."""
    path = tmp_path / "wk.db"
    keeper = Keeper(state=path, notify=[{"kind": "jsonl", "path": str(tmp_path / "a.jsonl")}])
    keeper.every(
        3600,
        lambda: [
            Observation("disk 91% full", severity="warning"),
            Observation("db down", severity="critical"),
        ],
        name="host",
    )

    def broken() -> None:
        raise ConnectionError("no route to queue")

    keeper.every(0.01, broken, name="queue", fail_after=1)
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: len(store.alerts()) == 3)
    return path


def test_status_shows_watchers_and_outbox(state: Path, tmp_path: Path) -> None:
    result = cli("status", "--state", str(state), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "host" in result.stdout
    assert "queue" in result.stdout
    assert "failing" in result.stdout
    assert "no route to queue" in result.stdout
    doc = json.loads(cli("status", "--state", str(state), "--json", cwd=tmp_path).stdout)
    by_name = {w["name"]: w for w in doc["watchers"]}
    assert by_name["host"]["state"] == "ok"
    assert by_name["queue"]["state"] == "failing"
    assert doc["notifiers"]["jsonl"]["sent"] == 3


def test_alerts_filters(state: Path, tmp_path: Path) -> None:
    everything = cli("alerts", "--state", str(state), cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert "disk 91% full" in everything.stdout
    assert "db down" in everything.stdout
    critical = cli(
        "alerts", "--state", str(state), "--severity", "critical", "--json", cwd=tmp_path
    )
    titles = [json.loads(line)["title"] for line in critical.stdout.splitlines()]
    assert titles == ["db down"]
    queue = cli(
        "alerts",
        "--state",
        str(state),
        "--watcher",
        "queue",
        "--since",
        "1h",
        "--json",
        cwd=tmp_path,
    )
    (record,) = [json.loads(line) for line in queue.stdout.splitlines()]
    assert "check failing" in record["title"]
    none = cli("alerts", "--state", str(state), "--since", "2000-01-01T00:00", cwd=tmp_path)
    assert none.returncode == 0
    bad = cli("alerts", "--state", str(state), "--severity", "loud", cwd=tmp_path)
    assert bad.returncode == 2
    assert "unknown severity 'loud'" in bad.stderr


def test_status_without_state_says_so(tmp_path: Path) -> None:
    result = cli("status", "--state", str(tmp_path / "none.db"), cwd=tmp_path)
    assert result.returncode == 1
    assert "no state file" in result.stderr


def test_status_in_a_folder_without_a_config_says_there_is_none(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}  # no default state either
    for command in ("status", "alerts"):
        result = cli(command, cwd=tmp_path, env=env)
        assert result.returncode == 1
        assert result.stderr.startswith(f"no config file here ({tmp_path / 'watchkeeper.toml'})")
    named = cli("status", "-c", "other.toml", cwd=tmp_path, env=env)
    assert named.stderr.strip() == "other.toml: no such config file"


COMMANDS = [
    "reload",
    "run",
    "check",
    "status",
    "alerts",
    "notify-test",
    "follow",
    "init",
    "demo",
    "scan",
]


@pytest.mark.parametrize("command", [*COMMANDS, "page", "tail"])
def test_dash_h_is_help_everywhere(tmp_path: Path, command: str) -> None:
    result = cli(command, "-h", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert "-h, --help" in result.stdout


def test_help_texts_render_literally(tmp_path: Path) -> None:
    """``[keeper]`` is text, not rich markup to swallow; -v is a flag that counts, not <int>."""
    result = cli("run", "-h", cwd=tmp_path)
    text = " ".join(result.stdout.split())  # the help is wrapped to the width
    assert "(overrides [keeper] state)" in text
    assert "-v, --verbose More logs, repeatable: -v info, -vv debug" in text
    assert "<int>" not in text
    top = cli("-h", cwd=tmp_path)
    assert all(command in top.stdout for command in COMMANDS)


def test_notify_test_reports_each_notifier(
    tmp_path: Path, smtp_sink: SmtpSink, http_receiver: RecordingServer
) -> None:
    (tmp_path / "watchkeeper.toml").write_text(
        f'[[notify]]\nkind = "smtp"\nname = "mail"\nhost = "127.0.0.1"\nport = {smtp_sink.port}\n'
        f'sender = "wk@example.com"\nto = ["ops@example.com"]\n'
        f'[[notify]]\nkind = "webhook"\nname = "hook"\nurl = "{http_receiver.url}/t0ken"\n'
    )
    http_receiver.status = 500
    result = cli("notify-test", cwd=tmp_path)
    assert result.returncode == 1
    assert "OK    mail" in result.stdout
    assert "FAIL  hook" in result.stdout
    assert "500" in result.stdout
    assert "t0ken" not in result.stdout
    assert len(smtp_sink.messages) == 1
    assert "test alert" in str(smtp_sink.messages[0]["Subject"])


def test_public_api_is_exported() -> None:
    for name in watchkeeper.__all__:
        assert hasattr(watchkeeper, name), name
    assert {"Keeper", "Observation", "Severity", "Alert", "ConfigError"} <= set(watchkeeper.__all__)


def test_init_writes_a_starter_config_that_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = cli("init", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    config = tmp_path / "watchkeeper.toml"
    checked = cli("check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    again = cli("init", cwd=tmp_path)
    assert again.returncode == 1
    assert "exists; use --force" in again.stderr
    # Every example in it is valid too, once uncommented (with its ${VAR}s set).
    from watchkeeper import load_config

    for name in ("WATCHKEEPER_TOKEN", "SMTP_PASSWORD", "HOOK_PATH"):
        monkeypatch.setenv(name, "x")
    full = tmp_path / "full.toml"
    full.write_text(config.read_text().replace("#~ ", ""))
    loaded = load_config(full)
    assert {type(w).__name__ for w in loaded.watchers} == {
        "LogConfig",
        "PageConfig",
        "PortsConfig",
        "CustomConfig",
    }
    assert [n.kind for n in loaded.notify] == ["console", "jsonl", "smtp", "webhook"]
