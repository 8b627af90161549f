"""The report's maintained aggregates against the full GROUP BY over every rollout."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rollwatch.events import (
    Event,
    ProblemVersioned,
    RolloutFailed,
    RolloutRequested,
    RolloutRescored,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunStarted,
    rollout_stream,
    run_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.report import KeptByRun, build_report, build_trend, to_json
from rollwatch.report.views import Fetcher
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import WithoutAggregates, replayed

ROLLOUTS = [f"r{i}" for i in range(6)]
# rollout -> (run, model, problem): two runs, two models, two problems
PLACE = {rid: (f"run-{i % 2}", f"m{i % 3 % 2}", f"p{i // 3}") for i, rid in enumerate(ROLLOUTS)}
HASHES = ["h1", "h2", "h3"]

requested = st.builds(lambda r: ("req", r), st.sampled_from(ROLLOUTS))
responded = st.builds(
    lambda r, served, cost, listed: ("resp", r, served, cost, listed),
    st.sampled_from(ROLLOUTS),
    st.sampled_from([None, "s1", "s2"]),
    st.sampled_from([None, 0.0, 0.1, 0.25, 0.001]),
    st.sampled_from([None, None, 0.2, 0.5]),  # the list price of a batched answer
)
REASONS = [
    None,
    "tests failed",
    "timeout after 5 s",
    "scorer error: boom",
    "sandbox error: the candidate wrote",
]
scored = st.builds(
    lambda r, passed, h, reason: ("score", r, passed, h, reason),
    st.sampled_from(ROLLOUTS),
    st.booleans(),
    st.sampled_from([None, *HASHES]),
    st.sampled_from(REASONS),
)
rescored = st.builds(
    lambda r, passed, h, reason: ("rescore", r, passed, h, reason),
    st.sampled_from(ROLLOUTS),
    st.booleans(),
    st.sampled_from(HASHES),
    st.sampled_from(REASONS),
)
versioned = st.builds(lambda p, h: ("version", p, h), st.sampled_from(["p0", "p1"]), st.sampled_from(HASHES))
failed = st.builds(
    lambda r, kind, final: ("fail", r, kind, final),
    st.sampled_from(ROLLOUTS),
    st.sampled_from(["server_error", "rate_limited"]),
    st.booleans(),
)
finished = st.builds(lambda run: ("finish", run), st.sampled_from(["run-0", "run-1"]))
OPS_PARTS = (requested, responded, scored, rescored, versioned, failed, finished)
OPS = st.lists(st.one_of(*OPS_PARTS), max_size=30)


def event(op: tuple[Any, ...]) -> tuple[str, Event]:
    kind, key = op[0], op[1]
    if kind == "finish":  # the report's failures by cause count finished runs only
        return run_stream(key), RunFinished(run_id=key, status="partial", rollouts=0, passed=0, cost_usd=0.0)
    if kind == "version":
        return "problems", ProblemVersioned(problem_set="s", problem_id=key, problem_hash=op[2])
    run_id, model, problem = PLACE[key]
    if kind == "req":
        return rollout_stream(key), RolloutRequested(
            rollout_id=key,
            run_id=run_id,
            provider="openai",
            model=model,
            problem_id=problem,
            problem_hash="h1",
            sample=0,
            attempt=1,
            request={},
            node="n",
        )
    if kind == "fail":
        return rollout_stream(key), RolloutFailed(
            rollout_id=key,
            attempt=1,
            kind=op[2] if len(op) > 2 else "server_error",
            status=500,
            retryable=False,
            message="x",
            final=op[3] if len(op) > 3 else True,
        )
    if kind == "resp":
        return rollout_stream(key), RolloutResponded(
            rollout_id=key,
            attempt=1,
            text="x",
            usage={},
            cost_usd=op[3],
            latency_ms=1.0,
            model=op[2],
            list_cost_usd=op[4] if len(op) > 4 else None,
        )
    if kind == "score":
        return rollout_stream(key), RolloutScored(
            rollout_id=key,
            passed=op[2],
            score=float(op[2]),
            scorer="t",
            problem_hash=op[3],
            reason=(op[4] if len(op) > 4 else None) or "",
        )
    return rollout_stream(key), RolloutRescored(
        rollout_id=key,
        problem_id=problem,
        passed=op[2],
        score=float(op[2]),
        scorer="t",
        problem_hash=op[3],
        scorer_version="1",
        rescore_id="x",
        reason=(op[4] if len(op) > 4 else None) or "",
    )


def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Floats to 9 places (the aggregates sum costs in nano-dollars, SQL sums floats)."""
    return [{k: round(v, 9) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


async def reports(pdb: Fetcher) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for by in ("model", "problem", "run"):
        rep = await build_report(pdb, by)
        out[by] = (rounded(to_json(rep)), rep.notes)
    out["trend"] = rounded(to_json(await build_trend(pdb)))
    return out


async def compare(ops: list[tuple[Any, ...]], split: int) -> None:
    # Both runs end last, whatever else happened: the failures by cause count finished runs.
    ops = [*ops, ("finish", "run-0"), ("finish", "run-1")]
    async with replayed([event(op) for op in ops], split) as (_, pdb):
        assert await reports(pdb) == await reports(WithoutAggregates(pdb))


class TestAggregates:
    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=OPS, split=st.integers(0, 30))
    # A retry after a final failure: the rollout is asked again (unanswered, not failed).
    @example(ops=[("req", "r0"), ("fail", "r0", "server_error", True), ("req", "r0")], split=1)
    def test_the_aggregates_equal_the_group_by_after_any_events(
        self, ops: list[tuple[Any, ...]], split: int
    ) -> None:
        """After any sequence of requests, answers (served model, cost), scores, re-scores and
        new problem versions, caught up in one go or in two, the report by model, problem and
        run, its notes (verdicts under an older version) and the trend read from the
        aggregates are those of the GROUP BY over every rollout."""
        anyio.run(compare, ops, split)

    def test_a_wrong_count_is_caught(self) -> None:
        """The comparison can fail: an aggregate edited behind the projection's back differs."""

        async def main() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                async with (
                    SQLiteEventStore(d / "events.db") as store,
                    ProjectionDB(d / "projections.db", default_projections()) as pdb,
                ):
                    for op in [("req", "r0"), ("resp", "r0", "s1", 0.1), ("score", "r0", True, None)]:
                        stream, ev = event(op)
                        await store.append(stream, [ev])
                    await pdb.catch_up(store)
                    assert await reports(pdb) == await reports(WithoutAggregates(pdb))
                    await pdb._run(lambda db: db.execute("UPDATE agg_models SET passed = 0"))
                    assert await reports(pdb) != await reports(WithoutAggregates(pdb))

        anyio.run(main)


async def by_run_kept_and_made(ops: list[tuple[Any, ...]], cuts: list[int]) -> None:
    """Apply ``ops`` with a catch-up after each cut; after each catch-up the reports by run
    and by problem from what is kept per run between reports (``KeptByRun``) equal ones
    made from nothing."""
    kept = KeptByRun()
    ops = [*ops, ("finish", "run-0"), ("finish", "run-1")]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        async with (
            SQLiteEventStore(d / "events.db") as store,
            ProjectionDB(d / "projections.db", default_projections()) as pdb,
        ):
            for run in ("run-0", "run-1", "run-2"):  # run-2 never gets a rollout
                started = RunStarted(
                    run_id=run, schedule="s", provider="openai", models=["m0", "m1"], problem_set="s", node="n",
                    rollouts=1,
                )  # fmt: skip
                await store.append(run_stream(run), [started])
            for i, op in enumerate(ops):
                stream, ev = event(op)
                await store.append(stream, [ev])
                if i in cuts or i == len(ops) - 1:
                    await pdb.catch_up(store)
                    for by in ("run", "problem"):
                        made = await build_report(pdb, by)
                        from_kept = await build_report(pdb, by, kept=kept)
                        assert to_json(from_kept) == to_json(made), by
                        assert from_kept.notes == made.notes
                        assert [c.header for c in from_kept.columns] == [c.header for c in made.columns]


class TestKeptByRun:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=OPS, cuts=st.lists(st.integers(0, 31), max_size=8))
    # A run's failures appear when it finishes, with no rollout of it moving.
    @example(ops=[("req", "r0"), ("fail", "r0", "server_error", True), ("finish", "run-0")], cuts=[0, 1])
    # A finished run with failures moves again: its old failures are taken away, not kept.
    @example(
        ops=[
            ("req", "r0"), ("fail", "r0", "server_error", True), ("finish", "run-0"),
            ("req", "r2"), ("fail", "r2", "server_error", True),
        ],
        cuts=[2, 4],
    )  # fmt: skip
    # A failure moves to another served model: the row it left is not kept with nothing in it.
    @example(
        ops=[
            ("req", "r0"), ("fail", "r0", "server_error", True), ("finish", "run-0"),
            ("req", "r0"), ("resp", "r0", "s1", 0.1),
        ],
        cuts=[2, 4],
    )  # fmt: skip
    def test_the_report_by_run_from_kept_rows_equals_one_made_anew(
        self, ops: list[tuple[Any, ...]], cuts: list[int]
    ) -> None:
        """After any sequence of events, caught up at any points, the reports by run and by
        problem that read again only the runs that moved (a rollout of theirs changed, or
        they started or finished) equal the reports made from nothing, rows, columns and
        notes."""
        anyio.run(by_run_kept_and_made, ops, cuts)

    def test_only_the_runs_that_moved_are_read_again(self) -> None:
        """Kept rows are used: once a report by run is made, one more event reads the cells
        of its run only (and the comparison above can fail: a row kept stale differs)."""

        async def main() -> None:
            kept = KeptByRun()
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                async with (
                    SQLiteEventStore(d / "events.db") as store,
                    ProjectionDB(d / "projections.db", default_projections()) as pdb,
                ):
                    for op in [("req", "r0"), ("req", "r1"), ("resp", "r0", "s1", 0.1)]:
                        stream, ev = event(op)
                        await store.append(stream, [ev])
                    await pdb.catch_up(store)
                    await build_report(pdb, "run", kept=kept)
                    seen: list[str] = []

                    class Watched:
                        async def fetchall(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
                            seen.append(" ".join(sql.split()) + f" {list(params)}")
                            return await pdb.fetchall(sql, params)

                    stream, ev = event(("score", "r1", True, None))
                    await store.append(stream, [ev])
                    await pdb.catch_up(store)
                    fresh = await build_report(pdb, "run")
                    assert to_json(await build_report(Watched(), "run", kept=kept)) == to_json(fresh)  # type: ignore[arg-type]
                    cells = [q for q in seen if "FROM agg_cells" in q]
                    assert cells
                    assert all(q.endswith("['run-1']") for q in cells), cells
                    # A row kept stale is caught by the comparison: edit a count behind the
                    # projection's back, with no run moving, and the kept rows differ.
                    await pdb._run(lambda db: db.execute("UPDATE agg_cells SET passed = 0"))
                    assert to_json(await build_report(pdb, "run", kept=kept)) != to_json(
                        await build_report(pdb, "run")
                    )

        anyio.run(main)
