"""The batch wire formats against hostile answers, through the real provider client and
a loopback server: results that are not what the documentation promises never crash a
run and never send the key anywhere but the configured origin."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from rollwatch.errors import ProviderError
from rollwatch.providers import ProviderClient
from rollwatch.providers.base import Parsed
from rollwatch.providers.batch import BatchState, Lookup, progress_of
from tests.providers.conftest import provider_config
from tests.providers.fakes import KEY, AnthropicWire, GeminiWire, OpenAIWire
from tests.providers.loopback import Reply, Seen, serve

pytestmark = pytest.mark.anyio


def _ok_bad_busy(out: dict[str, Any]) -> None:
    """Results of exactly ``ok`` (an answer), ``bad`` (an error not worth retrying) and
    ``busy`` (one worth retrying)."""
    assert set(out) == {"ok", "bad", "busy"}
    assert isinstance(out["ok"], Parsed)
    bad, busy = out["bad"], out["busy"]
    assert isinstance(bad, ProviderError)
    assert isinstance(busy, ProviderError)
    assert (bad.retryable, busy.retryable) == (False, True)


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
        _ok_bad_busy(out)


class TestAnthropicLookup:
    """The search for a batch whose create answer was lost, by its contents."""

    OURS = frozenset({"r-1", "r-2"})

    @staticmethod
    def _listing(server_url: str, now: float) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
        """Batches (newest first) and their custom ids: ours (running, then ended), a
        decoy of the same size, one already known to the log, one of another size, and
        one with our ids created long before the intent."""

        def at(t: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        ids = {
            "decoy": {"x-1", "x-2"},
            "ours": set(TestAnthropicLookup.OURS),
            "known": set(TestAnthropicLookup.OURS),
            "bigger": {"r-1", "r-2", "r-3"},
            "ancient": set(TestAnthropicLookup.OURS),
        }
        created = {"decoy": now, "ours": now, "known": now, "bigger": now, "ancient": now - 86400}
        views = {
            bid: {
                "id": bid,
                "type": "message_batch",
                "created_at": at(created[bid]),
                "processing_status": "in_progress",
                "request_counts": {"processing": len(ids[bid]), "succeeded": 0},
                "results_url": None,
            }
            for bid in ids
        }
        return views, ids

    async def _find(self, present: list[str]) -> tuple[str | None, list[str]]:
        now = time.time()
        polls: Counter[str] = Counter()
        views: dict[str, dict[str, Any]] = {}
        ids: dict[str, set[str]] = {}

        def reply(seen: Seen) -> Reply:
            t = seen.target
            if t.startswith("/v1/messages/batches?"):
                data = [views[b] for b in present]
                return Reply(200, {"data": data, "has_more": False, "last_id": present[-1]})
            if m := re.fullmatch(r"/v1/messages/batches/(\w+)/results", t):
                lines = [{"custom_id": c, "result": {"type": "expired"}} for c in sorted(ids[m.group(1)])]
                return Reply(200, b"".join(_line(x) for x in lines))
            m = re.fullmatch(r"/v1/messages/batches/(\w+)", t)
            assert m is not None
            bid = m.group(1)
            polls[bid] += 1
            if polls[bid] >= 2:  # each candidate ends at its second poll
                views[bid]["processing_status"] = "ended"
                views[bid]["results_url"] = f"{server.url}/v1/messages/batches/{bid}/results"
            return Reply(200, views[bid])

        async with serve(reply) as server, ProviderClient(provider_config("anthropic", server.url)) as c:
            views, ids = self._listing(server.url, now)

            async def wait() -> None:
                await anyio.sleep(0)

            lookup = Lookup(since=now - 1, custom_ids=self.OURS, known=frozenset({"known"}), wait=wait)
            found = await c.batch_api().find(c.send, "key", lookup)
        return found, sorted(polls)

    async def test_the_batch_of_our_rollouts_is_found_among_decoys(self) -> None:
        """Of five listed batches only two are candidates (created since the intent,
        our size, not known to the log); both are polled until they end, and the one
        whose results carry exactly our rollout ids is the answer."""
        found, polled = await self._find(["decoy", "ours", "known", "bigger", "ancient"])
        assert found == "ours"
        assert polled == ["decoy", "ours"]

    async def test_no_batch_of_ours_is_none(self) -> None:
        """When no candidate holds our rollouts (the create never happened), the search
        says so, and the rollouts are submitted again."""
        found, polled = await self._find(["decoy", "known", "bigger", "ancient"])
        assert found is None
        assert polled == ["decoy"]


class TestGeminiResults:
    async def test_inline_results_by_key_and_hostile_items(self) -> None:
        """An ended operation's inline responses: an answer, a 400-like error (not
        retried), an UNAVAILABLE one (retried), and items without a key or of the wrong
        shape (absent: unanswered, submitted again); counts read from int64 strings."""
        ok = GeminiWire().ok("x").body
        items: list[Any] = [
            {"metadata": {"key": "ok"}, "response": ok},
            {"metadata": {"key": "bad"}, "error": {"code": 3, "message": "no", "status": "INVALID_ARGUMENT"}},
            {"metadata": {"key": "busy"}, "error": {"code": 14, "message": "later", "status": "UNAVAILABLE"}},
            {"response": ok},
            {"metadata": {"key": "odd"}, "response": "not an object"},
            "not an item",
        ]
        op = {
            "name": "batches/b1",
            "done": True,
            "metadata": {
                "state": "BATCH_STATE_SUCCEEDED",
                "batchStats": {"requestCount": "5", "successfulRequestCount": "1"},
                "output": {"inlinedResponses": {"inlinedResponses": items}},
            },
        }

        def reply(seen: Seen) -> Reply:
            assert seen.target == "/batches/b1"
            return Reply(200, op)

        async with serve(reply) as server, ProviderClient(provider_config("gemini", server.url)) as client:
            api = client.batch_api()
            state = await api.poll(client.send, "batches/b1")
            out = await api.results(client.send, state)
        assert (state.ended, state.counts) == (True, {"request_count": 5, "successful_request_count": 1})
        _ok_bad_busy(out)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"total": 10, "completed": 6, "failed": 1}, (7, 10)),
        ({"processing": 3, "succeeded": 5, "errored": 1, "canceled": 0, "expired": 1}, (7, 10)),
        ({"request_count": 10, "successful_request_count": 6, "failed_request_count": 1}, (7, 10)),
        ({}, (0, 0)),
    ],
    ids=["openai", "anthropic", "gemini", "none"],
)
def test_progress_of_each_vendors_counts(counts: dict[str, int], expected: tuple[int, int]) -> None:
    """Requests done and in all, from each vendor's poll counts (as the adapters name them)."""
    assert progress_of(counts) == expected
