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

import contextlib
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import MODEL, provider_config
from tests.providers.fakes import KEY, RecordingLog, Wire
from tests.providers.loopback import Reply, serve
from tests.providers.test_hostile_batch import hostile_run, jsonl, lines_of, mangle_downloads
from tests.providers.test_hostile_provider import _head, raw_serve

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


def _events_of(body: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in body.split(b"\n\n") if e.strip()]


async def _per_connection(
    wire: Wire, first: Any, *, stream: bool, **overrides: Any
) -> tuple[Any, RecordingLog]:
    """A rollout of two attempts whose first connection ``first`` handles and whose
    second gets the wire's good answer (as a stream when ``stream``)."""
    good = wire.sse(TEXT) if stream else wire.ok(TEXT)
    payload = good.payload()
    n = 0

    async def handler(sock: SocketStream) -> None:
        nonlocal n
        n += 1
        if n == 1:
            await first(sock, payload)
            return
        headers = {"content-type": "text/event-stream" if stream else "application/json", **good.headers}
        headers["content-length"] = str(len(payload))
        await sock.send(_head(200, headers) + payload)

    async with raw_serve(handler) as url:
        config = provider_config(wire.kind, url, stream=stream, max_attempts=2, timeout=3.0, **overrides)
        async with ProviderClient(config) as client:
            log = RecordingLog()
            with anyio.fail_after(15):
                answer = await client.rollout(MODEL, PROMPT, {}, log)
    return answer, log


_PHASES: dict[str, tuple[Any, str, bool]] = {
    "no response": (lambda p: b"", "connection", False),
    "half a status line": (lambda p: b"HTTP/1.1 20", "connection", False),
    "headers only": (lambda p: _head(200, {"content-type": "text/event-stream"}), "bad_response", False),
    "inside the first text event": (
        lambda p: (
            _head(200, {"content-type": "text/event-stream"})
            + b"".join(e for e in _events_of(p) if b"text" in e or b"content" in e)[:-30]
        ),
        "bad_response",
        True,
    ),
    "all but the end": (
        lambda p: _head(200, {"content-type": "text/event-stream"}) + b"".join(_events_of(p)[:-1]),
        "bad_response",
        True,
    ),
}


class TestConnectionDroppedAtEachPhase:
    """The connection closed at each phase of a streamed answer: before the status line,
    inside it, after the headers, inside the first event, and with the whole answer but
    its end marker. Each is one retryable failure of its kind, counted as generated only
    once text came, then the retry's whole answer: never a partial answer, never two."""

    @pytest.mark.parametrize("phase", list(_PHASES))
    async def test_a_stream_dropped(self, wire: Wire, phase: str) -> None:
        make, kind, generated = _PHASES[phase]
        if phase == "all but the end" and wire.kind == "gemini":
            generated = True  # its last event is the one with the finish reason

        async def first(sock: SocketStream, payload: bytes) -> None:
            data = make(payload)
            if data:
                await sock.send(data)

        answer, log = await _per_connection(wire, first, stream=True)
        assert answer is not None
        assert answer.text == TEXT
        if phase == "all but the end" and wire.kind != "gemini":
            # Session s28: all but ``[DONE]``/``message_stop`` (the finish, stop reason
            # and usage all came), then the close that ends this body: a whole answer
            # (tests/providers/test_streams_s28.py); before, a retried ``bad_response``.
            assert log.trail == [("requested", 1), ("responded", 1)]
            return
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        (failure,) = log.failures
        assert failure.kind == kind, failure
        assert failure.retryable
        assert bool(failure.generated) is generated, failure
        _assert_no_key(log)


class TestHTTP10:
    """A host (an old proxy, a toy server) answering in HTTP/1.0 with no Content-Length:
    the body ends when the connection closes. A whole body is an answer; one whose
    connection closes early is not JSON, a retryable ``bad_response``."""

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    async def test_a_body_ended_by_the_close_is_an_answer(self, wire: Wire, stream: bool) -> None:
        good = wire.sse(TEXT) if stream else wire.ok(TEXT)

        async def handler(sock: SocketStream) -> None:
            ctype = "text/event-stream" if stream else "application/json"
            await sock.send(f"HTTP/1.0 200 OK\r\ncontent-type: {ctype}\r\n\r\n".encode())
            await sock.send(good.payload())

        async with raw_serve(handler) as url:
            config = provider_config(wire.kind, url, stream=stream, max_attempts=1)
            async with ProviderClient(config) as client:
                log = RecordingLog()
                with anyio.fail_after(10):
                    answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT

    async def test_a_body_cut_by_an_early_close_is_retried(self, wire: Wire) -> None:
        async def first(sock: SocketStream, payload: bytes) -> None:
            await sock.send(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + payload[:40])

        answer, log = await _per_connection(wire, first, stream=False)
        assert answer is not None
        assert answer.text == TEXT
        (failure,) = log.failures
        assert failure.kind == "bad_response"
        assert failure.retryable


class TestGiganticHeaders:
    """A response whose head is a megabyte (one header, or ten thousand): refused by the
    HTTP parser, one retryable failure per attempt, no key in its message."""

    @pytest.mark.parametrize("shape", ["one huge header", "many headers"])
    async def test_a_megabyte_head(self, wire: Wire, shape: str) -> None:
        async def first(sock: SocketStream, payload: bytes) -> None:
            if shape == "one huge header":
                extra = {"x-huge": "a" * 2**20}
            else:
                extra = {f"x-h{i}": "b" * 100 for i in range(10_000)}
            head = _head(
                200, {"content-type": "application/json", "content-length": str(len(payload)), **extra}
            )
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await sock.send(head + payload)

        answer, log = await _per_connection(wire, first, stream=False)
        assert answer is not None
        assert answer.text == TEXT
        (failure,) = log.failures
        assert failure.retryable
        assert failure.kind in ("connection", "bad_response"), failure
        _assert_no_key(log)


class TestGeminiStreamCandidates:
    """Gemini streams every candidate (``candidateCount``, which ``n`` in params asks
    for) in the chunks' ``candidates``, each with its ``index``. The fold read
    ``candidates[0]`` of every chunk whatever its index, as the OpenAI fold did choices:
    the second candidate's parts were mixed into the first's text, and its finish reason
    ended the stream before the first candidate's end."""

    async def test_a_second_candidate_is_not_mixed_into_the_first(self) -> None:
        other = "import os\nos.system('rm -rf /')"
        half, ohalf = len(TEXT) // 2, len(other) // 2

        def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": index}
            if finish:
                cand["finishReason"] = finish
            return {"candidates": [cand], "modelVersion": "gemini-x", "responseId": "r1"}

        chunks = [
            chunk(0, TEXT[:half]),
            chunk(1, other[:ohalf]),
            chunk(1, other[ohalf:], "STOP"),
            chunk(0, TEXT[half:]),
        ]
        last = chunk(0, "", "STOP")
        last["usageMetadata"] = {"promptTokenCount": 150, "candidatesTokenCount": 300}
        chunks.append(last)
        answer, log = await _rollout("gemini", Reply(200, _sse(chunks), SSE), stream=True)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT
        assert log.records[-1].cost == pytest.approx(COST_150_300)


class TestBlocksBesideText:
    """What Anthropic and Gemini send beside the answer's text: tool calls, thinking
    (readable or redacted), citations, server tools, executable code, inline data, and
    blocks of types not yet invented. The text is the text blocks' alone, the reasoning
    the thinking's, whole or streamed; nothing else is taken for the answer."""

    async def test_anthropic_blocks_of_every_type(self) -> None:
        content = [
            {"type": "thinking", "thinking": "let me think", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "server_tool_use", "id": "t1", "name": "web_search", "input": {"query": "x"}},
            {
                "type": "web_search_tool_result",
                "tool_use_id": "t1",
                "content": [{"type": "text", "text": "NOT"}],
            },
            {"type": "text", "text": TEXT[:5], "citations": [{"type": "char_location", "cited_text": "NOT"}]},
            {"type": "tool_use", "id": "t2", "name": "run", "input": {"code": "NOT"}},
            {"type": "text", "text": TEXT[5:]},
            {"type": "hologram_2030", "text": "NOT"},
            {"type": "text", "text": None},
        ]
        body = {
            "id": "msg_1",
            "type": "message",
            "model": "claude-x",
            "content": content,
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 150, "output_tokens": 300},
        }
        answer, log = await _rollout("anthropic", Reply(200, body))
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT
        assert answer.reasoning == "let me think"
        assert answer.finish_reason == "tool_use"
        assert log.records[-1].cost == pytest.approx(COST_150_300)

    async def test_anthropic_stream_blocks_of_every_type(self) -> None:
        e = _anthropic_events()
        extra = [
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hm"},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "s"},
            },
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "redacted_thinking", "data": "x"},
            },
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "t", "name": "n"},
            },
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "NOT"},
            },
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "citations_delta", "citation": {"x": "NOT"}},
            },
        ]
        body = _sse([e["start"], *extra, *e["deltas"], e["end"], e["stop"]], named=True)
        answer, log = await _rollout("anthropic", Reply(200, body, SSE), stream=True)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT
        assert answer.reasoning == "hm"

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    async def test_gemini_parts_of_every_type(self, stream: bool) -> None:
        parts = [
            {"text": "thinking...", "thought": True},
            {"functionCall": {"name": "run", "args": {"code": "NOT"}}},
            {"executableCode": {"language": "PYTHON", "code": "print('NOT')"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "NOT"}},
            {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
            {"text": TEXT[:5]},
            {"thoughtSignature": "c2ln"},
            {"text": TEXT[5:]},
            {"text": 12345},
        ]
        usage = {"promptTokenCount": 150, "candidatesTokenCount": 300}
        cand = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        if stream:
            chunks = [
                {"candidates": [{"content": {"role": "model", "parts": [p]}, "index": 0}]} for p in parts
            ]
            chunks.append({"candidates": [{"finishReason": "STOP", "index": 0}], "usageMetadata": usage})
            reply = Reply(200, _sse(chunks), SSE)
        else:
            reply = Reply(200, {"candidates": [cand], "usageMetadata": usage})
        answer, log = await _rollout("gemini", reply, stream=stream)
        assert log.failures == []
        assert answer is not None
        assert answer.text == TEXT
        assert answer.reasoning == "thinking..."
        assert log.records[-1].cost == pytest.approx(COST_150_300)


class TestGeminiBlocked:
    """A candidate stopped by safety filters (``SAFETY``, ``PROHIBITED_CONTENT``,
    ``RECITATION``) has no content at all; a prompt blocked outright has no candidates,
    only ``promptFeedback``; a body with an empty candidate list and no feedback says
    nothing. The first two are answers with no text whose finish reason names the
    block (the model's doing, scored as failed, billed for the prompt); the last is a
    retryable ``bad_response``: nothing that could be scored came."""

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    @pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "RECITATION"])
    async def test_a_safety_blocked_candidate(self, stream: bool, reason: str) -> None:
        cand = {
            "finishReason": reason,
            "index": 0,
            "safetyRatings": [{"category": "X", "probability": "HIGH"}],
        }
        body = {"candidates": [cand], "usageMetadata": {"promptTokenCount": 150}}
        reply = Reply(200, _sse([body]), SSE) if stream else Reply(200, body)
        answer, log = await _rollout("gemini", reply, stream=stream)
        assert log.failures == []
        assert answer is not None
        assert answer.text == ""
        assert answer.finish_reason == reason
        assert log.records[-1].cost == pytest.approx(150 / 1_000_000)

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    async def test_a_blocked_prompt(self, stream: bool) -> None:
        body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 150}}
        reply = Reply(200, _sse([body]), SSE) if stream else Reply(200, body)
        answer, log = await _rollout("gemini", reply, stream=stream)
        assert log.failures == []
        assert answer is not None
        assert (answer.text, answer.finish_reason) == ("", "blocked:SAFETY")

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    @pytest.mark.parametrize(
        "body", [{"candidates": []}, {"candidates": [{}]}, {}], ids=["empty", "one-empty", "none"]
    )
    async def test_empty_candidates(self, stream: bool, body: dict[str, Any]) -> None:
        reply = Reply(200, _sse([body]), SSE) if stream else Reply(200, body)
        answer, log = await _rollout("gemini", reply, stream=stream, max_attempts=2)
        assert answer is None
        assert [f.kind for f in log.failures] == ["bad_response", "bad_response"]
        assert log.records[-1].final


class TestBatchResultsThatContradict:
    """A batch's results give one request an answer and also an error (OpenAI: a line in
    the output file and one in the error file, or two lines; Anthropic: ``succeeded``
    then ``errored``). The last line won: every answered rollout was recorded as failed
    for good (a non-retryable error), its answer, which the provider bills, lost from the
    log and from the budget, and the run ended ``partial``. An answer now stands against
    any error for the same request; the run completes, every rollout answered once."""

    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    @pytest.mark.parametrize("order", ["answer first", "error first"])
    async def test_an_answer_and_an_error_for_one_request(
        self, kind: str, order: str, tmp_path: Path
    ) -> None:
        def error_for(item: dict[str, Any]) -> dict[str, Any]:
            if kind == "openai":
                body = {"error": {"message": "Invalid value", "type": "invalid_request_error"}}
                return {"custom_id": item["custom_id"], "response": {"status_code": 400, "body": body}}
            err = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
            return {"custom_id": item["custom_id"], "result": {"type": "errored", "error": err}}

        def mangle(n: int, data: bytes) -> bytes:
            out = []
            for item in lines_of(data):
                pair = [item, error_for(item)]
                out += pair if order == "answer first" else pair[::-1]
            return jsonl(out)

        out, _ = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed", out.fin
        out.answered_once()
        assert out.failures == []
        assert [(e.answered, e.failed, e.unanswered) for e in out.ended] == [(10, 0, [])]
        assert all(a.cost_usd for a in out.answers)


def _escaped(text: str) -> str:
    """``text`` spelled in JSON ``\\u`` escapes (which decode to ``text`` itself)."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


class TestBatchStateEchoingTheKey:
    """A poll's answer naming the key in JSON ``\\u`` escapes, which decode to the key
    after the raw body was masked: as the batch's state, its expected end, a request
    count's name. Each went whole into ``BatchPolled`` (the log, for ever) and the
    progress line, as the answers' texts did before session 13."""

    async def test_a_poll_spelling_the_key_in_escapes(self, tmp_path: Path) -> None:
        from tests.providers.test_hostile_batch import script_polls

        def answer(server: Any, b: Any, n: int) -> Reply:
            if n >= 3:
                b.state = "completed"
                if f"out-{b.id}" not in server.files:
                    server._write_openai_results(b)
                return Reply(200, server._openai_view(b))
            b.state = "in_progress"
            view = json.dumps(server._openai_view(b))
            view = view.replace('"in_progress"', f'"{_escaped(KEY)}"', 1)
            view = view.replace('"request_counts": {', f'"request_counts": {{"{_escaped(KEY)}": {n}, ', 1)
            view = view.replace('"expires_at": ', f'"expires_at": "{_escaped(KEY)}", "x": ', 1)
            return Reply(200, view.encode())

        out, _ = await hostile_run(tmp_path, "openai", lambda s: script_polls(s, answer))
        assert out.fin.status == "completed"
        out.answered_once()
        assert len(out.polled) >= 2
        for p in out.polled:
            assert KEY not in repr(p)
        assert KEY.encode() not in (tmp_path / "events.db").read_bytes()
