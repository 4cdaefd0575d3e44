"""Config files: every broken one gets one clear message naming where; `check` exits 1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import run_cli
from watchkeeper import ConfigError, Keeper, load_config
from watchkeeper.quantities import format_duration, parse_duration, parse_since, parse_size

GOOD = """
[keeper]
state = "wk.db"
shutdown_timeout = "2s"

[[notify]]
kind = "smtp"
name = "mail"
host = "127.0.0.1"
port = 8025
sender = "wk@example.com"
to = ["ops@example.com"]
password = "${WK_TEST_PASSWORD:-hunter2}"

[[notify]]
kind = "jsonl"
path = "out/alerts.jsonl"

[[custom]]
name = "cwd"
every = "500ms"
call = "os:getcwd"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watchkeeper.toml"
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.errors


def test_good_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.keeper.state == tmp_path / "wk.db"
    assert config.keeper.shutdown_timeout == 2.0
    assert [n.name for n in config.notify] == ["mail", "jsonl"]
    assert config.notify[1].path == tmp_path / "out" / "alerts.jsonl"  # type: ignore[attr-defined]
    assert config.watchers[0].every == 0.5
    keeper = Keeper.from_config(tmp_path / "watchkeeper.toml")
    assert [w.name for w in keeper.watchers] == ["cwd"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[keeper\nstate = 1", "watchkeeper.toml: not valid TOML: "),
        ('[keeper]\nstat = "x"', "watchkeeper.toml: [keeper]: stat: unknown key"),
        (
            '[[custom]]\nname = "c"\nevery = "5 minutes"\ncall = "os:getcwd"',
            "watchkeeper.toml: [[custom]] #1 (name 'c'): every: '5 minutes' is not a duration",
        ),
        (
            '[[notify]]\nkind = "pager"',
            "watchkeeper.toml: [[notify]] #1 (kind 'pager'): kind: unknown notifier kind 'pager'",
        ),
        (
            '[[notify]]\nkind = "smtp"\nsender = "wk@example.com"\nto = ["${WK_NOPE_UNSET}"]',
            "watchkeeper.toml: [[notify]] #1: to.#1: environment variable WK_NOPE_UNSET is not set",
        ),
        (
            '[[notify]]\nkind = "smtp"\nname = "m"\nsender = "wk@example.com"\nto = ["nobody"]',
            "watchkeeper.toml: [[notify]] #1 (name 'm'): to.0: 'nobody' is not an email address",
        ),
        (
            '[[notify]]\nkind = "smtp"\nname = "m"\nto = ["a@b.c"]',
            "watchkeeper.toml: [[notify]] #1 (name 'm'): sender: required key is missing",
        ),
        (
            '[[notify]]\nkind = "smtp"\nsender = "a@b.c"\nto = ["a@b.c"]\nsubject = "{{ oops"',
            "subject: template: template error on line 1",
        ),
        ("[[watch]]\nname = 'x'", "watchkeeper.toml: unknown table [watch]; known tables are"),
        (
            '[[custom]]\nname = "a"\ncall = "os:getcwd"\n'
            '[[custom]]\nname = "a"\ncall = "os:getcwd"',
            "watchkeeper.toml: watcher name 'a' is used twice",
        ),
        (
            '[[custom]]\nname = "c"\ncall = "os:getcwd"\nfor_cycles = 3\nwithin_cycles = 2',
            "within_cycles must be at least for_cycles",
        ),
    ],
)
def test_broken_configs_say_where(tmp_path: Path, text: str, expected: str) -> None:
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1, errors
    assert expected in errors[0].replace(str(tmp_path) + "/", "")


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        '[keeper]\nshutdown_timeout = "soon"\n[[notify]]\nkind = "jsonl"\n'
        '[[custom]]\nname = "c"\nevery = -1\ncall = "os:getcwd"',
    )
    assert len(errors) == 3
    assert any("[keeper]: shutdown_timeout" in e for e in errors)
    assert any("[[notify]] #1 (kind 'jsonl'): path: required key is missing" in e for e in errors)
    assert any("[[custom]] #1 (name 'c'): every" in e for e in errors)


def test_secrets_never_appear_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WK_SECRET", "s3cr3t-value")
    errors = errors_of(
        tmp_path,
        '[[notify]]\nkind = "smtp"\nsender = "a@b.c"\nto = ["a@b.c"]\n'
        'password = ["${WK_SECRET}"]\n'
        '[[notify]]\nkind = "webhook"\nurl = 42\nheaders = { Authorization = 7 }',
    )
    assert errors
    assert not any("s3cr3t" in e for e in errors)


def test_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WK_HOST", "mail.internal")
    config = load_config(
        write(
            tmp_path,
            '[[notify]]\nkind = "smtp"\nhost = "${WK_HOST}"\nsender = "a@b.c"\n'
            'to = ["${WK_TO:-ops@example.com}"]\nsubject = "cost $$5"',
        )
    )
    smtp = config.notify[0]
    assert smtp.host == "mail.internal"  # type: ignore[attr-defined]
    assert smtp.to == ["ops@example.com"]  # type: ignore[attr-defined]
    assert smtp.subject == "cost $5"  # type: ignore[attr-defined]


def test_custom_call_that_cannot_be_imported(tmp_path: Path) -> None:
    path = write(tmp_path, '[[custom]]\nname = "c"\ncall = "no_such_module_xyz:f"')
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        Keeper.from_config(path)


def test_check_command(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    good = run_cli("check", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    write(tmp_path, '[keeper]\nshutdown_timeout = "soon"\n[[notify]]\nkind = "pager"')
    bad = run_cli("check", cwd=tmp_path)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert "[keeper]: shutdown_timeout" in bad.stderr
    assert "unknown notifier kind 'pager'" in bad.stderr
    missing = run_cli("check", "-c", "nope.toml", cwd=tmp_path)
    assert missing.returncode == 1
    assert "nope.toml: no such config file" in missing.stderr


def test_check_lists_every_problem_in_one_pass(tmp_path: Path) -> None:
    """Schema, duplicate names and what only building finds (imports, missing commands): one
    run of ``check`` shows them all, so fixing a config is not a loop of run, fix, run."""
    write(
        tmp_path,
        '[[custom]]\nname = "a"\nevery = "often"\ncall = "os:getpid"\n'
        '[[custom]]\nname = "b"\ncall = "os:getpid"\n'
        '[[custom]]\nname = "b"\ncall = "os:getcwd"\n'
        '[[custom]]\nname = "c"\ncall = "no_such_module_xyz:f"\n'
        '[[notify]]\nkind = "exec"\ncommand = ["/nonexistent/on-alert"]\n',
    )
    result = run_cli("check", cwd=tmp_path)
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert len(problems) == 4, result.stderr
    assert "[[custom]] #1 (name 'a'): every" in problems[0]
    assert "watcher name 'b' is used twice" in problems[1]
    assert "(name 'exec'): command '/nonexistent/on-alert' is not an executable file" in problems[2]
    assert "(name 'c'): call = 'no_such_module_xyz:f': cannot import" in problems[3]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172800),
        (15, 15),
        ("1.5s", 1.5),
        ("1h30m", 5400),
        ("10", 10),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    ),
    st.integers(min_value=0, max_value=10**8),
)
def test_since_is_a_time_or_a_duration_before_now(moment: datetime, seconds: int) -> None:
    """--since and ?since=: an ISO time (its zone kept, UTC when it has none) or a duration."""
    assert parse_since(moment.isoformat()) == moment.timestamp()
    naive = moment.replace(tzinfo=None).isoformat()
    assert parse_since(naive) == moment.replace(tzinfo=UTC).timestamp()
    assert parse_since(format_duration(seconds), now=1e9) == 1e9 - seconds
    with pytest.raises(ValueError, match="use a duration like 1h or a time like"):
        parse_since(f"{seconds} days")


def test_sizes() -> None:
    assert parse_size("5MB") == 5_000_000
    assert parse_size("64KiB") == 65536
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, "11000d"])
def test_durations_must_be_finite_and_sane(value: float | str) -> None:
    with pytest.raises(ValueError, match="between 0s and 10 years"):
        parse_duration(value)


def test_backoff_is_capped_and_never_overflows() -> None:
    from watchkeeper.runtime import RETRY_CAP, backoff, retry_delay

    assert backoff(2.0, 1, 300) == 2.0
    assert backoff(2.0, 4, 300) == 16.0
    assert backoff(2.0, 5000, 300) == 300
    assert all(retry_delay(n) <= RETRY_CAP for n in (1, 9, 10, 2000))


def test_a_call_whose_module_is_broken_names_file_and_table(tmp_path: Path) -> None:
    (tmp_path / "brokenmod.py").write_text("def f(:\n")
    path = write(tmp_path, '[[custom]]\nname = "c"\ncall = "brokenmod:f"')
    result = run_cli("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        "[[custom]] (name 'c'): call = 'brokenmod:f': cannot import module 'brokenmod': "
        "SyntaxError" in result.stderr
    )
