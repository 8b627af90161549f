"""Streamed answers (server-sent events), run against openai, anthropic and gemini.

Each test talks to a real loopback server speaking that format's stream: a streamed
answer is recorded exactly as a whole one (plus the time to the first token); a
stream cut off or stalled mid-answer is a failed attempt that is retried, never a
truncated answer.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rollwatch.config import ProviderConfig
from rollwatch.providers import Prompt, ProviderClient
from rollwatch.providers.streaming import wants_stream
from tests.providers.conftest import MODEL
from tests.providers.fakes import RecordingLog, Wire
from tests.providers.loopback import LoopbackServer, Reply

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")
MakeConfig = Callable[..., ProviderConfig]


def _asked_to_stream(wire: Wire, target: str, body: dict[str, object]) -> bool:
    if wire.kind == "gemini":
        return target.endswith(":streamGenerateContent?alt=sse")
    return body.get("stream") is True


class TestStreaming:
    async def test_a_streamed_answer_is_the_whole_answer(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """With ``stream = true`` the request asks for a stream as the format wants it;
        the events fold into the same text, reasoning, finish reason, usage, model and
        cost as the whole answer, and the time to the first token is recorded."""
        server.then(wire.sse("def f():\n    return 1", reasoning="think first"))
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        assert (answer.text, answer.reasoning) == ("def f():\n    return 1", "think first")
        assert answer.finish_reason == wire.finish
        assert answer.usage == wire.usage
        assert answer.model == wire.model_echo
        assert answer.ttft_ms is not None
        assert 0 < answer.ttft_ms <= answer.latency_ms
        assert log.trail == [("requested", 1), ("responded", 1)]
        (seen,) = server.seen
        assert _asked_to_stream(wire, seen.target, seen.json())
        if wire.kind == "openai":
            assert seen.json()["stream_options"] == {"include_usage": True}

    async def test_a_stream_cut_mid_answer_is_a_failed_attempt(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A stream whose connection closes halfway (before its end marker) is a
        retryable ``bad_response``; the retry's whole answer is the one recorded."""
        cut = wire.sse()
        cut.action = "cut"
        server.then(cut, wire.sse())
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        assert answer.text == "def f():\n    return 1"
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        err = log.failures[0]
        assert (err.kind, err.retryable) == ("bad_response", True)

    async def test_a_stream_without_its_final_data_is_cut(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A stream that ends cleanly (whole HTTP body) before the format's final data
        (the finish or stop reason, OpenAI's usage after it) and its end marker
        (``[DONE]``, ``message_stop``) was cut upstream: retried. (Without only the end
        marker it is whole: ``test_streams_s28.py``.)"""
        whole = wire.sse()
        assert isinstance(whole.body, bytes)
        events = [e for e in whole.body.split(b"\n\n") if e]
        final = {"openai": -3, "anthropic": -2, "gemini": -1}[wire.kind]  # from the finish on
        short = Reply(200, b"\n\n".join(events[:final]) + b"\n\n", dict(whole.headers))
        server.then(short, wire.sse())
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is not None
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert "ended before its end" in log.failures[0].message

    async def test_a_stalled_stream_times_out_between_chunks(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A stream that sends half its events and then nothing is a retryable timeout
        after ``stream_idle_timeout``, well before the request's own ``timeout``."""
        stall = wire.sse()
        stall.action = "trickle"
        server.then(stall, wire.sse())
        async with ProviderClient(make_config(stream=True, stream_idle_timeout=0.3, timeout=30.0)) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is not None
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        err = log.failures[0]
        assert (err.kind, err.retryable) == ("timeout", True)
        assert "silent for 0.3s" in err.message

    async def test_an_error_event_mid_stream(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """An overload reported inside the stream (Anthropic's ``error`` event, an
        ``error`` object elsewhere) is a retryable ``overloaded`` failure."""
        if wire.kind == "anthropic":
            payload = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
        else:
            payload = b'data: {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}\n\n'
        server.then(Reply(200, payload, {"content-type": "text/event-stream"}), wire.sse())
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is not None
        err = log.failures[0]
        assert (err.kind, err.retryable) == ("overloaded", True)


class TestWhenToStream:
    @pytest.mark.parametrize(
        ("setting", "params", "expected"),
        [
            (None, {}, False),
            (None, {"max_tokens": 16000}, False),
            (None, {"max_completion_tokens": 64000}, True),
            (None, {"reasoning_effort": "high"}, True),
            (None, {"thinking": {"type": "enabled", "budget_tokens": 8000}}, True),
            (None, {"thinking_budget": 2048}, True),
            (False, {"reasoning_effort": "high"}, False),
            (True, {}, True),
        ],
    )
    def test_auto_streams_long_and_reasoning_requests(
        self, setting: bool | None, params: dict[str, object], expected: bool
    ) -> None:
        """Unset ``stream`` streams requests that ask for reasoning or more than 32,000
        output tokens (where a silent connection risks a proxy's idle timeout); an
        explicit setting wins."""
        assert wants_stream(setting, params) is expected
