"""Every projection's batches against one event at a time, after any sequence of events.

A catch-up hands each projection thousands of events at once (a rebuild) or one or two (a
daemon following the log); the rows must not depend on how the log was cut. Hypothesis
writes logs of the events a run makes, odd ones included (a verdict on a rollout never
requested, an answer after a final failure, a second release, a re-score that flips),
and the projections are caught up after every append in one file and at random points in
another: every table of every projection holds the same rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rollwatch.events import (
    Event,
    PublicationDecided,
    PublicReleased,
    RunStarted,
    rollout_stream,
    run_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from tests.test_rebuild import dump
from tests.test_report_aggregates import OPS_PARTS, ROLLOUTS, event

started = st.builds(lambda run: ("start", run), st.sampled_from(["run-0", "run-1"]))
decided = st.builds(
    lambda r, audience, nb: ("decide", r, audience, nb),
    st.sampled_from(ROLLOUTS),
    st.sampled_from(["public", "subscribers"]),
    st.sampled_from(["2026-01-01T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z"]),
)
released = st.builds(lambda r: ("release", r), st.sampled_from(ROLLOUTS))
OPS = st.lists(st.one_of(*OPS_PARTS, started, decided, released), max_size=40)


def any_event(op: tuple[Any, ...]) -> tuple[str, Event]:
    kind = op[0]
    if kind == "start":
        return run_stream(op[1]), RunStarted(
            run_id=op[1],
            schedule="s",
            provider="openai",
            models=["m0", "m1"],
            problem_set="s",
            node="n",
            rollouts=2,
            problems=["p0", "p1"],
        )
    if kind == "decide":
        return rollout_stream(op[1]), PublicationDecided(
            rollout_id=op[1], audience=op[2], not_before=op[3], embargo_s=86400.0
        )
    if kind == "release":
        return rollout_stream(op[1]), PublicReleased(rollout_id=op[1])
    return event(op)


async def compare(ops: list[tuple[Any, ...]], cuts: set[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        async with (
            SQLiteEventStore(d / "events.db") as store,
            ProjectionDB(d / "each.db", default_projections()) as each,
            ProjectionDB(d / "cut.db", default_projections()) as cut,
        ):
            for i, op in enumerate(ops):
                stream, ev = any_event(op)
                await store.append(stream, [ev])
                await each.catch_up(store)
                if i in cuts:
                    await cut.catch_up(store)
            await cut.catch_up(store)
            got, want = dump(cut.file), dump(each.file)
            assert got.keys() == want.keys()
            for table in want:
                assert got[table] == want[table], table


class TestBatches:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=OPS, cuts=st.sets(st.integers(0, 40), max_size=4))
    @example(
        ops=[
            ("start", "run-0"),
            ("req", "r0"),
            ("resp", "r0", "s1", 0.1, None),
            ("resp", "r0", "s2", 0.2, None),
            ("score", "r0", False, None, "timeout after 5 s"),
            ("rescore", "r0", True, "h2", None),
            ("decide", "r0", "public", "2026-01-01T00:00:00.000000Z"),
            ("release", "r0"),
            ("release", "r0"),
            ("finish", "run-0"),
        ],
        cuts=set(),
    )
    def test_batches_leave_the_rows_of_one_event_at_a_time(
        self, ops: list[tuple[Any, ...]], cuts: set[int]
    ) -> None:
        """Caught up after every append or at a few random points (in batches), every table of
        every projection holds the same rows."""
        anyio.run(compare, ops, cuts)
