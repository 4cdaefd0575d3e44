"""The ports watcher: its checks on real loopback sockets the test opened, and a Keeper end to
end (jsonl notifier, SQLite state, restart)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_jsonl, wait_until
from watchkeeper import ConfigError, Keeper, load_config
from watchkeeper.scan import parse_ports
from watchkeeper.watchers.ports import PortsConfig, PortsWatcher


class Port:
    """A loopback port the test owns: listening (open) or bound only (closed)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.number: int = self.sock.getsockname()[1]

    def open(self) -> None:
        # Nothing accepts: every scan leaves a reset connection in the queue, and a full queue
        # drops SYNs (the port would look filtered), so the queue is as long as Linux allows.
        self.sock.listen(4096)

    def close(self) -> None:
        """Stop listening but keep the port: close, and bind a fresh socket to it at once."""
        self.sock.close()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.number))


@pytest.fixture
def ports() -> Iterator[list[Port]]:
    made = [Port() for _ in range(3)]
    yield made
    for port in made:
        port.sock.close()


def scan_config(numbers: list[int], **options: Any) -> PortsConfig:
    return PortsConfig(name="db-host", host="127.0.0.1", ports=numbers, every=60, **options)


def test_changes_alert_after_for_cycles_and_flapping_does_not(ports: list[Port]) -> None:
    a, b, _ = ports
    a.open()
    watcher = PortsWatcher(scan_config([p.number for p in ports], for_cycles=2))
    first = watcher.check(None)
    assert first.observations == []  # the first scan sets the baseline
    assert first.checkpoint["open"] == [a.number]
    assert first.checkpoint["pending"] == {}
    assert parse_ports(first.checkpoint["scanned"]) == sorted(p.number for p in ports)

    b.open()
    pending = watcher.check(first.checkpoint)
    assert pending.observations == []
    assert pending.checkpoint["pending"] == {str(b.number): 1}
    confirmed = watcher.check(pending.checkpoint)
    [opened] = confirmed.observations
    assert opened.event
    assert dict(opened.data) == {
        "host": "127.0.0.1",
        "port": b.number,
        "change": "opened",
        "service": "",
    }
    assert confirmed.checkpoint["open"] == sorted([a.number, b.number])
    assert confirmed.checkpoint["pending"] == {}
    assert watcher.check(confirmed.checkpoint).observations == []  # once, not every scan

    a.close()  # closed for one scan only: shorter than for_cycles, no alert
    flap = watcher.check(confirmed.checkpoint)
    assert flap.observations == []
    a.open()
    back = watcher.check(flap.checkpoint)
    assert back.observations == []
    assert back.checkpoint == confirmed.checkpoint


def test_an_edited_port_list_is_not_a_change(ports: list[Port]) -> None:
    a, b, c = ports
    a.open()
    b.open()
    before = PortsWatcher(scan_config([a.number, c.number])).check(None).checkpoint
    # The config now scans b (already open) instead of c: neither is "opened" nor "closed".
    after = PortsWatcher(scan_config([a.number, b.number])).check(before)
    assert after.observations == []
    assert after.checkpoint["open"] == sorted([a.number, b.number])
    assert parse_ports(after.checkpoint["scanned"]) == sorted([a.number, b.number])


def test_expectations_are_conditions_and_suppress_change_events(ports: list[Port]) -> None:
    a, b, c = ports
    a.open()
    config = scan_config(
        [c.number], expect_open=[a.number], expect_closed=[b.number], alert_on=["opened"]
    )
    watcher = PortsWatcher(config)
    assert set(watcher.ports) == {a.number, b.number, c.number}
    base = watcher.check(None)
    assert base.observations == []
    a.close()
    b.open()
    c.open()
    c_opened, a_missing, b_open = watcher.check(base.checkpoint).observations
    assert (c_opened.data["change"], c_opened.event) == ("opened", True)
    assert not a_missing.event
    assert str(a_missing.level) == "error"
    assert a_missing.title == f"127.0.0.1:{a.number} is closed, expected open"
    assert b_open.title == f"127.0.0.1:{b.number} is open, expected closed"


def test_opened_alert_carries_the_banner(ports: list[Port]) -> None:
    greeter = ports[0]
    watcher = PortsWatcher(scan_config([greeter.number], banner=True))
    baseline = watcher.check(None)
    greeter.open()

    def greet() -> None:
        conn, _ = greeter.sock.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"220 mail.example.com ESMTP\r\n")
            conn.recv(1)

    server = threading.Thread(target=greet, name="greeter")
    server.start()
    [opened] = watcher.check(baseline.checkpoint).observations
    server.join(5)
    assert opened.data["banner"] == "220 mail.example.com ESMTP"
    assert opened.data["change"] == "opened"
    assert "It says: 220 mail.example.com ESMTP" in opened.body


def test_config_table_validates_ports_with_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[[ports]]\nname = "db-host"\nhost = "127.0.0.1"\nports = "1-1024,5432"\nevery = "15m"\n'
        'expect_open = [22, 5432]\nexpect_closed = [23]\nalert_on = ["opened", "closed"]\n'
        "for_cycles = 2\n"
    )
    [config] = load_config(good).watchers
    assert isinstance(config, PortsConfig)
    assert len(config.port_list()) == 1025
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[ports]]\nname = "x"\nhost = "h"\nports = "1-70000"\n'
        '[[ports]]\nname = "y"\nhost = "h"\nexpect_open = [22]\nexpect_closed = [22]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    text = str(caught.value)
    assert "[[ports]] #1 (name 'x')" in text
    assert "'1-70000' is outside 1-65535" in text
    assert "[[ports]] #2 (name 'y')" in text
    assert "both expect_open and expect_closed" in text


def test_keeper_alerts_once_each_and_recovers_across_a_restart(
    tmp_path: Path, ports: list[Port]
) -> None:
    a, b, c = ports
    a.open()
    c.open()
    out = tmp_path / "alerts.jsonl"
    state = tmp_path / "wk.db"

    def keeper() -> Keeper:
        k = Keeper(state=state, notify=[{"kind": "jsonl", "path": str(out)}])
        k.ports(
            "127.0.0.1",
            ports=[b.number, c.number],
            name="db-host",
            every=0.05,
            for_cycles=2,
            expect_open=[a.number],
        )
        return k

    def checks(k: Keeper) -> int:
        assert k.store is not None
        return next(w.checks for w in k.store.watchers() if w.name == "db-host")

    with keeper() as k:
        wait_until(lambda: checks(k) >= 2)
        b.open()
        c.close()
        changes = wait_until(lambda: len(read_jsonl(out)) >= 2 and read_jsonl(out))
        seen = checks(k)
        wait_until(lambda: checks(k) >= seen + 5)
    assert len(read_jsonl(out)) == 2
    by_change = {x["data"]["change"]: x for x in changes}
    assert by_change["opened"]["data"]["port"] == b.number
    assert by_change["closed"]["data"]["port"] == c.number
    assert by_change["closed"]["title"] == f"127.0.0.1:{c.number} closed"
    assert {x["severity"] for x in changes} == {"warning"}

    with keeper() as k:  # restart: the baseline is in the state file, nothing is repeated
        start = checks(k)
        wait_until(lambda: checks(k) >= start + 4)
        assert len(read_jsonl(out)) == 2
        a.close()
        down = wait_until(lambda: len(read_jsonl(out)) >= 3 and read_jsonl(out)[2])
        assert down["severity"] == "error"
        assert down["status"] == "firing"
        assert down["data"]["port"] == a.number
        a.open()
        up = wait_until(lambda: len(read_jsonl(out)) >= 4 and read_jsonl(out)[3])
        seen = checks(k)
        wait_until(lambda: checks(k) >= seen + 5)
    assert up["status"] == "resolved"
    assert up["key"] == down["key"]
    assert len(read_jsonl(out)) == 4
