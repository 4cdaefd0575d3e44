"""Clean edges: broken state files and configs get one clear line, not a traceback; control and
bidi characters never reach a terminal raw, whichever command prints them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import run_cli, wait_until
from watchkeeper import ConfigError, Keeper, Observation
from watchkeeper.config import load_config
from watchkeeper.textsafe import safe_json, terminal_safe

NASTY = "evil\u202egnp.exe \x9b31m \x1b[2J \x85 done"
"""An RTL override, a C1 CSI, an ESC sequence and a C1 NEL."""


def one_line_failure(tmp_path: Path, *args: str) -> str:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A real state file with a watcher and alerts in it."""
    path = tmp_path / "wk.db"
    keeper = Keeper(state=path)
    keeper.every(
        3600, lambda: [Observation(f"alert {n}", event=True) for n in range(200)], name="w1"
    )
    with keeper:
        wait_until(lambda: keeper.store is not None and keeper.store.count_alerts() == 200)
    return path


@pytest.mark.parametrize("command", ["status", "alerts"])
def test_a_corrupt_state_file_is_one_line_and_exit_1(
    tmp_path: Path, state: Path, command: str
) -> None:
    data = bytearray(state.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # the header page survives, the rest does not
    state.write_bytes(data)
    message = one_line_failure(tmp_path, command, "--state", str(state))
    assert "malformed" in message or "not a database" in message


@pytest.mark.parametrize(
    ("command", "edit", "expected"),
    [
        ("status", "UPDATE watchers SET checkpoint = '{not json'", "watcher 'w1'"),
        ("status", "UPDATE watchers SET rule_state = '['", "watcher 'w1'"),
        ("alerts", "UPDATE alerts SET severity = 999 WHERE id = 150", "alert #150"),
        ("alerts", "UPDATE alerts SET data = '{' WHERE id = 190", "alert #190"),
    ],
)
def test_a_row_that_does_not_read_is_one_line_naming_it(
    tmp_path: Path, state: Path, command: str, edit: str, expected: str
) -> None:
    with sqlite3.connect(state) as db:
        db.execute(edit)
    db.close()
    message = one_line_failure(tmp_path, command, "--state", str(state))
    assert f"{expected} in the state file cannot be read" in message


@pytest.mark.parametrize("command", ["status", "alerts"])
@pytest.mark.parametrize("version", [0, 2])
def test_another_programs_sqlite_file_is_one_line_and_exit_1(
    tmp_path: Path, command: str, version: int
) -> None:
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE bookmarks (url TEXT)")
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
    message = one_line_failure(tmp_path, command, "--state", str(foreign))
    assert "other.db" in message


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "wk.toml"
    config.write_text("a = " + "[" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(config)
    config.write_text("a = " + "{b = " * 5_000)
    assert "nested too deeply" in one_line_failure(tmp_path, "check", "-c", str(config))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("[]{}=\",.\n a1#'\\tx"), max_size=300))
def test_any_toml_text_is_a_config_or_a_config_error(tmp_path_factory: object, text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "wk.toml"
        config.write_text(text)
        try:
            load_config(config)
        except ConfigError as exc:
            message = str(exc)
        else:
            return
    assert str(config) in message


@pytest.mark.parametrize("every", ['"1ms"', "0.000000001", '"9ms"'])
def test_every_has_a_sane_minimum(tmp_path: Path, every: str) -> None:
    config = tmp_path / "wk.toml"
    config.write_text(f'[[custom]]\nname = "fast"\ncall = "os:getpid"\nevery = {every}\n')
    with pytest.raises(ConfigError, match="at least 10ms"):
        load_config(config)
    with pytest.raises(ConfigError, match="at least 10ms"):
        Keeper(state=tmp_path / "wk.db").every("5ms", lambda: None)


def test_control_and_bidi_characters_are_escaped_in_every_text_output(tmp_path: Path) -> None:
    state = tmp_path / "wk.db"
    keeper = Keeper(state=state)
    calls: list[int] = []

    def check() -> Observation:
        calls.append(1)
        if len(calls) == 1:
            return Observation(NASTY, event=True)
        raise RuntimeError(NASTY)  # the last error, as status shows it

    keeper.every(0.05, check, name="w\u202e1")
    with keeper:
        wait_until(lambda: len(calls) >= 2)
    raw = ("\u202e", "\x9b", "\x1b", "\x85")
    for args in (["alerts"], ["status"], ["status", "--json"], ["alerts", "--json"]):
        result = run_cli(*args, "--state", str(state), cwd=tmp_path)
        assert result.returncode == 0, result
        assert not any(c in result.stdout for c in raw), (args, result.stdout)
        assert "\\u202e" in result.stdout, args
    (line,) = run_cli("alerts", "--json", "--state", str(state), cwd=tmp_path).stdout.splitlines()
    assert json.loads(line)["title"] == NASTY  # JSON readers get the text back exactly
    status = json.loads(run_cli("status", "--json", "--state", str(state), cwd=tmp_path).stdout)
    assert NASTY in status["watchers"][0]["last_error"]


@given(st.text())
def test_terminal_safe_and_safe_json_leave_nothing_a_terminal_acts_on(text: str) -> None:
    for shown in (terminal_safe(text), safe_json(text)):
        assert not any(
            (ord(c) < 32 and c != "\t")
            or 0x7F <= ord(c) <= 0x9F
            or c in "\u2028\u2029"
            or c in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
            for c in shown
        )
    assert json.loads(safe_json(text)) == text


def test_page_output_escapes_what_a_web_page_carries(tmp_path: Path) -> None:
    import threading
    from http.server import ThreadingHTTPServer

    from watchkeeper.demo.world import QuietHandler

    html = f"<ul><li><a href='/1'>{NASTY}</a></li></ul>".encode()

    class Page(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        for extra in ([], ["--json"]):
            shown = run_cli("page", url, "--items", "li", "--title", "a", *extra, cwd=tmp_path)
            assert shown.returncode == 0, shown.stderr
            assert not any(c in shown.stdout for c in ("\u202e", "\x9b", "\x1b", "\x85"))
            assert "\\u202e" in shown.stdout
        (item,) = json.loads(shown.stdout)["items"]
        assert item["title"].startswith("evil\u202egnp.exe \x9b31m \x1b[2J")  # read back
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
