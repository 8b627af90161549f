"""Session 2026 (helper h82): an outsider reading the public routes for what is still under
embargo. Each test failed before its fix."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from rollwatch.abc import EventStore
from rollwatch.events import RolloutRescored
from rollwatch.publication import release_due
from rollwatch.publication.policy import Embargo, decide
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import add_rollout, finish_run, make_config, new_run_id, serving, start_run

pytestmark = pytest.mark.anyio

EMBARGO_S = 4


async def rescore(store: EventStore, rid: str, *, passed: bool, previous: bool) -> None:
    """What ``rollwatch rescore`` appends on the rollout's stream: the new verdict and its
    decisions (``publication.policy.decide``, as ``runs.rescore`` calls it: "public" for a
    flip to pass, else "none", each with the embargo in force)."""
    ev = RolloutRescored(
        rollout_id=rid,
        problem_id="p1",
        passed=passed,
        score=float(passed),
        scorer="python-function",
        problem_hash=f"h-{uuid.uuid4().hex[:8]}",
        scorer_version="1",
        rescore_id=str(uuid.uuid4()),
        previous_passed=previous,
    )
    decided = {"subscribers"} | ({"public"} if previous else set())
    decisions = decide(Embargo(EMBARGO_S), ev, datetime.now(UTC), decided)
    await store.append(f"rollout-{rid}", [ev, *decisions])


class TestReScoresOnTheChart:
    async def test_a_flip_to_pass_under_embargo_does_not_take_its_run_off_the_chart_alone(
        self, tmp_path: Path
    ) -> None:
        """Two runs on the chart, each 1 of 2 passed. A re-score of the problem the failures
        were on finds one run's failure passing now (under embargo) and the other's failing
        again. Before, the first run left the chart at once (a public decision not yet
        released) while the second stayed on it: anyone watching the chart knew which run
        held a new pass under embargo, with the embargoed counts switched off. Any re-score
        now takes its run off the chart for an embargo, whatever its verdict."""
        config = make_config(publication={"embargo": f"{EMBARGO_S}s", "embargo_counts": False})
        failures: dict[str, str] = {}
        async with serving(tmp_path, config) as env:
            for _ in range(2):
                run = new_run_id()
                await start_run(env.store, run)
                await add_rollout(env.store, run, passed=True, problem_id="p0", embargo_s=EMBARGO_S)
                failures[run] = await add_rollout(
                    env.store, run, passed=False, problem_id="p1", sample=1, none_embargo_s=EMBARGO_S
                )
                await finish_run(env.store, run, rollouts=2, passed=1)
            with anyio.fail_after(EMBARGO_S + 10):  # the embargo passes; the runs are disclosed
                while True:
                    await release_due(env.store, env.pdb)
                    page = (await env.client.get("/public/")).text
                    if all(f"run {run}: 1/2 passed" in page for run in failures):
                        break
                    await anyio.sleep(0.1)
        flipped, again = failures
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            rescored = anyio.current_time()
            await rescore(store, failures[flipped], passed=True, previous=False)
            await rescore(store, failures[again], passed=False, previous=False)
        async with serving(tmp_path, config) as env:  # no view kept from before
            page = (await env.client.get("/public/")).text
            assert anyio.current_time() - rescored < EMBARGO_S, "too slow: the re-scores' embargo passed"
            shown = {run: f"run {run}: " in page for run in failures}
            assert shown[flipped] == shown[again], f"the chart tells the runs apart: {shown}"
            assert failures[flipped] not in page

    async def test_a_pass_withdrawn_before_its_release_does_not_keep_its_run_off_the_chart(
        self, tmp_path: Path
    ) -> None:
        """Two runs of two rollouts. One run's pass, under embargo, is re-scored failing
        before its release (superseded: it will never be released); the other run's failure
        is re-scored failing again. Before, the first run never reached the chart (a public
        decision never released), and the second did an embargo after its re-score: anyone
        could tell, for good, which run had held a pass that was withdrawn unreleased, which
        the counts under embargo take care never to announce. A withdrawn pass now counts as
        a failure there, and the run is disclosed like any other."""
        config = make_config(publication={"embargo": f"{EMBARGO_S}s", "embargo_counts": False})
        withdrawn, again = new_run_id(), new_run_id()
        async with serving(tmp_path, config) as env:
            rescored: dict[str, str] = {}
            for run in (withdrawn, again):
                await start_run(env.store, run)
                first = await add_rollout(
                    env.store, run, passed=run == withdrawn, embargo_s=EMBARGO_S, none_embargo_s=EMBARGO_S
                )
                await add_rollout(env.store, run, passed=False, sample=1, none_embargo_s=EMBARGO_S)
                await finish_run(env.store, run, rollouts=2, passed=int(run == withdrawn))
                rescored[run] = first
            await rescore(env.store, rescored[withdrawn], passed=False, previous=True)
            await rescore(env.store, rescored[again], passed=False, previous=False)
            with anyio.fail_after(EMBARGO_S + 10):  # an embargo after the re-scores
                while f"run {again}: " not in (page := (await env.client.get("/public/")).text):
                    await release_due(env.store, env.pdb)
                    await anyio.sleep(0.1)
            await release_due(env.store, env.pdb)
            page = (await env.client.get("/public/")).text
            assert f"run {again}: 0/2 passed" in page
            assert f"run {withdrawn}: 0/2 passed" in page, "the run with a withdrawn pass is told apart"
            assert rescored[withdrawn] not in page
