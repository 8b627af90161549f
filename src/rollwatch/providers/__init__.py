"""The provider layer: one adapter per wire format behind a shared client.

* ``base`` — the normalized types (:class:`Usage`, :class:`Answer`, :class:`Prompt`)
  and the interfaces (:class:`AttemptLog`, :class:`WireAdapter`, :class:`Clock`);
* ``client`` — :class:`ProviderClient`: limits, retries, cost, the attempt log;
* ``limits`` — concurrency window, request/token rates and the shared pause;
* ``retry`` — the waits providers ask for, and full-jitter backoff;
* ``openai``, ``anthropic``, ``gemini``, ``reference`` — one adapter each.
"""

from __future__ import annotations

from rollwatch.abc import AttemptLog, Clock, WireAdapter
from rollwatch.providers.base import Answer, AnyioClock, Parsed, Prompt, Usage, WireRequest
from rollwatch.providers.client import ADAPTERS, ProviderClient, ProviderStats

__all__ = [
    "ADAPTERS",
    "Answer",
    "AnyioClock",
    "AttemptLog",
    "Clock",
    "Parsed",
    "Prompt",
    "ProviderClient",
    "ProviderStats",
    "Usage",
    "WireAdapter",
    "WireRequest",
]
