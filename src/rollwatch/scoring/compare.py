"""Comparing a program's output with the expected one, outside the sandbox.

Exact mode: equal line by line once each line's trailing ASCII whitespace, ``\\r`` line
ends and trailing empty lines are ignored. Tolerance mode: equal token by token
(separated by ASCII whitespace); where the expected token is a number, the output's token
must be a number within ``tolerance`` of it, absolutely or relative to its size
(``|got - want| <= tolerance * max(1, |want|)``); ``nan`` matches only ``nan`` and
an infinity only the same infinity. Integers are read exactly (not as 53-bit floats), and a
number too large for a float, not written as an infinity, only as the same text.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["compare_output"]


def _cut(s: str, limit: int = 80) -> str:
    return s if len(s) <= limit else s[:limit] + "…"


def _show(s: str, limit: int = 80) -> str:
    return repr(_cut(s, limit))


def _text(data: bytes) -> str:
    """``data`` as text, each byte that is not UTF-8 a character of its own (a lone surrogate).

    Decoded with "replace", every invalid byte became the same U+FFFD: an expected output
    that is not UTF-8 (Latin-1 "café", say) matched any invalid byte in its place, and a
    literal U+FFFD."""
    return data.decode("utf-8", "surrogateescape")


_SPACE = " \t\r\n\f\v"
"""The whitespace a comparison ignores: ASCII only. str.rstrip() and str.split() took Unicode
whitespace and U+001C..U+001F too, so "YES\\x1c" or "YES\\u00a0" matched "YES" (session 32)."""
_TOKEN_SEP = re.compile(f"[{re.escape(_SPACE)}]+")


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN_SEP.split(text) if t]


def _lines(data: bytes) -> list[str]:
    lines = [ln.rstrip(_SPACE) for ln in _text(data).replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _number(token: str) -> float | int | None:
    """The number ``token`` spells, if any: an exact int for an integer (floats hold 53 bits:
    9007199254740993 read as 9007199254740992), and None for a number too large for a float
    but not written as an infinity (both read as inf, so any two such numbers were equal)."""
    if _INTEGER.fullmatch(token) and len(token) <= _INT_DIGITS:
        return int(token)
    if not _FLOAT.fullmatch(token):
        # float() also reads "1_000", "١٠" and "１０" (session 32): not what a judge reads as a number.
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    if math.isinf(value) and not _INFINITY.fullmatch(token):
        return None
    return value


def _close(got: float | int, want: float | int, tolerance: float) -> bool:
    """Whether ``got`` is within ``tolerance`` of ``want`` (see the module's docstring)."""
    if (type(got) is float and not math.isfinite(got)) or (type(want) is float and not math.isfinite(want)):
        return (got != got and want != want) or got == want  # nan only matches nan
    try:
        # int - int stays exact, and an int compared with a float is compared exactly.
        return abs(got - want) <= tolerance * max(1.0, abs(want))
    except OverflowError:  # an int beyond a float's range
        bound = Fraction(tolerance) * max(Fraction(1), abs(Fraction(want)))
        return abs(Fraction(got) - Fraction(want)) <= bound


_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT_DIGITS = 4000
"""Longest integer read as one (Python refuses to read ints of more than 4300 digits);
longer ones are compared as text."""
_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.I)
"""A number as an ASCII decimal float (no digit-group underscores, no non-ASCII digits)."""
_INFINITY = re.compile(r"[+-]?inf(inity)?", re.I)


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
    want_tokens = _tokens(_text(expected))
    got_tokens = _tokens(_text(got))
    for i, (w, g) in enumerate(zip(want_tokens, got_tokens, strict=False), 1):
        if w == g:
            continue
        wf = _number(w)
        if wf is None:
            return f"token {i}: expected {_show(w)}, got {_show(g)}"
        gf = _number(g)
        if gf is None:
            return f"token {i}: expected the number {_show(w)}, got {_show(g)}"
        same = _close(gf, wf, tolerance)
        if not same:
            return f"token {i}: expected {_cut(w)}, got {_cut(g)} (tolerance {tolerance:g})"
    if len(got_tokens) != len(want_tokens):
        return f"{len(got_tokens)} tokens of output, expected {len(want_tokens)}"
    return None
