"""The public aggregates applied in batches of any split hold the rows one event at a time gives."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollwatch.events import (
    Event,
    PublicationDecided,
    PublicReleased,
    Recorded,
    RolloutRequested,
    RolloutRescored,
    RolloutScored,
    RunFinished,
    RunStarted,
    canonical_json,
    rfc3339,
)
from rollwatch.publication.aggregates import PublicAggregatesProjection

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROLLOUTS = [f"r{i}" for i in range(3)]
R = st.sampled_from([*ROLLOUTS, "unknown"])
RUNS = st.sampled_from(["run-0", "run-1", "run-x"])
MINUTES = st.integers(-600, 600)  # the event's time: out of order too
OPS = st.lists(
    st.one_of(
        # Requested again (a duplicate, ignored) with another place; odd values as the log may hold.
        st.tuples(
            st.just("req"),
            R,
            RUNS,
            st.sampled_from(["openai", "anthropic", 7]),
            st.sampled_from(["m0", "m1"]),
            st.sampled_from(["p0", "p1", 3]),
        ),
        st.tuples(st.just("score"), R, st.booleans(), MINUTES),
        st.tuples(st.just("rescore"), R, st.booleans(), MINUTES),
        st.tuples(
            st.just("decide"),
            R,
            st.sampled_from(["public", "subscribers"]),
            st.integers(-3, 3),
            st.sampled_from([None, 0, 0.0, 3600, 1e7]),
        ),
        st.tuples(st.just("release"), R, MINUTES),
        st.tuples(st.just("start"), RUNS),
        st.tuples(st.just("finish"), RUNS, MINUTES),
    ),
    max_size=50,
)


def event(op: tuple[Any, ...]) -> tuple[Event, int]:
    """The event of ``op`` and its time (minutes after T0)."""
    kind = op[0]
    if kind == "req":
        return RolloutRequested(
            rollout_id=op[1],
            run_id=op[2],
            provider=op[3],
            model=op[4],
            problem_id=op[5],
            problem_hash="h",
            sample=0,
            attempt=1,
            request={},
            node="n",
        ), 0
    if kind == "score":
        return RolloutScored(rollout_id=op[1], passed=op[2], score=float(op[2]), scorer="t"), op[3]
    if kind == "rescore":
        return RolloutRescored(
            rollout_id=op[1],
            problem_id="p0",
            passed=op[2],
            score=float(op[2]),
            scorer="t2",
            problem_hash="h2",
            scorer_version="v",
            rescore_id="x",
        ), op[3]
    if kind == "decide":
        nb = rfc3339(T0 + timedelta(days=op[3]))
        return PublicationDecided(rollout_id=op[1], audience=op[2], not_before=nb, embargo_s=op[4]), 0
    if kind == "release":
        return PublicReleased(rollout_id=op[1]), op[2]
    if kind == "start":
        return RunStarted(
            run_id=op[1],
            schedule="s",
            provider="openai",
            models=["m0"],
            problem_set="s",
            node="n",
            rollouts=1,
        ), 0
    return RunFinished(run_id=op[1], status="completed", rollouts=0, passed=0, cost_usd=0.0), op[2]


def records(ops: Sequence[tuple[Any, ...]]) -> list[Recorded]:
    out = []
    for seq, op in enumerate(ops, 1):
        ev, minutes = event(op)
        at = rfc3339(T0 + timedelta(minutes=minutes))
        data = canonical_json(ev.to_data())
        out.append(Recorded(seq, f"e{seq}", "s", seq, ev.TYPE, ev.SCHEMA, at, data, "h"))
    return out


def rows_after(recs: list[Recorded], cuts: Sequence[int]) -> dict[str, list[Any]]:
    """Every row of the projection's tables after ``recs`` applied in batches cut at ``cuts``."""
    p = PublicAggregatesProjection()
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(p.ddl)
    bounds = [0, *sorted(set(cuts)), len(recs)]
    for a, b in itertools.pairwise(bounds):
        db.execute("BEGIN")
        p.apply_batch(db, recs[a:b])
        db.execute("COMMIT")
    return {t: sorted(db.execute(f"SELECT * FROM {t}"), key=repr) for t in p.tables}


class TestBatches:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=OPS, ends=st.lists(st.booleans(), min_size=50, max_size=50))
    def test_any_batch_split_leaves_the_rows_of_one_event_at_a_time(
        self, ops: list[tuple[Any, ...]], ends: list[bool]
    ) -> None:
        """Requests (duplicates too), scores and re-scores at any time, public and subscriber
        decisions (twice too), releases (before a decision, twice), run starts and ends, and
        events for a rollout never requested: applied in batches cut anywhere (one batch too),
        every table holds exactly the rows one event per batch leaves."""
        recs = records(ops)
        one_by_one = rows_after(recs, range(len(recs)))
        cuts = [i + 1 for i, end in enumerate(ends[: len(recs)]) if end]  # a batch ends after event i
        assert rows_after(recs, cuts) == one_by_one
        assert rows_after(recs, []) == one_by_one

    def test_a_rollout_through_a_batch_is_counted(self) -> None:
        """One rollout requested, scored passing, decided public and released in one batch
        counts in its run and its cell (a test that the comparison above compares something)."""
        recs = records(
            [
                ("req", "r0", "run-0", "openai", "m0", "p0"),
                ("score", "r0", True, 1),
                ("decide", "r0", "public", -1, 3600),
                ("release", "r0", 2),
            ]
        )
        rows = rows_after(recs, [])
        assert [r[:4] for r in rows["pa_cells"]] == [("openai", "m0", "p0", 1)]
        assert [r[:8] for r in rows["pa_runs"]] == [("run-0", "openai", "m0", 1, 1, 1, 1, 0)]
        assert [r[3] for r in rows["pa_pending"]] == [0]
        [row] = rows["pa_rollouts"]
        assert row[8] == 3600.0
        assert row[11:14] == (1, rfc3339(T0 + timedelta(minutes=2)), 0)
        assert row[14:] == (3600.0, 0)  # the public date's embargo; not restored
