"""Google's Gemini API (generativelanguage.googleapis.com, ``v1beta``).

``POST {base_url}/models/{model}:generateContent`` with the key in the
``x-goog-api-key`` header — never the ``?key=`` query parameter: URLs end up in logs.

Params map into the request as Gemini names them, snake_case or camelCase alike:
``max_tokens``/``max_completion_tokens``/``max_output_tokens`` → ``maxOutputTokens``,
``stop`` → ``stopSequences``, ``thinking_budget``/``include_thoughts``/
``thinking_level`` (or ``reasoning_effort``) → ``generationConfig.thinkingConfig``;
``safety_settings``, ``tools``, ``tool_config`` and ``cached_content`` go to the top
level; a ``generation_config`` table merges in as is; every other key goes into
``generationConfig`` (temperature, top_p, top_k, seed, ...), where the API rejects
what it does not know with a 400 (``invalid_request``). Thought summaries come back
only with ``include_thoughts = true``.

In the answer, parts with ``thought: true`` are the reasoning, the others the text.
``candidatesTokenCount`` excludes thinking, which Google bills as output, so the
normalized output is ``candidatesTokenCount + thoughtsTokenCount``. A prompt blocked
by safety filters is an answer with no text and ``finish_reason = "blocked:REASON"``.

Errors: Google's envelope ``{"error": {"code", "message", "status", "details"}}``;
the wait a 429 demands is ``details[].retryDelay`` of a ``google.rpc.RetryInfo``. A 429
with a ``google.rpc.QuotaFailure`` detail names a project quota that is used up: it is
provider-wide (every request waits); one without is this request's alone. A bad
key is a 400 with ``ErrorInfo.reason = "API_KEY_INVALID"``: classified as ``auth``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from rollwatch.config import RESERVED_PARAMS, camel_case
from rollwatch.errors import ProviderError
from rollwatch.providers.base import (
    STREAM_UNSUPPORTED,
    Headers,
    Parsed,
    Prompt,
    Usage,
    WireRequest,
    as_dict,
    bad_response,
    classify_error,
    classify_status,
    error_message,
    loads,
    model_ids,
    token_count,
)
from rollwatch.providers.retry import google_retry_delay, parse_retry_after

_ALIASES = {
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "max_output_tokens": "maxOutputTokens",
    "stop": "stopSequences",
    "n": "candidateCount",
}
_THINKING = {
    "thinking_budget": "thinkingBudget",
    "include_thoughts": "includeThoughts",
    "thinking_level": "thinkingLevel",
    "reasoning_effort": "thinkingLevel",
}
_TOP_LEVEL = {"safetySettings", "tools", "toolConfig", "cachedContent", "labels"}
_RESERVED = RESERVED_PARAMS["gemini"]


class GeminiAdapter:
    """The generateContent wire format (see the module docstring)."""

    kind = "gemini"

    def build(self, model: str, prompt: Prompt, params: Mapping[str, Any], system: str | None) -> WireRequest:
        """``{"contents", "systemInstruction"?, "generationConfig"?, top-level params}``."""
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt.text}]}]}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        thinking: dict[str, Any] = {}
        for key, value in params.items():
            if key in _THINKING:
                thinking[_THINKING[key]] = value
                continue
            name = _ALIASES.get(key) or camel_case(key)
            if name in _RESERVED:
                raise ProviderError("invalid_request", f"params may not set {key}: rollwatch sets it")
            if key == "stream":
                if value:
                    raise ProviderError("invalid_request", STREAM_UNSUPPORTED)
                continue
            if name == "generationConfig":
                if not isinstance(value, Mapping):
                    raise ProviderError("invalid_request", "params.generation_config must be a table")
                config.update(value)
            elif name in _TOP_LEVEL:
                body[name] = value
            elif name == "stopSequences" and isinstance(value, str):
                config[name] = [value]
            else:
                config[name] = value
        if thinking:
            merged = dict(config.get("thinkingConfig") or {})
            merged.update(thinking)
            config["thinkingConfig"] = merged
        if config:
            body["generationConfig"] = config
        path = f"/models/{quote(model.removeprefix('models/'), safe='-._~')}:generateContent"
        return WireRequest(path, body)

    def models_request(self) -> WireRequest:
        """``GET /models``, one page as large as the API allows."""
        return WireRequest("/models?pageSize=1000", {})

    def parse_models(self, data: Any) -> list[str]:
        """``{"models": [{"name": "models/ID"}, ...]}``: the ids without ``models/``."""
        return [m.removeprefix("models/") for m in model_ids(data, "models", "name")]

    def auth_headers(self, key: str) -> dict[str, str]:
        """``x-goog-api-key: KEY`` (a header, so the key never reaches a URL)."""
        return {"x-goog-api-key": key}

    def parse(self, data: Any, headers: Headers) -> Parsed:
        """The first candidate's parts, finish reason and usage metadata."""
        if not isinstance(data, dict):
            raise bad_response("the body is not a JSON object")
        meta = as_dict(data.get("usageMetadata"))
        thoughts = token_count(meta, "thoughtsTokenCount")
        usage = Usage(
            input_tokens=token_count(meta, "promptTokenCount"),
            output_tokens=token_count(meta, "candidatesTokenCount") + thoughts,
            reasoning_tokens=thoughts,
            cached_tokens=token_count(meta, "cachedContentTokenCount", may_be_unknown=True),
        )
        request_id = _str(data.get("responseId")) or headers.get("x-request-id")
        model = _str(data.get("modelVersion"))
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = data.get("promptFeedback")
            reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
            if reason:
                return Parsed("", None, f"blocked:{reason}", usage, request_id, model)
            if "error" in data:
                message = f"an error body with status 200: {error_message(json.dumps(data).encode())}"
                kind, retryable = classify_error(as_dict(data["error"])) or ("bad_response", True)
                raise ProviderError(kind, message, retryable=retryable)
            raise bad_response("the body has no candidates")
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            raise bad_response("candidates[0] is not an object")
        content = candidate.get("content") or {}
        if not isinstance(content, dict):
            raise bad_response("candidates[0].content is not an object")
        parts = content.get("parts") or []  # absent when the answer is empty (MAX_TOKENS)
        if not isinstance(parts, list):
            raise bad_response("candidates[0].content.parts is not a list")
        if not parts and not candidate.get("finishReason"):
            # Empty with no reason why (as a blocked or cut-off answer has): no answer.
            raise bad_response("candidates[0] is empty: no parts and no finishReason")
        texts: list[str] = []
        reasoning: list[str] = []
        for part in parts:
            if not isinstance(part, dict):
                raise bad_response("a part is not an object")
            text = part.get("text")
            if isinstance(text, str):
                (reasoning if part.get("thought") is True else texts).append(text)
        return Parsed(
            text="".join(texts),
            reasoning="".join(reasoning) or None,
            finish_reason=_str(candidate.get("finishReason")),
            usage=usage,
            request_id=request_id,
            model=model,
        )

    def error(self, status: int, headers: Headers, body: bytes, now: float) -> ProviderError:
        """Classified by status (a bad key's 400 as ``auth``); the wait from RetryInfo."""
        kind, retryable = classify_status(status)
        try:
            data = loads(body)
        except ValueError:
            data = None
        if status == 400 and _reason(data) == "API_KEY_INVALID":
            kind, retryable = "auth", False
        wait = google_retry_delay(data)
        if wait is None:
            wait = parse_retry_after(headers, now)
        return ProviderError(
            kind,
            error_message(body),
            status=status,
            retryable=retryable,
            retry_after=wait,
            provider_wide=status == 429 and retryable and _has_detail(data, "google.rpc.QuotaFailure"),
        )

    def pause_hint(self, headers: Headers, now: float) -> float | None:
        """None: Gemini sends no rate-limit headers on success."""
        return None


def _reason(data: Any) -> str | None:
    """``ErrorInfo.reason`` in a Google error body."""
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    for d in (err.get("details") if isinstance(err, dict) else None) or []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            reason = d.get("reason")
            return reason if isinstance(reason, str) else None
    return None


def _has_detail(data: Any, type_suffix: str) -> bool:
    """Whether a Google error body carries a detail of this ``@type``."""
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    return isinstance(details, list) and any(
        isinstance(d, dict) and str(d.get("@type", "")).endswith(type_suffix) for d in details
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
