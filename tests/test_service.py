"""The agent as a service: reload under a steady stream of lines, sd_notify, and the documented
install into a fresh venv with ``init --system`` and a unit ``systemd-analyze`` accepts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_until
from watchkeeper.agentnote import read_note
from watchkeeper.store import Store

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"\b(\w) line (\d+)\b")


@dataclass
class Writer:
    """Appends ``ERROR <tag> line N`` to a file on a thread, a few hundred lines a second."""

    path: Path
    tag: str
    written: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self._run, name=f"writer-{self.tag}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            while not self.stop.wait(0.005):  # pacing a producer, not synchronising a test
                self.written += 1
                out.write(f"ERROR {self.tag} line {self.written}\n")
                out.flush()

    def finish(self) -> int:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(5)
        return self.written


def config_text(watchers: list[str], notifiers: list[str], broken: bool = False) -> str:
    tables = {
        "a": '[[log]]\nname = "a"\npaths = ["a.log"]\nstart_at = "beginning"\n'
        'rules = [{ match = "ERROR", severity = "error" }]\n',
        "a2": '[[log]]\nname = "a"\npaths = ["a.log"]\nstart_at = "beginning"\n'
        'rules = [{ match = "ERROR", severity = "critical" }]\n',  # changed: the severity
        "b": '[[log]]\nname = "b"\npaths = ["b.log"]\nstart_at = "beginning"\n'
        'rules = [{ match = "ERROR", severity = "error" }]\n',
        "n1": '[[notify]]\nname = "n1"\nkind = "jsonl"\npath = "n1.jsonl"\n',
        "n2": '[[notify]]\nname = "n2"\nkind = "jsonl"\npath = "n2.jsonl"\n',
    }
    head = '[keeper]\nstate = "state.db"\ndashboard = false\nshutdown_timeout = "5s"\n\n'
    body = "\n".join(tables[name] for name in [*watchers, *notifiers])
    return head + body + ('\n[[log]]\nname = "bad"\nevery = "soon"\n' if broken else "")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "watchkeeper.toml").write_text(config_text(["a"], ["n1"]))
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", "watchkeeper.toml"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: read_note(tmp_path / "state.db"), timeout=30)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log.close()


def reload(folder: Path, text: str) -> subprocess.CompletedProcess[str]:
    (folder / "watchkeeper.toml").write_text(text)
    return run_cli("reload", "-c", "watchkeeper.toml", cwd=folder)


def numbers(texts: list[str], tag: str) -> Counter[int]:
    """How many alerts name each line number of ``tag`` (an alert may name it twice)."""
    found: Counter[int] = Counter()
    for text in texts:
        found.update({int(number) for seen, number in NUMBER.findall(text) if seen == tag})
    return found


def test_reload_adds_changes_and_removes_under_a_stream_with_nothing_lost_or_repeated(
    tmp_path: Path, agent: subprocess.Popen[bytes]
) -> None:
    state = tmp_path / "state.db"
    a = Writer(tmp_path / "a.log", "a").start()
    b = Writer(tmp_path / "b.log", "b").start()
    wait_until(lambda: a.written > 50)

    added = reload(tmp_path, config_text(["a", "b"], ["n1", "n2"]))
    assert added.returncode == 0, added.stderr
    assert "added watcher 'b'" in added.stdout
    assert "added notifier 'n2'" in added.stdout
    wait_until(lambda: a.written > 150)

    # The agent checks the config with its own environment, refuses it, and says why.
    refused = reload(tmp_path, config_text(["a", "b"], ["n1", "n2"], broken=True))
    assert refused.returncode == 1
    assert "refused; the running config stays" in refused.stdout
    assert "[[log]] #3 (name 'bad'): every:" in refused.stdout  # where and what
    status = run_cli("status", "-c", "watchkeeper.toml", "--state", "state.db", cwd=tmp_path)
    assert "last reload" in status.stdout
    assert "refused" in status.stdout
    assert agent.poll() is None

    changed = reload(tmp_path, config_text(["a2", "b"], ["n1", "n2"]))
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.split("\n")[0] == "changed watcher 'a'"
    wait_until(lambda: a.written > 250)

    removed = reload(tmp_path, config_text(["a2"], ["n2"]))
    assert removed.returncode == 0, removed.stderr
    assert "removed watcher 'b'" in removed.stdout
    assert "removed notifier 'n1'" in removed.stdout
    b_written_before_removal = b.written
    wait_until(lambda: a.written > 350)
    total_a, total_b = a.finish(), b.finish()

    def a_alerted() -> Counter[int]:
        with Store(state, readonly=True) as store:
            alerts = store.alerts(watcher="a", limit=1_000_000)
        return numbers([x.title + "\n" + x.body for x in alerts], "a")

    wait_until(lambda: len(a_alerted()) == total_a, timeout=30)
    assert a_alerted() == Counter(range(1, total_a + 1))  # each line once, through 3 reloads

    status = run_cli("status", "-c", "watchkeeper.toml", "--json", cwd=tmp_path)
    doc = json.loads(status.stdout)
    states = {w["name"]: w["state"] for w in doc["watchers"]}
    assert states == {"a": "ok", "b": "removed"}
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0

    with Store(state, readonly=True) as store:
        b_alerts = store.alerts(watcher="b", limit=1_000_000)
        severities = Counter(x.severity.name for x in store.alerts(watcher="a", limit=10**6))
    b_seen = numbers([x.title + "\n" + x.body for x in b_alerts], "b")
    assert max(b_seen.values()) == 1  # b: none twice
    assert set(b_seen) == set(range(1, max(b_seen) + 1))  # and none skipped
    assert b_written_before_removal * 0.5 <= max(b_seen) <= total_b
    assert set(severities) == {"ERROR", "CRITICAL"}  # the changed rule took over

    n1 = (tmp_path / "n1.jsonl").read_text().splitlines()
    n2 = (tmp_path / "n2.jsonl").read_text().splitlines()
    for name, lines in (("n1", n1), ("n2", n2)):
        ids = [json.loads(line)["id"] for line in lines]
        assert len(ids) == len(set(ids)), f"{name} got an alert twice"
    n2_ids = sorted(json.loads(line)["id"] for line in n2)
    with Store(state, readonly=True) as store:
        every_id = [x.id for x in store.alerts(limit=10**6)]
    assert n2_ids == [i for i in sorted(every_id) if i >= n2_ids[0]]  # all, once n2 existed


def test_sd_notify_ready_watchdog_reload_and_stopping(tmp_path: Path) -> None:
    (tmp_path / "watchkeeper.toml").write_text(config_text(["a"], ["n1"]))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    listener.bind(address)
    listener.settimeout(20)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", "watchkeeper.toml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    received: list[list[str]] = []  # one list of fields per datagram

    def until(field: str) -> list[str]:
        while True:
            datagram = listener.recv(4096).decode().split("\n")
            received.append(datagram)
            if field in datagram:
                return datagram

    try:
        until("READY=1")
        until("WATCHDOG=1")
        until("WATCHDOG=1")  # again: a steady ping
        proc.send_signal(signal.SIGHUP)
        reloading = until("RELOADING=1")
        # systemd matches the READY=1 that ends a reload by this stamp, in the same datagram.
        assert any(f.startswith("MONOTONIC_USEC=") for f in reloading)
        until("READY=1")
        proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()


def documented_install(prefix: Path, bin_dir: Path) -> str:
    """docs/systemd.md's install block, with ``prefix`` for /opt and ``bin_dir`` for the PATH."""
    text = (ROOT / "docs" / "systemd.md").read_text()
    block = re.search(r"<!-- install -->\n```sh\n(.*?)```", text, re.S)
    assert block is not None, "docs/systemd.md lost its install block"
    script = block.group(1).replace("sudo ", "").replace("./watchkeeper", str(ROOT))
    script = re.sub(r"\s+#.*", "", script)  # the comments
    return script.replace("/opt/watchkeeper", str(prefix)).replace("/usr/local/bin", str(bin_dir))


@pytest.mark.slow
@pytest.mark.timeout(600)  # pip builds and installs the package and its dependencies
def test_the_documented_install_runs_init_system_and_the_agent_starts(tmp_path: Path) -> None:
    prefix, bin_dir = tmp_path / "opt" / "watchkeeper", tmp_path / "bin"
    bin_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    installed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", documented_install(prefix, bin_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    command = bin_dir / "watchkeeper"
    assert (prefix / "share" / "doc" / "watchkeeper" / "systemd.md").is_file()  # Documentation=
    unit = prefix / "share" / "watchkeeper" / "watchkeeper.service"
    assert unit.is_file()

    root = tmp_path / "root"
    env = {**env, "STATE_DIRECTORY": str(tmp_path / "var-lib")}
    written = subprocess.run(
        [command, "init", "--system", "--root", root],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    config = root / "etc" / "watchkeeper" / "watchkeeper.toml"
    # Not the host's dashboard port, which may be taken; everything else as written.
    text = config.read_text().replace('dashboard = "127.0.0.1:8470"', 'dashboard = "127.0.0.1:0"')
    config.write_text(text)
    proc = subprocess.Popen(
        [command, "run", "-c", config],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        state = tmp_path / "var-lib" / "state.db"
        wait_until(lambda: read_note(state) is not None or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert Store.holder(state) == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit was not verified")
    verify_dir = tmp_path / "unit"
    verify_dir.mkdir()
    (verify_dir / "watchkeeper.service").write_text(
        unit.read_text().replace("/opt/watchkeeper", str(prefix))
    )
    verified = subprocess.run(
        [analyze, "verify", "./watchkeeper.service"],
        cwd=verify_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stderr.strip() == ""  # no warning either (unknown keys are only warnings)


def test_a_relative_state_goes_under_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchkeeper.config import load_config

    config = tmp_path / "etc" / "watchkeeper.toml"
    config.parent.mkdir()
    config.write_text('[keeper]\nstate = "wk.db"\n')
    assert load_config(config).keeper.state == config.parent / "wk.db"
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'lib'}:{tmp_path / 'other'}")
    assert load_config(config).keeper.state == tmp_path / "lib" / "wk.db"
    config.write_text(f'[keeper]\nstate = "{tmp_path / "abs.db"}"\n')
    assert load_config(config).keeper.state == tmp_path / "abs.db"


def test_reload_with_no_agent_running_says_so(tmp_path: Path) -> None:
    (tmp_path / "watchkeeper.toml").write_text(config_text(["a"], ["n1"]))
    done = run_cli("reload", "-c", "watchkeeper.toml", cwd=tmp_path)
    assert done.returncode == 1
    assert "no agent is running with state file" in done.stderr


def test_a_hangup_or_a_second_interrupt_during_the_stop_does_not_kill_the_agent(
    tmp_path: Path,
) -> None:
    (tmp_path / "watchkeeper.toml").write_text(
        '[keeper]\nstate = "state.db"\ndashboard = false\nshutdown_timeout = "5s"\n\n'
        '[[custom]]\nname = "slow"\nevery = "10ms"\ncall = "tests.agent_checks:slow_stop"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "run", "-c", "watchkeeper.toml", "-vv"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: read_note(tmp_path / "state.db"), timeout=30)
        proc.send_signal(signal.SIGTERM)  # the stop waits for the second-long check in progress
        assert proc.stderr is not None
        for line in proc.stderr:  # the stop has begun once the agent says so
            if "keeper stopping" in line:
                break
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
