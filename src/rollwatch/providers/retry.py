"""How long to wait: the waits providers ask for, and our own backoff.

Providers say "wait" in four dialects, all honoured as lower bounds:

* ``Retry-After`` — seconds or an HTTP date (RFC 9110 §10.2.3); OpenAI also sends
  ``retry-after-ms``.
* OpenAI's ``x-ratelimit-reset-requests`` / ``-tokens`` — Go-style durations such as
  ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``.
* Google's ``google.rpc.RetryInfo.retryDelay`` in the error body — a protobuf
  Duration in JSON, decimal seconds with an ``s``: ``"30s"``, ``"45.837906927s"``.

Our own backoff is exponential with full jitter (AWS Architecture Blog, "Exponential
Backoff and Jitter"): a uniform draw in ``[0, min(cap, base·2^(n-1))]``. Full jitter
spreads a burst of retries over the whole window instead of moving it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PROTO_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)s\s*$")

#: A provider's demand above this is treated as nonsense (a clock bug, a date typo).
MAX_HONOURED_WAIT = 24 * 3600.0


def parse_go_duration(value: str | None) -> float | None:
    """Seconds in a Go duration (``"6m0s"``, ``"20ms"``, ``"1.5s"``); None if not one."""
    if not value:
        return None
    text = value.strip()
    pos = 0
    total = 0.0
    for m in _GO_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        return None
    return total


def parse_proto_duration(value: Any) -> float | None:
    """Seconds in a protobuf JSON Duration (``"30s"``, ``"0.5s"``); None if not one."""
    if not isinstance(value, str):
        return None
    m = _PROTO_DURATION.match(value)
    if not m:
        return None
    return max(0.0, float(m.group(1)))


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds demanded by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    ``now`` is the wall-clock epoch time that an HTTP date is measured from.
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return _sane(float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return _sane(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # a 20-digit hour or zone: OverflowError
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "GMT"
        return None
    return _sane(when.timestamp() - now)


def google_retry_delay(data: Any) -> float | None:
    """``retryDelay`` of a ``google.rpc.RetryInfo`` in a decoded Google error body."""
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    if not isinstance(details, list):
        return None
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = parse_proto_duration(d.get("retryDelay"))
            if delay is not None:
                return _sane(delay)
    return None


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """A backoff before retry number ``attempt`` (1 = the first retry): full jitter."""
    ceiling = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, max(0.0, ceiling))


def _sane(seconds: float) -> float | None:
    if seconds != seconds or seconds < 0:  # NaN or in the past: "now"
        return 0.0 if seconds == seconds else None
    return min(seconds, MAX_HONOURED_WAIT)
