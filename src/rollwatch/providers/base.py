"""The provider layer's interfaces and normalized types.

Every adapter (``openai.py``, ``anthropic.py``, ``gemini.py``, ``reference.py``) maps
one vendor's wire format onto the same :class:`Answer`; :class:`ProviderClient`
(``client.py``) wraps an adapter with limits, retries and the attempt log. Adapters
never import each other, and none of them touches the network: the client sends
what an adapter builds and hands back what came in.

Token accounting is normalized the same way for every vendor, so that cost and
reports compare across them:

* ``input_tokens`` — every prompt token, cached ones included (OpenAI's
  ``prompt_tokens``, Gemini's ``promptTokenCount``; Anthropic's ``input_tokens``
  plus ``cache_read_input_tokens`` and ``cache_creation_input_tokens``).
* ``cached_tokens`` — the part of ``input_tokens`` read from the provider's cache.
* ``output_tokens`` — every generated token, reasoning included (OpenAI's
  ``completion_tokens``, Anthropic's ``output_tokens``; Gemini's
  ``candidatesTokenCount`` plus ``thoughtsTokenCount``): that is what the vendors bill
  at the output price.
* ``reasoning_tokens`` — the part of ``output_tokens`` spent thinking, where the
  provider says (Anthropic does not: 0 there).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from rollwatch.errors import ProviderError


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one answer (see the module docstring for what each counts)."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """The JSON object stored in ``RolloutResponded.usage``."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cached_tokens": self.cached_tokens,
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """One provider's answer, normalized: what ``RolloutResponded`` records."""

    text: str
    reasoning: str | None
    finish_reason: str | None
    usage: Usage
    request_id: str | None
    latency_ms: float
    model: str | None
    """The model the provider says answered (it may name a dated snapshot): OpenAI's
    ``model``, Anthropic's ``model``, Gemini's ``modelVersion``."""
    system_fingerprint: str | None = None
    """OpenAI's ``system_fingerprint``: the backend configuration that served it."""
    ttft_ms: float | None = None
    """Time to the first token, when the answer was streamed."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a rollout asks: the problem's prompt, an optional system prompt and,
    for the ``reference`` provider only, the problem's reference solution."""

    text: str
    system: str | None = None
    reference_solution: str | None = None


class AnyioClock:
    """Real time: ``time.monotonic`` and ``anyio.sleep``, the default everywhere."""

    def now(self) -> float:
        """Monotonic seconds (only differences matter; cheaper than a backend lookup)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep`` for ``seconds`` (a checkpoint even when 0)."""
        await anyio.sleep(max(0.0, seconds))


@dataclass(slots=True)
class WireRequest:
    """One HTTP request an adapter built: POST ``path`` (relative to base_url) with ``body``.

    ``headers`` never include the key: :meth:`WireAdapter.auth_headers` adds it at send
    time, so that ``body`` and ``headers`` can be recorded and logged as they are.
    """

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Parsed:
    """What an adapter read from a successful response (the client adds latency)."""

    text: str
    reasoning: str | None
    finish_reason: str | None
    usage: Usage
    request_id: str | None
    model: str | None
    system_fingerprint: str | None = None


Headers = Mapping[str, str]
"""Response headers as adapters see them: one plain mapping, names in lower case."""


# --- helpers shared by the adapters --------------------------------------------------

EXCERPT_CHARS = 300

# Vendor key shapes, masked wherever a provider echoes one back (OpenAI's 401 message
# quotes a partly masked key; the exact key is redacted separately, always).
_KEY_SHAPES = re.compile(r"\b(?:sk-[A-Za-z0-9_\-*]{8,}|AIza[0-9A-Za-z_\-]{20,})")


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` and anything shaped like an API key masked."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_SHAPES.sub("[redacted]", text)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def loads(text: bytes | str) -> Any:
    """``json.loads``, where JSON nested too deep to decode (``RecursionError``) is a
    ``ValueError`` like any other body that is not JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep to decode") from None


def error_message(body: bytes) -> str:
    """A short excerpt of a provider's error body: its ``error.message`` when the body is
    the usual JSON envelope (OpenAI, Anthropic and Google all use one), else the text."""
    try:
        data = loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and data:  # Google sometimes wraps the envelope in a list
        data = data[0]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return excerpt(err["message"])
        if isinstance(err, str):
            return excerpt(err)
    return excerpt(body.decode("utf-8", "replace")) or "(empty body)"


def classify_status(status: int) -> tuple[str, bool]:
    """The error ``kind`` and whether it is worth retrying, from the HTTP status alone."""
    if status == 429:
        return "rate_limited", True
    if status in (401, 403):
        return "auth", False
    if status == 402:  # OpenRouter & co.: out of credits; nothing will succeed until topped up
        return "auth", False
    if status == 404:
        return "not_found", False
    if status == 408:
        return "timeout", True
    if status == 409:  # Anthropic documents 409 as transient
        return "server_error", True
    if status in (503, 529):
        return "overloaded", True
    if status >= 500:
        return "server_error", True
    return "invalid_request", False


#: The error words of the three APIs, as the HTTP status each stands for: OpenAI's
#: ``error.code`` (read first: its ``type`` is ``invalid_request_error`` for a bad key
#: too), Anthropic's ``error.type`` and Google's ``error.status``.
_ERROR_WORDS = {
    "invalid_api_key": 401,
    "rate_limit_exceeded": 429,
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def classify_error(err: Mapping[str, Any]) -> tuple[str, bool] | None:
    """The kind of an error object sent where an answer was expected (an error event in a
    stream, an error body with status 200) and whether it is worth retrying: as the HTTP
    status it names (a bad key is ``auth`` however it comes); None when it names none.

    Before, such an error was a retryable ``server_error`` (or ``bad_response``) whatever it
    said: a key revoked mid-stream was retried ``max_attempts`` times by every rollout and
    never disabled the provider."""
    details = err.get("details")
    if isinstance(details, list) and any(
        isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
    ):
        return "auth", False
    code = err.get("code")
    if code == "insufficient_quota":  # billing, not pacing (as a 429 saying it is)
        return "rate_limited", False
    for word in (code, err.get("type"), err.get("status")):
        if isinstance(word, str) and word in _ERROR_WORDS:
            return classify_status(_ERROR_WORDS[word])
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return classify_status(code)
    return None


STREAM_UNSUPPORTED = "params.stream is not for schedules: set stream = true on the provider instead"


def check_params(params: Mapping[str, Any], reserved: frozenset[str]) -> None:
    """Refuse ``[schedules.params]`` that set what the adapter sets itself, or streaming."""
    clash = reserved & params.keys()
    if clash:
        raise ProviderError(
            "invalid_request", f"params may not set {', '.join(sorted(clash))}: rollwatch sets them"
        )
    if params.get("stream"):
        raise ProviderError("invalid_request", STREAM_UNSUPPORTED)


def as_int(value: Any) -> int:
    """An integer from a body field that may be missing or null (else 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


#: More tokens than this in one answer is no count: past it a float (the cost) is no
#: longer exact, and 10**400 does not fit one at all.
MAX_TOKEN_COUNT = 2**53


def token_count(usage: Mapping[str, Any], name: str, *, may_be_unknown: bool = False) -> int:
    """``usage[name]`` as a token count: 0 when missing or null (a count the provider did
    not give); a float holding a whole number is that number; a retryable ``bad_response``
    for a negative count or one past :data:`MAX_TOKEN_COUNT`, which no answer can have
    (never recorded, never priced).

    A value that is no count at all (a string, a fraction, ``1e999``, a boolean, a list) is
    a ``bad_response`` too, unless ``may_be_unknown``: a count whose loss cannot make the
    cost lower than it is, read as missing (0). Those are the one count of an answer's
    output (OpenAI's ``completion_tokens``, Anthropic's ``output_tokens``: the run's budget
    takes an answer without it as of unknown cost and counts its whole reservation),
    cached tokens (0 of them prices all input at the full price) and reasoning tokens
    (priced as output already). Read as 0 elsewhere, as every such count was until session
    s28, it made the tokens it counts free: a host sending ``"prompt_tokens": "150000"``
    had every answer's input cost nothing, and the budget never knew."""
    raw = usage.get(name)
    if raw is None:
        return 0
    if isinstance(raw, float) and raw.is_integer():
        if not 0 <= raw <= MAX_TOKEN_COUNT:
            raise bad_response(f"usage {name} is not a possible token count: {raw:g}")
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool):
        if may_be_unknown:
            return 0
        raise bad_response(f"usage {name} is not a token count: a JSON {_json_type(raw)}")
    value = raw
    if not 0 <= value <= MAX_TOKEN_COUNT:
        shown = str(value) if abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
        raise bad_response(f"usage {name} is not a possible token count: {shown}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {str: "string", float: "number that is no whole count", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (for optional sub-objects)."""
    return value if isinstance(value, dict) else {}


def bad_response(message: str) -> ProviderError:
    """A retryable ``bad_response`` error: the body did not have the documented shape."""
    return ProviderError("bad_response", message, retryable=True)


def model_ids(data: Any, list_key: str, id_key: str) -> list[str]:
    """The ``id_key`` of every object in ``data[list_key]`` (a model list's page);
    ``bad_response`` when the body has another shape."""
    items = data.get(list_key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise bad_response(f"the model list has no {list_key!r} array")
    return [str(m[id_key]) for m in items if isinstance(m, dict) and isinstance(m.get(id_key), str)]
