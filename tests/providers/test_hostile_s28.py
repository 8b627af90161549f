"""A hostile or broken provider, session s28: token counts that are no counts.

Real loopback servers speaking each wire format, whole and streamed. A usage count sent
as a string (``"150000"``), a fraction (``12.5``), ``1e999`` (infinity to Python's JSON
reader), a boolean or a list was read as a missing count, 0: the input tokens of an
answer then cost nothing, and a host could make every answer's prompt free (the cost
under-counted, a run's budget spent past its limit). Such a count is now a retryable
``bad_response`` naming the field, counted as billed (the attempt's reservation counts
against the budget), as a negative or 2**53+ count already was. Left as before: an
unreadable count whose loss cannot lower the cost (the answer's one output count, which
the budget then counts at its whole reservation; cached and reasoning counts). A float
holding a whole number (``150.0``) is that number; a count left out or ``null`` is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from rollwatch.config import ProviderConfig
from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import MODEL, provider_config
from tests.providers.fakes import RecordingLog, Wire
from tests.providers.loopback import LoopbackServer, Reply, serve

pytestmark = pytest.mark.anyio

PROMPT = Prompt("Write f() returning 1.", system="Answer with Python code only.")
MakeConfig = Callable[..., ProviderConfig]
INPUT = {"openai": "prompt_tokens", "anthropic": "input_tokens", "gemini": "promptTokenCount"}
OUTPUT = {"openai": "completion_tokens", "anthropic": "output_tokens", "gemini": "candidatesTokenCount"}


def _usage(wire: Wire, body: dict[str, Any]) -> dict[str, Any]:
    usage: dict[str, Any] = body["usageMetadata" if wire.kind == "gemini" else "usage"]
    return usage


def _whole(wire: Wire, field: str, value: Any) -> Reply:
    reply = wire.ok()
    _usage(wire, reply.body)[field] = value
    return reply


NOT_COUNTS = ["150000", 12.5, 1e999, True, [150], {"n": 1}, "NaN"]


class TestCountsThatAreNoCounts:
    @pytest.mark.parametrize("value", NOT_COUNTS, ids=repr)
    @pytest.mark.parametrize("which", ["input", "output"])
    async def test_a_whole_answer_is_retried_unless_its_cost_stays_covered(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, value: Any, which: str
    ) -> None:
        field = (INPUT if which == "input" else OUTPUT)[wire.kind]
        server.then(_whole(wire, field, value))
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            with anyio.fail_after(10):
                answer = await client.rollout(MODEL, PROMPT, {}, log)
        if which == "output" and wire.kind != "gemini":
            # The answer's one output count, unreadable: as before, an answer of unknown
            # output (0), which the run's budget counts at its whole reservation
            # (tests/test_budget_attacks.py, through ``rollwatch run``).
            assert log.trail == [("requested", 1), ("responded", 1)]
            assert answer is not None
            assert answer.usage.output_tokens == 0
            assert answer.usage.input_tokens == wire.usage.input_tokens
            return
        assert log.trail == [("requested", 1), ("failed", 1), ("requested", 2), ("responded", 2)]
        (failure,) = log.failures
        assert (failure.kind, failure.retryable) == ("bad_response", True)
        assert field in failure.message
        assert len(failure.message) < 400  # the value is not quoted (it may be a megabyte)
        assert answer is not None
        assert answer.usage == wire.usage

    async def test_a_streamed_answer_is_retried(self, wire: Wire) -> None:
        """The same through a stream: the usage chunk says ``"150000"``."""
        good = wire.sse()
        field = INPUT[wire.kind]
        body = good.payload()
        needle = {"openai": b'"prompt_tokens": 120', "anthropic": b'"input_tokens": 30', "gemini": None}[
            wire.kind
        ]
        if needle is None:
            needle = b'"promptTokenCount": 120'
        assert needle in body
        bad = body.replace(needle, needle.split(b":")[0] + b': "150000"')
        async with serve(lambda seen: good) as server:
            server.then(Reply(200, bad, dict(good.headers)))
            config = provider_config(wire.kind, server.url, stream=True, max_attempts=2)
            async with ProviderClient(config) as client:
                log = RecordingLog()
                with anyio.fail_after(10):
                    answer = await client.rollout(MODEL, PROMPT, {}, log)
        (failure,) = log.failures
        assert failure.kind == "bad_response"
        assert field in failure.message
        assert answer is not None
        assert answer.usage == wire.usage

    @pytest.mark.parametrize("value", [None, "missing"], ids=["null", "missing"])
    async def test_a_count_left_out_is_still_zero(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig, value: Any
    ) -> None:
        reply = wire.ok()
        field = INPUT[wire.kind]
        if value == "missing":
            del _usage(wire, reply.body)[field]
        else:
            _usage(wire, reply.body)[field] = None
        server.then(reply)
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("responded", 1)]
        assert answer is not None

    async def test_a_whole_number_as_a_float_is_that_number(
        self, wire: Wire, server: LoopbackServer, make_config: MakeConfig
    ) -> None:
        reply = wire.ok()
        usage = _usage(wire, reply.body)
        field = INPUT[wire.kind]
        usage[field] = float(usage[field])
        server.then(reply)
        async with ProviderClient(make_config()) as client:
            log = RecordingLog()
            answer = await client.rollout(MODEL, PROMPT, {}, log)
        assert log.trail == [("requested", 1), ("responded", 1)]
        assert answer is not None
        assert answer.usage == wire.usage
