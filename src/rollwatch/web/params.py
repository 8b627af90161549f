"""Query parameters, parsed strictly, for every route.

A typo or a malformed value is a 400 naming the parameter, never a silent default
and never a 500: integers are ASCII digits only (``str.isdigit`` and ``int`` both
accept digits such as "²" or "٣", which ``int`` then refuses or reads in ways a
client did not mean), bounded, and at most 19 digits long before any conversion.
"""

from __future__ import annotations

import math
import re

from starlette.requests import Request

from rollwatch.errors import BadRequest

_INTEGER = re.compile(r"[0-9]{1,19}", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?", re.ASCII)


def _show(raw: str) -> str:
    return repr(raw[:40] + ("…" if len(raw) > 40 else ""))


def query(request: Request, allowed: set[str], *, strict: bool = True) -> dict[str, str]:
    """The query parameters; unknown ones refused when ``strict``, repeated ones always."""
    params: dict[str, str] = {}
    for k, v in request.query_params.multi_items():
        if k not in allowed:
            if not strict:
                continue
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown query parameter {k[:40]!r} (known: {known})")
        if k in params:
            raise BadRequest(f"query parameter {k!r} is given more than once")
        params[k] = v
    return params


def integer(params: dict[str, str], name: str, lo: int, hi: int, default: int | None = None) -> int:
    """``params[name]`` as an integer from ``lo`` to ``hi``: plain ASCII digits, no sign,
    no spaces, at most 19 digits; ``default`` when absent (required when None)."""
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing query parameter {name!r} (an integer from {lo} to {hi})")
        return default
    if not _INTEGER.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name}: expected an integer from {lo} to {hi}, got {_show(raw)}")
    return int(raw)


def seconds(params: dict[str, str], name: str, default: float, lo: float, hi: float) -> float:
    """``params[name]`` as a number of seconds from ``lo`` to ``hi`` (ASCII decimal)."""
    raw = params.get(name)
    if raw is None:
        return default
    v = float(raw) if _NUMBER.fullmatch(raw) else math.nan
    if not (math.isfinite(v) and lo <= v <= hi):
        raise BadRequest(f"{name}: expected a number of seconds from {lo:g} to {hi:g}, got {_show(raw)}")
    return v


def boolean(params: dict[str, str], name: str) -> bool:
    """``params[name]`` as a flag: present and empty, 1/true/yes, or 0/false/no."""
    raw = params.get(name)
    if raw is None:
        return False
    low = raw.lower()
    if low in ("1", "true", "yes", ""):
        return True
    if low in ("0", "false", "no"):
        return False
    raise BadRequest(f"{name}: expected true or false, got {_show(raw)}")
