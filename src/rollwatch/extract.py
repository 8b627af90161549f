"""Code from an answer: which fenced block, and why."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
_PY = {"", "python", "py", "python3", "py3"}


@dataclass(frozen=True)
class Extraction:
    """The code taken from an answer and how it was chosen."""

    code: str
    method: str
    """fenced-entry-point, fenced-last, whole-text or none."""
    blocks: int


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code(text: str, entry_point: str | None = None) -> Extraction:
    """The block that defines ``entry_point``, else the last Python block, else the whole
    text when it parses as Python, else nothing."""
    blocks = [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _PY]
    if blocks:
        if entry_point:
            pat = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
            for b in reversed(blocks):
                if pat.search(b):
                    return Extraction(b, "fenced-entry-point", len(blocks))
        return Extraction(blocks[-1], "fenced-last", len(blocks))
    if text.strip() and _parses(text):
        return Extraction(text, "whole-text", 0)
    return Extraction("", "none", 0)
