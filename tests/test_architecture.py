"""The package's shape: no import cycles, every module importable on its own."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
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


_ALONE = sorted(n for n in _modules() if not n.endswith("__main__"))

_FORK_EACH = r"""
import importlib, json, os, sys, traceback
# The third-party packages first (nothing of ours imports during theirs): each child
# then pays only for our modules. No module of ours may be loaded before the forks.
for dep in sys.argv[3:]:
    importlib.import_module(dep)
prefix = sys.argv[2]
assert not [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")], "imported before"
out = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            msg = "ok"
        except BaseException:
            msg = traceback.format_exc()
        os.write(w, msg.encode()[-8000:])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    out[name] = msg if status == 0 else f"{msg} (exit status {status})"
print(json.dumps(out))
"""

_THIRD_PARTY = [
    "anyio",
    "httpx",
    "apscheduler",
    "structlog",
    "pydantic",
    "click",
    "starlette",
    "uvicorn",
    "asyncpg",
    "cryptography",
    "prometheus_client",
    "jinja2",
    "orjson",
    "msgspec",
]


def _import_each(names: list[str], path: Path, prefix: str, deps: Sequence[str] = ()) -> dict[str, str]:
    """Import each of ``names`` in a process of its own, forked from an interpreter that has
    imported ``deps`` and no module under ``prefix``: what a fresh interpreter importing
    just that module does, at a fraction of an interpreter's start per module."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, json.dumps(names), prefix, *deps],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, str]:
    return _import_each(_ALONE, SRC, prefix="rollwatch", deps=_THIRD_PARTY)


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

    @pytest.mark.parametrize("name", _ALONE)
    def test_every_module_imports_alone(self, name: str, imported_alone: dict[str, str]) -> None:
        """Each module imports in a fresh interpreter with no rollwatch module imported
        before it (see :func:`imported_alone`)."""
        # The sandbox programs run as scripts inside the sandbox; importing them is enough.
        assert imported_alone.get(name) == "ok", imported_alone.get(name, "not tried")

    def test_a_module_that_needs_another_imported_first_is_found(self, tmp_path: Path) -> None:
        """The check above can fail: a module whose import fails alone (it takes a name
        from a module still half-made in an import cycle) is reported, with its error."""
        pkg = tmp_path / "twopart"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("from twopart import b\n")
        (pkg / "a.py").write_text("import twopart.b as b\nVALUE = b.LATE\n")
        (pkg / "b.py").write_text("import twopart.a\nLATE = 1\n")
        got = _import_each(["twopart.a", "twopart.b"], tmp_path, prefix="twopart")
        assert "AttributeError" in got["twopart.a"], got

    def test_every_event_type_is_registered_whatever_is_imported_first(self) -> None:
        """Importing only ``rollwatch.events`` registers every event type, checkpoints included."""
        code = "import rollwatch.events as e; print(sorted(e.event_types()))"
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        assert "CheckpointSigned" in out
        importlib.import_module("rollwatch.integrity.checkpoint")
