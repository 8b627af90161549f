"""A hostile or broken provider behind the batch APIs (OpenAI Batch, Anthropic Message
Batches, Gemini batch mode).

Whole runs against the loopback batch server (``tests/providers/batch_server.py``),
made to misbehave: results for rollouts never sent, duplicated, not JSONL, nested too
deep, missing, with absurd usage; a batch that never ends, goes backwards, has a state
no documentation names, or is suddenly gone; and the transport under a batch call (a
reset after the headers, a Content-Length shorter than the body, no headers at all).
The promise each one checks: a clear recorded failure, nothing lost or counted twice,
the run ends, and the key in no recorded failure.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from rollwatch.config import Config, load_config
from rollwatch.events import (
    BatchEnded,
    BatchPolled,
    BatchSubmitted,
    RolloutFailed,
    RolloutResponded,
    RunFinished,
)
from rollwatch.providers import ProviderClient
from rollwatch.providers.batch import BatchState
from rollwatch.store.sqlite import SQLiteEventStore
from tests.providers.batch_server import BatchProvider, Fate, batch_provider
from tests.providers.conftest import provider_config
from tests.providers.fakes import KEY
from tests.providers.loopback import Reply, Seen
from tests.providers.test_hostile_provider import DEEP, _head, raw_serve
from tests.test_batches import run_once, write_config
from tests.test_runs import events_of

pytestmark = pytest.mark.anyio

FILE_KINDS = ["openai", "anthropic"]
"""The kinds whose results are a JSONL download (Gemini's are inline in the operation)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ok(batch: int, index: int, custom_id: str) -> Fate:
    return "ok"


def config_for(tmp_path: Path, kind: str, url: str, extra: str = "", **kw: Any) -> Config:
    """``tests/test_batches.py``'s run config, with ``extra`` lines in the provider table."""
    path = write_config(tmp_path, kind, url, **kw)
    text = path.read_text().replace("batch_max_requests", extra + "\nbatch_max_requests", 1)
    path.write_text(text)
    return load_config(path)


class Outcomes:
    """What a run recorded: its end, and every batch and rollout event."""

    def __init__(self, fin: RunFinished) -> None:
        self.fin = fin
        self.submitted: list[BatchSubmitted] = []
        self.polled: list[BatchPolled] = []
        self.ended: list[BatchEnded] = []
        self.answers: list[RolloutResponded] = []
        self.failures: list[RolloutFailed] = []

    @classmethod
    async def of(cls, tmp_path: Path, fin: RunFinished) -> Outcomes:
        out = cls(fin)
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            out.submitted = await events_of(store, BatchSubmitted)
            out.polled = await events_of(store, BatchPolled)
            out.ended = await events_of(store, BatchEnded)
            out.answers = await events_of(store, RolloutResponded)
            out.failures = await events_of(store, RolloutFailed)
        return out

    @property
    def rollouts(self) -> set[str]:
        return {rid for s in self.submitted for rid in s.rollouts}

    def answered_once(self) -> None:
        """Every rollout submitted has exactly one answer, and nothing else has one."""
        counts = Counter(a.rollout_id for a in self.answers)
        assert set(counts) == self.rollouts
        assert set(counts.values()) == {1}

    def no_key(self) -> None:
        for f in self.failures:
            assert KEY not in f.message


async def hostile_run(
    tmp_path: Path,
    kind: str,
    setup: Callable[[BatchProvider], None],
    *,
    extra: str = "",
    fate: Callable[[int, int, str], Fate] = ok,
    **kw: Any,
) -> tuple[Outcomes, BatchProvider]:
    """One batched run of the ten favorites against a batch server ``setup`` made hostile."""
    async with batch_provider(kind, fate) as server:
        setup(server)
        config = config_for(tmp_path, kind, server.url, extra, **kw)
        fin = await run_once(config)
    return await Outcomes.of(tmp_path, fin), server


def mangle_downloads(server: BatchProvider, mangle: Callable[[int, bytes], bytes]) -> None:
    """Every results download (the n-th, from 1) goes through ``mangle``; the output file
    only, for OpenAI (its error file is empty when all goes well)."""
    real = server._download
    n = 0

    def download(data: bytes) -> Reply:
        nonlocal n
        if server.kind == "openai" and not data:
            return real(data)
        n += 1
        return real(mangle(n, data))

    server._download = download  # type: ignore[method-assign]


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in data.splitlines() if x.strip()]


def jsonl(items: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in items)


# --- the results ---------------------------------------------------------------------------


class TestHostileResults:
    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_results_for_rollouts_never_sent_are_ignored(self, kind: str, tmp_path: Path) -> None:
        """The results carry answers for ids no batch of ours had (random UUIDs) and for
        an id of ours with another rollout's line: nothing is recorded for a foreign
        id, every rollout gets its own answer once, the run completes."""

        def mangle(n: int, data: bytes) -> bytes:
            items = lines_of(data)
            strangers = [{**item, "custom_id": str(uuid.uuid4())} for item in items]
            return jsonl(strangers + items + strangers)

        out, _ = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert len(out.submitted) == 1
        out.answered_once()
        assert out.ended[0].answered == 10

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_duplicate_results_are_recorded_once(self, kind: str, tmp_path: Path) -> None:
        """Every result line comes three times: each rollout records one answer, the
        batch counts ten answered, not thirty."""

        def mangle(n: int, data: bytes) -> bytes:
            items = lines_of(data)
            return jsonl(items + items[::-1] + items)

        out, _ = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        out.answered_once()
        assert [(e.answered, e.failed, e.unanswered) for e in out.ended] == [(10, 0, [])]

    @pytest.mark.parametrize("kind", FILE_KINDS)
    @pytest.mark.parametrize(
        "garbage",
        [b"<html>502 Bad Gateway</html>", b"[" * DEEP + b"]" * DEEP, b"\xff\xfe\x00" * 1000],
        ids=["html", "deep", "binary"],
    )
    async def test_a_results_file_that_is_not_jsonl(self, kind: str, garbage: bytes, tmp_path: Path) -> None:
        """The first batch's results are not JSONL (HTML, one line nested 100k deep,
        binary): nothing raises, its rollouts are unanswered (a recorded, retried
        ``batch_unanswered``), the second batch answers them all."""

        def mangle(n: int, data: bytes) -> bytes:
            return garbage + b"\n" if n == 1 else data

        out, server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert server.creates == 2
        out.answered_once()
        assert Counter((f.kind, f.final) for f in out.failures) == {("batch_unanswered", False): 10}
        assert out.ended[0].unanswered == sorted(out.rollouts)

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_a_deep_line_among_good_ones_costs_only_itself(self, kind: str, tmp_path: Path) -> None:
        """A 100k-deep line in place of one result: that rollout alone goes again."""

        def mangle(n: int, data: bytes) -> bytes:
            if n > 1:
                return data
            lines = data.splitlines()
            return b"\n".join([b"[" * DEEP + b"]" * DEEP, *lines[1:]]) + b"\n"

        out, server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert [len(s.rollouts) for s in out.submitted] == [10, 1]
        out.answered_once()
        assert [f.kind for f in out.failures] == ["batch_unanswered"]

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_results_missing_for_some_rollouts(self, kind: str, tmp_path: Path) -> None:
        """Every batch answers only its first half (then, of one left, nothing at all):
        the missing rollouts are retried up to ``max_attempts`` (3) and then fail for
        good; the run ends ``partial``, nothing hangs, nothing is answered twice."""

        def mangle(n: int, data: bytes) -> bytes:
            items = lines_of(data)
            return jsonl(items[: len(items) // 2])

        out, server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "partial"
        # 10 -> 5 answered, 5 again -> 2, 3 again -> 1, 2 fail for good after 3 attempts.
        assert [len(s.rollouts) for s in out.submitted] == [10, 5, 3]
        assert len(out.answers) == 8
        assert len({a.rollout_id for a in out.answers}) == 8
        finals = [f for f in out.failures if f.final]
        assert len(finals) == 2
        assert {f.kind for f in finals} == {"batch_unanswered"}
        assert {f.attempt for f in finals} == {3}

    @pytest.mark.parametrize("kind", FILE_KINDS)
    @pytest.mark.parametrize("value", [10**400, 2**64, -1], ids=["1e400", "2^64", "negative"])
    async def test_an_impossible_token_count_in_a_result(self, kind: str, value: int, tmp_path: Path) -> None:
        """One result's usage has a token count no answer can have: the synchronous
        path's rule applies (a retryable ``bad_response`` naming the field, never priced),
        and that rollout is answered by the next batch."""
        field = "prompt_tokens" if kind == "openai" else "input_tokens"

        def mangle(n: int, data: bytes) -> bytes:
            if n > 1:
                return data
            items = lines_of(data)
            body = items[0]["response"]["body"] if kind == "openai" else items[0]["result"]["message"]
            body["usage"][field] = value
            return jsonl(items)

        out, server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert [len(s.rollouts) for s in out.submitted] == [10, 1]
        out.answered_once()
        (failure,) = out.failures
        assert (failure.kind, failure.final) == ("bad_response", False)
        assert field in failure.message
        assert all(a.cost_usd is not None and 0 <= a.cost_usd < 1 for a in out.answers)
