"""A hostile or broken provider, run against openai, anthropic and gemini.

Every test talks to a real loopback server speaking the wire format but misbehaving:
bodies nested too deep to parse, token counts no model could use, a key echoed just
where an excerpt cuts it, absurd rate-limit resets, a decompression bomb, a body that
drips, a redirect to another host. The promise each one checks: a clear recorded
failure (then a retry that gets the real answer), no hang past the configured
deadlines, and the key in no recorded failure or log line.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from rollwatch.config import ProviderConfig
from rollwatch.events import RolloutResponded, stored_json
from rollwatch.providers import Prompt, ProviderClient
from rollwatch.providers.client import ANSWERS_IN_FLIGHT, MAX_IN_FLIGHT_BYTES, ByteBudget
from rollwatch.providers.retry import MAX_HONOURED_WAIT
from tests.providers.conftest import MODEL
from tests.providers.fakes import KEY, KEY_ENV, RecordingLog, Wire
from tests.providers.loopback import LoopbackServer, Reply, serve

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")
MakeConfig = Callable[..., ProviderConfig]
DEEP = 100_000
ROOT = Path(__file__).resolve().parents[2]
"""Nesting depth of the deep bodies: far past Python's recursion limit."""


def _usage_path(wire: Wire) -> tuple[str, str]:
    """Where ``wire``'s whole answer keeps its usage, and its input token count."""
    return {
        "openai": ("usage", "prompt_tokens"),
        "anthropic": ("usage", "input_tokens"),
        "gemini": ("usageMetadata", "promptTokenCount"),
    }[wire.kind]


def _with_input_tokens(wire: Wire, value: Any) -> Reply:
    reply = wire.ok()
    outer, inner = _usage_path(wire)
    reply.body[outer][inner] = value
    return reply


class TestUnparseableBodies:
    async def test_a_body_nested_too_deep_is_a_bad_response(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A 200 whose JSON is nested 100k deep (json.loads raises RecursionError, not
        ValueError) is a recorded, retried ``bad_response``; the next attempt answers."""
        server.then(Reply(200, b"[" * DEEP + b"]" * DEEP))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert log.failures[0].kind == "bad_response"
        assert "not JSON" in log.failures[0].message
        assert answer is not None

    async def test_an_error_body_nested_too_deep_is_still_classified(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A 500 (and a 429) whose body is nested too deep keeps its status's kind."""
        deep = b'{"error":' * DEEP + b"1" + b"}" * DEEP
        server.then(Reply(500, deep), Reply(429, deep))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert [f.kind for f in log.failures] == ["server_error", "rate_limited"]
        assert all(len(f.message) <= 400 for f in log.failures)
        assert answer is not None

    async def test_a_stream_event_nested_too_deep_is_a_bad_response(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        deep = b"data: " + b"[" * DEEP + b"]" * DEEP + b"\n\n"
        server.then(Reply(200, deep, {"content-type": "text/event-stream"}), wire.sse())
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert log.failures[0].kind == "bad_response"
        assert answer is not None

    async def test_invalid_utf8_is_a_bad_response(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        server.then(Reply(200, b'{"choices": "\xff\xfe\xc3"}'))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is not None
        assert log.failures[0].kind == "bad_response"


class TestOddNumbers:
    @pytest.mark.parametrize("value", [10**400, 2**64, -1], ids=["1e400", "2^64", "negative"])
    async def test_an_impossible_token_count_is_a_bad_response(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, value: int
    ) -> None:
        """A token count no answer can have (10**400 made the cost overflow a float and
        the rollout crash; a negative one made a negative cost) is a recorded
        ``bad_response`` naming the field, retried; usage is never made up."""
        server.then(_with_input_tokens(wire, value))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert log.failures[0].kind == "bad_response"
        assert _usage_path(wire)[1] in log.failures[0].message
        assert answer is not None
        assert answer.usage == wire.usage

    @pytest.mark.parametrize("value", [1e999, "NaN", 12.5, [1], True], ids=str)
    async def test_a_token_count_that_is_not_an_integer_is_a_bad_response(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, value: Any
    ) -> None:
        """Floats (1e999 decodes to inf), strings, lists, booleans: not a count, and
        nothing crashes. Until session s28 they were read as a missing count (0), which
        made the tokens free (an under-counted cost); now a retried ``bad_response``
        naming the field, as an impossible count is (``test_hostile_s28.py``)."""
        server.then(_with_input_tokens(wire, value))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert log.failures[0].kind == "bad_response"
        assert _usage_path(wire)[1] in log.failures[0].message
        assert answer is not None
        assert answer.usage == wire.usage


class TestSecrets:
    async def test_an_excerpt_never_cuts_the_key_in_half(
        self,
        wire: Wire,
        server: LoopbackServer,
        make_config: MakeConfig,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A key with no vendor shape (a hex token, as Together or a self-hosted vLLM
        use), echoed just where the 300-character excerpt ends: before, the excerpt kept
        the key's first characters and the exact-key redaction no longer matched."""
        key = "0123456789abcdef" * 4
        monkeypatch.setenv(KEY_ENV, key)
        server.then(
            wire.error(500, "x" * 290 + f" key={key} was used"),
            Reply(200, ("y" * 110 + f" {key} not json").encode()),
            wire.error(401, "z" * 285 + f" {key}"),
        )
        with structlog.testing.capture_logs() as captured:
            async with ProviderClient(make_config(max_concurrency=1)) as client:
                log = RecordingLog()
                assert await client.rollout(MODEL, PROMPT, {}, log) is None
        assert [f.kind for f in log.failures] == ["server_error", "bad_response", "auth"]
        text = "".join(f.message for f in log.failures) + repr(captured) + repr(client.disabled)
        assert key[:6] not in text
        assert "[redacted]" in text

    async def test_a_short_key_is_not_masked_inside_the_answer(
        self,
        wire: Wire,
        server: LoopbackServer,
        make_config: MakeConfig,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A key of one letter (a local server's ``k``) is not masked in whole answers: it
        would rewrite them (``prompt_tokens`` read ``prompt_to[redacted]ens``, and every
        answer cost nothing, so a budget never held). Its answer reads whole."""
        monkeypatch.setenv(KEY_ENV, "k")
        server.then(wire.ok())
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert answer is not None
        assert answer.usage.input_tokens == wire.usage.input_tokens > 0
        assert answer.text == "def f():\n    return 1"


class TestWaits:
    @pytest.mark.parametrize("reset", ["100000h", "9" * 400 + "h"], ids=["11y", "inf"])
    async def test_an_absurd_openai_reset_pauses_no_longer_than_any_other_demand(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, reset: str
    ) -> None:
        """An answer whose exhausted window resets in 11 years (or in ``inf`` seconds,
        as a 400-digit Go duration reads) pauses the provider at most
        MAX_HONOURED_WAIT, as Retry-After and Anthropic's resets are capped."""
        if wire.kind != "openai":
            pytest.skip("x-ratelimit-reset-* (Go durations) is OpenAI's dialect")
        reply = wire.ok()
        reply.headers.update({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset})
        server.then(reply)
        async with ProviderClient(make_config()) as client:
            assert await client.rollout(MODEL, PROMPT, {}, RecordingLog()) is not None
            assert 0 < client.stats.paused_s <= MAX_HONOURED_WAIT

    @pytest.mark.parametrize("value", ["1e12", "-5", "nan", "inf", "Wed, 21 Oct 2065 07:28:00 GMT"])
    async def test_an_absurd_retry_after_ends_the_rollout_now(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, value: str
    ) -> None:
        """A 503 demanding a wait past max_rollout_time fails for good at once; one in
        the past (or NaN) is "now" and the retry answers. Nothing hangs."""
        server.then(Reply(503, b"{}", {"retry-after": value}))
        with anyio.fail_after(5):
            async with ProviderClient(make_config(max_rollout_time=10.0)) as client:
                log = RecordingLog()
                answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.failures[0].kind == "overloaded"
        if value in ("-5", "nan"):
            assert answer is not None
        else:
            assert answer is None
            assert log.records[-1].final


STACKED_BOMB_SCRIPT = """
import json, resource, zlib
import anyio
from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import MODEL, provider_config
from tests.providers.fakes import WIRES, RecordingLog
from tests.providers.loopback import Reply, serve

def gz(chunks):
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    for chunk in chunks:
        yield c.compress(chunk)
    yield c.flush()

BOMB = b"".join(gz(gz(b" " * (1 << 24) for _ in range(64))))  # 1 GB inside, twice
HEADERS = {"content-encoding": "gzip, gzip"}
wire = WIRES[KIND]

async def main():
    out = []
    async with serve(lambda seen: Reply(200, BOMB, HEADERS)) as server:
        for stream in (False, True):
            config = provider_config(wire.kind, server.url, stream=stream, timeout=30.0, max_attempts=1)
            async with ProviderClient(config) as client:
                log = RecordingLog()
                await client.rollout(MODEL, Prompt("x"), {}, log)
            out.append([[f.kind, f.message] for f in log.failures])
        async with ProviderClient(provider_config(wire.kind, server.url, timeout=30.0)) as client:
            out.append(await client.served_models())
    print(json.dumps(out))

vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
room = (vm << 10) + (700 << 20)
resource.setrlimit(resource.RLIMIT_AS, (room, room))
anyio.run(main)
"""


# --- a raw server for what LoopbackServer cannot send -----------------------------------


@asynccontextmanager
async def raw_serve(handler: Callable[[SocketStream], Any]) -> AsyncIterator[str]:
    """A server on 127.0.0.1 that reads one request head and body per connection and
    hands the socket to ``handler``; yields its URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve_one(stream: SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                head = await reader.receive_until(b"\r\n\r\n", 65536)
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.receive_exactly(length)
                await handler(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status} X\r\n{lines}\r\n".encode()


class TestTransport:
    async def test_a_body_that_drips_is_cut_at_the_deadline(self, wire: Wire) -> None:
        """One byte every 0.2 s never trips the read timeout; the total deadline ends it."""
        from tests.providers.conftest import provider_config

        async def drip(stream: SocketStream) -> None:
            await stream.send(_head(200, {"content-type": "application/json", "content-length": "100000"}))
            while True:
                await stream.send(b" ")
                await anyio.sleep(0.2)

        async with raw_serve(drip) as url:
            config = provider_config(wire.kind, url, timeout=1.0, max_attempts=2, max_rollout_time=5.0)
            with anyio.fail_after(6):
                async with ProviderClient(config) as client:
                    log = RecordingLog()
                    assert await client.rollout(MODEL, PROMPT, {}, log) is None
        assert [f.kind for f in log.failures] == ["timeout", "timeout"]

    async def test_a_decompression_bomb_is_refused(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """100 kB of gzip that inflates to 100 MB: refused as too large once the
        decoded body passes the limit, never held whole; the retry answers."""
        body = json.dumps(wire.ok().body).encode()
        bomb = gzip.compress(b" " * 100_000_000 + body, compresslevel=9)
        server.then(Reply(200, bomb, {"content-encoding": "gzip"}))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.failures[0].kind == "bad_response"
        assert "too large" in log.failures[0].message
        assert answer is not None

    def test_a_body_compressed_twice_is_refused_before_it_inflates(self, wire: Wire) -> None:
        """1.8 kB of gzip inside gzip (``Content-Encoding: gzip, gzip``) that inflates to
        1 GB: httpx inflates a network chunk through both layers at once, so the size cap
        (which looks after each chunk) came too late: the whole gigabyte was one string.
        Run where the address space leaves 700 MB of room, a whole answer, a streamed one
        and the model list each died of MemoryError; now each is refused by its headers."""
        script = STACKED_BOMB_SCRIPT.replace("KIND", repr(wire.kind))
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), KEY_ENV: KEY},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        whole, streamed, models = json.loads(proc.stdout.strip().splitlines()[-1])
        for failures in (whole, streamed):
            assert failures == [["bad_response", "the body is compressed 2 times over (gzip, gzip)"]]
        assert models is None

    async def test_a_redirect_off_host_is_not_followed_with_the_key(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        async with serve(lambda seen: wire.ok()) as elsewhere:
            server.then(Reply(307, b"", {"location": elsewhere.url + wire.path(MODEL)}))
            async with ProviderClient(make_config()) as client:
                log = RecordingLog()
                assert await client.rollout(MODEL, PROMPT, {}, log) is None
            assert elsewhere.seen == []
        assert log.failures[0].status == 307
        assert log.records[-1].final


class TestAnswersInFlight:
    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    async def test_huge_answers_at_once_are_bounded_in_all(self, stream: bool) -> None:
        """Answers sent at once, each under the 64 MiB one answer may have, and held just
        short of their end: before, every one was read whole (64 MiB times
        ``max_concurrency`` at worst, twice over while parsed). Now the bytes of answers
        being read are bounded in all, by a budget every client of the process shares
        (:data:`MAX_IN_FLIGHT_BYTES`, 256 MiB; here one of 12 MiB, for four answers of 5 MiB):
        the answer that would pass it is a retryable ``bad_response``, answered again later."""
        from tests.providers.conftest import provider_config
        from tests.providers.fakes import WIRES

        wire, n, size = WIRES["openai"], 4, 5 * 2**20
        budget = ByteBudget(12 * 2**20)
        reply = wire.sse(text="x" * size) if stream else wire.ok(text="x" * size)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        content_type = "text/event-stream" if stream else "application/json"
        dropped = anyio.Event()

        async def huge(conn: SocketStream) -> None:
            await conn.send(_head(200, {"content-type": content_type, "content-length": str(len(body))}))
            cut = len(body) - 1024
            for i in range(0, cut, 1 << 20):
                await conn.send(body[i : min(i + (1 << 20), cut)])

            async def watch() -> None:
                try:
                    await conn.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    dropped.set()  # the client let this answer go

            # The rest once the client has let one answer go (or after 20 s, when it
            # holds every one).
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                with anyio.move_on_after(20):
                    await dropped.wait()
                tg.cancel_scope.cancel()
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await conn.send(body[cut:])

        answers: list[Any] = []
        log = RecordingLog()
        async with raw_serve(huge) as url:
            config = provider_config(
                "openai", url, stream=stream, max_concurrency=n, timeout=60.0, max_attempts=30,
                max_rollout_time=120.0,
            )  # fmt: skip
            async with ProviderClient(config, answers_in_flight=budget) as client:

                async def one() -> None:
                    answers.append(await client.rollout(MODEL, PROMPT, {}, log))

                with anyio.fail_after(110):
                    async with anyio.create_task_group() as tg:
                        for _ in range(n):
                            tg.start_soon(one)
        refused = [f for f in log.failures if "allowed in all" in f.message]
        assert refused, [f.message for f in log.failures]
        assert all(f.kind == "bad_response" and f.retryable for f in refused)
        assert len(answers) == n
        assert all(a is not None and len(a.text) == size for a in answers)
        assert 2 * size <= budget.peak <= budget.limit
        assert budget.used == 0

    async def test_every_client_shares_one_budget_by_default(self) -> None:
        from tests.providers.conftest import provider_config

        one, two = (
            ProviderClient(provider_config(kind, "http://127.0.0.1:9")) for kind in ("openai", "gemini")
        )
        assert one._in_flight is two._in_flight is ANSWERS_IN_FLIGHT
        assert ANSWERS_IN_FLIGHT.limit == MAX_IN_FLIGHT_BYTES == 256 * 2**20


class TestHostileStreams:
    async def test_a_line_that_never_ends_is_refused_at_the_size_limit(self, wire: Wire) -> None:
        """An SSE ``data:`` line that streams forever at loopback speed, with no newline:
        before, it grew in memory until the 600 s default timeout (gigabytes); now it is a
        retryable ``bad_response`` once past MAX_BODY_BYTES."""
        from tests.providers.conftest import provider_config

        async def endless(stream: SocketStream) -> None:
            await stream.send(
                _head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"})
            )
            chunk = b"x" * 65536
            await stream.send(b"%x\r\ndata: %s\r\n" % (len(chunk) + 6, chunk))
            while True:
                await stream.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))

        async with raw_serve(endless) as url:
            config = provider_config(wire.kind, url, stream=True, timeout=60.0, max_attempts=1)
            with anyio.fail_after(30):
                async with ProviderClient(config) as client:
                    log = RecordingLog()
                    assert await client.rollout(MODEL, PROMPT, {}, log) is None
        assert log.failures[0].kind == "bad_response"
        assert "too large" in log.failures[0].message

    async def test_a_stream_that_trickles_for_ever_is_cut_at_the_deadline(self, wire: Wire) -> None:
        """Keep-alive comments and empty deltas every 0.1 s, and never the end: no silence
        ever reaches ``stream_idle_timeout``, so the attempt's own deadline (``timeout``)
        must end it, each attempt a recorded ``timeout``, the rollout over by
        ``max_rollout_time``."""
        from tests.providers.conftest import provider_config

        first = wire.sse("").payload().split(b"\n\n")[0] + b"\n\n"

        async def trickle(stream: SocketStream) -> None:
            await stream.send(_head(200, {"content-type": "text/event-stream"}) + first)
            while True:
                await stream.send(b": keep-alive\n\n")
                await anyio.sleep(0.1)

        async with raw_serve(trickle) as url:
            config = provider_config(
                wire.kind, url, stream=True, timeout=1.0, max_attempts=2, max_rollout_time=5.0
            )
            with anyio.fail_after(6):
                async with ProviderClient(config) as client:
                    log = RecordingLog()
                    assert await client.rollout(MODEL, PROMPT, {}, log) is None
        assert [f.kind for f in log.failures] == ["timeout", "timeout"]
        assert log.records[-1].final

    async def test_lines_split_across_writes_and_bare_cr_still_fold(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """CRLF and bare-CR line ends (both SSE), garbage lines and comments between
        events: the answer is the whole answer."""
        reply = wire.sse()
        body = reply.body.replace(b"\n\n", b"\r\n: keep-alive\r\nretry: 10\rid: 7\n\n")
        server.then(Reply(200, body, reply.headers))
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("responded", 1)]
        assert answer is not None
        assert answer.text == "def f():\n    return 1"

    async def test_data_after_the_end_marker_is_ignored(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        reply = wire.sse()
        server.then(Reply(200, reply.body + b"data: {not json\n\ndata: [DONE]\n\n", reply.headers))
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is not None
        assert log.trail == [("requested", 1), ("responded", 1)]


class TestTokenRate:
    async def test_an_absurd_token_count_does_not_stop_the_token_rate(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """An answer claiming 10**15 input tokens (a count, not past MAX_TOKEN_COUNT) is
        recorded as said, but charges the tokens_per_minute limiter at most a minute's
        budget (a request past it the provider itself refuses): before, the provider's
        next request was held 10**15 / 60000 minutes; now at most one minute."""
        server.then(_with_input_tokens(wire, 10**15))
        async with ProviderClient(make_config(tokens_per_minute=60_000)) as client:
            first = await client.rollout(MODEL, PROMPT, {}, RecordingLog())
            assert first is not None
            assert first.usage.input_tokens >= 10**15
            tokens = client.limits._tokens  # the token rate, as the next request meets it
            assert tokens is not None
            now = anyio.current_time()
            assert tokens.reserve(1) - now <= 60.0


class TestErrorMessages:
    async def test_a_huge_error_event_mid_stream_is_recorded_as_an_excerpt(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """An error event whose message is 1 MB: the recorded failure carries an excerpt
        (before, the whole megabyte went into the event log, once per attempt)."""
        error = {"type": "error", "error": {"type": "api_error", "code": 500, "message": "boom " * 200_000}}
        body = b"data: " + json.dumps(error).encode() + b"\n\n"
        server.then(Reply(200, body, {"content-type": "text/event-stream"}), wire.sse())
        async with ProviderClient(make_config(stream=True)) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is not None
        assert log.failures[0].kind == "server_error"
        assert len(log.failures[0].message) < 500

    async def test_a_huge_anthropic_error_with_status_200_is_recorded_as_an_excerpt(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        if wire.kind != "anthropic":
            pytest.skip("an error body with status 200 in Anthropic's shape")
        server.then(
            Reply(200, {"type": "error", "error": {"type": "api_error", "message": "boom " * 200_000}})
        )
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is not None
        # Anthropic's ``api_error`` is its 500: retried as one (it was a ``bad_response``).
        assert (log.failures[0].kind, log.failures[0].retryable) == ("server_error", True)
        assert len(log.failures[0].message) < 500


class TestOddFinishReasons:
    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    @pytest.mark.parametrize(
        "literal", [b"NaN", b"Infinity", b"1e999", b'{"why": NaN}', b"[1, 2]", b"7"], ids=bytes.decode
    )
    async def test_a_finish_reason_that_is_no_string_is_none_and_storable(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, stream: bool, literal: bytes
    ) -> None:
        """A good answer whose finish reason is no string (``NaN``, ``Infinity``, ``1e999``,
        which Python's JSON reader turns into floats the log cannot encode, an object, a
        list, a number): the answer is kept with no finish reason. Before, OpenAI's
        ``finish_reason`` and Anthropic's ``stop_reason`` went into ``RolloutResponded`` as
        they came; a NaN made the append raise and crashed the whole run, its paid answer lost."""
        reply = wire.sse() if stream else wire.ok()
        body = reply.payload()
        finish = f'"{wire.finish}"'.encode()
        assert finish in body
        server.then(Reply(200, body.replace(finish, literal), reply.headers))
        async with ProviderClient(make_config(stream=stream)) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("responded", 1)]
        assert answer is not None
        assert answer.text == "def f():\n    return 1"
        assert answer.finish_reason is None
        stored_json(
            RolloutResponded(
                rollout_id="r", attempt=1, text=answer.text, finish_reason=answer.finish_reason
            ).to_data()
        )


def _escaped(text: str) -> bytes:
    """``text`` as JSON spells it with every character a ``\\u`` escape (valid JSON that
    decodes to ``text`` itself, and holds none of its bytes)."""
    return "".join(f"\\u{ord(c):04x}" for c in text).encode()


class TestKeyEchoedOutOfReach:
    """A provider (or a proxy before it) that echoes the key where the mask of the raw
    body does not look: in a header the request id is read from, or in JSON escapes. Each
    put the key into the event log before: ``RolloutFailed.message`` ("… (request id
    KEY)") and ``RolloutResponded``'s ``request_id``, ``text`` and ``model``."""

    async def test_a_request_id_header_holding_the_key(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        failure, answer = wire.error(500, "boom"), wire.ok()
        for reply in (failure, answer):
            reply.headers.update({"x-request-id": f"Bearer {KEY}", "request-id": f"Bearer {KEY}"})
        server.then(failure, answer)
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            got = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        assert got is not None
        assert KEY not in log.failures[0].message
        assert "[redacted]" in log.failures[0].message
        assert KEY not in repr(got)

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    async def test_the_key_in_json_escapes_in_the_answer(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, stream: bool
    ) -> None:
        reply = wire.sse(f"def f():\n    return '{KEY}'") if stream else wire.ok(f"# {KEY}\ndef f(): ...")
        body = reply.payload().replace(KEY.encode(), _escaped(KEY))
        body = body.replace(wire.model_echo.encode(), _escaped(KEY))
        assert KEY.encode() not in body
        server.then(Reply(200, body, reply.headers))
        async with ProviderClient(make_config(stream=stream)) as client:
            log = RecordingLog()
            got = await client.rollout(MODEL, PROMPT, {}, log)
        assert got is not None
        assert "[redacted]" in got.text
        assert KEY not in repr(got)
