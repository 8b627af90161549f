"""The report: its estimators against closed forms, its intervals against simulation,
and the whole path from a real event log to ``rollwatch report`` output."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollwatch.abc import EventStore
from rollwatch.errors import UsageError
from rollwatch.events import (
    PublicReleased,
    RolloutFailed,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunStarted,
)
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections, report_projections
from rollwatch.report import (
    Z95,
    build_release_impact,
    build_report,
    build_trend,
    expected_to_solve,
    fisher_exact,
    mean_pass_at_k,
    pass_at_k,
    report_json,
    to_csv,
    to_json,
    to_table,
    wilson,
)
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch

SPEC_KEYS = {
    "provider",
    "model",
    "rollouts",
    "passed",
    "pass_at_1",
    "pass_at_1_low",
    "pass_at_1_high",
    "cost_usd",
}


# --- building logs ------------------------------------------------------------------------


async def add_run(
    store: EventStore,
    run_id: str,
    outcomes: Mapping[tuple[str, str], Sequence[bool]],
    *,
    provider: str = "acme",
    problem_set: str = "favorites",
    cost: float | None = 0.002,
) -> list[str]:
    """Append one run: ``outcomes[(model, problem)]`` is the pass/fail of each sample.

    Every rollout is requested, answered at ``cost`` and scored; returns the rollout ids.
    """
    models = sorted({m for m, _ in outcomes})
    await store.append(
        f"run-{run_id}",
        [
            RunStarted(
                run_id=run_id,
                schedule="s",
                provider=provider,
                models=models,
                problem_set=problem_set,
                node="test",
                rollouts=max(map(len, outcomes.values())),
            )
        ],
    )
    ids: list[str] = []
    async with anyio.create_task_group() as tg:
        for (model, problem), results in outcomes.items():
            for sample, passed in enumerate(results):
                rid = f"{run_id}/{model}/{problem}/{sample}"
                ids.append(rid)
                tg.start_soon(
                    store.append,
                    f"rollout-{rid}",
                    [
                        RolloutRequested(
                            rollout_id=rid,
                            run_id=run_id,
                            provider=provider,
                            model=model,
                            problem_id=problem,
                            problem_hash="h",
                            sample=sample,
                            attempt=1,
                            request={},
                            node="test",
                        ),
                        RolloutResponded(rollout_id=rid, attempt=1, text="x", cost_usd=cost),
                        RolloutScored(rollout_id=rid, passed=passed, score=float(passed), scorer="t"),
                    ],
                )
    await store.append(
        f"run-{run_id}",
        [
            RunFinished(
                run_id=run_id,
                status="completed",
                rollouts=len(ids),
                passed=0,
                cost_usd=0.0,
            )
        ],
    )
    return ids


def hits(passed: int, n: int) -> list[bool]:
    """``n`` outcomes of which the first ``passed`` pass."""
    return [True] * passed + [False] * (n - passed)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EventStore]:
    """An open, empty SQLite event log under ``tmp_path``."""
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        yield store


@asynccontextmanager
async def projections(store: EventStore, tmp_path: Path) -> AsyncIterator[ProjectionDB]:
    """The report's projections, caught up with ``store``."""
    async with ProjectionDB(tmp_path / "events.projections.db", report_projections()) as pdb:
        await pdb.catch_up(store)
        yield pdb


def by_model(rows: list[dict], model: str) -> dict:
    (row,) = [r for r in rows if r["model"] == model]
    return row


# --- the estimators -----------------------------------------------------------------------


class TestPassAtK:
    def test_closed_forms(self) -> None:
        """pass@k matches 1 - C(n-c,k)/C(n,k) at hand-checked points: 3 of 10 gives 0.3 at k=1,
        1 at k=10 (every draw holds all 10), 1 - 21/252 at k=5, and 0 with no pass."""
        assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
        assert pass_at_k(10, 3, 10) == 1.0
        assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
        assert pass_at_k(10, 0, 1) == 0.0
        assert pass_at_k(1, 1, 1) == 1.0

    def test_too_few_samples_is_null(self) -> None:
        """With n < k there is no estimate at all (None), not a guess."""
        assert pass_at_k(9, 3, 10) is None
        assert pass_at_k(99, 99, 100) is None

    @given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
    def test_product_form_equals_exact_binomials(self, nck: tuple[int, int, int]) -> None:
        """The stable product form agrees with exact rational arithmetic on the binomial formula."""
        n, c, k = nck
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)

    @given(
        st.integers(100, 6000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
        st.sampled_from([1, 10, 100]),
    )
    def test_a_year_of_samples_equals_exact_binomials(self, nc: tuple[int, int], k: int) -> None:
        """Thousands of samples on one problem (a year of weekly runs), at the k the report
        shows: the product of min(c, k) factors agrees with exact arithmetic too."""
        n, c = nc
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)

    @given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
    def test_monotone_in_k_and_bounded(self, nc: tuple[int, int]) -> None:
        """pass@k lies in [0, 1] and never falls as k grows (more tries cannot hurt)."""
        n, c = nc
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert all(v is not None and 0.0 <= v <= 1.0 for v in values)
        assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))

    def test_large_n_does_not_overflow(self) -> None:
        """n in the tens of thousands stays finite and exact enough (the binomials would not)."""
        assert pass_at_k(50_000, 1, 1) == pytest.approx(1 / 50_000)
        assert pass_at_k(50_000, 1, 100) == pytest.approx(100 / 50_000)

    def test_mean_over_problems_skips_short_ones(self) -> None:
        """The average covers only problems with at least k samples, and says how many."""
        assert mean_pass_at_k([(10, 3), (10, 0), (5, 5)], 10) == (pytest.approx(0.5), 2)
        assert mean_pass_at_k([(5, 5)], 10) == (None, 0)


class TestWilson:
    def test_known_values(self) -> None:
        """The interval matches published values: 0/300 -> [0, z²/(n+z²)] = [0, 0.012643],
        1/300 -> [0.000589, 0.018637], 3/10 -> [0.10779, 0.60322] (R's prop.test, no correction)."""
        assert wilson(0, 300) == (0.0, pytest.approx(Z95**2 / (300 + Z95**2)))
        assert wilson(0, 300)[1] == pytest.approx(0.0126430, abs=1e-7)
        low, high = wilson(1, 300)
        assert low == pytest.approx(0.00058866, abs=1e-7)
        assert high == pytest.approx(0.0186367, abs=1e-6)
        assert wilson(3, 10) == (
            pytest.approx(0.1077913, abs=1e-6),
            pytest.approx(0.6032219, abs=1e-6),
        )

    def test_edges_are_exact_and_empty_is_null(self) -> None:
        """All-fail starts at exactly 0, all-pass ends at exactly 1; no trials gives None."""
        assert wilson(0, 7)[0] == 0.0
        assert wilson(7, 7)[1] == 1.0
        assert wilson(0, 0) is None

    @given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
    def test_contains_the_estimate(self, kn: tuple[int, int]) -> None:
        """The interval lies within [0, 1] and contains the observed rate."""
        k, n = kn
        low, high = wilson(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0

    def test_simulated_coverage_is_nominal(self) -> None:
        """Over 2000 simulated samples (seed 7; true rate uniform in [0.005, 0.5], n of 50, 100
        or 300) the 95% interval covers the true rate between 93% and 97% of the time."""
        rng = random.Random(7)
        covered = 0
        trials = 2000
        for _ in range(trials):
            p = rng.uniform(0.005, 0.5)
            n = rng.choice((50, 100, 300))
            k = sum(rng.random() < p for _ in range(n))
            low, high = wilson(k, n)
            covered += low <= p <= high
        assert 0.93 <= covered / trials <= 0.97

    def test_exact_coverage_for_small_rates(self) -> None:
        """At the rates the feed is about (0.1% to 5%, n=300), the exact coverage, averaged over
        the rates, is within a point of 95%: the interval is honest where it matters most."""
        n = 300

        def coverage(p: float) -> float:
            return math.fsum(
                math.comb(n, k) * p**k * (1 - p) ** (n - k)
                for k in range(n + 1)
                if wilson(k, n)[0] <= p <= wilson(k, n)[1]
            )

        rates = [0.001 + 0.049 * i / 200 for i in range(201)]
        assert 0.94 <= math.fsum(map(coverage, rates)) / len(rates) <= 0.96


class TestFisher:
    def test_known_values(self) -> None:
        """Two-sided p-values of textbook tables: [[6,2],[1,4]] -> 0.102564 (SciPy's docs),
        the lady tasting tea [[3,1],[1,3]] -> 0.485714."""
        assert fisher_exact(6, 8, 1, 5) == pytest.approx(132 / 1287)
        assert fisher_exact(3, 4, 1, 4) == pytest.approx(0.4857142857)

    def test_degenerate_tables(self) -> None:
        """Nothing to compare (an empty side, or every rollout passing or failing) gives 1."""
        assert fisher_exact(0, 0, 3, 10) == 1.0
        assert fisher_exact(0, 300, 0, 300) == 1.0
        assert fisher_exact(5, 5, 7, 7) == 1.0

    def test_symmetric_and_sensitive(self) -> None:
        """Swapping the two runs changes nothing; 10/100 against 40/100 is far beyond noise,
        1/300 against 0/300 is not."""
        assert fisher_exact(10, 100, 40, 100) == pytest.approx(fisher_exact(40, 100, 10, 100))
        assert fisher_exact(10, 100, 40, 100) < 1e-5
        assert fisher_exact(1, 300, 0, 300) == pytest.approx(1.0)


class TestExpectation:
    def test_one_pass_in_300(self) -> None:
        """1 pass in 300 at $0.002 a rollout: 300 rollouts and $0.60 expected to a solution,
        ranging from 1/0.018637 ≈ 54 to 1/0.000589 ≈ 1699 rollouts."""
        e = expected_to_solve(1, 300, 0.002)
        assert e.rollouts == 300
        assert e.usd == pytest.approx(0.6)
        assert e.rollouts_low == pytest.approx(53.66, abs=0.01)
        assert e.rollouts_high == pytest.approx(1698.8, abs=0.1)
        assert e.usd_high == pytest.approx(3.3975, abs=1e-3)
        assert e.note == ""

    def test_no_pass_is_a_bound_not_infinity(self) -> None:
        """0 in 300: no point estimate, no upper bound, a lower bound of 1/0.012643 ≈ 79, and a note
        saying 300 rollouts were not enough."""
        e = expected_to_solve(0, 300, 0.01)
        assert e.rollouts is None
        assert e.rollouts_high is None
        assert e.usd is None
        assert e.rollouts_low == pytest.approx(79.09, abs=0.01)
        assert e.usd_low == pytest.approx(0.7909, abs=1e-4)
        assert "no solve in 300 rollouts" in e.note
        assert "at least 79" in e.note

    def test_unknown_cost_leaves_dollars_null(self) -> None:
        """Without a known cost per rollout the rollouts are still estimated, the dollars not."""
        e = expected_to_solve(3, 10, None)
        assert e.rollouts == pytest.approx(10 / 3)
        assert e.usd is None
        assert e.usd_low is None


# --- from a real log ----------------------------------------------------------------------


class TestBuildReport:
    @pytest.mark.anyio
    async def test_rare_solver_gets_an_honest_row(self, log: EventStore, tmp_path: Path) -> None:
        """A model with 1 pass in 300 rollouts at $0.002: pass@1 1/300 with the Wilson interval,
        $0.60 spent, $0.60 per solved problem, 300 (54..1699) rollouts to a solution; a model with
        0 in 300 gets no point estimate and a note instead of infinity."""
        await add_run(log, "r1", {("rare", "hard"): hits(1, 300), ("never", "hard"): hits(0, 300)})
        async with projections(log, tmp_path) as pdb:
            rows = await report_json(pdb)
            rare = by_model(rows, "rare")
            assert rare.keys() >= SPEC_KEYS
            assert (rare["provider"], rare["rollouts"], rare["passed"]) == ("acme", 300, 1)
            assert rare["pass_at_1"] == pytest.approx(1 / 300)
            assert rare["pass_at_1_low"] == pytest.approx(0.00058866, abs=1e-7)
            assert rare["pass_at_1_high"] == pytest.approx(0.0186367, abs=1e-6)
            assert rare["cost_usd"] == pytest.approx(0.6)
            assert rare["cost_per_solved_problem"] == pytest.approx(0.6)
            assert rare["pass_at_100"] == pytest.approx(100 / 300)
            never = by_model(rows, "never")
            assert never["pass_at_1"] == 0.0
            assert never["pass_at_1_low"] == 0.0
            assert never["cost_per_solved_problem"] is None

            (hard,) = [r for r in await report_json(pdb, "problem") if r["model"] == "rare"]
            assert hard["problem_id"] == "hard"
            assert hard["expected_rollouts_to_solve"] == pytest.approx(300)
            assert hard["expected_rollouts_to_solve_low"] == pytest.approx(53.66, abs=0.01)
            assert hard["expected_usd_to_solve"] == pytest.approx(0.6)
            (nothing,) = [r for r in await report_json(pdb, "problem") if r["model"] == "never"]
            assert nothing["expected_rollouts_to_solve"] is None
            assert nothing["expected_rollouts_to_solve_high"] is None
            assert "no solve in 300 rollouts" in nothing["note"]
            json.dumps(rows, allow_nan=False)  # no inf or NaN reaches JSON

    @pytest.mark.anyio
    async def test_pass_at_k_is_averaged_per_problem(self, log: EventStore, tmp_path: Path) -> None:
        """Three problems with 10 samples and 3, 0 and 10 passes: pass@1 pools 13/30, pass@10
        averages (1 + 0 + 1)/3, pass@100 is null (no problem has 100 samples); 2 of 3 solved."""
        await add_run(log, "r1", {("m", "a"): hits(3, 10), ("m", "b"): hits(0, 10), ("m", "c"): hits(10, 10)})
        async with projections(log, tmp_path) as pdb:
            (row,) = await report_json(pdb)
        assert row["pass_at_1"] == pytest.approx(13 / 30)
        assert (row["pass_at_10"], row["pass_at_10_problems"]) == (pytest.approx(2 / 3), 3)
        assert (row["pass_at_100"], row["pass_at_100_problems"]) == (None, 0)
        assert (row["problems"], row["problems_solved"]) == (3, 2)
        assert row["cost_per_solved_problem"] == pytest.approx(30 * 0.002 / 2)

    @pytest.mark.anyio
    async def test_samples_pool_across_runs_and_split_by_run(self, log: EventStore, tmp_path: Path) -> None:
        """Two runs of 50 samples pool into one model row of 100 (so pass@100 exists), while
        --by run keeps them apart in start order with their start times."""
        await add_run(log, "r1", {("m", "a"): hits(5, 50)})
        await add_run(log, "r2", {("m", "a"): hits(15, 50)})
        async with projections(log, tmp_path) as pdb:
            (row,) = await report_json(pdb)
            runs = await report_json(pdb, "run")
        assert (row["rollouts"], row["passed"]) == (100, 20)
        assert row["pass_at_100"] == 1.0
        assert [(r["run_id"], r["passed"]) for r in runs] == [("r1", 5), ("r2", 15)]
        assert runs[0]["run_started_at"] < runs[1]["run_started_at"]
        assert "problem_id" not in runs[0]
        assert "run_id" not in row

    @pytest.mark.anyio
    async def test_unscored_rollouts_cost_but_do_not_count(self, log: EventStore, tmp_path: Path) -> None:
        """A rollout answered but not yet scored, and one that failed at the provider, are not in
        ``rollouts``; the answered one's cost is in ``cost_usd`` (money spent), not in the cost
        per rollout."""
        await add_run(log, "r1", {("m", "a"): hits(1, 4)})
        await log.append(
            "rollout-x",
            [
                RolloutRequested(
                    rollout_id="x",
                    run_id="r1",
                    provider="acme",
                    model="m",
                    problem_id="a",
                    problem_hash="h",
                    sample=9,
                    attempt=1,
                    request={},
                    node="t",
                ),
                RolloutResponded(rollout_id="x", attempt=1, text="", cost_usd=1.0),
            ],
        )
        await log.append(
            "rollout-y",
            [
                RolloutRequested(
                    rollout_id="y",
                    run_id="r1",
                    provider="acme",
                    model="m",
                    problem_id="a",
                    problem_hash="h",
                    sample=10,
                    attempt=1,
                    request={},
                    node="t",
                ),
                RolloutFailed(
                    rollout_id="y",
                    attempt=1,
                    kind="auth",
                    status=401,
                    retryable=False,
                    message="no",
                    final=True,
                ),
            ],
        )
        async with projections(log, tmp_path) as pdb:
            (row,) = await report_json(pdb)
        assert (row["rollouts"], row["passed"], row["unscored"]) == (4, 1, 2)
        assert row["cost_usd"] == pytest.approx(1.008)
        assert row["cost_per_rollout"] == pytest.approx(0.002)

    @pytest.mark.anyio
    async def test_unknown_costs_stay_null(self, log: EventStore, tmp_path: Path) -> None:
        """When no rollout has a cost (the reference provider), costs are null, not $0."""
        await add_run(log, "r1", {("m", "a"): hits(1, 3)}, cost=None)
        async with projections(log, tmp_path) as pdb:
            (row,) = await report_json(pdb)
        assert row["cost_usd"] is None
        assert row["cost_per_solved_problem"] is None
        assert row["expected_usd_to_solve"] is None

    @pytest.mark.anyio
    async def test_bad_by_is_a_usage_error(self, log: EventStore, tmp_path: Path) -> None:
        """An unknown grouping names the choices instead of returning something else."""
        async with projections(log, tmp_path) as pdb:
            with pytest.raises(UsageError, match="model, problem, run"):
                await build_report(pdb, "week")


class TestTrend:
    @pytest.mark.anyio
    async def test_changes_are_tested_against_noise(self, log: EventStore, tmp_path: Path) -> None:
        """Three runs of one model at 10/100, 40/100, 42/100: the first jump is flagged (p < 0.05),
        the second is noise; another problem set is a series of its own."""
        await add_run(log, "r1", {("m", "a"): hits(10, 100)})
        await add_run(log, "r2", {("m", "a"): hits(40, 100)})
        await add_run(log, "r3", {("m", "a"): hits(42, 100)})
        await add_run(log, "other", {("m", "a"): hits(0, 100)}, problem_set="other")
        async with projections(log, tmp_path) as pdb:
            rows = to_json(await build_trend(pdb))
        fav = [r for r in rows if r["problem_set"] == "favorites"]
        assert [r["run_id"] for r in fav] == ["r1", "r2", "r3"]
        first, jump, flat = fav
        assert first["previous_run_id"] is None
        assert first["p_value"] is None
        assert first["significant"] is None
        assert jump["previous_run_id"] == "r1"
        assert jump["change"] == pytest.approx(0.3)
        assert jump["p_value"] == pytest.approx(fisher_exact(40, 100, 10, 100))
        assert jump["significant"] is True
        assert flat["significant"] is False
        assert flat["p_value"] > 0.5
        (other,) = [r for r in rows if r["problem_set"] == "other"]
        assert other["previous_run_id"] is None


class TestReleaseImpact:
    @pytest.mark.anyio
    async def test_before_and_after_the_first_release(self, log: EventStore, tmp_path: Path) -> None:
        """A problem's solution released between two runs splits every model's rollouts on it at
        the release: 2/100 before and 30/100 after is beyond noise; a problem never released is
        absent."""
        ids = await add_run(
            log, "r1", {("m", "a"): hits(2, 100), ("m", "b"): hits(1, 10), ("n", "a"): hits(5, 50)}
        )
        await log.append(f"rollout-{ids[0]}", [PublicReleased(rollout_id=ids[0])])
        await log.append(
            f"rollout-{ids[0]}", [PublicReleased(rollout_id=ids[0])]
        )  # a repeat keeps the first date
        await add_run(
            log, "r2", {("m", "a"): hits(30, 100), ("n", "a"): hits(5, 50), ("m", "b"): hits(1, 10)}
        )
        async with projections(log, tmp_path) as pdb:
            rows = to_json(await build_release_impact(pdb))
            (released_at,) = {r["released_at"] for r in rows}
            first = (await pdb.fetchall("SELECT min(released_at) FROM report_releases"))[0][0]
        assert released_at == first
        assert {(r["model"], r["problem_id"]) for r in rows} == {("m", "a"), ("n", "a")}
        m = by_model(rows, "m")
        assert (
            m["before_passed"],
            m["before_rollouts"],
            m["after_passed"],
            m["after_rollouts"],
        ) == (2, 100, 30, 100)
        assert m["change"] == pytest.approx(0.28)
        assert m["significant"] is True
        n = by_model(rows, "n")
        assert n["change"] == 0.0
        assert n["significant"] is False

    @pytest.mark.anyio
    async def test_rollouts_but_no_releases_says_so(self, log: EventStore, tmp_path: Path) -> None:
        """With scored rollouts but nothing released the table says there is no release yet,
        not "(no rollouts)"; once one is released, the rows are there."""
        ids = await add_run(log, "r1", {("m", "a"): hits(2, 10)})
        async with projections(log, tmp_path) as pdb:
            report = await build_release_impact(pdb)
        table = to_table(report)
        assert "(no rollouts)" not in table
        assert "no releases yet: 10 scored rollouts" in table
        assert to_json(report) == []
        await log.append(f"rollout-{ids[0]}", [PublicReleased(rollout_id=ids[0])])
        await add_run(log, "r2", {("m", "a"): hits(5, 10)})
        async with projections(log, tmp_path) as pdb:
            report = await build_release_impact(pdb)
        assert "no releases yet" not in to_table(report)
        assert len(to_json(report)) == 1

    @pytest.mark.anyio
    async def test_needs_its_projection(self, log: EventStore, tmp_path: Path) -> None:
        """Without its projection the release impact says what to register, not a SQL error."""
        others = [p for p in default_projections() if p.name != "report_releases"]
        async with ProjectionDB(tmp_path / "p.db", others) as pdb:
            with pytest.raises(UsageError, match="report_projections"):
                await build_release_impact(pdb)


class TestRenderings:
    @pytest.mark.anyio
    async def test_table_csv_and_json_show_the_same_rows(self, log: EventStore, tmp_path: Path) -> None:
        """The table aligns its columns and shows pass@1 with its interval and the "none in N"
        bound; the CSV has one line per JSON row with the same keys, nulls empty."""
        await add_run(log, "r1", {("rare", "hard"): hits(1, 300), ("never", "hard"): hits(0, 300)})
        async with projections(log, tmp_path) as pdb:
            report = await build_report(pdb, "problem")
        table = to_table(report)
        header, *body = table.splitlines()[:3]
        assert header.split()[:3] == ["PROVIDER", "MODEL", "PROBLEM"]
        for name in ("ROLLOUTS", "PASSED"):  # numbers end right under their header
            edge = header.index(name) + len(name) - 1
            assert all(line[edge].isdigit() and line[edge + 1] == " " for line in body)
        assert "0.33% [0.06%, 1.86%]" in table
        assert "none in 300: ≥79" in table
        rows = list(csv.DictReader(io.StringIO(to_csv(report))))
        data = to_json(report)
        assert [r["model"] for r in rows] == [r["model"] for r in data]
        assert list(rows[0]) == list(data[0])
        never = next(r for r in rows if r["model"] == "never")
        assert never["expected_rollouts_to_solve"] == ""

    @pytest.mark.anyio
    async def test_empty_log(self, log: EventStore, tmp_path: Path) -> None:
        """No rollouts yet: every view renders; the table says so, JSON is an empty list, CSV is
        just the header."""
        async with projections(log, tmp_path) as pdb:
            reports = [await build_report(pdb, by) for by in ("model", "problem", "run")]
            reports += [await build_trend(pdb), await build_release_impact(pdb)]
        for report in reports:
            assert "(no rollouts)" in to_table(report)
            assert to_json(report) == []
            assert to_csv(report) == ",".join(report.keys) + "\n"


# --- the command --------------------------------------------------------------------------


class TestCommand:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        """A log with two runs of two models and one released solution, and a minimal config."""

        async def build() -> None:
            async with SQLiteEventStore(tmp_path / "events.db") as store:
                ids = await add_run(
                    store,
                    "r1",
                    {
                        ("gpt", "a"): hits(3, 10),
                        ("gpt", "b"): hits(0, 10),
                        ("claude", "a"): hits(1, 300),
                    },
                )
                await store.append(f"rollout-{ids[0]}", [PublicReleased(rollout_id=ids[0])])
                await add_run(store, "r2", {("gpt", "a"): hits(9, 10), ("gpt", "b"): hits(1, 10)})

        anyio.run(build)
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
        return cfg

    def test_json_rows(self, config: Path) -> None:
        """`rollwatch report --format json` catches the projections up itself and prints one row per
        provider and model with the SPEC §2 keys and the right counts."""
        out = rollwatch("--config", str(config), "report", "--format", "json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert all(r.keys() >= SPEC_KEYS for r in rows)
        gpt, claude = by_model(rows, "gpt"), by_model(rows, "claude")
        assert (gpt["rollouts"], gpt["passed"], gpt["problems_solved"]) == (40, 13, 2)
        assert gpt["pass_at_1"] == pytest.approx(13 / 40)
        assert (claude["rollouts"], claude["passed"]) == (300, 1)
        assert claude["pass_at_1_high"] == pytest.approx(0.0186367, abs=1e-6)

    def test_views_and_formats(self, config: Path) -> None:
        """--by problem, --trend and --release-impact as JSON, CSV with a header, an aligned
        table, and JSON by default when stdout is not a terminal."""
        problem = json.loads(
            rollwatch("--config", str(config), "report", "--by", "problem", "--format", "json").stdout
        )
        assert {(r["model"], r["problem_id"]) for r in problem} == {
            ("gpt", "a"),
            ("gpt", "b"),
            ("claude", "a"),
        }
        trend = json.loads(rollwatch("--config", str(config), "report", "--trend", "--format", "json").stdout)
        assert [r["run_id"] for r in trend if r["model"] == "gpt"] == ["r1", "r2"]
        impact = json.loads(rollwatch("--config", str(config), "report", "--release-impact").stdout)
        assert {(r["model"], r["problem_id"]) for r in impact} == {("gpt", "a"), ("claude", "a")}
        out = rollwatch("--config", str(config), "report", "--format", "csv")
        assert out.stdout.splitlines()[0].startswith("provider,model,served_model,rollouts,passed,pass_at_1,")
        assert len(out.stdout.splitlines()) == 3
        table = rollwatch(
            "--config", str(config), "report", "--format", "table", "--trend", "--release-impact"
        )
        assert table.returncode == 0, table.stderr
        assert "trend" in table.stdout
        assert "release impact" in table.stdout
        assert "PASS@1 AFTER" in table.stdout

    def test_one_view_per_json(self, config: Path) -> None:
        """JSON holds one view: asking for two is a usage error (exit 2) that says what to do."""
        out = rollwatch("--config", str(config), "report", "--format", "json", "--trend", "--release-impact")
        assert out.returncode == 2
        assert "choose --trend or --release-impact" in out.stderr
