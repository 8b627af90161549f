"""The batch wire formats against hostile answers, through the real provider client and
a loopback server: results that are not what the documentation promises never crash a
run and never send the key anywhere but the configured origin."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollwatch.errors import ProviderError
from rollwatch.providers import ProviderClient
from rollwatch.providers.base import Parsed
from rollwatch.providers.batch import BatchState
from tests.providers.conftest import provider_config
from tests.providers.fakes import KEY, AnthropicWire, OpenAIWire
from tests.providers.loopback import Reply, Seen, serve

pytestmark = pytest.mark.anyio


def _line(item: Any) -> bytes:
    return json.dumps(item).encode() + b"\n"


class TestOpenAIResults:
    async def test_garbage_lines_leave_requests_unanswered(self) -> None:
        """An output file with lines that are not JSON, not objects, without a custom id,
        or with a body of the wrong shape: each good line is an answer, a wrong-shaped
        body a retryable ``bad_response``, the rest are simply absent (unanswered, so
        submitted again) — nothing raises."""
        ok = OpenAIWire().ok("def f():\n    return 1").body
        data = (
            b"not json at all\n"
            + _line(["a", "list"])
            + _line({"response": {"status_code": 200, "body": ok}})
            + _line({"custom_id": "good", "response": {"status_code": 200, "body": ok}})
            + _line({"custom_id": "shape", "response": {"status_code": 200, "body": {"choices": "no"}}})
            + _line({"custom_id": "limited", "response": {"status_code": 429, "body": {"error": {}}}})
            + b"\xff\xfe\n"
        )

        def reply(seen: Seen) -> Reply:
            return Reply(200, data)

        async with serve(reply) as server, ProviderClient(provider_config("openai", server.url)) as client:
            api = client.batch_api()
            out = await api.results(client.send, BatchState("b", "completed", True, results=("file-out",)))
        assert set(out) == {"good", "shape", "limited"}
        assert isinstance(out["good"], Parsed)
        shape, limited = out["shape"], out["limited"]
        assert isinstance(shape, ProviderError)
        assert (shape.kind, shape.retryable) == ("bad_response", True)
        assert isinstance(limited, ProviderError)
        assert (limited.kind, limited.retryable) == ("rate_limited", True)

    async def test_a_failed_download_is_an_error_not_an_empty_result(self) -> None:
        """A 500 on the output file raises a retryable error (the run tries again), rather
        than reading as "no answers" (which would submit every request again)."""

        def reply(seen: Seen) -> Reply:
            return Reply(500, {"error": {"message": "boom"}})

        async with serve(reply) as server, ProviderClient(provider_config("openai", server.url)) as client:
            with pytest.raises(ProviderError) as e:
                await client.batch_api().results(
                    client.send, BatchState("b", "completed", True, results=("f",))
                )
        assert (e.value.kind, e.value.retryable) == ("server_error", True)


class TestAnthropicResults:
    async def test_results_url_on_another_origin_gets_no_request(self) -> None:
        """A ``results_url`` on another origin (here another port) is refused with a
        non-retryable error; that origin receives nothing, so never the key."""

        def never(seen: Seen) -> Reply:
            return Reply(200, b"")

        async with serve(never) as elsewhere:

            def reply(seen: Seen) -> Reply:
                return Reply(
                    200,
                    {
                        "id": "msgbatch_1",
                        "processing_status": "ended",
                        "request_counts": {"succeeded": 1},
                        "results_url": f"{elsewhere.url}/v1/messages/batches/msgbatch_1/results",
                    },
                )

            config = provider_config("anthropic", "http://127.0.0.1:1")
            async with (
                serve(reply) as server,
                ProviderClient(config.model_copy(update={"base_url": server.url})) as c,
            ):
                api = c.batch_api()
                state = await api.poll(c.send, "msgbatch_1")
                assert state.ended
                with pytest.raises(ProviderError) as e:
                    await api.results(c.send, state)
                assert all(s.headers.get("x-api-key") == KEY for s in server.seen)
        assert (e.value.kind, e.value.retryable) == ("bad_response", False)
        assert elsewhere.seen == []

    async def test_result_types(self) -> None:
        """succeeded → answer; errored → error (retryable only for api/overloaded
        errors); expired and canceled → absent (unanswered)."""
        message = AnthropicWire().ok("x").body
        data = b"".join(
            _line({"custom_id": cid, "result": result})
            for cid, result in [
                ("ok", {"type": "succeeded", "message": message}),
                (
                    "bad",
                    {
                        "type": "errored",
                        "error": {"type": "error", "error": {"type": "invalid_request_error"}},
                    },
                ),
                (
                    "busy",
                    {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error"}}},
                ),
                ("late", {"type": "expired"}),
                ("gone", {"type": "canceled"}),
                ("odd", {"type": "something new"}),
            ]
        )

        def reply(seen: Seen) -> Reply:
            return Reply(200, data)

        async with serve(reply) as server, ProviderClient(provider_config("anthropic", server.url)) as client:
            url = f"{server.url}/v1/messages/batches/b/results"
            out = await client.batch_api().results(
                client.send, BatchState("b", "ended", True, results=(url,))
            )
        assert set(out) == {"ok", "bad", "busy"}
        assert isinstance(out["ok"], Parsed)
        bad, busy = out["bad"], out["busy"]
        assert isinstance(bad, ProviderError)
        assert isinstance(busy, ProviderError)
        assert (bad.retryable, busy.retryable) == (False, True)
