"""The package's shape: no import cycle, and no arrow from the core to a screen.

The graph is read from the source with ``ast``: every ``import`` a module runs, at its top or
inside a function (a lazy import is still an arrow), but not those under ``if TYPE_CHECKING:``,
which only the type checker follows. Then each module is imported alone in a fresh interpreter,
which is what catches an order-dependent cycle the graph would call harmless.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "watchkeeper"
SCREENS = ("watchkeeper.cli", "watchkeeper.web", "watchkeeper.demo", "watchkeeper.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str | None:
    """The module of ours that importing ``name`` runs: itself, or the package holding it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Our modules that ``module`` imports at run time."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from pkg import mod`` imports the submodule; ``from mod import name`` the module.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            targets = []
        for target in targets:
            resolved = _resolve(target) if target.startswith(PACKAGE) else None
            if resolved is not None and resolved != module:
                found.add(resolved)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def walk(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = walk(start)
            if cycle:
                return cycle
    return None


def test_the_graph_walk_finds_a_cycle_and_a_clean_graph() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_imports_but_not_type_checking_ones() -> None:
    # web.app imports the keeper only for its types; the CLI's commands import it lazily.
    assert "watchkeeper.keeper" not in GRAPH["watchkeeper.web.app"]
    assert "watchkeeper.keeper" in GRAPH["watchkeeper.cli.agent"]
    assert "watchkeeper.demo.runner" in GRAPH["watchkeeper.cli.intro"]


def test_no_import_cycle_in_src() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_core_imports_no_screen() -> None:
    def is_screen(module: str) -> bool:
        return module.startswith(SCREENS)

    arrows = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if not is_screen(module)
        for target in targets
        if is_screen(target)
    ]
    assert arrows == []


def test_the_demo_does_not_import_the_cli() -> None:
    demo = [m for m in GRAPH if m.startswith("watchkeeper.demo")]
    assert [(m, t) for m in demo for t in GRAPH[m] if t.startswith("watchkeeper.cli")] == []


def test_the_ports_watcher_and_the_cli_use_only_the_scanners_face() -> None:
    users = ["watchkeeper.watchers.ports", "watchkeeper.cli.scan", "watchkeeper.web.details"]
    inner = [(u, t) for u in users for t in GRAPH[u] if t.startswith("watchkeeper.scan.")]
    assert inner == []


def _import_alone(module: str) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return module, (done.stderr or done.stdout).strip()[-500:] if done.returncode else ""


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    with ThreadPoolExecutor(4) as pool:
        importable = sorted(m for m in MODULES if m != "watchkeeper.__main__")  # it runs the CLI
        failures = {m: e for m, e in pool.map(_import_alone, importable) if e}
    assert failures == {}
