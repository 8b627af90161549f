"""The public page's maintained aggregates against grouping every rollout, and the embargo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rollwatch.events import (
    Event,
    PublicationDecided,
    PublicReleased,
    RolloutRequested,
    RolloutRescored,
    RolloutScored,
    RunFinished,
    rfc3339,
    rollout_stream,
    run_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.publication.public import PublicView, public_view
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import WithoutAggregates, replayed
from tests.publication.helpers import add_rollout, make_config, new_run_id, serving, start_run

pytestmark = pytest.mark.anyio

ROLLOUTS = [f"r{i}" for i in range(6)]
PLACE = {rid: (f"run-{i % 2}", f"m{i % 3 % 2}", f"p{i // 3}") for i, rid in enumerate(ROLLOUTS)}
R = st.sampled_from(ROLLOUTS)
OPS = st.lists(
    st.one_of(
        st.builds(lambda r: ("req", r), R),
        st.builds(lambda r, p: ("score", r, p), R, st.booleans()),
        st.builds(
            lambda r, aud, days, emb: ("decide", r, aud, days, emb),
            R,
            st.sampled_from(["public", "subscribers"]),
            st.sampled_from([-2, 2]),
            st.sampled_from([None, 0.0, 3600.0, 1e7]),
        ),
        st.builds(lambda r: ("release", r), R),
        st.builds(lambda run: ("finish", run), st.sampled_from(["run-0", "run-1"])),
        st.builds(lambda r, p: ("rescore", r, p), R, st.booleans()),
    ),
    max_size=30,
)

EMBARGO = st.sampled_from([None, 0.0, 3600.0, 1e7])
DAYS = st.sampled_from([-2, 2])


@st.composite
def lifecycles(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Each of a few rollouts' events in the order a run makes them (a request, a score and
    maybe a second, maybe a subscribers' decision, the public decision, maybe a release, maybe
    a re-score and a release after it), the rollouts' lifecycles interleaved at random, with run
    ends anywhere: the orders the flat generator above rarely reaches (a re-score after a
    public decision of the same rollout)."""
    queues: list[list[tuple[Any, ...]]] = []
    for rid in draw(st.lists(R, min_size=1, max_size=4, unique=True)):
        life: list[tuple[Any, ...]] = [("req", rid), ("score", rid, draw(st.booleans()))]
        if draw(st.booleans()):
            life.append(("score", rid, draw(st.booleans())))
        if draw(st.booleans()):
            life.append(("decide", rid, "subscribers", draw(DAYS), draw(EMBARGO)))
        life.append(("decide", rid, "public", draw(DAYS), draw(EMBARGO)))
        if draw(st.booleans()):
            life.append(("release", rid))
        if draw(st.booleans()):
            life.append(("rescore", rid, draw(st.booleans())))
            if draw(st.booleans()):
                life.append(("release", rid))
        queues.append(life)
    ops: list[tuple[Any, ...]] = []
    while live := [q for q in queues if q]:
        ops.append(live[draw(st.integers(0, len(live) - 1))].pop(0))
        if draw(st.integers(0, 7)) == 0:
            ops.append(("finish", draw(st.sampled_from(["run-0", "run-1"]))))
    return ops


def event(op: tuple[Any, ...], now: datetime) -> tuple[str, Event]:
    kind, key = op[0], op[1]
    if kind == "finish":
        return run_stream(key), RunFinished(
            run_id=key, status="completed", rollouts=0, passed=0, cost_usd=0.0
        )
    run_id, model, problem = PLACE[key]
    stream = rollout_stream(key)
    if kind == "req":
        return stream, RolloutRequested(
            rollout_id=key,
            run_id=run_id,
            provider="openai",
            model=model,
            problem_id=problem,
            problem_hash="h",
            sample=0,
            attempt=1,
            request={},
            node="n",
        )
    if kind == "score":
        return stream, RolloutScored(rollout_id=key, passed=op[2], score=float(op[2]), scorer="t")
    if kind == "rescore":
        return stream, RolloutRescored(
            rollout_id=key,
            problem_id=problem,
            passed=op[2],
            score=float(op[2]),
            scorer="t2",
            problem_hash="h2",
            scorer_version="v",
            rescore_id="x",
        )
    if kind == "decide":
        nb = rfc3339(now + timedelta(days=op[3]))
        return stream, PublicationDecided(rollout_id=key, audience=op[2], not_before=nb, embargo_s=op[4])
    return stream, PublicReleased(rollout_id=key)


async def views(store: SQLiteEventStore, pdb: ProjectionDB, now: datetime) -> tuple[PublicView, PublicView]:
    kw: dict[str, Any] = {"now": now, "embargo_default": 0.0}
    return (
        await public_view(store, pdb, **kw),
        await public_view(store, WithoutAggregates(pdb), **kw),  # type: ignore[arg-type]
    )


async def compare(ops: list[tuple[Any, ...]], split: int) -> None:
    now = datetime.now(UTC)
    async with replayed([event(op, now) for op in ops], split) as (store, pdb):
        for at in (now - timedelta(days=3), now, now + timedelta(days=1), now + timedelta(days=3)):
            kept, grouped = await views(store, pdb, at)
            assert kept == grouped, at


class TestPublicAggregates:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=OPS, split=st.integers(0, 30))
    # Two cases the random search did not reach in 1,000 examples (a wrong pass or superseded
    # mark in pa_rollouts survived it, found by mutating the projection): a public pass a
    # re-score then failed, under embargo (no longer counted as solved); a pass scored again
    # as a failure before its public decision (counted as nothing).
    @example(
        ops=[
            ("req", "r1"),
            ("score", "r1", True),
            ("decide", "r1", "public", 2, None),
            ("rescore", "r1", False),
        ],
        split=4,
    )
    @example(
        ops=[
            ("req", "r1"),
            ("score", "r1", True),
            ("score", "r1", False),
            ("decide", "r1", "public", 2, None),
        ],
        split=2,
    )
    def test_the_page_from_aggregates_equals_grouping_after_any_events(
        self, ops: list[tuple[Any, ...]], split: int
    ) -> None:
        """After any sequence of requests, scores (a rollout scored twice too), public and
        subscriber decisions, releases (on time or ahead of their date) and run ends, the public
        view from the aggregates — released cells, disclosed runs, embargo counts — is the one
        grouping every rollout gives, seen before, at and after the decisions' dates."""
        anyio.run(compare, ops, split)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=lifecycles(), split=st.integers(0, 30))
    def test_the_page_from_aggregates_equals_grouping_after_any_lifecycles(
        self, ops: list[tuple[Any, ...]], split: int
    ) -> None:
        """The same, the events drawn rollout by rollout in a run's order and interleaved."""
        anyio.run(compare, ops, split)

    async def test_no_embargoed_count_leaks_on_public_routes(self, tmp_path: Path) -> None:
        """Through the aggregates, a result under embargo shows on /public/ as a count only (with
        ``embargo_counts``), never its id, answer or a pass rate; with ``embargo_counts = false``
        not even the count."""
        for counts in (True, False):
            d = tmp_path / str(counts)
            d.mkdir()
            config = make_config(publication={"embargo": "90d", "embargo_counts": counts})
            async with serving(d, config) as env:
                run_id = new_run_id()
                await start_run(env.store, run_id)
                rid = await add_rollout(
                    env.store, run_id, passed=True, embargo_s=86400.0, answer="SECRET-SOLUTION"
                )
                page = (await env.client.get("/public/")).text
                assert rid not in page
                assert "SECRET-SOLUTION" not in page
                assert ("Under embargo" in page) is counts
                for path in ("/public/feed.json", "/public/feed.atom", "/public/results.jsonl"):
                    body = (await env.client.get(path)).text
                    assert rid not in body
                    assert "SECRET-SOLUTION" not in body
                [(n,)] = await env.pdb.fetchall("SELECT count(*) FROM pa_pending WHERE n > 0")
                assert n == 1
