"""What each entry point imports, in a fresh interpreter: start-up time and memory are what a user
of ``watchkeeper scan`` or an embedding program pays before any work (httpx alone is ~16 MiB)."""

from __future__ import annotations

import importlib.metadata
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import watchkeeper

# Modules a process only needs for configs, notifiers, templates, feeds or the dashboard.
HEAVY = ("pydantic", "httpx", "jinja2", "feedparser", "rich", "starlette", "uvicorn")
CONFIG_LAYER = ("watchkeeper.config", "watchkeeper.notifiers", "watchkeeper.watchers")


def imported_after(code: str, *args: str, cwd: Path | None = None) -> tuple[set[str], str]:
    """Run ``code`` in a fresh interpreter; return the modules it ended with, and its stdout."""
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stderr.strip().splitlines()[-1])), done.stdout


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names or m.startswith(names))


def test_import_watchkeeper_loads_no_dependency() -> None:
    modules, _ = imported_after("import watchkeeper")
    assert loaded(modules, HEAVY + CONFIG_LAYER) == []


def test_public_names_load_on_first_use() -> None:
    modules, out = imported_after(
        "import watchkeeper\n"
        "print(watchkeeper.Keeper.__module__, watchkeeper.Severity.ERROR)\n"
        "print('Keeper' in dir(watchkeeper))"
    )
    assert out.split() == ["watchkeeper.keeper", "error", "True"]
    assert "watchkeeper.config" in modules
    with pytest.raises(AttributeError, match="NoSuchName"):
        watchkeeper.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


def test_loading_a_config_leaves_notifier_libraries_until_a_notifier_is_built(
    tmp_path: Path,
) -> None:
    config = tmp_path / "watchkeeper.toml"
    config.write_text(
        '[[notify]]\nkind = "console"\nname = "out"\n\n'
        '[[notify]]\nkind = "webhook"\nname = "hook"\nurl = "http://127.0.0.1:9/x"\n'
    )
    modules, _ = imported_after(
        f"from watchkeeper import load_config\nload_config({str(config)!r})"
    )
    assert loaded(modules, ("httpx", "rich", "jinja2", "feedparser")) == []
    modules, _ = imported_after(
        "from watchkeeper.build import build_from_config\n"
        "from watchkeeper import load_config\n"
        f"notifiers, _ = build_from_config(load_config({str(config)!r}))\n"
        "[n.close() for n in notifiers]"
    )
    assert {"httpx", "rich.console"} <= modules


def test_scan_command_loads_no_config_layer() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        modules, out = imported_after(
            "from watchkeeper.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code\n",
            "scan",
            "127.0.0.1",
            "-p",
            str(port),
            "--json",
        )
    finally:
        listener.close()
    (host,) = json.loads(out)["hosts"]
    assert [(p["port"], p["state"]) for p in host["ports"]] == [(port, "open")]
    unneeded = (
        "pydantic",
        "httpx",
        "jinja2",
        "feedparser",
        "watchkeeper.alerts",
        "watchkeeper.web",
    )
    assert loaded(modules, CONFIG_LAYER + unneeded) == []


# Modules only a keeper that uses those kinds needs: the other watchers and notifiers, and what
# they import (hyperscan and inotify for logs, the port scanner, email.mime for smtp, rich).
OTHER_KINDS = (
    *(f"watchkeeper.watchers.{kind}" for kind in ("log", "ports")),  # prefixes: and logmatch...
    *(f"watchkeeper.notifiers.{k}" for k in ("apprise", "console", "smtp", "webhook")),
    "watchkeeper.scan",
    "hyperscan",
    "inotify_simple",
    "email.mime",
    "rich",
    "apprise",
    "httpx",
)


def test_a_page_keeper_imports_only_the_kinds_it_uses(tmp_path: Path) -> None:
    modules, out = imported_after(
        "from watchkeeper import Keeper\n"
        f"jsonl = {{'kind': 'jsonl', 'path': {str(tmp_path / 'a.jsonl')!r}}}\n"
        f"keeper = Keeper(state={str(tmp_path / 'wk.db')!r}, notify=[jsonl])\n"
        "keeper.page('http://127.0.0.1:1/', items='li')\n"
        "print(*[w.kind for w in keeper.watchers], *[n.kind for n in keeper.notifiers])"
    )
    assert out.split() == ["page", "jsonl"]
    assert loaded(modules, (*OTHER_KINDS, "jmespath", "feedparser")) == []


def test_a_config_imports_the_kinds_it_names_and_lists_all_without_importing(
    tmp_path: Path,
) -> None:
    config = tmp_path / "watchkeeper.toml"
    config.write_text('[[log]]\nname = "app"\npaths = ["app.log"]\nrules = [{match = "ERROR"}]\n')
    modules, _ = imported_after(
        f"from watchkeeper import load_config\nload_config({str(config)!r})"
    )
    assert "watchkeeper.watchers.log" in modules
    assert loaded(modules, ("watchkeeper.watchers.page", "watchkeeper.watchers.ports")) == []
    config.write_text('[[pages]]\nname = "x"\n\n[[notify]]\nkind = "sms"\n')
    modules, out = imported_after(
        "from watchkeeper import ConfigError, load_config\n"
        f"try:\n    load_config({str(config)!r})\n"
        "except ConfigError as exc:\n    print(*exc.errors, sep='\\n')"
    )
    assert "known tables are keeper, notify, custom, log, page, ports" in out
    assert "unknown notifier kind 'sms'; one of apprise, console, exec, jsonl, smtp, webhook" in out
    kinds = ("custom", "log", "page", "ports")
    assert loaded(modules, OTHER_KINDS + tuple(f"watchkeeper.watchers.{k}" for k in kinds)) == []


def test_a_kind_registered_at_run_time_is_known_like_a_built_in() -> None:
    """In a fresh interpreter, so the kind does not reach the reference this process renders."""
    _, out = imported_after(
        "from watchkeeper import CheckResult, Watcher, WatcherConfig\n"
        "from watchkeeper.config import parse_config\n"
        "from watchkeeper.build import build_from_config, build_watcher\n"
        "from watchkeeper.watchers import WATCHERS, register\n"
        "from watchkeeper.watchers.logconfig import LogConfig\n"
        "class ProbeConfig(WatcherConfig):\n    target: str\n"
        "@register\nclass Probe(Watcher):\n"
        "    kind = 'probe'\n    config_model = ProbeConfig\n"
        "    def check(self, checkpoint):\n        return CheckResult()\n"
        "_, (probe,) = build_from_config(parse_config({'probe': [{'name': 'p', 'target': 'x'}]}))\n"
        "print(type(probe).__name__, probe.config.target, 'probe' in WATCHERS, len(WATCHERS))\n"
        "print(*WATCHERS)\n"
        # A config model made apart from its watcher's module still finds its kind.
        "log = build_watcher(LogConfig(name='l', paths=['x.log'], rules=[{'match': 'E'}]))\n"
        "print(type(log).__name__)\n"
        # A kind that reuses a built-in's config model is built as itself, not as the built-in.
        "from watchkeeper.watchers.page import PageWatcher\n"
        "@register\nclass ShopPage(PageWatcher):\n    kind = 'shop'\n"
        "table = {'name': 's', 'url': 'http://127.0.0.1:1/', 'items': 'li'}\n"
        "tables = {'shop': [table], 'page': [table | {'name': 'p'}]}\n"
        "_, (shop, page) = build_from_config(parse_config(tables))\n"
        "print(type(shop).__name__, type(page).__name__)\n"
    )
    assert out.splitlines() == [
        "Probe x True 5",
        "custom log page ports probe",
        "LogWatcher",
        "ShopPage PageWatcher",
    ]


def test_the_user_agent_names_the_installed_version() -> None:
    """The fetcher takes the version from ``__version__``: importlib.metadata is a cost."""
    from watchkeeper.watchers import fetch

    name, version = fetch.USER_AGENT.split("/")
    assert (name, version) == ("watchkeeper", importlib.metadata.version("watchkeeper"))
