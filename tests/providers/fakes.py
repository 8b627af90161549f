"""Real-shaped bodies of each wire format, and an attempt log that records everything.

The bodies follow the vendors' API references (OpenAI Chat Completions, Anthropic
Messages, Gemini generateContent), including the fields rollwatch ignores, so that a
parser that trips over an unexpected field fails here first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from rollwatch.errors import ProviderError
from rollwatch.providers import Answer, Usage
from tests.providers.loopback import Reply, Seen

KEY = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0-SECRET"
"""The API key every test provider uses; it must never show up anywhere but the
request headers."""

KEY_ENV = "ROLLWATCH_TEST_PROVIDER_KEY"


# --- the wire formats ------------------------------------------------------------------


class OpenAIWire:
    kind = "openai"
    usage = Usage(input_tokens=120, output_tokens=300, reasoning_tokens=200, cached_tokens=100)

    def path(self, model: str) -> str:
        return "/chat/completions"

    def key_of(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None

    def prompt_of(self, body: dict[str, Any]) -> str:
        return str(body["messages"][-1]["content"])

    def ok(self, text: str = "def f():\n    return 1", reasoning: str | None = None) -> Reply:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": [],
        }
        if reasoning is not None:
            message["reasoning_content"] = reasoning  # DeepSeek / vLLM style
        return Reply(
            200,
            {
                "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                "object": "chat.completion",
                "created": 1741569952,
                "model": "gpt-5-2025-08-07",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 120,
                    "completion_tokens": 300,
                    "total_tokens": 420,
                    "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
                    "completion_tokens_details": {
                        "reasoning_tokens": 200,
                        "audio_tokens": 0,
                        "accepted_prediction_tokens": 0,
                        "rejected_prediction_tokens": 0,
                    },
                },
                "service_tier": "default",
                "system_fingerprint": None,
            },
            {"x-request-id": "req_openai_123", "openai-processing-ms": "100"},
        )

    request_id = "req_openai_123"
    model_echo = "gpt-5-2025-08-07"
    finish = "stop"

    def sse(self, text: str = "def f():\n    return 1", reasoning: str | None = None) -> Reply:
        """The same answer as ``ok``, streamed: deltas, a usage chunk, ``[DONE]``."""
        base = {"id": "chatcmpl-B9MBs8", "object": "chat.completion.chunk", "model": self.model_echo}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if reasoning is not None:
            deltas.append({"reasoning_content": reasoning})
        half = len(text) // 2
        deltas += [{"content": text[:half]}, {"content": text[half:]}]
        events: list[Any] = [
            {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = self.ok().body["usage"]
        events.append({**base, "choices": [], "usage": usage})
        events.append("[DONE]")
        return _sse(events, {"x-request-id": self.request_id})

    def error(self, status: int, message: str, code: str | None = None) -> Reply:
        return Reply(
            status,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error" if status < 500 else "server_error",
                    "param": None,
                    "code": code,
                }
            },
            {"x-request-id": "req_openai_err"},
        )

    def rate_limited(self, wait: float) -> Reply:
        """A 429 for this request alone: Retry-After, and budget left in every window."""
        reply = self.error(
            429,
            "Rate limit reached for gpt-5 on requests per min (RPM): Limit 500, Used 499.",
            "rate_limit_exceeded",
        )
        reply.headers["retry-after"] = f"{wait:g}"
        reply.headers["x-ratelimit-remaining-requests"] = "1"
        reply.headers["x-ratelimit-reset-requests"] = "120ms"
        return reply

    def exhausted(self, wait: float) -> Reply:
        """A 429 whose request window is at 0 until a reset ``wait`` seconds away."""
        reply = self.error(
            429,
            "Rate limit reached for gpt-5 on requests per min (RPM): Limit 500, Used 500.",
            "rate_limit_exceeded",
        )
        reply.headers["x-ratelimit-limit-requests"] = "500"
        reply.headers["x-ratelimit-remaining-requests"] = "0"
        reply.headers["x-ratelimit-reset-requests"] = f"{wait:g}s"
        reply.headers["x-ratelimit-remaining-tokens"] = "29000"
        reply.headers["x-ratelimit-reset-tokens"] = "10ms"
        return reply


class AnthropicWire:
    kind = "anthropic"
    usage = Usage(input_tokens=150, output_tokens=300, reasoning_tokens=0, cached_tokens=100)
    request_id = "req_011CSHoEeqs5C35K2UUqR7Fy"
    model_echo = "claude-sonnet-4-5-20250929"
    finish = "end_turn"

    def sse(self, text: str = "def f():\n    return 1", reasoning: str | None = None) -> Reply:
        """The same answer as ``ok``, as Messages stream events."""
        whole = self.ok(text, reasoning).body
        start = {**whole, "content": [], "stop_reason": None, "usage": {**whole["usage"], "output_tokens": 1}}
        events: list[Any] = [{"type": "message_start", "message": start}, {"type": "ping"}]
        if reasoning is not None:
            events.append(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": reasoning},
                }
            )
        half = len(text) // 2
        for piece in (text[:half], text[half:]):
            events.append(
                {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": piece}}
            )
        events.append(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 300}}
        )
        events.append({"type": "message_stop"})
        return _sse(events, {"request-id": self.request_id}, named=True)

    def path(self, model: str) -> str:
        return "/v1/messages"

    def key_of(self, headers: dict[str, str]) -> str | None:
        return headers.get("x-api-key")

    def prompt_of(self, body: dict[str, Any]) -> str:
        return str(body["messages"][-1]["content"])

    def ok(self, text: str = "def f():\n    return 1", reasoning: str | None = None) -> Reply:
        content: list[dict[str, Any]] = []
        if reasoning is not None:
            content.append({"type": "thinking", "thinking": reasoning, "signature": "EqQBCgIYAhIM"})
        content.append({"type": "text", "text": text})
        return Reply(
            200,
            {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": content,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 30,
                    "cache_creation_input_tokens": 20,
                    "cache_read_input_tokens": 100,
                    "output_tokens": 300,
                    "service_tier": "standard",
                },
            },
            {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"},
        )

    def error(self, status: int, message: str, code: str | None = None) -> Reply:
        types = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        return Reply(
            status,
            {
                "type": "error",
                "error": {"type": types.get(status, "api_error"), "message": message},
                "request_id": "req_011CSHerr",
            },
            {"request-id": "req_011CSHerr"},
        )

    def rate_limited(self, wait: float) -> Reply:
        """A 429 for this request alone: retry-after, and budget left in every window."""
        reply = self.error(429, "This request would exceed the rate limit for your organization.")
        reply.headers["retry-after"] = f"{wait:g}"
        reply.headers["anthropic-ratelimit-requests-remaining"] = "3"
        reply.headers["anthropic-ratelimit-requests-reset"] = _rfc3339_in(60)
        return reply

    def exhausted(self, wait: float) -> Reply:
        """A 429 whose token window is at 0 until a reset ``wait`` seconds away."""
        reply = self.error(429, "This request would exceed the rate limit for your organization.")
        reply.headers["retry-after"] = "0"  # Anthropic rounds; the reset says more
        reply.headers["anthropic-ratelimit-requests-limit"] = "50"
        reply.headers["anthropic-ratelimit-requests-remaining"] = "12"
        reply.headers["anthropic-ratelimit-requests-reset"] = _rfc3339_in(0.01)
        reply.headers["anthropic-ratelimit-input-tokens-remaining"] = "0"
        reply.headers["anthropic-ratelimit-input-tokens-reset"] = _rfc3339_in(wait)
        return reply


_GOOGLE_API = "generativelanguage.googleapis.com"


def _sse(events: list[Any], headers: dict[str, str], *, named: bool = False) -> Reply:
    """A server-sent-events reply: one ``data:`` line per event (and ``event:`` lines,
    as Anthropic names its events)."""
    out = ""
    for ev in events:
        if named and isinstance(ev, dict):
            out += f"event: {ev['type']}\n"
        out += f"data: {ev if isinstance(ev, str) else json.dumps(ev)}\n\n"
    return Reply(200, out.encode(), {"content-type": "text/event-stream", **headers})


def _rfc3339_in(seconds: float) -> str:
    """The wall-clock time ``seconds`` from now, as Anthropic writes reset times."""
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat().replace("+00:00", "Z")


class GeminiWire:
    kind = "gemini"
    usage = Usage(input_tokens=120, output_tokens=300, reasoning_tokens=200, cached_tokens=100)
    request_id = "mA6TaO2xNOu0z7IP3Z6u8Qg"
    model_echo = "gemini-2.5-pro"
    finish = "STOP"

    def sse(self, text: str = "def f():\n    return 1", reasoning: str | None = None) -> Reply:
        """The same answer as ``ok``, as streamGenerateContent chunks."""
        whole = self.ok(text, reasoning).body
        meta = {"modelVersion": whole["modelVersion"], "responseId": whole["responseId"]}
        parts: list[dict[str, Any]] = []
        if reasoning is not None:
            parts.append({"text": reasoning, "thought": True})
        half = len(text) // 2
        parts += [{"text": text[:half]}, {"text": text[half:]}]
        events: list[Any] = [
            {**meta, "candidates": [{"content": {"role": "model", "parts": [p]}, "index": 0}]} for p in parts
        ]
        events[-1]["candidates"][0]["finishReason"] = "STOP"
        events[-1]["usageMetadata"] = whole["usageMetadata"]
        return _sse(events, {})

    def path(self, model: str) -> str:
        return f"/models/{model}:generateContent"

    def key_of(self, headers: dict[str, str]) -> str | None:
        return headers.get("x-goog-api-key")

    def prompt_of(self, body: dict[str, Any]) -> str:
        return str(body["contents"][-1]["parts"][0]["text"])

    def ok(self, text: str = "def f():\n    return 1", reasoning: str | None = None) -> Reply:
        parts: list[dict[str, Any]] = []
        if reasoning is not None:
            parts.append({"text": reasoning, "thought": True})
        parts.append({"text": text})
        return Reply(
            200,
            {
                "candidates": [
                    {
                        "content": {"parts": parts, "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 120,
                    "candidatesTokenCount": 100,
                    "totalTokenCount": 420,
                    "cachedContentTokenCount": 100,
                    "thoughtsTokenCount": 200,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}],
                },
                "modelVersion": "gemini-2.5-pro",
                "responseId": "mA6TaO2xNOu0z7IP3Z6u8Qg",
            },
        )

    def error(self, status: int, message: str, code: str | None = None) -> Reply:
        statuses = {
            400: "INVALID_ARGUMENT",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED",
            500: "INTERNAL",
            503: "UNAVAILABLE",
        }
        return Reply(
            status,
            {
                "error": {
                    "code": status,
                    "message": message,
                    "status": statuses.get(status, "UNKNOWN"),
                }
            },
        )

    def rate_limited(self, wait: float) -> Reply:
        """A 429 of the shared pay-as-you-go capacity: RetryInfo, no QuotaFailure."""
        reply = self.error(429, "Resource has been exhausted (e.g. check quota).")
        reply.body["error"]["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait:g}s"},
        ]
        return reply

    def exhausted(self, wait: float) -> Reply:
        """A 429 naming the project quota that is used up (QuotaFailure), with RetryInfo."""
        reply = self.error(429, "You exceeded your current quota, please check your plan.")
        reply.body["error"]["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": f"{_GOOGLE_API}/generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more", "url": "https://ai.google.dev/"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait:g}s"},
        ]
        return reply


Wire = OpenAIWire | AnthropicWire | GeminiWire
WIRES: dict[str, Wire] = {w.kind: w for w in (OpenAIWire(), AnthropicWire(), GeminiWire())}


def default_reply(wire: Wire) -> Any:
    """A server default that answers every request with the wire's happy body."""

    def reply(seen: Seen) -> Reply:
        return wire.ok()

    return reply


# --- the attempt log --------------------------------------------------------------------


@dataclass
class Record:
    """One call on the attempt log, with the loop time it was made at."""

    what: str  # requested | responded | failed
    attempt: int
    at: float
    request: dict[str, Any] | None = None
    answer: Answer | None = None
    cost: float | None = None
    error: ProviderError | None = None
    final: bool = False


@dataclass
class RecordingLog:
    """An :class:`~rollwatch.providers.AttemptLog` that keeps every call, in order."""

    records: list[Record] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def requested(self, attempt: int, request: dict[str, Any]) -> None:
        self._add(Record("requested", attempt, anyio.current_time(), request=request))

    async def failed(self, attempt: int, error: ProviderError, final: bool) -> None:
        self._add(Record("failed", attempt, anyio.current_time(), error=error, final=final))

    async def responded(self, attempt: int, answer: Answer, cost_usd: float | None) -> None:
        self._add(Record("responded", attempt, anyio.current_time(), answer=answer, cost=cost_usd))

    def _add(self, record: Record) -> None:
        self.records.append(record)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, what: str, timeout: float = 5.0) -> Record:
        """The first record of kind ``what``, waiting for it up to ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            while True:
                for r in self.records:
                    if r.what == what:
                        return r
                await self.changed.wait()

    @property
    def trail(self) -> list[tuple[str, int]]:
        """``(what, attempt)`` of every call, for asserting the sequence at a glance."""
        return [(r.what, r.attempt) for r in self.records]

    @property
    def failures(self) -> list[ProviderError]:
        return [r.error for r in self.records if r.error is not None]
