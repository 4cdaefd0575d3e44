"""The exec notifier against real child scripts: what they receive (stdin JSON, WATCHKEEPER_*
variables), how their exit status is read (0 sent, 75 / timeout / signal retried, else failed),
bounded output in the delivery's error, a killed process group on timeout, and a keeper end to
end with exactly-once delivery across a temporary failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import run_cli, wait_until
from watchkeeper import Keeper, Observation, PermanentDeliveryError, TransientDeliveryError
from watchkeeper.alerts import Alert, Severity
from watchkeeper.build import build_from_config, build_notifier
from watchkeeper.config import load_config
from watchkeeper.errors import ConfigError
from watchkeeper.notifiers.exec import (
    OUTPUT_LIMIT,
    ExecConfig,
    ExecNotifier,
    Output,
    alert_environment,
)


def script(tmp_path: Path, body: str, name: str = "hook") -> str:
    """An executable ``/bin/sh`` script in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def notifier(command: list[str] | str, **settings: Any) -> Any:
    return build_notifier({"kind": "exec", "command": command, **settings})


def an_alert(**kw: Any) -> Alert:
    fields: dict[str, Any] = {
        "watcher": "app-log",
        "kind": "log",
        "severity": Severity.ERROR,
        "title": "ERROR disk full",
        "key": "disk",
        "body": "ERROR disk full on /var",
        "id": 42,
    } | kw
    return Alert(**fields)


def test_the_alert_arrives_on_stdin_and_in_the_environment(tmp_path: Path) -> None:
    hook = script(tmp_path, f'cat > {tmp_path}/stdin.json\nenv > {tmp_path}/env.txt\necho "$1"')
    alert = an_alert(data={"item_url": "https://shop.example/item/7", "url": "https://shop/"})
    notifier([hook, "--flag with space"]).send(alert)
    assert json.loads((tmp_path / "stdin.json").read_text()) == alert.to_dict()
    env = dict(
        line.split("=", 1)
        for line in (tmp_path / "env.txt").read_text().splitlines()
        if line.startswith("WATCHKEEPER_")
    )
    assert env == {
        "WATCHKEEPER_ID": "42",
        "WATCHKEEPER_UID": alert.uid,
        "WATCHKEEPER_WATCHER": "app-log",
        "WATCHKEEPER_KIND": "log",
        "WATCHKEEPER_SEVERITY": "error",
        "WATCHKEEPER_TITLE": "ERROR disk full",
        "WATCHKEEPER_KEY": "disk",
        "WATCHKEEPER_STATUS": "firing",
        "WATCHKEEPER_CREATED_AT": alert.to_dict()["created_at"],
        "WATCHKEEPER_URL": "https://shop.example/item/7",
        "WATCHKEEPER_BODY": "ERROR disk full on /var",
    }


def test_arguments_are_never_shell_syntax(tmp_path: Path) -> None:
    hook = script(tmp_path, f'printf "%s" "$WATCHKEEPER_TITLE" > {tmp_path}/title')
    title = "$(touch pwned); `touch pwned` | rm -rf x & echo"
    notifier([hook]).send(an_alert(title=title))
    assert (tmp_path / "title").read_text() == title
    assert not (tmp_path / "pwned").exists()
    # A shell only when asked for, with a string.
    notifier(f'printf "%s" "$WATCHKEEPER_KEY" | tr a-z A-Z > {tmp_path}/key', shell=True).send(
        an_alert()
    )
    assert (tmp_path / "key").read_text() == "DISK"


def test_config_mistakes_are_named_at_load(tmp_path: Path) -> None:
    config = tmp_path / "wk.toml"
    config.write_text('[[notify]]\nkind = "exec"\ncommand = "/usr/local/bin/on-alert --page"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert 'write the program and its arguments as a list, e.g. ["/usr/local/bin/on-alert", ' in (
        str(caught.value)
    )
    config.write_text('[[notify]]\nkind = "exec"\ncommand = []\n')
    with pytest.raises(ConfigError, match="command: empty"):
        load_config(config)
    config.write_text(f'[[notify]]\nkind = "exec"\ncommand = ["{tmp_path}/missing"]\n')
    with pytest.raises(ConfigError, match="missing' is not an executable file"):
        build_from_config(load_config(config))
    config.write_text('[[notify]]\nkind = "exec"\ncommand = ["no-such-program-wk"]\n')
    with pytest.raises(ConfigError, match="'no-such-program-wk' is not on PATH"):
        build_from_config(load_config(config))


@pytest.mark.parametrize(
    ("status", "error"),
    [(75, TransientDeliveryError), (1, PermanentDeliveryError), (64, PermanentDeliveryError)],
)
def test_exit_status_decides_retry_or_failure(tmp_path: Path, status: int, error: type) -> None:
    hook = script(tmp_path, f"echo 'recipient unknown' >&2\nexit {status}")
    with pytest.raises(error) as caught:
        notifier([hook]).send(an_alert())
    assert str(caught.value) == f"{hook} exited with status {status}: recipient unknown"


def test_death_by_a_signal_is_retried(tmp_path: Path) -> None:
    hook = script(tmp_path, "echo crashing\nkill -SEGV $$")
    with pytest.raises(TransientDeliveryError, match=r"was killed by SIGSEGV: crashing$"):
        notifier([hook]).send(an_alert())


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = script(tmp_path, f"sleep 60 &\necho $! > {pids}\necho started\nwait")
    started = time.monotonic()
    with pytest.raises(
        TransientDeliveryError, match=r"timed out after 0.5s and was killed: started"
    ):
        notifier([hook], timeout="0.5s").send(an_alert())
    assert time.monotonic() - started < 5
    grandchild = int(pids.read_text())
    wait_until(lambda: not _alive(grandchild))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped by init counts as gone: it runs nothing.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


def test_huge_output_is_bounded_in_the_error(tmp_path: Path) -> None:
    hook = script(
        tmp_path,
        "echo FIRST-LINE\nhead -c 50000000 /dev/zero | tr '\\0' x\necho\necho LAST-LINE\nexit 2",
    )
    with pytest.raises(PermanentDeliveryError) as caught:
        notifier([hook]).send(an_alert())
    text = str(caught.value)
    assert len(text) < OUTPUT_LIMIT + 200
    assert ": FIRST-LINE\nxxx" in text
    assert text.endswith("xxx\nLAST-LINE")
    printed = len("FIRST-LINE\n") + 50_000_000 + len("\n") + len("LAST-LINE\n")
    assert f"[… {printed - OUTPUT_LIMIT} bytes cut …]" in text


def test_a_command_that_ignores_stdin_or_leaves_a_process_behind(tmp_path: Path) -> None:
    """A megabyte body it never reads, and a background process holding its output open."""
    notifier([script(tmp_path, "exit 0", "quiet")]).send(an_alert(body="x" * 1_000_000))
    left = tmp_path / "left.pid"
    lingering = script(tmp_path, f"sleep 30 &\necho $! > {left}\necho done", "lingering")
    started = time.monotonic()
    try:
        notifier([lingering], timeout="20s").send(an_alert())
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(int(left.read_text()), signal.SIGKILL)


def test_environment_values_are_safe_and_the_body_is_cut() -> None:
    env = alert_environment(an_alert(title="nul\x00here \udcff", body="b" * 100_000))
    assert env["WATCHKEEPER_TITLE"] == "nul\ufffdhere ?"
    assert len(env["WATCHKEEPER_BODY"]) == 8192
    assert "WATCHKEEPER_URL" not in env


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_output_keeps_exactly_the_first_and_last_bytes(chunks: list[bytes]) -> None:
    output = Output()
    for chunk in chunks:
        output.add(chunk)
    data = b"".join(chunks)
    half = OUTPUT_LIMIT // 2
    assert output.total == len(data)
    assert bytes(output.head) == data[:half]
    assert bytes(output.tail) == (data[half:][-half:] if len(data) > half else b"")


def test_keeper_delivers_each_alert_once_through_a_temporary_failure(tmp_path: Path) -> None:
    """The hook fails with EX_TEMPFAIL until a file appears; every alert arrives exactly once."""
    got = tmp_path / "got.txt"
    ready = tmp_path / "ready"
    hook = script(
        tmp_path,
        f'[ -e {ready} ] || {{ echo "queue full" >&2; exit 75; }}\n'
        f'echo "$WATCHKEEPER_UID $WATCHKEEPER_TITLE" >> {got}',
    )
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "exec", "command": [hook]}])
    batches = iter([[f"event {i}" for i in range(n, n + 10)] for n in range(0, 30, 10)])
    keeper.every(
        0.05,
        lambda: [Observation(t, event=True) for t in next(batches, [])],
        name="w",
    )
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("exec", {}).get("pending", 0) == 30)
        wait_until(lambda: "queue full" in store.last_delivery_errors().get("exec", ""))
        ready.touch()
        wait_until(lambda: store.delivery_counts()["exec"] == {"sent": 30}, timeout=30)
    lines = got.read_text().splitlines()
    assert sorted(line.split(" ", 1)[1] for line in lines) == sorted(
        f"event {i}" for i in range(30)
    )
    assert len({line.split(" ", 1)[0] for line in lines}) == 30


def test_failed_deliveries_show_why_in_status(tmp_path: Path) -> None:
    hook = script(tmp_path, "echo 'no such pager: ops' >&2\nexit 67")
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        '[keeper]\nstate = "wk.db"\ndashboard = false\n'
        f'[[notify]]\nname = "pager"\nkind = "exec"\ncommand = ["{hook}"]\n'
    )
    keeper = Keeper.from_config(config)
    keeper.every(3600, lambda: Observation("db down", severity="critical"), name="db")
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("pager") == {"failed": 1})
    status = run_cli("status", "-c", str(config), "--json", cwd=tmp_path)
    pager = json.loads(status.stdout)["notifiers"]["pager"]
    assert pager["failed"] == 1
    assert pager["last_error"] == f"{hook} exited with status 67: no such pager: ops"


def _most_at_once(log: Path) -> int:
    """The most commands running at the same time, from their ``start``/``end`` lines."""
    running = most = 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    return most


@pytest.mark.parametrize("parallel", [1, 3])
def test_parallel_runs_at_most_n_at_once_and_each_alert_once(tmp_path: Path, parallel: int) -> None:
    log = tmp_path / "runs.log"
    hook = script(
        tmp_path,
        f'echo "start $WATCHKEEPER_TITLE" >> {log}\nsleep 0.4\n'
        f'echo "end $WATCHKEEPER_TITLE" >> {log}',
    )
    spec = {"kind": "exec", "command": [hook], "parallel": parallel}
    keeper = Keeper(state=tmp_path / "wk.db", notify=[spec])
    keeper.every(3600, lambda: [Observation(f"event {i}", event=True) for i in range(7)], name="w")
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("exec") == {"sent": 7}, timeout=30)
    starts = [line for line in log.read_text().splitlines() if line.startswith("start")]
    assert sorted(starts) == sorted(f"start event {i}" for i in range(7))
    assert _most_at_once(log) == parallel


def test_each_command_of_a_parallel_run_has_its_own_outcome(tmp_path: Path) -> None:
    hook = script(
        tmp_path,
        'case "$WATCHKEEPER_TITLE" in\n'
        "  ok) exit 0 ;;\n  later) echo busy; exit 75 ;;\n  hang) sleep 30 ;;\n"
        "  *) echo 'no such user'; exit 67 ;;\nesac",
    )
    started = time.monotonic()
    outcomes = notifier([hook], parallel=4, timeout="1s").send_each(
        [an_alert(title=t) for t in ("ok", "later", "hang", "bad")]
    )
    assert time.monotonic() - started < 5  # the hung one does not hold the others up
    assert outcomes[0] is None
    assert isinstance(outcomes[1], TransientDeliveryError)
    assert str(outcomes[1]).endswith("exited with status 75: busy")
    assert isinstance(outcomes[2], TransientDeliveryError)
    assert "timed out after 1s and was killed" in str(outcomes[2])
    assert isinstance(outcomes[3], PermanentDeliveryError)
    assert str(outcomes[3]).endswith("exited with status 67: no such user")


def test_each_alert_of_a_parallel_run_gets_its_own_outcome(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.write_text('#!/bin/sh\ncase "$WATCHKEEPER_TITLE" in bad*) echo nope; exit 67;; esac\n')
    hook.chmod(0o755)
    keeper = Keeper(
        state=tmp_path / "wk.db", notify=[{"kind": "exec", "command": [str(hook)], "parallel": 4}]
    )
    titles = ["ok 1", "bad 2", "ok 3", "ok 4"]
    keeper.every(3600, lambda: [Observation(t, event=True) for t in titles], name="w")
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("exec") == {"sent": 3, "failed": 1})
        rows = store.query(
            "SELECT a.title, d.status FROM deliveries d JOIN alerts a ON a.id = d.alert_id"
        )
    assert {r[0]: r[1] for r in rows} == {
        "ok 1": "sent",
        "bad 2": "failed",
        "ok 3": "sent",
        "ok 4": "sent",
    }


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"A=B": "1"}, "'A=B' is not a variable name"),
        ({"A": "x\x00y"}, "A holds a NUL character"),
    ],
)
def test_an_environment_no_command_can_take_is_a_config_error(
    env: dict[str, str], error: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        build_notifier({"kind": "exec", "command": ["/bin/true"], "env": env})


def test_long_alert_fields_still_start_the_command(tmp_path: Path) -> None:
    got = tmp_path / "got"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\nprintf %s "$WATCHKEEPER_TITLE" | wc -c > {got}\n')
    hook.chmod(0o755)
    notifier = build_notifier({"kind": "exec", "command": [str(hook)]})
    notifier.send(an_alert(title="t" * 300_000))  # over Linux's 128 KiB per variable
    assert 16_000 <= int(got.read_text()) <= 16_384


def test_describe_shows_the_program_not_its_arguments() -> None:
    notifier = build_notifier({"kind": "exec", "command": ["/bin/true", "--token", "s3cret"]})
    assert notifier.describe() == "/bin/true (+2 arguments)"


def test_a_down_command_is_not_run_for_every_due_alert(tmp_path: Path) -> None:
    """After a failure that may pass, the other due alerts wait for its retry time: a hung
    command would otherwise cost a whole timeout per alert."""
    runs = tmp_path / "runs"
    hook = script(tmp_path, f"echo x >> {runs}\nexit 75", "down")
    keeper = Keeper(state=tmp_path / "wk.db", notify=[{"kind": "exec", "command": [str(hook)]}])
    keeper.every(3600, lambda: [Observation(f"e{i}", event=True) for i in range(8)], name="w")
    with keeper:
        wait_until(runs.exists)
        # The first retry is about 2 s away: the other seven alerts wait for it.
        wait_until(lambda: len(runs.read_text().splitlines()) >= 2, timeout=1.0, must=False)
        count = len(runs.read_text().splitlines())
    assert count == 1


def test_an_exception_from_send_each_is_every_alerts_retry(tmp_path: Path) -> None:
    """A notifier's bug in send_each ends neither the dispatcher nor any alert."""

    class Flaky(ExecNotifier):
        calls = 0

        def send_each(self, alerts: Sequence[Alert]) -> list[Exception | None]:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("a plugin's bug")
            return super().send_each(alerts)

    config = ExecConfig(name="flaky", command=["/bin/true"], parallel=2)
    keeper = Keeper(state=tmp_path / "wk.db", notify=[Flaky(config)])
    keeper.every(3600, lambda: [Observation(f"e{i}", event=True) for i in range(2)], name="w")
    with keeper:
        store = keeper.store
        assert store is not None
        wait_until(lambda: store.delivery_counts().get("flaky") == {"sent": 2}, timeout=20)
        assert keeper.healthy()


def test_output_reaches_the_error_with_its_controls_shown_not_obeyed() -> None:
    output = Output()
    output.add(b"line one\x1b[2J\nnul\x00 and \xe2\x80\xae here\n")
    assert output.text() == "line one\\x1b[2J\nnul\\x00 and \\u202e here"
