"""The report's cost, session s28: 0 where nothing was spent, null only where unknown.

A row (``rollwatch report``, ``GET /v1/report``) whose rollouts have no answer yet (all
in flight, or all failed at the provider: no scored rollout, ``rollouts`` 0) showed
``cost_usd: null``, as if its cost were unknown; and a row mixing answers of a known
cost with answers whose model had no price showed the sum of the known ones, as if that
were the whole cost (an under-count). Now: the sum of the answers' costs, 0 when none
has cost anything, null as soon as one answer's cost is unknown. The same by model, by
problem and by run, from the maintained aggregates and from the rollouts themselves,
and through ``/v1/report`` on a real loopback server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rollwatch.abc import EventStore
from rollwatch.events import (
    RolloutFailed,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunStarted,
    rollout_stream,
    run_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import report_projections
from rollwatch.report import KeptByRun, report_json
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import WithoutAggregates
from tests.publication.helpers import add_subscriber, bearer, serving

pytestmark = pytest.mark.anyio

RUN = "run-s28"
PROVIDER = "acme"

# model -> each rollout's fate: "fail" (a final failure), "flight" (requested only),
# a cost (answered at it and scored), or None (answered with no price, scored).
FATES: dict[str, Sequence[Any]] = {
    "all-failed": ["fail", "fail"],
    "in-flight": ["flight"],
    "failed-and-flight": ["fail", "flight"],
    "free": [0.0, 0.0],
    "priced": [0.002, 0.002, "fail"],
    "mixed": [0.002, None, 0.002],
    "unpriced": [None],
}
EXPECTED: dict[str, float | None] = {
    "all-failed": 0.0,
    "in-flight": 0.0,
    "failed-and-flight": 0.0,
    "free": 0.0,
    "priced": 0.004,
    "mixed": None,  # before: 0.004, a third of the answers left out
    "unpriced": None,
}


async def _log(store: EventStore) -> None:
    await store.append(
        run_stream(RUN),
        [
            RunStarted(
                run_id=RUN,
                schedule="s",
                provider=PROVIDER,
                models=sorted(FATES),
                problem_set="favorites",
                node="test",
                rollouts=3,
            )
        ],
    )
    for model, fates in FATES.items():
        for sample, fate in enumerate(fates):
            rid = f"{model}-{sample}"
            events: list[Any] = [
                RolloutRequested(
                    rollout_id=rid,
                    run_id=RUN,
                    provider=PROVIDER,
                    model=model,
                    problem_id="p1",
                    problem_hash="h",
                    sample=sample,
                    attempt=1,
                    request={},
                    node="test",
                )
            ]
            if fate == "fail":
                events.append(
                    RolloutFailed(
                        rollout_id=rid,
                        attempt=1,
                        kind="server_error",
                        status=500,
                        retryable=True,
                        message="no",
                        final=True,
                    )
                )
            elif fate != "flight":
                events += [
                    RolloutResponded(rollout_id=rid, attempt=1, text="x", cost_usd=fate),
                    RolloutScored(rollout_id=rid, passed=sample == 0, score=1.0, scorer="t"),
                ]
            await store.append(rollout_stream(rid), events)


def _costs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["model"]: r["cost_usd"] for r in rows}


def _check(rows: list[dict[str, Any]]) -> None:
    costs = _costs(rows)
    assert costs.keys() == EXPECTED.keys()
    for model, want in EXPECTED.items():
        if want is None:
            assert costs[model] is None, model
        else:
            assert costs[model] == pytest.approx(want), model
    zero = {r["model"]: r for r in rows if r["model"] in ("all-failed", "in-flight", "failed-and-flight")}
    for row in zero.values():
        assert row["rollouts"] == 0
        assert row["cost_per_solved_problem"] is None  # nothing solved: no ratio


@pytest.mark.parametrize("aggregates", [True, False], ids=["aggregates", "rollouts"])
@pytest.mark.parametrize("by", ["model", "problem", "run"])
async def test_the_report_cost_is_zero_where_nothing_was_spent(
    tmp_path: Path, by: str, aggregates: bool
) -> None:
    """``rollwatch report --format json`` (``report_json`` without kept rows) and the
    route's path (with :class:`KeptByRun`), from the aggregates or from every rollout."""
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(tmp_path / "p.db", report_projections()) as pdb,
    ):
        await _log(store)
        await pdb.catch_up(store)
        source: Any = pdb if aggregates else WithoutAggregates(pdb)
        _check(await report_json(source, by))
        kept = KeptByRun()
        _check(await report_json(source, by, kept=kept))
        _check(await report_json(source, by, kept=kept))  # the rows kept, made again


async def test_v1_report_says_the_same(tmp_path: Path) -> None:
    """``GET /v1/report`` on a real loopback server, by model, problem and run."""
    async with serving(tmp_path) as env:
        key = await add_subscriber(env.store, "alice")
        await _log(env.store)
        await env.store.append(
            run_stream(RUN),
            [RunFinished(run_id=RUN, status="completed", rollouts=10, passed=3, cost_usd=0.004)],
        )
        for by in ("model", "problem", "run"):
            r = await env.client.get(f"/v1/report?by={by}", headers=bearer(key))
            assert r.status_code == 200, r.text
            _check(r.json())
