"""Comparing a program's output with the expected one, outside the sandbox.

Exact mode: equal line by line once each line's trailing whitespace, ``\\r`` line
ends and trailing empty lines are ignored. Tolerance mode: equal token by token
(whitespace-separated); where the expected token is a number, the output's token
must be a number within ``tolerance`` of it, absolutely or relative to its size
(``|got - want| <= tolerance * max(1, |want|)``); ``nan`` matches only ``nan`` and
an infinity only the same infinity.
"""

from __future__ import annotations

import math

__all__ = ["compare_output"]


def _show(s: str, limit: int = 80) -> str:
    return repr(s if len(s) <= limit else s[:limit] + "…")


def _text(data: bytes) -> str:
    """``data`` as text, each byte that is not UTF-8 a character of its own (a lone surrogate).

    Decoded with "replace", every invalid byte became the same U+FFFD: an expected output
    that is not UTF-8 (Latin-1 "café", say) matched any invalid byte in its place, and a
    literal U+FFFD."""
    return data.decode("utf-8", "surrogateescape")


def _lines(data: bytes) -> list[str]:
    lines = [ln.rstrip() for ln in _text(data).replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _number(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def compare_output(got: bytes, expected: bytes, tolerance: float | None = None) -> str | None:
    """None when ``got`` matches ``expected``; else where and how they first differ."""
    if tolerance is None:
        want_lines, got_lines = _lines(expected), _lines(got)
        for i, (w, g) in enumerate(zip(want_lines, got_lines, strict=False), 1):
            if w != g:
                return f"line {i}: expected {_show(w)}, got {_show(g)}"
        if len(got_lines) != len(want_lines):
            return f"{len(got_lines)} lines of output, expected {len(want_lines)}"
        return None
    want_tokens = _text(expected).split()
    got_tokens = _text(got).split()
    for i, (w, g) in enumerate(zip(want_tokens, got_tokens, strict=False), 1):
        if w == g:
            continue
        wf = _number(w)
        if wf is None:
            return f"token {i}: expected {_show(w)}, got {_show(g)}"
        gf = _number(g)
        if gf is None:
            return f"token {i}: expected the number {_show(w)}, got {_show(g)}"
        if math.isnan(wf) or math.isnan(gf) or math.isinf(wf) or math.isinf(gf):
            same = (math.isnan(wf) and math.isnan(gf)) or wf == gf
        else:
            same = abs(gf - wf) <= tolerance * max(1.0, abs(wf))
        if not same:
            return f"token {i}: expected {w}, got {g} (tolerance {tolerance:g})"
    if len(got_tokens) != len(want_tokens):
        return f"{len(got_tokens)} tokens of output, expected {len(want_tokens)}"
    return None
