"""OpenAI's Responses API (``api = "responses"``) through the real client and a loopback
server: the request as the API wants it, reasoning summaries as the reasoning,
reasoning tokens in usage, streamed or whole."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollwatch.config import ProviderConfig
from rollwatch.providers import Prompt, ProviderClient, Usage
from tests.providers.conftest import MODEL, provider_config
from tests.providers.fakes import RecordingLog
from tests.providers.loopback import Reply, Seen, serve

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")

RESPONSE: dict[str, Any] = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "status": "completed",
    "model": "o4-mini-2025-04-16",
    "output": [
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "**Plan** return one."}],
        },
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "def f():\n    return 1", "annotations": []}],
        },
    ],
    "usage": {
        "input_tokens": 120,
        "input_tokens_details": {"cached_tokens": 100},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 200},
        "total_tokens": 420,
    },
}
USAGE = Usage(input_tokens=120, output_tokens=300, reasoning_tokens=200, cached_tokens=100)


def config(url: str, **kw: Any) -> ProviderConfig:
    return provider_config("openai", url, api="responses", **kw)


def sse(events: list[dict[str, Any]]) -> Reply:
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    return Reply(200, body, {"content-type": "text/event-stream"})


class TestResponsesAPI:
    async def test_request_and_answer(self) -> None:
        """POST /responses with input, instructions and the reasoning effort folded into
        ``reasoning``; max_tokens renamed; the answer's text, summary as reasoning, and
        usage with reasoning and cached tokens."""

        def reply(seen: Seen) -> Reply:
            return Reply(200, RESPONSE, {"x-request-id": "req_r"})

        # stream = false: reasoning params would stream by default.
        async with serve(reply) as server, ProviderClient(config(server.url, stream=False)) as client:
            log = RecordingLog()
            params = {"reasoning_effort": "high", "reasoning": {"summary": "auto"}, "max_tokens": 4000}
            answer = await client.rollout(MODEL, PROMPT, params, log)
        assert answer is not None
        (seen,) = server.seen
        assert seen.target == "/responses"
        assert seen.json() == {
            "model": MODEL,
            "input": [{"role": "user", "content": PROMPT.text}],
            "instructions": PROMPT.system,
            "reasoning": {"summary": "auto", "effort": "high"},
            "max_output_tokens": 4000,
        }
        assert (answer.text, answer.reasoning) == ("def f():\n    return 1", "**Plan** return one.")
        assert answer.usage == USAGE
        assert (answer.model, answer.request_id, answer.finish_reason) == (
            "o4-mini-2025-04-16",
            "req_r",
            "completed",
        )

    async def test_incomplete_is_a_finish_reason(self) -> None:
        """An ``incomplete`` response (out of output tokens) is an answer whose finish
        reason says why, as a truncated Chat Completions answer says ``length``."""
        body = {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}

        def reply(seen: Seen) -> Reply:
            return Reply(200, body)

        async with serve(reply) as server, ProviderClient(config(server.url)) as client:
            answer = await client.rollout(MODEL, PROMPT, {}, RecordingLog())
        assert answer is not None
        assert answer.finish_reason == "incomplete:max_output_tokens"

    async def test_streamed(self) -> None:
        """Streamed, deltas give the time to the first token and ``response.completed``
        the whole response; a stream without it was cut and is retried."""
        events = [
            {"type": "response.created", "response": {**RESPONSE, "status": "in_progress", "output": []}},
            {"type": "response.reasoning_summary_text.delta", "delta": "**Plan**"},
            {"type": "response.output_text.delta", "delta": "def f():"},
            {"type": "response.completed", "response": RESPONSE},
        ]
        replies = [sse(events[:3]), sse(events)]

        def reply(seen: Seen) -> Reply:
            return replies.pop(0)

        async with serve(reply) as server, ProviderClient(config(server.url, stream=True)) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        assert all(s.json()["stream"] is True for s in server.seen)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert answer.text == "def f():\n    return 1"
        assert answer.usage == USAGE
        assert answer.ttft_ms is not None

    def test_only_on_openai(self) -> None:
        """``api = "responses"`` on another kind is a configuration error."""
        with pytest.raises(ValueError, match="OpenAI's"):
            provider_config("anthropic", "http://127.0.0.1:9", api="responses")
