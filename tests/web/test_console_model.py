"""The console's read model counts what the rollouts say, through retries, final failures,
a failed rollout asked again, duplicate and flipped verdicts (re-scores), and gives the
same rows when rebuilt alone: real SQLite log, real projections file."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from rollwatch import events as e
from rollwatch.events import rollout_stream, run_stream
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.console_model import ConsoleRunsProjection

pytestmark = pytest.mark.anyio

H1, H2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _requested(rid: str, run: str, pid: str, model: str, attempt: int) -> e.RolloutRequested:
    return e.RolloutRequested(
        rollout_id=rid,
        run_id=run,
        provider="p",
        model=model,
        problem_id=pid,
        problem_hash=H1,
        sample=0,
        attempt=attempt,
        request={},
        node="n",
    )


async def _hostile_history(store: SQLiteEventStore, seed: int) -> None:
    """Two runs, 60 rollouts; each takes a random path through the states."""
    rng = random.Random(seed)
    for run in ("run-a", "run-b"):
        await store.append(
            run_stream(run),
            [
                e.RunStarted(
                    run_id=run,
                    schedule="s",
                    provider="p",
                    models=["m1", "m2"],
                    problem_set="set",
                    node="n",
                    rollouts=10,
                    problems=["p1", "p2", "p10"],
                )
            ],
        )
        for i in range(30):
            rid = f"{run}-{i}"
            pid, model = ("p1", "p2", "p10")[i % 3], ("m1", "m2")[i % 2]
            evs: list[e.Event] = [_requested(rid, run, pid, model, 1)]
            path = rng.choice(
                ["pass", "fail", "retry", "final-fail", "fail-then-asked", "flip", "dup", "open"]
            )
            if path in ("retry", "final-fail", "fail-then-asked"):
                final = path != "retry"
                evs.append(
                    e.RolloutFailed(
                        rollout_id=rid,
                        attempt=1,
                        kind="http",
                        status=500,
                        retryable=True,
                        message="x",
                        final=final,
                    )
                )
                if path == "final-fail":
                    await store.append(rollout_stream(rid), evs)
                    continue
                evs.append(_requested(rid, run, pid, model, 2))
            if path == "open":
                await store.append(rollout_stream(rid), evs)
                continue
            evs.append(
                e.RolloutResponded(
                    rollout_id=rid, attempt=1, text="t", usage={}, cost_usd=0.01, latency_ms=1.0
                )
            )
            passed = path in ("pass", "dup") or rng.random() < 0.5
            evs.append(e.RolloutScored(rollout_id=rid, passed=passed, score=float(passed), scorer="f"))
            if path == "dup":  # the same verdict appended twice (a resumed run scoring again)
                evs.append(e.RolloutScored(rollout_id=rid, passed=passed, score=float(passed), scorer="f"))
            if path == "flip":  # re-scored against a new version: the verdict flips
                evs.append(
                    e.ProblemVersioned(problem_set="set", problem_id=pid, problem_hash=H2, previous_hash=H1)
                )
                evs.append(
                    e.RolloutRescored(
                        rollout_id=rid,
                        problem_id=pid,
                        passed=not passed,
                        score=float(not passed),
                        scorer="f",
                        problem_hash=H2,
                        scorer_version="v",
                        rescore_id="rs",
                        previous_passed=passed,
                        time_limit_s=2.5,
                    )
                )
            await store.append(rollout_stream(rid), evs)


async def _ops(pdb: ProjectionDB) -> dict[str, Any]:
    return {
        "runs": sorted(await pdb.fetchall("SELECT * FROM ops_runs")),
        "cells": sorted(r[1:] for r in await pdb.fetchall("SELECT * FROM ops_cells")),
        "versions": sorted(await pdb.fetchall("SELECT * FROM ops_problem_versions")),
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_counts_match_the_rollouts_projection_and_a_rebuild_alone(tmp_path: Path, seed: int) -> None:
    """Per run and per problem × model, the counts equal what the runs projection's rollouts
    rows say (state and newest verdict); dropping only this projection and catching up again
    gives the same rows."""
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await _hostile_history(store, seed)
        async with ProjectionDB(tmp_path / "p.db", default_projections()) as pdb:
            await pdb.catch_up(store)
            expected_runs = await pdb.fetchall(
                "SELECT run_id, count(*), sum(state = 'scored'), sum(CASE WHEN state = 'scored' THEN passed END),"
                " sum(state = 'failed') FROM rollouts GROUP BY run_id ORDER BY run_id"
            )
            got = await pdb.fetchall(
                "SELECT run_id, requested, scored, passed, failed FROM ops_runs ORDER BY run_id"
            )
            assert [tuple(int(x or 0) if i else x for i, x in enumerate(r)) for r in expected_runs] == got
            assert all(r[2] > 0 and r[4] > 0 for r in got), "the history should have verdicts and failures"
            expected_cells = await pdb.fetchall(
                "SELECT problem_id, provider, model, count(*), sum(state = 'scored'),"
                " coalesce(sum(CASE WHEN state = 'scored' THEN passed END), 0)"
                " FROM rollouts GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            )
            cells = await pdb.fetchall(
                "SELECT problem_id, provider, model, rollouts, scored, passed FROM ops_cells ORDER BY 1, 2, 3"
            )
            assert expected_cells == cells
            planned = await pdb.fetchall("SELECT DISTINCT planned FROM ops_runs")
            assert planned == [(60,)]
            before = await _ops(pdb)
            # (problem_id, hash, set, first_seq, first_at, versioned_at, previous, verdicts, passed, limit)
            for r in before["versions"]:
                if r[1] == H2:  # recorded by ProblemVersioned, judged by the re-score
                    assert (r[2], r[6], r[9]) == ("set", H1, 2.5)
                    assert r[5] is not None
                    assert r[7] >= 1
                else:
                    assert r[5] is None
                    assert r[9] is None
        # Only this projection dropped: the others stay, it is rebuilt from the log alone.
        async with ProjectionDB(tmp_path / "p.db", default_projections()) as pdb:
            await pdb._run(lambda db: ProjectionDB._drop(db, ConsoleRunsProjection()))
        async with ProjectionDB(tmp_path / "p.db", default_projections()) as pdb:
            await pdb.catch_up(store)
            assert await _ops(pdb) == before
