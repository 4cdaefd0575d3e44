"""What each entry point imports, in a fresh interpreter: start-up time and memory are what a user
of ``watchkeeper scan`` or an embedding program pays before any work (httpx alone is ~16 MiB)."""

from __future__ import annotations

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
        "from watchkeeper.keeper import build_from_config\n"
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
