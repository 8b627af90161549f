"""Code from a model's answer: which part was taken, and why.

Rules, in order:

0. An answer longer than ``EXTRACT_MAX`` characters has no code: ``none``.
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
import functools
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
_OPEN = re.compile(r"(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>(?:[^\n` \t][^\n`]*)?)")
"""A whole line that opens a fence (``fullmatch`` over the line)."""
# Parsing runs on the daemon's event loop, at a few µs a character, and holds the GIL
# (a thread would not help): 1 MB of unfenced code stalled every run and request for
# 4-30 s. Code that long comes fenced.
WHOLE_TEXT_MAX = 64 * 1024
EXTRACT_MAX = 4 * 1024 * 1024
"""Longest answer (in characters) extraction reads; a longer one has no code (``none``).

A provider may send tens of MB (its client takes bodies up to 64 MiB): a 32 MB answer of
short lines took 19-27 s of the daemon's event loop to extract from, and even a linear
pass over it holds the GIL for seconds in single calls (a pattern over the whole text).
No answer of a few MB of code is written by hand: past this it is a degenerate output."""
_RUN = re.compile("```|~~~")
"""Three fence characters in a row: only the lines holding them are looked at."""
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
    if len(text) > EXTRACT_MAX:
        return [Candidate(text, True, (0, len(text)))]
    tidied = _THINK.sub("", text)
    normalized = tidied.replace("\r\n", "\n")
    exact = normalized == text  # offsets in the tidied copy are the answer's own
    return [
        Candidate(code, False, span if exact else None)
        for code, span, python in _fences(normalized)
        if python
    ] + [Candidate(tidied, True, (0, len(text)) if tidied == text else None)]


def _blocks(text: str) -> list[str]:
    """The bodies of the Python and untagged fenced blocks, in order."""
    return [code for code, _, python in _fences(text.replace("\r\n", "\n")) if python]


def _fences(text: str) -> Iterator[tuple[str, tuple[int, int], bool]]:
    """Each fenced block of ``text``: its body (de-indented, as code; empty for another
    language's), where the body lies (the offsets of its first line's start and of its
    last line's end), and whether it is Python or untagged.

    Only "\\n" ends a line (``splitlines()`` would also split code at "\\x85" or
    "\\u2028"). Only the lines holding three fence characters in a row (and, in a block,
    its whole fence) are looked at, found by searches in C: a line-by-line walk (or a
    pattern anchored at every line's start) took seconds for a few MB of short lines, and
    the closing fence's check once built a string as long as the fence for every line of
    the body (142 s for 2 M backticks over 2 M empty lines, on the daemon's event loop).
    """
    n = len(text)
    pos = 0  # always the start of a line
    while pos <= n:
        hit = _RUN.search(text, pos)
        if hit is None:
            return
        at = hit.start()
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        end = n if end < 0 else end
        pos = end + 1
        m = _OPEN.fullmatch(text, start, end) if at - start <= 3 else None
        if m is None:
            continue
        fence = m.group("fence")
        char = fence[0]
        tag = m.group("info").strip().split(maxsplit=1)
        lang = tag[0].lower().lstrip("{.").rstrip("}") if tag else ""
        first = pos
        # The closing fence: a line of the fence's character only (at least as many),
        # blanks around it.
        closing = -1
        at = first
        while at <= n:
            found = text.find(fence, at)
            if found < 0:
                break
            line_start, line_end = _line(text, found)
            if not text[line_start:line_end].strip().strip(char):
                closing, pos = line_start, line_end + 1
                break
            at = line_end + 1
        if closing >= 0:
            last = max(first, closing - 1)
        else:  # never closed (a cut-off answer): the body ends at its last line that is not blank
            pos = n + 1
            kept = len(text.rstrip())
            last = first if kept <= first else _line(text, kept - 1)[1]
        if lang not in _PYTHON_TAGS:
            yield "", (first, last), False
            continue
        body = text[first:last]
        indent = len(m.group("indent"))
        if indent:
            body = "\n".join(ln[indent:] if ln[:indent].isspace() else ln for ln in body.split("\n"))
        yield body + "\n", (first, last), True


def _line(text: str, at: int) -> tuple[int, int]:
    """The offsets of the start of the line holding ``at`` and of its end (its "\\n", or the text's end)."""
    end = text.find("\n", at)
    return text.rfind("\n", 0, at) + 1, len(text) if end < 0 else end


@functools.lru_cache(maxsize=256)
def _definition(name: str) -> re.Pattern[str]:
    """What defines ``name`` at the start of a line (after its "\\n"): def, class or assignment.

    One pattern per name (compiled once: ~1 ms, more than a search costs), led by the
    literal "\\n" so that a search skips from line to line in C: a pattern anchored by
    ``^`` is tried at every character, ~0.2 s a MB of short lines in one call that holds
    the GIL.
    """
    n = re.escape(name)
    return re.compile(
        rf"\n(?:(?:async[ \t]+)?def[ \t]+{n}[ \t]*\(|class[ \t]+{n}\b|{n}[ \t]*(?::[^=\n]*)?=(?!=))"
    )


def _defines(code: str, name: str) -> bool:
    """Whether ``code`` defines ``name`` at its top level (column 0): def, class or assignment.

    Textual on purpose: it also recognizes the intended block when it does not parse,
    and costs nothing next to an ``ast.parse`` of every block.
    """
    return name in code and _definition(name).search("\n" + code) is not None


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
    if len(text) > EXTRACT_MAX:
        return Extraction(None, "none", 0)
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
