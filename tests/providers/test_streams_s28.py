"""When a stream is whole, session s28: one rule for the three wire formats.

A stream is whole when its final data came (the finish or stop reason, and for OpenAI
the usage we ask for with ``stream_options.include_usage``) and then either its end
marker (OpenAI ``data: [DONE]``, Anthropic ``message_stop``) or the clean end of the
HTTP body: a chunked body's last chunk, its ``Content-Length`` reached, or the close of
a body the close delimits. Gemini has no end marker: the body's end is its end. A body
that breaks (a chunked body closed before its last chunk, a ``Content-Length`` never
reached, a reset) is cut, whatever came before it: a retryable failure, never an answer.

Before, an OpenAI stream without ``[DONE]`` (several OpenAI-compatible hosts omit it)
and an Anthropic one without ``message_stop`` failed every attempt, while a Gemini
stream was read only up to its ``finishReason`` (a reset after it was an answer, usage
in a later chunk was not read).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import MODEL, provider_config
from tests.providers.fakes import RecordingLog, Wire
from tests.providers.test_hostile_provider import _head, raw_serve

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")
TEXT = "def f():\n    return 'é中🙂'"
SSE = {"content-type": "text/event-stream"}


def _events(body: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in body.split(b"\n\n") if e.strip()]


def _without_end(wire: Wire) -> list[bytes]:
    """``wire``'s whole stream of ``TEXT`` without its end marker (Gemini has none)."""
    events = _events(wire.sse(TEXT).payload())
    if wire.kind == "openai":
        assert events[-1] == b"data: [DONE]\n\n"
        return events[:-1]
    if wire.kind == "anthropic":
        assert b"message_stop" in events[-1]
        return events[:-1]
    return events


def _chunked(body: bytes, *, last: bool = True) -> bytes:
    out = b"".join(f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in _events(body))
    return out + (b"0\r\n\r\n" if last else b"")


def _reset(sock: SocketStream) -> None:
    """Make the socket's close a TCP RST."""
    raw = sock.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _two_tries(wire: Wire, first: Any, **overrides: Any) -> tuple[Any, RecordingLog, int]:
    """A rollout of up to two attempts: ``first`` serves the first connection, the wire's
    whole stream (with its end marker) the second. Returns the answer, the log and how
    many requests came."""
    good = wire.sse(TEXT)
    n = 0

    async def handler(sock: SocketStream) -> None:
        nonlocal n
        n += 1
        if n == 1:
            await first(sock)
            return
        payload = good.payload()
        await sock.send(_head(200, {**SSE, **good.headers, "content-length": str(len(payload))}) + payload)

    async with raw_serve(handler) as url:
        config = provider_config(wire.kind, url, stream=True, max_attempts=2, timeout=5.0, **overrides)
        async with ProviderClient(config) as client:
            log = RecordingLog()
            with anyio.fail_after(15):
                answer = await client.rollout(MODEL, PROMPT, {}, log)
    return answer, log, n


def _framed(framing: str, body: bytes) -> bytes:
    if framing == "chunked":
        return _head(200, {**SSE, "transfer-encoding": "chunked"}) + _chunked(body)
    if framing == "content-length":
        return _head(200, {**SSE, "content-length": str(len(body))}) + body
    return _head(200, {**SSE, "connection": "close"}) + body  # the close ends it


class TestAStreamEndedCleanlyAfterItsFinish:
    @pytest.mark.parametrize("framing", ["chunked", "content-length", "close"])
    async def test_is_a_whole_answer_without_its_end_marker(self, wire: Wire, framing: str) -> None:
        """The whole stream but ``[DONE]``/``message_stop``, the body ended cleanly: an
        answer at the first attempt, its text, finish and usage as sent. Before, OpenAI
        and Anthropic failed every attempt ("the stream ended before its end")."""
        body = b"".join(_without_end(wire))

        async def first(sock: SocketStream) -> None:
            await sock.send(_framed(framing, body))

        answer, log, n = await _two_tries(wire, first)
        assert log.failures == []
        assert n == 1
        assert answer is not None
        assert (answer.text, answer.finish_reason, answer.usage) == (TEXT, wire.finish, wire.usage)
        cost = log.records[-1].cost
        assert cost is not None
        assert cost > 0

    async def test_openai_finish_and_usage_in_one_chunk(self) -> None:
        """vLLM and llama.cpp style: the usage rides on the chunk with the finish reason,
        then the body ends with no ``[DONE]``: whole."""
        from tests.providers.fakes import WIRES

        wire = WIRES["openai"]
        events = _without_end(wire)
        finish, usage = json.loads(events[-2][6:]), json.loads(events[-1][6:])
        finish["usage"] = usage["usage"]
        body = b"".join(events[:-2]) + b"data: " + json.dumps(finish).encode() + b"\n\n"

        async def first(sock: SocketStream) -> None:
            await sock.send(_framed("chunked", body))

        answer, log, n = await _two_tries(wire, first)
        assert log.failures == []
        assert n == 1
        assert answer is not None
        assert (answer.text, answer.usage) == (TEXT, wire.usage)


class TestAStreamCutAfterItsFinishIsNoAnswer:
    """The same events (the finish and usage all there, no end marker), but the body
    breaks: a retryable failure that counts as generated, then the retry's answer."""

    @pytest.mark.parametrize("how", ["chunked, no last chunk", "short of its length", "reset"])
    async def test_a_broken_body(self, wire: Wire, how: str) -> None:
        body = b"".join(_without_end(wire))

        async def first(sock: SocketStream) -> None:
            if how == "chunked, no last chunk":
                await sock.send(
                    _head(200, {**SSE, "transfer-encoding": "chunked"}) + _chunked(body, last=False)
                )
            elif how == "short of its length":
                await sock.send(_head(200, {**SSE, "content-length": str(len(body) + 100)}) + body)
            else:
                await sock.send(
                    _head(200, {**SSE, "transfer-encoding": "chunked"}) + _chunked(body, last=False)
                )
                await anyio.wait_all_tasks_blocked()
                _reset(sock)

        answer, log, n = await _two_tries(wire, first)
        assert n == 2
        assert answer is not None
        assert answer.text == TEXT
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        (failure,) = log.failures
        assert (failure.kind, failure.retryable, failure.generated) == ("bad_response", True, True), failure
        assert "cut off" in failure.message


class TestAStreamEndedBeforeItsFinalData:
    @pytest.mark.parametrize("framing", ["chunked", "close"])
    async def test_a_clean_end_before_the_finish_is_cut(self, wire: Wire, framing: str) -> None:
        """All the text, no finish or stop reason, the body ended cleanly: cut."""
        events = _without_end(wire)
        keep = {"openai": -2, "anthropic": -1, "gemini": -1}[wire.kind]
        body = b"".join(events[:keep])
        if wire.kind == "gemini":  # the text of the finishing chunk, without its finish
            last = json.loads(events[-1][6:])
            del last["candidates"][0]["finishReason"]
            body += b"data: " + json.dumps(last).encode() + b"\n\n"

        async def first(sock: SocketStream) -> None:
            await sock.send(_framed(framing, body))

        answer, log, n = await _two_tries(wire, first)
        assert n == 2
        assert answer is not None
        (failure,) = log.failures
        assert (failure.kind, failure.retryable, failure.generated) == ("bad_response", True, True)
        assert "ended before its end" in failure.message

    async def test_an_openai_finish_without_the_usage_asked_for_is_cut(self) -> None:
        """We ask for the usage (``include_usage``), which OpenAI sends after the finish:
        a clean end after the finish chunk and before the usage chunk is a stream cut
        between them (the cost would be unknown), never a whole answer."""
        from tests.providers.fakes import WIRES

        wire = WIRES["openai"]
        body = b"".join(_without_end(wire)[:-1])

        async def first(sock: SocketStream) -> None:
            await sock.send(_framed("chunked", body))

        answer, log, n = await _two_tries(wire, first)
        assert n == 2
        assert answer is not None
        (failure,) = log.failures
        assert failure.kind == "bad_response"
        assert "no usage" in failure.message


class TestAStreamLeftOpenAfterItsFinalData:
    async def test_is_a_timeout_then_retried(self, wire: Wire) -> None:
        """The final data, no end marker, and the body held open in silence: ambiguous
        (more may come), so a retryable ``timeout`` after ``stream_idle_timeout``, never
        an answer taken early, then the retry's whole answer."""
        body = b"".join(_without_end(wire))

        async def first(sock: SocketStream) -> None:
            await sock.send(_head(200, {**SSE, "transfer-encoding": "chunked"}) + _chunked(body, last=False))
            await anyio.sleep_forever()

        answer, log, n = await _two_tries(wire, first, stream_idle_timeout=0.3)
        assert n == 2
        assert answer is not None
        (failure,) = log.failures
        assert (failure.kind, failure.retryable) == ("timeout", True)
        assert "silent for 0.3s" in failure.message


class TestGeminiReadToItsEnd:
    async def test_usage_in_a_chunk_after_the_finish_is_read(self) -> None:
        """Gemini's ``finishReason`` chunk, then one more with the usage: the cost counts
        it. Before, the stream was left at the finish and the answer cost nothing."""
        from tests.providers.fakes import WIRES

        wire = WIRES["gemini"]
        events = _without_end(wire)
        last = json.loads(events[-1][6:])
        usage = last.pop("usageMetadata")
        body = b"".join(events[:-1]) + b"".join(
            b"data: " + json.dumps(e).encode() + b"\n\n"
            for e in (last, {"usageMetadata": usage, "modelVersion": last["modelVersion"]})
        )

        async def first(sock: SocketStream) -> None:
            await sock.send(_framed("chunked", body))

        answer, log, n = await _two_tries(wire, first)
        assert log.failures == []
        assert n == 1
        assert answer is not None
        assert (answer.text, answer.usage) == (TEXT, wire.usage)
