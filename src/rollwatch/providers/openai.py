"""OpenAI Chat Completions, and every host that speaks it (DeepSeek, Moonshot/Kimi,
OpenRouter, Together, vLLM, llama.cpp, Ollama), chosen by ``base_url``.

``POST {base_url}/chat/completions`` with ``Authorization: Bearer KEY``. ``params``
pass through verbatim (temperature, max_tokens or max_completion_tokens,
reasoning_effort, seed, top_p, ...): hosts differ in what they accept and the
operator writes params for one provider. Reasoning text is read from
``message.reasoning_content`` (DeepSeek, Moonshot, vLLM, llama.cpp) or
``message.reasoning`` (OpenRouter, Ollama); OpenAI itself returns none.

Rate-limit hints: a 429 whose ``x-ratelimit-*`` window is exhausted (``remaining-… =
0`` with a ``reset-…``) is provider-wide: every request waits for the reset (or the
Retry-After, if longer). Any other 429 waits ``Retry-After``/``retry-after-ms``, else
the shortest reset given, for itself alone. A successful response whose window is
exhausted pauses the provider until that window resets.
A 429 with ``error.code = "insufficient_quota"`` is billing, not pacing: not retryable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
    loads,
    model_ids,
    token_count,
)
from rollwatch.providers.retry import MAX_HONOURED_WAIT, parse_go_duration, parse_retry_after

#: Keys rollwatch sets itself; params may not override them.
_RESERVED = RESERVED_PARAMS["openai"]


class OpenAIAdapter:
    """The Chat Completions wire format (see the module docstring)."""

    kind = "openai"

    def build(self, model: str, prompt: Prompt, params: Mapping[str, Any], system: str | None) -> WireRequest:
        """``{"model", "messages": [system?, user], **params}``."""
        check_params(params, _RESERVED)
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt.text})
        return WireRequest("/chat/completions", {"model": model, "messages": messages, **params})

    def auth_headers(self, key: str) -> dict[str, str]:
        """``Authorization: Bearer KEY``."""
        return {"authorization": f"Bearer {key}"}

    def models_request(self) -> WireRequest:
        """``GET /models`` (OpenAI and every compatible host we know of: vLLM,
        llama.cpp, Ollama, OpenRouter, DeepSeek)."""
        return WireRequest("/models", {})

    def parse_models(self, data: Any) -> list[str]:
        """``{"data": [{"id": ...}, ...]}``."""
        return model_ids(data, "data", "id")

    def parse(self, data: Any, headers: Headers) -> Parsed:
        """The first choice's message, finish reason and usage."""
        if not isinstance(data, dict):
            raise bad_response("the body is not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            if "error" in data:  # OpenRouter may send an error with status 200
                raise _body_error(data)
            raise bad_response("the body has no choices")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise bad_response("choices[0] has no message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise bad_response("choices[0].message.content is not a string")
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        usage = as_dict(data.get("usage"))
        prompt_details = as_dict(usage.get("prompt_tokens_details"))
        completion_details = as_dict(usage.get("completion_tokens_details"))
        return Parsed(
            text=content or "",
            reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
            finish_reason=_str(choice.get("finish_reason")),
            usage=Usage(
                input_tokens=token_count(usage, "prompt_tokens"),
                output_tokens=token_count(usage, "completion_tokens", may_be_unknown=True),
                reasoning_tokens=token_count(completion_details, "reasoning_tokens", may_be_unknown=True),
                cached_tokens=token_count(prompt_details, "cached_tokens", may_be_unknown=True),
            ),
            request_id=headers.get("x-request-id") or _str(data.get("id")),
            model=_str(data.get("model")),
            system_fingerprint=_str(data.get("system_fingerprint")),
        )

    def error(self, status: int, headers: Headers, body: bytes, now: float) -> ProviderError:
        """Classified by status; the wait from Retry-After or the exhausted window."""
        kind, retryable = classify_status(status)
        message = error_message(body)
        if status == 429 and _error_code(body) == "insufficient_quota":
            retryable = False
        wait = parse_retry_after(headers, now)
        exhausted = _exhausted_reset(headers, only_exhausted=True) if status == 429 else None
        if exhausted is not None:
            wait = max(wait or 0.0, exhausted)
        elif wait is None and status == 429:
            wait = _exhausted_reset(headers, only_exhausted=False)
        return ProviderError(
            kind,
            message,
            status=status,
            retryable=retryable,
            retry_after=wait,
            provider_wide=exhausted is not None and retryable,
        )

    def pause_hint(self, headers: Headers, now: float) -> float | None:
        """The reset time of a rate-limit window that this response left empty."""
        return _exhausted_reset(headers, only_exhausted=True)


def _exhausted_reset(headers: Headers, *, only_exhausted: bool) -> float | None:
    """The longest reset among exhausted windows; failing that (``only_exhausted`` off,
    on a 429 where the server did not say which window), the shortest reset given."""
    resets: list[float] = []
    exhausted: list[float] = []
    for window in ("requests", "tokens"):
        reset = parse_go_duration(headers.get(f"x-ratelimit-reset-{window}"))
        if reset is None:
            continue
        reset = min(reset, MAX_HONOURED_WAIT)  # "100000h" or a 400-digit inf: nonsense
        resets.append(reset)
        if headers.get(f"x-ratelimit-remaining-{window}", "").strip() == "0":
            exhausted.append(reset)
    if exhausted:
        return max(exhausted)
    if resets and not only_exhausted:
        return min(resets)
    return None


def _error_code(body: bytes) -> str | None:
    try:
        err = loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return err.get("code") if isinstance(err, dict) else None


def _body_error(data: dict[str, Any]) -> ProviderError:
    err = as_dict(data.get("error"))
    code = err.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 else None
    kind, retryable = classify_error(err) or ("bad_response", True)
    message = error_message(json.dumps(data).encode())
    return ProviderError(kind, message, status=status, retryable=retryable)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
