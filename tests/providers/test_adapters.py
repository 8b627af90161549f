"""What each adapter sends and reads that is particular to its wire format.

Pure functions: no server needed. The shared behaviour is in ``test_contract.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from rollwatch.errors import ProviderError
from rollwatch.providers import Prompt
from rollwatch.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicAdapter
from rollwatch.providers.base import classify_status, error_message, redact
from rollwatch.providers.gemini import GeminiAdapter
from rollwatch.providers.openai import OpenAIAdapter
from rollwatch.providers.reference import ReferenceAdapter

PROMPT = Prompt("Solve it.")
NOW = 1_700_000_000.0


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class TestOpenAI:
    adapter = OpenAIAdapter()

    def test_params_pass_through(self) -> None:
        """Schedule params go into the body verbatim, after model and messages."""
        params = {
            "temperature": 1.0,
            "max_completion_tokens": 4000,
            "reasoning_effort": "high",
            "seed": 7,
        }
        wire = self.adapter.build("gpt-5", PROMPT, params, "Be brief.")
        assert wire.path == "/chat/completions"
        assert wire.body == {
            "model": "gpt-5",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Solve it."},
            ],
            **params,
        }
        assert wire.headers == {}

    def test_reserved_params_are_refused(self) -> None:
        """Params may not replace the model or the messages."""
        with pytest.raises(ProviderError, match="messages") as e:
            self.adapter.build("gpt-5", PROMPT, {"messages": []}, None)
        assert e.value.kind == "invalid_request"

    def test_reasoning_from_openrouter(self) -> None:
        """OpenRouter's ``message.reasoning`` is read like DeepSeek's ``reasoning_content``."""
        data = {
            "id": "gen-1",
            "model": "deepseek/deepseek-r1",
            "choices": [
                {
                    "message": {"role": "assistant", "content": "x", "reasoning": "hmm"},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7},
        }
        parsed = self.adapter.parse(data, {})
        assert parsed.reasoning == "hmm"
        assert parsed.finish_reason == "length"
        assert parsed.request_id == "gen-1"
        assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (5, 7)
        assert parsed.usage.cached_tokens == 0

    def test_null_content_is_empty_text(self) -> None:
        """A refusal or an empty answer (``content: null``) is an empty text, not an error."""
        data = {"choices": [{"message": {"role": "assistant", "content": None}}]}
        assert self.adapter.parse(data, {}).text == ""

    def test_error_in_a_200_body(self) -> None:
        """OpenRouter's ``{"error": {...}}`` with status 200 is classified by its code."""
        data = {"error": {"code": 502, "message": "upstream failed"}}
        with pytest.raises(ProviderError) as e:
            self.adapter.parse(data, {})
        assert (e.value.kind, e.value.status, e.value.retryable) == ("server_error", 502, True)
        assert "upstream failed" in e.value.message

    def test_reset_headers_on_429(self) -> None:
        """Without Retry-After, a 429 waits for the exhausted window's reset."""
        headers = {
            "x-ratelimit-remaining-requests": "10",
            "x-ratelimit-reset-requests": "20ms",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        }
        err = self.adapter.error(429, headers, body({"error": {"message": "slow down"}}), NOW)
        assert err.retry_after == pytest.approx(360.0)
        assert err.retryable

    def test_reset_headers_without_remaining(self) -> None:
        """When the server does not say which window ran out, the shorter reset is used."""
        headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m30s"}
        err = self.adapter.error(429, headers, b"{}", NOW)
        assert err.retry_after == pytest.approx(1.0)

    def test_retry_after_wins_over_resets(self) -> None:
        """Retry-After (here in milliseconds) is the wait when present."""
        headers = {"retry-after-ms": "1500", "x-ratelimit-reset-requests": "9s"}
        assert self.adapter.error(429, headers, b"{}", NOW).retry_after == pytest.approx(1.5)

    def test_insufficient_quota_is_not_retried(self) -> None:
        """A 429 for billing (``insufficient_quota``) is not a pacing signal."""
        data = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
        err = self.adapter.error(429, {}, body(data), NOW)
        assert (err.kind, err.retryable) == ("rate_limited", False)

    def test_success_with_an_empty_window_pauses(self) -> None:
        """A 200 whose request window is used up asks everyone to wait for the reset."""
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
        assert self.adapter.pause_hint(headers, NOW) == pytest.approx(2.0)
        assert self.adapter.pause_hint({}, NOW) is None

    def test_exhausted_window_on_429_is_provider_wide(self) -> None:
        """A 429 with a window at 0 and its reset is the provider's whole budget: it waits
        for the reset even when Retry-After says less."""
        headers = {
            "retry-after": "1",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "7s",
        }
        err = self.adapter.error(429, headers, b"{}", NOW)
        assert (err.provider_wide, err.retry_after) == (True, pytest.approx(7.0))

    def test_plain_429_is_the_request_s_own(self) -> None:
        """Budget left in every window (or no headers at all): not provider-wide."""
        headers = {
            "retry-after": "1",
            "x-ratelimit-remaining-requests": "5",
            "x-ratelimit-reset-requests": "7s",
        }
        for h in (headers, {"retry-after": "1"}):
            err = self.adapter.error(429, h, b"{}", NOW)
            assert (err.provider_wide, err.retry_after) == (False, pytest.approx(1.0))

    def test_an_exhausted_window_on_other_statuses_is_not_a_pause(self) -> None:
        """Only a 429 is read as the budget running out; a 500 with such headers is not,
        and neither is a 429 that is billing (``insufficient_quota``, not retried)."""
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "7s"}
        assert not self.adapter.error(500, headers, b"{}", NOW).provider_wide
        quota = body({"error": {"message": "quota", "code": "insufficient_quota"}})
        assert not self.adapter.error(429, headers, quota, NOW).provider_wide


class TestAnthropic:
    adapter = AnthropicAdapter()

    def test_max_tokens_defaults_and_system_is_top_level(self) -> None:
        """``max_tokens`` is required by the API: defaulted when params lack it."""
        wire = self.adapter.build("claude", PROMPT, {"temperature": 1.0}, "Be brief.")
        assert wire.path == "/v1/messages"
        assert wire.headers == {"anthropic-version": "2023-06-01"}
        assert wire.body == {
            "model": "claude",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Solve it."}],
            "temperature": 1.0,
        }

    def test_max_tokens_from_params(self) -> None:
        """``max_tokens`` or OpenAI's ``max_completion_tokens`` set it; thinking passes."""
        thinking = {"type": "enabled", "budget_tokens": 10000}
        wire = self.adapter.build(
            "claude", PROMPT, {"max_completion_tokens": 32000, "thinking": thinking}, None
        )
        assert wire.body["max_tokens"] == 32000
        assert "max_completion_tokens" not in wire.body
        assert wire.body["thinking"] == thinking
        assert "system" not in wire.body

    def test_redacted_thinking_is_skipped(self) -> None:
        """Several text and thinking blocks join; ``redacted_thinking`` has no text."""
        data = {
            "id": "msg_1",
            "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "a", "signature": "s"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                {"type": "thinking", "thinking": "b", "signature": "s"},
                {"type": "text", "text": "one "},
                {"type": "text", "text": "two"},
            ],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
        parsed = self.adapter.parse(data, {})
        assert parsed.text == "one two"
        assert parsed.reasoning == "a\n\nb"
        assert parsed.finish_reason == "max_tokens"
        assert parsed.request_id == "msg_1"

    def test_exhausted_ratelimit_window_on_429_is_provider_wide(self) -> None:
        """``anthropic-ratelimit-*-remaining: 0`` with its RFC 3339 reset: provider-wide,
        waiting for the reset even when ``retry-after`` says less."""
        headers = {
            "retry-after": "2",
            "anthropic-ratelimit-requests-remaining": "40",
            "anthropic-ratelimit-requests-reset": _rfc3339(NOW + 1),
            "anthropic-ratelimit-output-tokens-remaining": "0",
            "anthropic-ratelimit-output-tokens-reset": _rfc3339(NOW + 12.5),
        }
        err = self.adapter.error(429, headers, b"{}", NOW)
        assert (err.provider_wide, err.retry_after) == (True, pytest.approx(12.5))

    def test_plain_429_waits_retry_after_alone(self) -> None:
        """Budget left in every window: ``retry-after`` for this request only."""
        headers = {
            "retry-after": "3",
            "anthropic-ratelimit-tokens-remaining": "1000",
            "anthropic-ratelimit-tokens-reset": _rfc3339(NOW + 30),
        }
        err = self.adapter.error(429, headers, b"{}", NOW)
        assert (err.provider_wide, err.retry_after) == (False, pytest.approx(3.0))

    @pytest.mark.parametrize("reset", ["tomorrow", "2026-01-01T00:00:00", "", "9" * 400])
    def test_unreadable_reset_is_not_a_pause(self, reset: str) -> None:
        """A reset that is not an RFC 3339 time with a zone is ignored, never a crash."""
        headers = {
            "retry-after": "3",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset,
        }
        err = self.adapter.error(429, headers, b"{}", NOW)
        assert (err.provider_wide, err.retry_after) == (False, pytest.approx(3.0))
        assert self.adapter.pause_hint(headers, NOW) is None

    def test_success_with_an_empty_window_pauses(self) -> None:
        """A 200 that leaves a window at 0 asks everyone to wait for its reset; a reset in
        the past is no wait."""
        headers = {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": _rfc3339(NOW + 4),
        }
        assert self.adapter.pause_hint(headers, NOW) == pytest.approx(4.0)
        assert self.adapter.pause_hint(headers, NOW + 10) == 0.0
        assert self.adapter.pause_hint({}, NOW) is None

    def test_overloaded(self) -> None:
        """529 ``overloaded_error`` is a retryable ``overloaded``."""
        data = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        err = self.adapter.error(529, {}, body(data), NOW)
        assert (err.kind, err.retryable, err.message) == ("overloaded", True, "Overloaded")


class TestGemini:
    adapter = GeminiAdapter()

    def test_params_map_into_generation_config(self) -> None:
        """OpenAI-style and snake_case names map onto Gemini's; thinking goes together."""
        params = {
            "temperature": 0.7,
            "max_tokens": 8192,
            "top_p": 0.9,
            "seed": 3,
            "stop": "```\n",
            "thinking_budget": 2048,
            "include_thoughts": True,
            "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF"}],
        }
        wire = self.adapter.build("models/gemini-2.5-pro", PROMPT, params, "Be brief.")
        assert wire.path == "/models/gemini-2.5-pro:generateContent"
        assert wire.body == {
            "contents": [{"role": "user", "parts": [{"text": "Solve it."}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "safetySettings": params["safety_settings"],
            "generationConfig": {
                "temperature": 0.7,
                "maxOutputTokens": 8192,
                "topP": 0.9,
                "seed": 3,
                "stopSequences": ["```\n"],
                "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True},
            },
        }

    def test_native_generation_config_merges(self) -> None:
        """A ``generation_config`` table and camelCase keys are taken as Gemini spells them."""
        params = {
            "generation_config": {"thinkingConfig": {"thinkingLevel": "low"}},
            "candidateCount": 1,
            "reasoning_effort": "high",
        }
        wire = self.adapter.build("gemini-3-pro-preview", PROMPT, params, None)
        assert wire.body["generationConfig"] == {
            "thinkingConfig": {"thinkingLevel": "high"},
            "candidateCount": 1,
        }
        assert "systemInstruction" not in wire.body

    def test_the_key_is_never_in_the_path(self) -> None:
        """The key travels in ``x-goog-api-key``; the path has none of it."""
        wire = self.adapter.build("gemini-2.5-pro", PROMPT, {}, None)
        assert "key=" not in wire.path
        assert self.adapter.auth_headers("AIzaSECRET") == {"x-goog-api-key": "AIzaSECRET"}

    def test_blocked_prompt_is_an_empty_answer(self) -> None:
        """A prompt blocked by safety filters answers nothing, with the reason."""
        data = {
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        }
        parsed = self.adapter.parse(data, {})
        assert (parsed.text, parsed.finish_reason) == ("", "blocked:PROHIBITED_CONTENT")
        assert parsed.usage.input_tokens == 9

    def test_max_tokens_with_thoughts_only(self) -> None:
        """A candidate cut at MAX_TOKENS while thinking may have no parts at all."""
        data = {
            "candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 9, "thoughtsTokenCount": 100},
        }
        parsed = self.adapter.parse(data, {})
        assert (parsed.text, parsed.reasoning, parsed.finish_reason) == ("", None, "MAX_TOKENS")
        assert (parsed.usage.output_tokens, parsed.usage.reasoning_tokens) == (100, 100)

    def test_invalid_key_is_auth(self) -> None:
        """Gemini answers a bad key with 400 ``API_KEY_INVALID``: that is an auth failure."""
        data = {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            }
        }
        err = self.adapter.error(400, {}, body(data), NOW)
        assert (err.kind, err.retryable) == ("auth", False)

    def test_fractional_retry_delay(self) -> None:
        """RetryInfo's delay is a protobuf Duration with fractional seconds."""
        data = [
            {
                "error": {
                    "code": 429,
                    "message": "Resource exhausted",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": "45.837906927s",
                        }
                    ],
                }
            }
        ]
        err = self.adapter.error(429, {}, body(data), NOW)
        assert err.retry_after == pytest.approx(45.837906927)
        assert err.message == "Resource exhausted"
        assert not err.provider_wide  # no QuotaFailure: the shared capacity shed it

    def test_quota_failure_is_provider_wide(self) -> None:
        """A 429 naming a used-up project quota (``QuotaFailure``) holds every request."""
        data = {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"},
                ],
            }
        }
        err = self.adapter.error(429, {}, body(data), NOW)
        assert (err.provider_wide, err.retry_after) == (True, pytest.approx(20.0))


class TestReference:
    def test_answers_with_the_solution_in_a_fence(self) -> None:
        """The reference answer is the solution in a python fence."""
        answer = ReferenceAdapter().answer("ref", Prompt("p", reference_solution="x = 1\n"))
        assert answer.text == "```python\nx = 1\n```\n"
        assert answer.finish_reason == "stop"

    def test_no_solution_is_an_invalid_request(self) -> None:
        """A problem without a reference solution cannot be answered."""
        with pytest.raises(ProviderError) as e:
            ReferenceAdapter().answer("ref", Prompt("p"))
        assert e.value.kind == "invalid_request"


class TestShared:
    @pytest.mark.parametrize(
        ("status", "kind", "retryable"),
        [
            (400, "invalid_request", False),
            (401, "auth", False),
            (402, "auth", False),
            (403, "auth", False),
            (404, "not_found", False),
            (408, "timeout", True),
            (413, "invalid_request", False),
            (422, "invalid_request", False),
            (429, "rate_limited", True),
            (500, "server_error", True),
            (502, "server_error", True),
            (503, "overloaded", True),
            (504, "server_error", True),
            (529, "overloaded", True),
        ],
    )
    def test_status_classification(self, status: int, kind: str, retryable: bool) -> None:
        """Every status maps to one kind and a retry decision."""
        assert classify_status(status) == (kind, retryable)

    def test_error_message_excerpt(self) -> None:
        """The provider's message is kept on one line and cut short."""
        assert error_message(body({"error": {"message": "a\n  b"}})) == "a b"
        long = error_message(("x" * 1000).encode())
        assert len(long) == 300
        assert long.endswith("…")
        assert error_message(b"") == "(empty body)"

    def test_redact_masks_key_shapes(self) -> None:
        """The exact key and anything shaped like a vendor key are masked."""
        text = "key sk-proj-abc***wxyz and AIzaSyA1234567890abcdefghijk and my-secret"
        assert redact(text, "my-secret") == "key [redacted] and [redacted] and [redacted]"


class TestModelLists:
    """Each vendor's model list, read into the names a rollout uses."""

    @pytest.mark.parametrize(
        ("adapter", "path", "page", "names"),
        [
            (
                OpenAIAdapter(),
                "/models",
                {"object": "list", "data": [{"id": "gpt-5", "object": "model"}, {"id": "o3"}]},
                ["gpt-5", "o3"],
            ),
            (
                AnthropicAdapter(),
                "/v1/models?limit=1000",
                {"data": [{"id": "claude-sonnet-4-5", "type": "model"}], "has_more": False},
                ["claude-sonnet-4-5"],
            ),
            (
                GeminiAdapter(),
                "/models?pageSize=1000",
                {"models": [{"name": "models/gemini-2.5-pro"}, {"name": "models/gemini-2.5-flash"}]},
                ["gemini-2.5-pro", "gemini-2.5-flash"],
            ),
        ],
        ids=["openai", "anthropic", "gemini"],
    )
    def test_the_list_is_read_into_model_names(
        self,
        adapter: OpenAIAdapter | AnthropicAdapter | GeminiAdapter,
        path: str,
        page: Any,
        names: list[str],
    ) -> None:
        """The documented route and shape give the names as a rollout sends them."""
        assert adapter.models_request().path == path
        assert adapter.parse_models(page) == names

    @pytest.mark.parametrize("page", [[], {"data": "x"}, {"models": None}, "nope"])
    def test_another_shape_is_a_bad_response(self, page: Any) -> None:
        """A body of another shape is a named bad_response, not a crash."""
        for adapter in (OpenAIAdapter(), AnthropicAdapter(), GeminiAdapter()):
            with pytest.raises(ProviderError) as e:
                adapter.parse_models(page)
            assert e.value.kind == "bad_response"
