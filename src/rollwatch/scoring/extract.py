"""Code from a model's answer: which part was taken, and why.

Rules, in order:

1. Reasoning a model returns inline (``<think>…</think>``) is dropped first: code it
   drafted while thinking is not its answer.
2. Fenced blocks (```` ``` ```` or ``~~~``, of at least three characters) tagged
   ``python``, ``py``, ``python3``, ``py3`` or not tagged at all are candidates; blocks
   tagged with another language (``bash``, ``text``, ``json``…) are not. A block the
   answer never closes (the output was cut off) runs to the end of the text.
3. Among the candidates, the last block that defines the entry point (a top-level
   ``def``/``class``/assignment of that name, in column 0) wins: ``fenced-entry-point``. Else the
   last candidate: ``fenced-last``.
4. Without any candidate block, the whole text when it is at most ``WHOLE_TEXT_MAX``
   characters, parses as Python and is more than a bare expression (so "Sorry." is
   not code): ``whole-text``.
5. Else nothing: ``none``.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Candidate", "Extraction", "ExtractionMethod", "candidates", "code_sha256", "extract_code"]

ExtractionMethod = Literal["fenced-entry-point", "fenced-last", "whole-text", "none"]

_PYTHON_TAGS = {"", "python", "py", "python3", "py3", "pycon3"}
# The info string starts at its first non-blank character: were the blanks before it
# free to go to either part, a line of a fence and 60 KB of spaces that then fails
# (a stray backtick at its end) would take seconds, on the daemon's event loop.
_OPEN = re.compile(r"^(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>(?:[^\n` \t][^\n`]*)?)$")
# Parsing runs on the daemon's event loop, at a few µs a character, and holds the GIL
# (a thread would not help): 1 MB of unfenced code stalled every run and request for
# 4-30 s. Code that long comes fenced.
WHOLE_TEXT_MAX = 64 * 1024
_THINK = re.compile(r"<think(?:ing)?>.*?(?:</think(?:ing)?>|\Z)", re.S | re.I)


@dataclass(frozen=True, slots=True)
class Extraction:
    """The code taken from an answer (None when there is none), how, and out of how many blocks."""

    code: str | None
    method: ExtractionMethod
    blocks: int
    """Python (or untagged) fenced blocks in the answer."""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "blocks": self.blocks}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A code that extraction can take from an answer: one of its fenced blocks, or its whole text."""

    code: str
    whole_text: bool
    span: tuple[int, int] | None
    """Where it lies in the answer as given (offsets of its first and past its last
    character: a block's lines between its fences), or None when extraction read a
    tidied copy (reasoning dropped, CRLF line ends) whose offsets are not the answer's."""


def code_sha256(code: str) -> str:
    """What a verdict records of the code it ran (``detail.code_sha256``): its SHA-256."""
    # surrogatepass: a lone surrogate never reaches the log, but hashing must not raise.
    return "sha256:" + hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


def candidates(text: str) -> list[Candidate]:
    """Every code extraction could take from ``text``: its Python (or untagged) fenced
    blocks in order, then its whole text (reasoning dropped), each with where it lies.

    The console finds the code a verdict ran among these by its hash, or by the rule
    the verdict names (:func:`extract_code` picks among the same blocks)."""
    tidied = _THINK.sub("", text)
    normalized = tidied.replace("\r\n", "\n")
    exact = normalized == text  # offsets in the tidied copy are the answer's own
    lines = normalized.split("\n")
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln) + 1)
    out = []
    for code, first, end, python in _fences(lines):
        if python:
            span = (starts[first], max(starts[first], starts[end] - 1)) if exact else None
            out.append(Candidate(code, False, span))
    out.append(Candidate(tidied, True, (0, len(text)) if tidied == text else None))
    return out


def _blocks(text: str) -> list[str]:
    """The bodies of the Python and untagged fenced blocks, in order."""
    # Only "\n" ends a line: splitlines() would also split code at "\x85" or "\u2028".
    lines = text.replace("\r\n", "\n").split("\n")
    return [code for code, _, _, python in _fences(lines) if python]


def _fences(lines: list[str]) -> Iterator[tuple[str, int, int, bool]]:
    """Each fenced block of ``lines``: its body (de-indented, as code; empty for another
    language's), the index of its first body line and of the line past its last, and
    whether it is Python or untagged."""
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m.group("fence")
        tag = m.group("info").strip().split(maxsplit=1)
        lang = tag[0].lower().lstrip("{.").rstrip("}") if tag else ""
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[i])
            i += 1
        first = i - len(body)
        if i >= len(lines):  # never closed (a cut-off answer): drop the text's final newline
            while body and not body[-1].strip():
                body.pop()
        i += 1  # past the closing fence
        if lang in _PYTHON_TAGS:
            indent = len(m.group("indent"))
            code = "\n".join(ln[indent:] if ln[:indent].isspace() else ln for ln in body) + "\n"
            yield code, first, first + len(body), True
        else:
            yield "", first, first + len(body), False


# One pattern for every name, compiled once: a pattern per entry point costs more to
# compile (~1 ms) than the search, for each problem a process scores.
_DEFINITION = re.compile(
    r"^(?:(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(|class[ \t]+(\w+)\b|(\w+)[ \t]*(?::[^=\n]*)?=(?!=))", re.M
)
_NAME = re.compile(r"\w+")


def _defines(code: str, name: str) -> bool:
    """Whether ``code`` defines ``name`` at its top level (column 0): def, class or assignment.

    Textual on purpose: it also recognizes the intended block when it does not parse,
    and costs nothing next to an ``ast.parse`` of every block.
    """
    if _NAME.fullmatch(name) is None:  # not a plain name: a pattern of its own
        n = re.escape(name)
        pattern = rf"^(?:(?:async[ \t]+)?def[ \t]+{n}[ \t]*\(|class[ \t]+{n}\b|{n}[ \t]*(?::[^=\n]*)?=(?!=))"
        return re.search(pattern, code, re.M) is not None
    if name not in code:
        return False
    return any(name in m.groups() for m in _DEFINITION.finditer(code))


def _is_program(text: str) -> bool:
    """Whether ``text`` parses as Python and is more than a bare expression.

    A text nested deeper than the parser goes (a few KB of ``-`` or ``1 +``) raises
    RecursionError or MemoryError: it is not code either, and the answer's failure
    stays the model's ("no code found"), not a scorer error of ours.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(not isinstance(node, ast.Expr) for node in tree.body)


def extract_code(text: str, entry_point: str | None = None) -> Extraction:
    """The code in ``text`` by the rules of this module's docstring."""
    text = _THINK.sub("", text)
    blocks = _blocks(text)
    if blocks:
        if entry_point:
            for block in reversed(blocks):
                if _defines(block, entry_point):
                    return Extraction(block, "fenced-entry-point", len(blocks))
        return Extraction(blocks[-1], "fenced-last", len(blocks))
    if text.strip() and len(text) <= WHOLE_TEXT_MAX and _is_program(text):
        return Extraction(text, "whole-text", 0)
    return Extraction(None, "none", 0)
