"""The package's shape: no import cycles, every module importable on its own."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "rollwatch"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every rollwatch module ``name`` imports, at any depth, outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif base in modules:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


LAYERS = [
    "cli",
    "daemon",
    "readmodels",
    "runs",
    "publication",
    "integrity",
    "web",
    "report",
    "scheduler",
    "store",
    "projections",
    "providers",
    "scoring",
    "work",
    "abc",
    "problems",
    "metrics",
    "config",
    "log",
    "events",
    "errors",
]
"""The layout the README draws, top to bottom (its "Design notes"): each package or module
imports only from those below it."""


def _layer(module: str) -> str | None:
    top = module.split(".")[1] if "." in module else None
    return top if top in LAYERS else None


def layer_violations(graph: dict[str, set[str]], layers: list[str]) -> list[tuple[str, str]]:
    """Every import (module, imported) that points up ``layers`` or across to a module not below."""
    out = []
    for name, deps in graph.items():
        a = _layer(name)
        for dep in deps:
            b = _layer(dep)
            if a is not None and b is not None and a != b and layers.index(b) < layers.index(a):
                out.append((name, dep))
    return sorted(out)


class TestLayout:
    def test_no_import_cycles(self) -> None:
        """No two rollwatch modules import each other, directly or through others
        (imports inside functions count; ``if TYPE_CHECKING`` imports do not)."""
        assert _cycles(import_graph()) == []

    def test_imports_point_down_the_readmes_layout(self) -> None:
        """Every import between the packages and modules the README's layout lists points
        down that list (imports inside functions count; ``if TYPE_CHECKING`` ones do not)."""
        assert layer_violations(import_graph(), LAYERS) == []

    def test_an_import_up_the_layout_is_found(self) -> None:
        """The check above can fail: with the console's package listed below the report, the
        console's import of the report is named."""
        moved = [layer for layer in LAYERS if layer != "web"]
        moved.insert(moved.index("scoring") + 1, "web")
        assert ("rollwatch.web.console", "rollwatch.report.failures") in layer_violations(
            import_graph(), moved
        )

    def test_the_cycle_finder_finds_cycles(self) -> None:
        """The check above can fail: a two-module and a three-module cycle are found."""
        graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
        assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]

    @pytest.mark.parametrize("name", sorted(n for n in _modules() if not n.endswith("__main__")))
    def test_every_module_imports_alone(self, name: str) -> None:
        """Each module imports in a fresh interpreter with nothing imported before it."""
        # The sandbox programs run as scripts inside the sandbox; importing them is enough.
        subprocess.run([sys.executable, "-c", f"import {name}"], check=True, timeout=60)

    def test_every_event_type_is_registered_whatever_is_imported_first(self) -> None:
        """Importing only ``rollwatch.events`` registers every event type, checkpoints included."""
        code = "import rollwatch.events as e; print(sorted(e.event_types()))"
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        assert "CheckpointSigned" in out
        importlib.import_module("rollwatch.integrity.checkpoint")
