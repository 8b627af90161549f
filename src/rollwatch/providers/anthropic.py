"""Anthropic's Messages API.

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version:
2023-06-01``. The API requires ``max_tokens``: it comes from params (``max_tokens``, or
``max_completion_tokens`` as OpenAI names it), else :data:`DEFAULT_MAX_TOKENS`. Other
params pass through verbatim (temperature, top_p, top_k, stop_sequences, thinking,
...). The system prompt is the top-level ``system`` field.

In the answer, ``text`` blocks are joined into the text and ``thinking`` blocks into
the reasoning (``redacted_thinking`` blocks carry no readable text and are counted
only in usage). ``input_tokens`` counts only the uncached part of the prompt, so the
normalized input is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``; cache writes are billed at the input price here (their
1.25× surcharge is not modelled: rollwatch never asks for caching). Anthropic does not
report thinking tokens apart from output tokens, so ``reasoning_tokens`` is 0.

Rate limits: Anthropic's ``anthropic-ratelimit-{requests,tokens,input-tokens,
output-tokens}-{remaining,reset}`` headers (the reset an RFC 3339 time) are honoured as
OpenAI's ``x-ratelimit-*`` are: a 429 with a window at 0 and its reset is provider-wide
(every request waits for the reset, or ``retry-after`` if longer); any other 429 waits
its ``retry-after`` alone; a success that leaves a window at 0 pauses the provider
until that window resets.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rollwatch.config import RESERVED_PARAMS
from rollwatch.errors import ProviderError
from rollwatch.providers.base import (
    Headers,
    Parsed,
    Prompt,
    Usage,
    WireRequest,
    as_dict,
    bad_response,
    check_params,
    classify_error,
    classify_status,
    error_message,
    excerpt,
    model_ids,
    token_count,
)
from rollwatch.providers.retry import MAX_HONOURED_WAIT, parse_retry_after

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 16000
_RESERVED = RESERVED_PARAMS["anthropic"]
#: The rate-limit windows Anthropic reports, as in ``anthropic-ratelimit-{window}-reset``.
_WINDOWS = ("requests", "tokens", "input-tokens", "output-tokens")


class AnthropicAdapter:
    """The Messages API wire format (see the module docstring)."""

    kind = "anthropic"

    def build(self, model: str, prompt: Prompt, params: Mapping[str, Any], system: str | None) -> WireRequest:
        """``{"model", "max_tokens", "system"?, "messages": [user], **params}``."""
        check_params(params, _RESERVED)
        rest = dict(params)
        max_tokens = rest.pop("max_tokens", None)
        alias = rest.pop("max_completion_tokens", None)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens or alias or DEFAULT_MAX_TOKENS,
        }
        if system:
            body["system"] = system
        body["messages"] = [{"role": "user", "content": prompt.text}]
        body.update(rest)
        return WireRequest("/v1/messages", body, {"anthropic-version": API_VERSION})

    def models_request(self) -> WireRequest:
        """``GET /v1/models``, one page as large as the API allows."""
        return WireRequest("/v1/models?limit=1000", {}, {"anthropic-version": API_VERSION})

    def parse_models(self, data: Any) -> list[str]:
        """``{"data": [{"id": ...}, ...]}``."""
        return model_ids(data, "data", "id")

    def auth_headers(self, key: str) -> dict[str, str]:
        """``x-api-key: KEY``."""
        return {"x-api-key": key}

    def parse(self, data: Any, headers: Headers) -> Parsed:
        """Text and thinking blocks, stop reason and usage."""
        if not isinstance(data, dict):
            raise bad_response("the body is not a JSON object")
        if data.get("type") == "error":
            err = as_dict(data.get("error"))
            message = f"an error body with status 200: {excerpt(str(err.get('message', '')))}"
            kind, retryable = classify_error(err) or ("bad_response", True)
            raise ProviderError(kind, message, retryable=retryable)
        content = data.get("content")
        if not isinstance(content, list):
            raise bad_response("the body has no content list")
        texts: list[str] = []
        thoughts: list[str] = []
        for block in content:
            if not isinstance(block, dict):
                raise bad_response("a content block is not an object")
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
                thoughts.append(block["thinking"])
        usage = as_dict(data.get("usage"))
        cache_read = token_count(usage, "cache_read_input_tokens")
        cache_write = token_count(usage, "cache_creation_input_tokens")
        return Parsed(
            text="".join(texts),
            reasoning="\n\n".join(thoughts) or None,
            finish_reason=_str(data.get("stop_reason")),
            usage=Usage(
                input_tokens=token_count(usage, "input_tokens") + cache_read + cache_write,
                output_tokens=token_count(usage, "output_tokens", may_be_unknown=True),
                reasoning_tokens=0,
                cached_tokens=cache_read,
            ),
            request_id=headers.get("request-id") or _str(data.get("id")),
            model=_str(data.get("model")),
        )

    def error(self, status: int, headers: Headers, body: bytes, now: float) -> ProviderError:
        """Classified by status (529: overloaded); the wait from ``retry-after``, or the
        reset of an exhausted ``anthropic-ratelimit-*`` window (then provider-wide)."""
        kind, retryable = classify_status(status)
        wait = parse_retry_after(headers, now)
        exhausted = _exhausted_reset(headers, now) if status == 429 else None
        if exhausted is not None:
            wait = max(wait or 0.0, exhausted)
        return ProviderError(
            kind,
            error_message(body),
            status=status,
            retryable=retryable,
            retry_after=wait,
            provider_wide=exhausted is not None and retryable,
        )

    def pause_hint(self, headers: Headers, now: float) -> float | None:
        """The reset of an ``anthropic-ratelimit-*`` window this response left at 0."""
        return _exhausted_reset(headers, now)


def _exhausted_reset(headers: Headers, now: float) -> float | None:
    """Seconds until the latest reset among windows with nothing remaining; None if none
    is exhausted (or an exhausted one gives no readable reset)."""
    waits: list[float] = []
    for window in _WINDOWS:
        if headers.get(f"anthropic-ratelimit-{window}-remaining", "").strip() != "0":
            continue
        reset = _rfc3339(headers.get(f"anthropic-ratelimit-{window}-reset"))
        if reset is not None:
            waits.append(min(MAX_HONOURED_WAIT, max(0.0, reset - now)))
    return max(waits) if waits else None


def _rfc3339(value: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time (``2025-01-01T00:00:00Z``); None if not one."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:  # a time without a zone cannot be placed: ignore it
        return None
    return when.timestamp()


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
