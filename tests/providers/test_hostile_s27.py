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
