"""The exception hierarchy: one module, one tree, every error we raise on purpose in it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import rollwatch.errors as errors_module
from rollwatch.errors import RollwatchError

PKG = Path(__file__).resolve().parents[1] / "src" / "rollwatch"


def _error_classes() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == errors_module.__name__
    ]


class TestErrorTree:
    def test_every_error_descends_from_rollwatch_error_and_says_when_it_is_raised(self) -> None:
        """Each class in rollwatch.errors is a RollwatchError with a "Raised when…" docstring."""
        classes = _error_classes()
        assert len(classes) > 10
        for cls in classes:
            assert issubclass(cls, RollwatchError), cls
            doc = inspect.getdoc(cls) or ""
            assert doc.startswith("Raised ") or cls is RollwatchError, cls

    def test_the_tree_at_the_top_lists_every_error_under_its_parent(self) -> None:
        """The module docstring's tree names every class, indented under its base class."""
        doc = errors_module.__doc__ or ""
        depth: dict[str, int] = {}
        parents: list[str] = []
        for line in doc.splitlines():
            stripped = line.strip().lstrip("│├└─ ").split(" ")[0]
            if not stripped or not stripped[0].isupper() or stripped not in vars(errors_module):
                continue
            level = (len(line) - len(line.lstrip(" │├└─"))) // 4 - 1  # the tree is indented by 4
            depth[stripped] = level
            del parents[level:]
            if parents:
                cls = getattr(errors_module, stripped)
                assert cls.__bases__[0].__name__ == parents[-1], (stripped, parents)
            parents.append(stripped)
        assert sorted(depth) == sorted(c.__name__ for c in _error_classes())

    def test_no_public_exception_class_is_defined_elsewhere(self) -> None:
        """Outside rollwatch.errors, exception classes are private helpers (``_Name``) or
        live in a sandbox program (which cannot import rollwatch)."""
        found = []
        for path in PKG.rglob("*.py"):
            if path.name == "errors.py" or "inside" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    if any(
                        b.endswith(("Error", "Exception", "Failure")) or b in vars(errors_module)
                        for b in bases
                    ):
                        found.append(f"{path.relative_to(PKG)}:{node.name}")
        assert found == []
