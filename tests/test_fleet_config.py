"""A fleet's config: each agent's own file plus the shared files it includes (docs/fleet.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchkeeper import ConfigError, load_config
from watchkeeper.build import build_from_config

PAGE = '[[page]]\nname = "shop"\nurl = "http://127.0.0.1:9/"\nitems = "li"\n'


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def agent_config(tmp_path: Path, name: str, body: str = "") -> Path:
    return write(
        tmp_path / f"{name}.toml",
        f'[keeper]\nagent = "{name}"\nlease = "2s"\ninclude = ["fleet.toml"]\n{body}',
    )


def test_an_agent_loads_its_own_tables_and_the_shared_ones(tmp_path: Path) -> None:
    write(
        tmp_path / "fleet.toml",
        PAGE + '[[notify]]\nkind = "jsonl"\npath = "out.jsonl"\n'
        '[[log]]\nname = "web-2-syslog"\nagent = "web-2"\npaths = ["/var/log/syslog"]\n'
        'rules = [{match = "x"}]\n',
    )
    own = '[[log]]\nname = "syslog"\npaths = ["/var/log/syslog"]\nrules = [{match = "x"}]\n'
    config = load_config(agent_config(tmp_path, "web-1", own + PAGE))
    assert config.keeper.agent == "web-1"
    assert config.keeper.lease == 2.0
    # The page listed in both files is one watcher; web-2's log is not this agent's to run.
    assert sorted(w.name for w in config.watchers) == ["shop", "syslog"]
    assert config.source_of("notify", "jsonl") == str(tmp_path / "fleet.toml")
    _, watchers = build_from_config(config)
    owners = {w.name: w.owner(config.keeper.agent_name()) for w in watchers}
    assert owners == {"shop": None, "syslog": "web-1"}  # pages shared, logs pinned here


def test_one_name_defined_differently_in_two_files_names_both(tmp_path: Path) -> None:
    write(tmp_path / "fleet.toml", PAGE)
    mine = agent_config(tmp_path, "web-1", PAGE.replace('"li"', '"p"'))
    with pytest.raises(ConfigError) as caught:
        load_config(mine)
    (error,) = caught.value.errors
    assert str(tmp_path / "fleet.toml") in error
    assert str(mine) in error
    assert "watcher 'shop' is also defined, differently" in error


@pytest.mark.parametrize(
    ("fleet", "own", "expected"),
    [
        ("", '[[page]]\nname = "p"\nurl = "http://x/"\nagent = "web-9"\n', "pinned to agent"),
        ('[[log]]\nname = "l"\npaths = ["/x"]\nrules = [{match = "x"}]\n', "", "needs agent ="),
        ('[keeper]\nlease = "5s"\n', "", "[keeper] belongs in each agent's own config"),
        ("[[page]]\nname = 3\n", "", "fleet.toml: [[page]] #1: name"),
    ],
)
def test_fleet_mistakes_say_where_and_what(
    tmp_path: Path, fleet: str, own: str, expected: str
) -> None:
    write(tmp_path / "fleet.toml", fleet)
    with pytest.raises(ConfigError) as caught:
        load_config(agent_config(tmp_path, "web-1", own))
    assert expected in "\n".join(caught.value.errors)


def test_a_missing_shared_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"include: .*fleet\.toml: no such config file"):
        load_config(agent_config(tmp_path, "web-1"))
