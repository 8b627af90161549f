"""The behaviour every wire format shares, run against openai, anthropic and gemini.

Each test talks to a real loopback server speaking that format. Times come from the
server's and the attempt log's records; only lower bounds on waits a provider demanded
are asserted, never how fast we are.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable

import anyio
import pytest
import structlog

from rollwatch.config import ProviderConfig
from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import MODEL
from tests.providers.fakes import KEY, RecordingLog, Wire
from tests.providers.loopback import LoopbackServer, Reply, Seen, serve

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")
MakeConfig = Callable[..., ProviderConfig]


async def one(client: ProviderClient, params: dict[str, object] | None = None) -> RecordingLog:
    log = RecordingLog()
    await client.rollout(MODEL, PROMPT, params or {}, log)
    return log


class TestAnswer:
    async def test_answer_is_normalized(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A 200 becomes one Answer: text, reasoning, finish reason, usage, request id,
        model, latency; the log gets requested(1) then responded(1) with the cost."""
        server.then(wire.ok("def f():\n    return 1", reasoning="think first"))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {"temperature": 0.5}, log)
        assert answer is not None
        assert answer.text == "def f():\n    return 1"
        assert answer.reasoning == "think first"
        assert answer.finish_reason == wire.finish
        assert answer.usage == wire.usage
        assert answer.request_id == wire.request_id
        assert answer.model == wire.model_echo
        assert answer.latency_ms > 0
        assert log.trail == [("requested", 1), ("responded", 1)]
        assert log.records[1].answer == answer
        assert log.records[1].cost == pytest.approx(client.cost(MODEL, wire.usage))

    async def test_request_goes_where_the_format_says(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """POST to the documented path with the key in the documented header; the recorded
        request is the body exactly as the server received it."""
        async with ProviderClient(make_config()) as client:
            log = await one(client)
        (seen,) = server.seen
        assert seen.method == "POST"
        assert seen.target == wire.path(MODEL)
        assert wire.key_of(seen.headers) == KEY
        assert seen.headers["content-type"] == "application/json"
        assert log.records[0].request == seen.json()
        assert wire.prompt_of(seen.json()) == PROMPT.text
        assert PROMPT.system is not None
        assert PROMPT.system in seen.body.decode()

    async def test_config_system_prompt_is_the_fallback(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """Without a system prompt in the Prompt, the provider's system_prompt is sent."""
        async with ProviderClient(make_config(system_prompt="Be terse.")) as client:
            await client.rollout(MODEL, Prompt("Write f()."), {}, RecordingLog())
        assert "Be terse." in server.seen[0].body.decode()

    async def test_no_reasoning_is_none(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """An answer without reasoning has ``reasoning=None``, not an empty string."""
        async with ProviderClient(make_config()) as client:
            answer = await client.rollout(MODEL, PROMPT, {}, RecordingLog())
        assert answer is not None
        assert answer.reasoning is None


class TestRetries:
    @pytest.mark.parametrize(
        ("status", "kind"),
        [(500, "server_error"), (502, "server_error"), (503, "overloaded"), (529, "overloaded")],
    )
    async def test_transient_status_is_retried(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, status: int, kind: str
    ) -> None:
        """5xx and 529 are recorded as a retryable, non-final failure, then retried."""
        server.then(wire.error(status, "The server had an error while processing your request."))
        async with ProviderClient(make_config()) as client:
            log = await one(client)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        (err,) = log.failures
        assert (err.kind, err.status, err.retryable) == (kind, status, True)
        assert not log.records[1].final
        assert "server had an error" in err.message

    @pytest.mark.parametrize(
        ("reply", "kind", "says"),
        [
            (Reply(action="malformed"), "bad_response", "not JSON"),
            (Reply(action="cut"), "bad_response", "cut off"),
            (Reply(action="drop"), "connection", "disconnected"),
            (
                Reply(200, b"<html>502 Bad Gateway</html>", {"content-type": "text/html"}),
                "bad_response",
                "not JSON",
            ),
            (
                Reply(200, b"not gzip at all", {"content-encoding": "gzip"}),
                "bad_response",
                "decode",
            ),
        ],
        ids=["malformed-json", "cut-off-body", "dropped-connection", "html-body", "bad-gzip"],
    )
    async def test_broken_responses_are_retried(
        self,
        wire: Wire,
        server: LoopbackServer,
        make_config: MakeConfig,
        reply: Reply,
        kind: str,
        says: str,
    ) -> None:
        """Malformed and cut-off bodies and dropped connections are retryable failures."""
        server.then(reply)
        async with ProviderClient(make_config()) as client:
            log = await one(client)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        (err,) = log.failures
        assert (err.kind, err.status, err.retryable) == (kind, None, True)
        assert says in err.message

    async def test_shape_errors_are_bad_responses(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """Valid JSON of the wrong shape is a retryable bad_response, never a crash."""
        server.then(Reply(200, {"unexpected": True}), Reply(200, [1, 2, 3]))
        async with ProviderClient(make_config()) as client:
            log = await one(client)
        assert [e.kind for e in log.failures] == ["bad_response", "bad_response"]
        assert log.trail[-1] == ("responded", 3)

    async def test_slow_answer_times_out(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """An answer slower than ``timeout`` is a retryable timeout; the retry succeeds.
        (1 s, not less: under a loaded test run the retry's own prompt answer took more than
        0.2 s, and timed out too.)"""
        server.then(Reply(action="stall"))
        async with ProviderClient(make_config(timeout=1.0)) as client:
            log = await one(client)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        (err,) = log.failures
        assert (err.kind, err.retryable) == ("timeout", True)
        assert log.records[1].at - log.records[0].at >= 1.0

    async def test_attempts_are_capped(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """After ``max_attempts`` failures the last one is final and rollout returns None."""
        server.then(*(wire.error(500, "boom") for _ in range(10)))
        async with ProviderClient(make_config(max_attempts=3)) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is None
        assert log.trail == [
            ("requested", 1),
            ("failed", 1),
            ("requested", 2),
            ("failed", 2),
            ("requested", 3),
            ("failed", 3),
        ]
        assert [r.final for r in log.records if r.what == "failed"] == [False, False, True]
        assert len(server.seen) == 3

    async def test_rollout_time_is_capped(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A demanded wait beyond ``max_rollout_time`` ends the rollout at once (final)."""
        server.then(wire.rate_limited(30))
        async with ProviderClient(make_config(max_rollout_time=5.0)) as client:
            log = RecordingLog()
            with anyio.fail_after(5):
                assert await client.rollout(MODEL, PROMPT, {}, log) is None
        assert log.trail == [("requested", 1), ("failed", 1)]
        assert log.records[1].final
        assert log.failures[0].retry_after == pytest.approx(30)


class TestFailFast:
    @pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request"), (404, "not_found")])
    async def test_client_errors_fail_without_retry(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, status: int, kind: str
    ) -> None:
        """400 and 404 fail that rollout at once (final), with the provider's message,
        and leave the provider usable for the next rollout."""
        server.then(wire.error(status, "model 'nope' does not exist or bad field 'tempreature'"))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {}, log) is None
            assert client.disabled is None
            assert await client.rollout(MODEL, PROMPT, {}, RecordingLog()) is not None
        assert log.trail == [("requested", 1), ("failed", 1)]
        (err,) = log.failures
        assert (err.kind, err.status, err.retryable) == (kind, status, False)
        assert log.records[1].final
        assert "does not exist" in err.message

    async def test_bad_params_fail_before_sending(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """Params that would replace what rollwatch sets fail the rollout without a request."""
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, {"stream": True}, log) is None
        assert log.trail == [("failed", 1)]
        assert log.failures[0].kind == "invalid_request"
        assert server.seen == []

    @pytest.mark.parametrize(
        "params",
        [{"temperature": float("nan")}, {"seed": datetime.date(2026, 1, 1)}],
        ids=["nan", "toml-date"],
    )
    async def test_params_that_are_not_json(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, params: dict[str, object]
    ) -> None:
        """Params JSON cannot carry fail the rollout before anything is sent or recorded."""
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            assert await client.rollout(MODEL, PROMPT, params, log) is None
        assert log.trail == [("failed", 1)]
        assert log.failures[0].kind == "invalid_request"
        assert server.seen == []


class TestAuth:
    async def test_bad_key_disables_the_provider_after_one_request(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A 401 fails its rollout, disables the provider with ONE error log line, and
        every other rollout returns None with no request and no record."""
        server.then(wire.error(401, f"Incorrect API key provided: {KEY[:8]}***{KEY[-4:]}"))
        logs = [RecordingLog() for _ in range(20)]
        with structlog.testing.capture_logs() as captured:
            async with (
                ProviderClient(make_config(max_concurrency=1)) as client,
                anyio.create_task_group() as tg,
            ):
                for log in logs:
                    tg.start_soon(client.rollout, MODEL, PROMPT, {}, log)
        assert len(server.seen) == 1
        assert client.disabled is not None
        assert client.disabled.kind == "auth"
        (first,) = [log for log in logs if log.records]
        assert first.trail == [("requested", 1), ("failed", 1)]
        assert first.records[1].final
        assert first.failures[0].status == 401
        errors = [e for e in captured if e["log_level"] == "error"]
        assert len(errors) == 1
        assert errors[0]["provider"] == f"test-{wire.kind}"
        assert errors[0]["model"] == MODEL
        assert errors[0]["status"] == 401
        assert await client.rollout(MODEL, PROMPT, {}, RecordingLog()) is None
        assert len(server.seen) == 1

    async def test_forbidden_disables_too(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """403 is an auth failure like 401."""
        server.then(wire.error(403, "Permission denied"))
        async with ProviderClient(make_config()) as client:
            await one(client)
            assert client.disabled is not None
            assert client.disabled.status == 403


class TestRateLimits:
    async def test_wait_honours_the_demand(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """After a 429 demanding a wait (Retry-After, or Gemini's RetryInfo), the retry
        reaches the server no sooner than that wait after the 429 was sent."""
        server.then(wire.rate_limited(0.4))
        async with ProviderClient(make_config()) as client:
            log = await one(client)
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        err = log.failures[0]
        assert (err.kind, err.status, err.retryable) == ("rate_limited", 429, True)
        assert err.retry_after == pytest.approx(0.4)
        first, second = server.seen
        assert first.replied_at is not None
        assert second.at - first.replied_at >= 0.4

    async def test_plain_429_delays_only_its_own_request(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A 429 without evidence of an exhausted budget is that request's alone: rollouts
        started after it, on other tasks, go at once, while its own retry waits out the
        Retry-After (counted at the server)."""
        server.then(wire.rate_limited(1.0))
        async with ProviderClient(make_config(max_concurrency=8)) as client:
            first = RecordingLog()
            others = [RecordingLog() for _ in range(3)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.rollout, MODEL, PROMPT, {}, first)
                await first.wait_for("failed")
                for log in others:
                    tg.start_soon(client.rollout, MODEL, PROMPT, {}, log)
                # All three reach the server while the first still waits out its second.
                await server.wait_for_requests(4)
                assert first.trail == [("requested", 1), ("failed", 1)]
            assert client.stats.paused_s == 0
        limited = server.seen[0]
        assert limited.replied_at is not None
        assert len(server.seen) == 5
        retry = server.seen[4]
        assert retry.at - limited.replied_at >= 1.0
        assert first.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        for log in others:
            assert log.trail == [("requested", 1), ("responded", 1)]

    async def test_no_request_comes_before_its_retry_after(self, wire: Wire, make_config: MakeConfig) -> None:
        """Under random 429s (a third of all requests, each demanding 0.2 s) across many
        rollouts at once, the server never sees a rollout's request before the wait it
        last demanded of that rollout has passed, and every rollout is answered."""
        rng = random.Random(16)
        not_before: dict[str, float] = {}
        early: list[str] = []

        def reply(seen: Seen) -> Reply:
            key = wire.prompt_of(seen.json())
            if seen.at < not_before.get(key, -1.0):
                early.append(key)
            if rng.random() < 1 / 3:
                not_before[key] = seen.at + 0.2
                return wire.rate_limited(0.2)
            return wire.ok()

        async with serve(reply) as server:
            config = make_config(base_url=server.url, max_concurrency=8, max_attempts=20)
            async with ProviderClient(config) as client:
                logs = [RecordingLog() for _ in range(40)]
                async with anyio.create_task_group() as tg:
                    for i, log in enumerate(logs):
                        prompt = Prompt(f"rollout {i}: write f()", system=PROMPT.system)
                        tg.start_soon(client.rollout, MODEL, prompt, {}, log)
                assert client.stats.paused_s == 0
        assert not_before  # some 429s were sent
        assert early == []
        assert all(log.trail[-1][0] == "responded" for log in logs)

    async def test_exhausted_budget_pauses_every_request(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A 429 whose headers (or Google's QuotaFailure) show the provider's budget used
        up until a reset pauses the whole provider: a rollout that starts after it, on
        another task, reaches the server no sooner than the reset."""
        async with ProviderClient(make_config(max_concurrency=8)) as client:
            # Scripted once the client is up: Anthropic's reset is a wall-clock time.
            server.then(wire.exhausted(0.5))
            first = RecordingLog()
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.rollout, MODEL, PROMPT, {}, first)
                err = (await first.wait_for("failed")).error
                assert err is not None
                assert err.provider_wide
                others = [RecordingLog() for _ in range(3)]
                for log in others:
                    tg.start_soon(client.rollout, MODEL, PROMPT, {}, log)
        limited = server.seen[0]
        assert limited.replied_at is not None
        assert err.retry_after is not None
        assert err.retry_after > 0.2  # the reset, not Anthropic's rounded retry-after of 0
        assert len(server.seen) == 5
        for seen in server.seen[1:]:
            assert seen.at - limited.replied_at >= err.retry_after
        for log in others:
            assert log.trail == [("requested", 1), ("responded", 1)]

    async def test_plain_429s_narrow_the_window_gently_once_per_burst(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """Several plain 429s for requests sent together cut the concurrency window once,
        and gently (8 → 6.8, not 4); successes grow it back."""
        server.then(*(wire.rate_limited(0.05) for _ in range(4)))
        async with ProviderClient(make_config(max_concurrency=8)) as client:
            gate = anyio.Event()

            async def go() -> None:
                await gate.wait()
                await client.rollout(MODEL, PROMPT, {}, RecordingLog())

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(go)
                await anyio.wait_all_tasks_blocked()
                gate.set()
            stats = client.stats
            assert stats.slowdowns == 1
            assert stats.errors == {"rate_limited": 4}
            assert stats.rollouts_answered == 4
            # 6.8 and four successes' growth: 7.9 (a halving would have left 5.7).
            assert stats.window == 7
            for _ in range(10):
                await one(client)
            assert client.stats.window == 8

    async def test_exhausted_budget_halves_the_window(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """A 429 showing the budget used up is the strong signal: the window halves."""
        server.then(wire.exhausted(0.05))
        async with ProviderClient(make_config(max_concurrency=8)) as client:
            await one(client)
            assert (client.stats.slowdowns, client.stats.window) == (1, 4)


class TestConcurrency:
    async def test_every_slot_reaches_the_server_at_once(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """With max_concurrency rollouts in flight, all their requests are at the server
        together: the connection pools behind the client never queue one."""
        n = 11  # several httpx pools, the last one partly filled
        server.then(*(Reply(action="hold") for _ in range(n)))
        async with ProviderClient(make_config(max_concurrency=n)) as client:
            logs = [RecordingLog() for _ in range(n + 3)]
            async with anyio.create_task_group() as tg:
                for log in logs:
                    tg.start_soon(client.rollout, MODEL, PROMPT, {}, log)
                await server.wait_for_requests(n)
                await anyio.wait_all_tasks_blocked()
                assert len(server.seen) == n
                assert client.stats.in_flight == n
                server.release.set()
        assert all(log.trail == [("requested", 1), ("responded", 1)] for log in logs)
        assert len(server.seen) == n + 3


class TestCancellation:
    async def test_cancel_in_flight_is_recorded(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        """Cancelling a rollout mid-request records a final ``cancelled`` failure."""
        server.then(Reply(action="stall"))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.rollout, MODEL, PROMPT, {}, log)
                await server.wait_for_requests(1)
                tg.cancel_scope.cancel()
        assert log.trail == [("requested", 1), ("failed", 1)]
        assert log.failures[0].kind == "cancelled"
        assert log.records[1].final


class TestSecrets:
    async def test_key_appears_nowhere_but_the_auth_header(
        self,
        wire: Wire,
        server: LoopbackServer,
        make_config: MakeConfig,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Through errors that echo the key, transport failures and a disabling 401, the
        key is in no recorded request, failure, log line, URL or captured output."""
        server.then(
            wire.error(400, f"bad request from key {KEY}"),
            wire.error(500, f"internal error for {KEY}"),
            Reply(action="drop"),
            Reply(200, f"not json {KEY}".encode()),
            wire.ok(),
            wire.error(401, f"Incorrect API key provided: {KEY}"),
        )
        logs = [RecordingLog() for _ in range(3)]
        with structlog.testing.capture_logs() as captured:
            async with ProviderClient(make_config(max_concurrency=1)) as client:
                for log in logs:
                    await client.rollout("unpriced-model", PROMPT, {}, log)
                text = repr(client) + repr(client.stats) + repr(client.disabled)
        assert client.disabled is not None
        for log in logs:
            for r in log.records:
                text += repr(r.request) + repr(r.error) + (r.error.message if r.error else "")
        text += repr(captured)
        out = capsys.readouterr()
        text += out.out + out.err
        text += "".join(s.target for s in server.seen)
        assert KEY not in text
        assert KEY[:12] not in text
        assert "[redacted]" in text
        assert all(wire.key_of(s.headers) == KEY for s in server.seen)
