"""A hostile or broken provider, session 27: what the other hostile tests do not try.

Real loopback servers speaking each wire format (openai, anthropic, gemini), streamed
and whole: a Retry-After whose HTTP date has numbers no clock holds, stream events out
of order or twice, a second choice interleaved in an OpenAI stream, a response in
HTTP/1.0 with no Content-Length, a header of a megabyte, a connection dropped at each
phase of a stream, and the shapes Anthropic and Gemini send beside text (tool and
thinking blocks, safety blocks, empty candidates). The promises: each attempt recorded
once with a clear failure (never a crash of the run, never a partial or mixed answer
scored as whole), the cost the usage says, the key nowhere.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import MODEL, provider_config
from tests.providers.fakes import KEY, RecordingLog, Wire
from tests.providers.loopback import Reply, serve

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")
TEXT = "def f():\n    return 1"


def _sse(events: list[Any], *, named: bool = False, done: bool = False) -> bytes:
    out = b""
    for e in events:
        if named:
            out += f"event: {e['type']}\n".encode()
        out += b"data: " + json.dumps(e).encode() + b"\n\n"
    if done:
        out += b"data: [DONE]\n\n"
    return out


async def _rollout(kind: str, reply: Reply, **overrides: Any) -> tuple[Any, RecordingLog]:
    """One rollout against a server that answers every request with ``reply``."""
    async with serve(lambda seen: reply) as server:
        config = provider_config(kind, server.url, **{"max_attempts": 1, **overrides})
        async with ProviderClient(config) as client:
            log = RecordingLog()
            with anyio.fail_after(15):
                answer = await client.rollout(MODEL, PROMPT, {}, log)
    return answer, log


def _assert_no_key(log: RecordingLog) -> None:
    for r in log.records:
        assert KEY not in repr(r)


class TestRetryAfterNoClockHolds:
    """``Retry-After`` as an HTTP date whose hour, day or zone is a 20-digit number:
    ``email.utils`` raises ``OverflowError`` for it (not the ``ValueError`` a bad date
    raises), which escaped the adapter and crashed the rollout's task, so the whole run,
    its other rollouts with it, with the attempt requested and never recorded as failed."""

    @pytest.mark.parametrize(
        "value",
        [
            "Fri, 01 Jan 2027 99999999999999999999:00:00 GMT",
            "Fri, 99999999999999999999 Jan 2027 00:00:00 GMT",
            "Fri, 01 Jan 2027 00:00:00 +99999999999999999999",
        ],
    )
    @pytest.mark.parametrize("status", [429, 503])
    async def test_an_absurd_http_date_is_no_wait_and_no_crash(
        self, wire: Wire, status: int, value: str
    ) -> None:
        async with serve(lambda seen: wire.ok()) as server:
            server.then(Reply(status, {"error": {"message": "slow down"}}, {"retry-after": value}))
            config = provider_config(wire.kind, server.url, max_attempts=2)
            async with ProviderClient(config) as client:
                log = RecordingLog()
                with anyio.fail_after(10):
                    answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        assert answer.text == TEXT
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert log.failures[0].retry_after is None
        assert log.failures[0].status == status


def _anthropic_events(text: str = TEXT) -> dict[str, Any]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 150, "output_tokens": 1},
        },
    }
    half = len(text) // 2
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        for piece in (text[:half], text[half:])
    ]
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 300}}
    return {"start": start, "deltas": deltas, "end": end, "stop": {"type": "message_stop"}}


SSE = {"content-type": "text/event-stream"}
#: The price every test provider has: $1 per million input tokens, $10 per million output.
COST_150_300 = (150 * 1.0 + 300 * 10.0) / 1_000_000


class TestStreamEventsOutOfOrder:
    """Anthropic's ``message_start`` carries the input usage and an output count of 1,
    ``message_delta`` the final output count. ``message_start`` replaced the usage it
    found: sent after the ``message_delta`` (out of order) or a second time (a proxy
    replaying it), it set the output back to 1 token, and the answer was recorded and
    charged as $0.00015 instead of $0.00315 (a budget passed by twentyfold)."""

    async def test_message_delta_before_message_start_keeps_its_output_count(self) -> None:
        e = _anthropic_events()
        body = _sse([e["end"], e["start"], *e["deltas"], e["stop"]], named=True)
        answer, log = await _rollout("anthropic", Reply(200, body, SSE), stream=True)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (150, 300)
        assert log.records[-1].cost == pytest.approx(COST_150_300)

    async def test_a_second_message_start_keeps_the_output_count(self) -> None:
        e = _anthropic_events()
        body = _sse([e["start"], *e["deltas"], e["end"], e["start"], e["stop"]], named=True)
        answer, log = await _rollout("anthropic", Reply(200, body, SSE), stream=True)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (150, 300)
        assert log.records[-1].cost == pytest.approx(COST_150_300)

    async def test_unknown_events_and_event_names_are_ignored(self) -> None:
        e = _anthropic_events()
        odd = [
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            {"type": "future_event_2027", "data": {"text": "not the answer"}},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "{"},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "x"},
            },
            {"type": "content_block_stop", "index": 0},
        ]
        body = _sse([e["start"], *odd, *e["deltas"], e["end"], e["stop"]], named=True)
        answer, log = await _rollout("anthropic", Reply(200, body, SSE), stream=True)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT


def _openai_chunk(delta: dict[str, Any], index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-x",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


class TestOpenAIStreamChoices:
    """Chat Completions streams each choice's deltas as ``choices[0]`` of a chunk, told
    apart by ``index``. The fold read ``choices[0]`` of every chunk whatever its index: a
    host sending a second choice (``n`` in params, or a host that always does) had both
    answers' pieces interleaved into one text, recorded and scored as an answer the model
    never gave."""

    async def test_a_second_choice_is_not_mixed_into_the_first(self) -> None:
        other = "import os\nos.system('rm -rf /')"
        chunks = [_openai_chunk({"role": "assistant", "content": ""})]
        half, ohalf = len(TEXT) // 2, len(other) // 2
        chunks += [
            _openai_chunk({"content": TEXT[:half]}),
            _openai_chunk({"content": other[:ohalf]}, index=1),
            _openai_chunk({"content": TEXT[half:]}),
            _openai_chunk({"content": other[ohalf:]}, index=1),
            _openai_chunk({}, index=1, finish="length"),
            _openai_chunk({}, finish="stop"),
            {
                "id": "chatcmpl-1",
                "model": "gpt-x",
                "choices": [],
                "usage": {"prompt_tokens": 150, "completion_tokens": 300},
            },
        ]
        answer, log = await _rollout("openai", Reply(200, _sse(chunks, done=True), SSE), stream=True)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT
        assert answer.finish_reason == "stop"
        assert log.records[-1].cost == pytest.approx(COST_150_300)
