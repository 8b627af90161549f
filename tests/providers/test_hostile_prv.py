"""A hostile or broken provider, session prv: what the other hostile tests do not try.

Real loopback servers speaking each wire format (openai, anthropic, gemini), streamed
and whole: SSE byte by byte through multi-byte characters, ``data:`` without its space,
an event whose JSON spans several ``data:`` lines (legal SSE), a stream closed cleanly
before its end marker, an end marker with no stop reason after part of an answer, a
Retry-After dated in the past, one model's 429s beside another model, a key revoked
after answers, a served model name that is no name, answer text made to look like our
own log lines and events, and a batch results file past the download cap. The promises:
a clear recorded failure per rollout (never a partial answer scored as whole), nothing
lost or counted twice, no hang, the key nowhere.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from anyio.abc import SocketStream

from rollwatch.config import ProviderConfig
from rollwatch.events import stored_json
from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import MODEL, provider_config
from tests.providers.fakes import KEY, RecordingLog, Wire
from tests.providers.loopback import LoopbackServer, Reply, Seen, serve
from tests.providers.test_hostile_provider import _head, raw_serve

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")
MakeConfig = Callable[..., ProviderConfig]
WIDE = "def f():\n    return 'é中🙂𝄞'  # ünïcödé"
"""An answer of one-, two-, three- and four-byte UTF-8 characters."""


def _events(body: bytes) -> list[bytes]:
    """The events of an SSE body (without their blank-line ends)."""
    return [e for e in body.split(b"\n\n") if e.strip()]


def _join(events: list[bytes]) -> bytes:
    return b"".join(e + b"\n\n" for e in events)


async def _stream_rollout(wire: Wire, body: bytes, **overrides: Any) -> tuple[Any, RecordingLog]:
    """One streamed rollout against a server that sends ``body`` as its stream."""
    async with serve(lambda seen: Reply(200, body, {"content-type": "text/event-stream"})) as server:
        config = provider_config(wire.kind, server.url, stream=True, **{"max_attempts": 1, **overrides})
        async with ProviderClient(config) as client:
            log = RecordingLog()
            with anyio.fail_after(10):
                answer = await client.rollout(MODEL, PROMPT, {}, log)
    return answer, log


class TestOddSSE:
    async def test_a_stream_sent_a_byte_at_a_time_through_multibyte_characters(self, wire: Wire) -> None:
        """Every byte its own TCP segment, so each 2-, 3- and 4-byte character is split
        across reads: the answer is exactly the text sent, no U+FFFD, no failure."""
        body = wire.sse(WIDE).payload()

        async def drip(stream: SocketStream) -> None:
            sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await stream.send(_head(200, {"content-type": "text/event-stream"}))
            for i in range(len(body)):
                await stream.send(body[i : i + 1])
                await anyio.sleep(0.0005)

        async with raw_serve(drip) as url:
            config = provider_config(wire.kind, url, stream=True, max_attempts=1, timeout=15.0)
            async with ProviderClient(config) as client:
                log = RecordingLog()
                with anyio.fail_after(20):
                    answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.failures == []
        assert answer is not None
        assert answer.text == WIDE

    async def test_data_lines_without_the_space(self, wire: Wire) -> None:
        """``data:{...}`` is as good SSE as ``data: {...}``."""
        body = wire.sse(WIDE).payload().replace(b"data: ", b"data:")
        answer, log = await _stream_rollout(wire, body)
        assert log.failures == []
        assert answer is not None
        assert answer.text == WIDE

    async def test_an_event_whose_json_spans_several_data_lines(self, wire: Wire) -> None:
        """SSE joins an event's ``data:`` lines with a newline: a provider (or proxy) that
        pretty-prints each chunk over several ``data:`` lines sends valid events. Before,
        each line was read as an event alone ("a stream event is not JSON"), every
        attempt failed and the rollout with it."""
        events = []
        for event in _events(wire.sse(WIDE).payload()):
            lines = event.split(b"\n")
            out = []
            for line in lines:
                if line.startswith(b"data: {"):
                    pretty = json.dumps(json.loads(line[6:]), indent=1).encode()
                    out += [b"data: " + part for part in pretty.split(b"\n")]
                else:
                    out.append(line)
            events.append(b"\n".join(out))
        answer, log = await _stream_rollout(wire, _join(events))
        assert log.failures == []
        assert answer is not None
        assert answer.text == WIDE

    async def test_a_stream_closed_cleanly_before_its_end_is_never_an_answer(self, wire: Wire) -> None:
        """Part of the answer, then a clean close (no reset, chunked end or not) where the
        end marker should be: a retryable ``bad_response`` that counts as generated, never
        an answer to score."""
        events = _events(wire.sse(WIDE).payload())
        cut = events[: len(events) // 2]  # some text came, the end did not
        answer, log = await _stream_rollout(wire, _join(cut))
        assert answer is None
        assert [f.kind for f in log.failures] == ["bad_response"]
        assert "cut off" in log.failures[0].message
        assert log.failures[0].generated
        assert log.records[-1].final

    async def test_an_end_marker_with_no_stop_reason_is_not_a_whole_answer(self, wire: Wire) -> None:
        """A proxy losing its upstream mid-answer often closes the stream politely: the
        end marker (OpenAI's ``[DONE]``, Anthropic's ``message_stop``) after half the
        text and no finish/stop reason (Gemini, with no end marker: the body's clean
        end there). The vendors always send one before the end, so this is a cut
        answer: a retryable ``bad_response``, then the retry's whole answer. Before, the
        half answer was recorded and scored as complete."""
        events = _events(wire.sse(WIDE).payload())
        if wire.kind == "gemini":
            # No end marker: the body's clean end is Gemini's end (session s28), here
            # after the first half of the text and no finishReason.
            body = _join(events[:1])
        else:
            end = events[-1]
            text_events = [e for e in events if b"delta" in e and (b"content" in e or b"text_delta" in e)]
            first_text = next(e for e in text_events if b'"content": ""' not in e)  # not the role delta
            body = _join([*events[: events.index(first_text) + 1], end])
        async with serve(lambda seen: Reply(200, body, {"content-type": "text/event-stream"})) as server:
            server.script.clear()
            whole = wire.sse(WIDE)
            server.then(Reply(200, body, {"content-type": "text/event-stream"}), whole)
            config = provider_config(wire.kind, server.url, stream=True, max_attempts=2)
            async with ProviderClient(config) as client:
                log = RecordingLog()
                with anyio.fail_after(10):
                    answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert [f.kind for f in log.failures] == ["bad_response"]
        assert "stop reason" in log.failures[0].message
        assert log.failures[0].generated
        assert answer is not None
        assert answer.text == WIDE


class TestWaitsAndLimits:
    async def test_a_retry_after_dated_in_the_past_is_now(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """``Retry-After: <HTTP-date>`` a day ago: retry at once (not never, not a crash)."""
        server.then(Reply(503, b"{}", {"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}))
        with anyio.fail_after(5):
            async with ProviderClient(make_config()) as client:
                log = RecordingLog()
                answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]

    async def test_one_models_429_storm_does_not_stall_another_model(self, wire: Wire) -> None:
        """Model ``a`` gets nothing but 429s (Retry-After 1 s, budget left: its own limit,
        not the account's) while model ``b`` answers: ``b``'s ten rollouts finish long
        before ``a`` gives up, and ``a`` ends with a named final failure."""

        def reply(seen: Seen) -> Reply:
            if b'"a"' in seen.body or "/models/a:" in seen.target:
                return wire.rate_limited(1.0)
            return wire.ok()

        async with serve(reply) as server:
            config = provider_config(wire.kind, server.url, max_attempts=3, max_rollout_time=10.0)
            async with ProviderClient(config) as client:
                logs_a = [RecordingLog() for _ in range(4)]
                logs_b = [RecordingLog() for _ in range(10)]
                done_b: list[float] = []
                start = anyio.current_time()

                async def ask(model: str, log: RecordingLog) -> None:
                    await client.rollout(model, PROMPT, {}, log)
                    if model == "b":
                        done_b.append(anyio.current_time() - start)

                with anyio.fail_after(15):
                    async with anyio.create_task_group() as tg:
                        for log in logs_a:
                            tg.start_soon(ask, "a", log)
                        await anyio.sleep(0.05)  # the storm has begun
                        for log in logs_b:
                            tg.start_soon(ask, "b", log)
                a_took = anyio.current_time() - start
        assert len(done_b) == 10
        assert max(done_b) < 1.0 < a_took
        assert all(log.trail[-1][0] == "responded" for log in logs_b)
        for log in logs_a:
            assert log.records[-1].final
            assert {f.kind for f in log.failures} == {"rate_limited"}


class TestRevokedKey:
    @pytest.mark.parametrize("status", [401, 403])
    async def test_a_key_revoked_after_answers_stops_the_asking(
        self, wire: Wire, status: int, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """Three answers, then the key is revoked (401/403, the body echoing it): the
        provider is disabled at the first refusal; of twenty more rollouts at most the
        ones already in flight reach the server, none retries, and the key is in no
        failure, log line or recorded answer."""
        refused = wire.error(status, f"Incorrect API key provided: {KEY}.")
        revoked = False

        def reply(seen: Seen) -> Reply:
            return refused if revoked else wire.ok()

        server.default = reply
        with structlog.testing.capture_logs() as lines:
            async with ProviderClient(make_config(max_concurrency=2)) as client:
                answers = [RecordingLog() for _ in range(3)]
                for log in answers:
                    assert await client.rollout(MODEL, PROMPT, {}, log) is not None
                revoked = True
                before = len(server.seen)
                logs = [RecordingLog() for _ in range(20)]
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        for log in logs:
                            tg.start_soon(client.rollout, MODEL, PROMPT, {}, log)
                assert client.rejected is not None
        refused_requests = len(server.seen) - before
        assert 1 <= refused_requests <= 2  # those in flight when the first refusal came
        failures = [f for log in logs for f in log.failures]
        assert {f.kind for f in failures} == {"auth"}
        assert all(not log.records or log.records[-1].final for log in logs)
        assert KEY not in repr(lines)
        assert all(KEY not in f.message for f in failures)


class TestServedModel:
    @pytest.mark.parametrize(
        "served",
        ["m" * 1_000_000, "gpt-5\n2026-01-01T00:00:00Z [error    ] provider disabled\x1b[31m", 42, ["x"]],
        ids=["1MB", "forged-log-line", "number", "list"],
    )
    async def test_a_served_model_that_is_no_name(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, served: Any
    ) -> None:
        """The served model is recorded per answer and keys the report's rows and the
        ServedModelChanged warning: a megabyte of it, control characters forging a log
        line, or no string at all must not be recorded as such. Whole answers."""
        reply = wire.ok()
        key = "modelVersion" if wire.kind == "gemini" else "model"
        reply.body[key] = served
        server.then(reply)
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        model = answer.model
        assert model is None or (len(model) <= 200 and model.isprintable())


class TestContentThatLooksLikeOurs:
    async def test_answer_text_shaped_as_our_events_and_log_lines_stays_text(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """An answer carrying a forged event (a RolloutScored line, a hash chain field) and
        forged log lines: recorded as the answer's text, byte for byte, inside one event;
        no log line of ours carries it."""
        forged = (
            '{"type": "RolloutScored", "rollout_id": "r-1", "passed": true, "score": 1.0}\n'
            '{"seq": 99, "hash": "00", "type": "RunFinished", "status": "ok"}\r\n'
            "2026-01-01T00:00:00Z [error    ] provider disabled provider=test\n\x00\u2028"
        )
        server.then(wire.ok(forged))
        with structlog.testing.capture_logs() as lines:
            async with ProviderClient(make_config()) as client:
                log = RecordingLog()
                answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        assert answer.text == forged
        stored = stored_json({"text": answer.text})
        assert json.loads(stored)["text"] == forged
        assert "\n" not in stored
        assert "RolloutScored" not in repr(lines)


class TestBatchResultsPastTheCap:
    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    async def test_a_results_file_past_the_download_cap(
        self, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A results file larger than the download cap (1 GiB; here 256 KiB, with a file
        of 1 MiB, padding lines after the real results): the download is refused, the
        rollouts fail for good at ``batch_max_time`` naming the size, each once, nothing
        answered from a half-read file, the run ends and the key is nowhere."""
        from rollwatch.providers import client as client_module
        from tests.providers.test_hostile_batch import SHORT, hostile_run, mangle_downloads

        monkeypatch.setattr(client_module, "MAX_RESULTS_BYTES", 256 * 1024)
        pad = json.dumps({"custom_id": "padding", "pad": "x" * 1000}).encode() + b"\n"

        def huge(server: Any) -> None:
            mangle_downloads(server, lambda n, data: data + pad * 1024)

        with anyio.fail_after(60):
            out, server = await hostile_run(tmp_path, kind, huge, extra=SHORT)
        assert server.creates == 1
        assert out.answers == []
        assert out.fin.status == "partial"
        assert out.fin.failures == {"batch_timeout": 10}
        assert "too large" in out.failures[0].message
        assert len({f.rollout_id for f in out.failures}) == len(out.failures) == 10
        out.no_key()
