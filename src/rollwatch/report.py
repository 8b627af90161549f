"""The report: how often each model solves the problems, how sure we are, what it costs.

One computation, several renderings. ``build_report`` (and ``build_trend``,
``build_release_impact``) read the projections and return a :class:`Report`;
``to_table``, ``to_json`` and ``to_csv`` render it; ``report_json`` is what
``GET /v1/report`` returns and ``rollwatch report --format json`` prints.

The statistics, and why these ones
----------------------------------
* ``pass_at_1`` is the pooled share of scored rollouts that passed, with the Wilson
  score interval at 95%. Wilson rather than the normal ("Wald") interval because the
  rates that matter here are small: at 1 pass in 300 rollouts Wald's interval goes
  below zero and at 0 in 300 it collapses to a point, while Wilson's stays inside
  [0, 1] and keeps close to its nominal coverage (Brown, Cai & DasGupta 2001).
* ``pass_at_k`` is the unbiased estimator of Chen et al. (2021), "Evaluating Large
  Language Models Trained on Code": per problem with ``n`` samples of which ``c``
  passed, ``1 - C(n-c, k) / C(n, k)``, the chance that ``k`` samples drawn without
  replacement hold a pass; averaged over the problems that have ``n >= k`` samples
  (``pass_at_10_problems`` and so on say how many). Null when no problem has ``k``
  samples: a smaller sample cannot say anything about ``k`` tries.
* Expected rollouts to a first solution is ``1/p`` (the mean of a geometric
  distribution, counting the solving rollout), its range ``1/high .. 1/low`` from
  the Wilson bounds; dollars are that times the mean cost of a scored rollout. With
  no pass in ``n`` rollouts there is no estimate, only a bound: the expected number
  is at least ``1/high`` and unbounded above; the row says so in ``note``.
* Changes between two runs, and before and after a release, are judged with
  Fisher's exact test (two-sided), not the two-proportion z-test: the z-test's normal
  approximation fails exactly where we look, at a handful of passes or none.

Only the standard library: the math is small, and pulling SciPy into a service for
four formulas is not worth its weight.
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Any, Literal, Protocol

from rollwatch.errors import UsageError
from rollwatch.events import Recorded
from rollwatch.projections import Projection, default_projections

__all__ = [
    "KS",
    "Z95",
    "Expectation",
    "ReleaseRow",
    "ReleasesProjection",
    "Report",
    "Row",
    "TrendRow",
    "build_release_impact",
    "build_report",
    "build_trend",
    "expected_to_solve",
    "fisher_exact",
    "mean_pass_at_k",
    "pass_at_k",
    "report_json",
    "report_projections",
    "to_csv",
    "to_json",
    "to_table",
    "wilson",
]

By = Literal["model", "problem", "run"]
BY_CHOICES: tuple[By, ...] = ("model", "problem", "run")

#: The two-sided 95% normal quantile (1.959963...).
Z95 = NormalDist().inv_cdf(0.975)
#: The k of the pass@k columns.
KS = (1, 10, 100)
#: A change is flagged when its p-value is below this.
ALPHA = 0.05


class Fetcher(Protocol):
    """What the report needs of :class:`rollwatch.projections.ProjectionDB`."""

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


# --- the estimators (pure) -------------------------------------------------------------


def wilson(passed: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for ``passed`` successes in ``n`` trials; None when n = 0."""
    if n <= 0:
        return None
    if not 0 <= passed <= n:
        raise ValueError(f"passed must be within 0..{n}, not {passed}")
    p = passed / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At the edges the bound is exactly 0 or 1; floating point would leave 1e-17.
    low = 0.0 if passed == 0 else max(0.0, center - half)
    high = 1.0 if passed == n else min(1.0, center + half)
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Chen et al.'s unbiased pass@k from ``n`` samples with ``c`` passes; None when n < k.

    ``1 - C(n-c, k)/C(n, k)`` computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``: the
    binomials overflow a float long before the product loses precision.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be within 0..{n}, not {c}")
    if n < k:
        return None
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> tuple[float | None, int]:
    """pass@k averaged over the problems (``(n, c)`` each) with ``n >= k``, and their number."""
    values = [v for n, c in counts if (v := pass_at_k(n, c, k)) is not None]
    if not values:
        return None, 0
    return math.fsum(values) / len(values), len(values)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test: ``a`` passes in ``n1`` against ``b`` in ``n2``.

    The p-value sums the hypergeometric probabilities of every table with the same
    margins that is no more likely than the observed one (as R and SciPy do, with the
    same small relative tolerance so that ties in exact arithmetic stay ties).
    """
    if not (0 <= a <= n1 and 0 <= b <= n2):
        raise ValueError(f"need 0 <= a <= n1 and 0 <= b <= n2, got {a}/{n1} and {b}/{n2}")
    total, passes = n1 + n2, a + b
    if n1 == 0 or n2 == 0 or passes in (0, total):
        return 1.0
    base = _log_comb(total, n1)

    def log_p(x: int) -> float:
        return _log_comb(passes, x) + _log_comb(total - passes, n1 - x) - base

    observed = log_p(a)
    limit = observed + math.log1p(1e-7)
    lo, hi = max(0, passes - n2), min(passes, n1)
    p = math.fsum(math.exp(lp) for x in range(lo, hi + 1) if (lp := log_p(x)) <= limit)
    return min(1.0, p)


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """Rollouts and dollars to a first solution, from a pass rate, with the Wilson range.

    ``rollouts`` is None when nothing passed (there is only a lower bound then), and
    ``rollouts_high`` is None when the Wilson low bound is 0 (no upper bound).
    """

    rollouts: float | None
    rollouts_low: float | None
    rollouts_high: float | None
    usd: float | None
    usd_low: float | None
    usd_high: float | None
    note: str


def _inv(x: float) -> float | None:
    return 1.0 / x if x > 0 else None


def _times(a: float | None, b: float | None) -> float | None:
    return a * b if a is not None and b is not None else None


def expected_to_solve(passed: int, n: int, cost_per_rollout: float | None) -> Expectation:
    """Expected rollouts (``1/p``) and dollars (``cost/p``) until a first pass, with their range."""
    ci = wilson(passed, n)
    if ci is None:
        return Expectation(
            rollouts=None,
            rollouts_low=None,
            rollouts_high=None,
            usd=None,
            usd_low=None,
            usd_high=None,
            note="no scored rollouts",
        )
    low, high = ci
    point = n / passed if passed else None
    r_low, r_high = _inv(high), _inv(low)
    note = ""
    if passed == 0:
        # Honest about what zero passes says: not "impossible", not "1/p = inf", but
        # that n were not enough and the mean per solve is at least 1/high.
        note = (
            f"no solve in {n} rollouts: {n} were not enough; "
            f"at 95% the expected number per solve is at least {r_low:,.0f}"
        )
    return Expectation(
        rollouts=point,
        rollouts_low=r_low,
        rollouts_high=r_high,
        usd=_times(point, cost_per_rollout),
        usd_low=_times(r_low, cost_per_rollout),
        usd_high=_times(r_high, cost_per_rollout),
        note=note,
    )


def _ratio(num: float | None, den: int) -> float | None:
    return num / den if num is not None and den > 0 else None


# --- the release dates (a projection of PublicReleased) --------------------------------


class ReleasesProjection(Projection):
    """When each rollout's result was released publicly (the first ``PublicReleased``).

    The report joins it with ``rollouts`` to date each problem's first public
    solution. Register it in ``default_projections()`` so that the daemon keeps it
    current; ``report_projections()`` adds it for the command line until then.
    """

    name = "report_releases"
    version = 1
    tables = ("report_releases",)
    types = frozenset({"PublicReleased"})
    ddl = """
    CREATE TABLE IF NOT EXISTS report_releases (
        rollout_id TEXT PRIMARY KEY, released_at TEXT NOT NULL, released_seq INTEGER NOT NULL
    )
    """

    def apply(self, db: sqlite3.Connection, ev: Recorded) -> None:
        """Record the release of one rollout; a repeated release keeps the first date."""
        db.execute(
            "INSERT OR IGNORE INTO report_releases (rollout_id, released_at, released_seq) VALUES (?, ?, ?)",
            (ev.data["rollout_id"], ev.at, ev.seq),
        )


def report_projections() -> list[Projection]:
    """``default_projections()`` plus :class:`ReleasesProjection` when it is not among them."""
    projections = default_projections()
    if not any(p.name == ReleasesProjection.name for p in projections):
        projections.append(ReleasesProjection())
    return projections


# --- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the report: a provider and model, or one of its problems, or one of its runs.

    ``rollouts`` and ``passed`` count scored rollouts; ``unscored`` the others
    (in flight, awaiting a scorer, or failed at the provider). ``cost_usd`` is the
    whole spend of the group, unscored rollouts included; ``cost_per_rollout`` the mean
    cost of a scored one. The ``expected_*`` fields follow from this row's pass rate:
    on a ``--by problem`` row they are the rollouts and dollars to a first solution
    of that problem; on wider rows, the rollouts and dollars per pass.
    """

    provider: str
    model: str
    problem_id: str | None = None
    run_id: str | None = None
    run_started_at: str | None = None
    rollouts: int
    passed: int
    pass_at_1: float | None
    pass_at_1_low: float | None
    pass_at_1_high: float | None
    pass_at_10: float | None
    pass_at_10_problems: int
    pass_at_100: float | None
    pass_at_100_problems: int
    problems: int
    problems_solved: int
    unscored: int
    cost_usd: float | None
    cost_per_rollout: float | None
    cost_per_solved_problem: float | None
    expected_rollouts_to_solve: float | None
    expected_rollouts_to_solve_low: float | None
    expected_rollouts_to_solve_high: float | None
    expected_usd_to_solve: float | None
    expected_usd_to_solve_low: float | None
    expected_usd_to_solve_high: float | None
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class TrendRow:
    """pass@1 of one model in one run, and whether it moved beyond noise since the previous run.

    Runs are compared within one provider, model and problem set, in start order;
    ``p_value`` is Fisher's exact test of this run's passes against the previous
    run's, ``significant`` is ``p_value < 0.05`` (None for a series' first run).
    """

    provider: str
    model: str
    problem_set: str | None
    run_id: str
    run_started_at: str | None
    problems: int
    rollouts: int
    passed: int
    pass_at_1: float | None
    pass_at_1_low: float | None
    pass_at_1_high: float | None
    previous_run_id: str | None
    change: float | None
    p_value: float | None
    significant: bool | None


@dataclass(frozen=True, kw_only=True)
class ReleaseRow:
    """One model on one problem whose solution was released: pass rates before and after.

    ``released_at`` is the first ``PublicReleased`` of any rollout of the problem;
    a rollout counts as before it when it was requested earlier.
    """

    provider: str
    model: str
    problem_id: str
    released_at: str
    before_rollouts: int
    before_passed: int
    before_pass_at_1: float | None
    before_pass_at_1_low: float | None
    before_pass_at_1_high: float | None
    after_rollouts: int
    after_passed: int
    after_pass_at_1: float | None
    after_pass_at_1_low: float | None
    after_pass_at_1_high: float | None
    change: float | None
    p_value: float | None
    significant: bool | None


AnyRow = Row | TrendRow | ReleaseRow


@dataclass(frozen=True)
class Column:
    """How a terminal table shows one column: its header, its text, its alignment."""

    header: str
    text: Callable[[Any], str]
    right: bool = True


@dataclass(frozen=True)
class Report:
    """Rows of one view and what the renderers need to show them.

    ``keys`` are the row fields of the JSON and CSV renderings, in order (a field a
    view does not use, like ``run_id`` outside ``--by run``, is left out).
    """

    title: str
    rows: tuple[AnyRow, ...]
    keys: tuple[str, ...]
    columns: tuple[Column, ...]
    notes: tuple[str, ...] = ()


# --- reading the projection ---------------------------------------------------------------


@dataclass(slots=True)
class _Cell:
    """Rollouts of one provider, model, problem and run, counted by SQL."""

    provider: str
    model: str
    problem_id: str
    run_id: str
    scored: int
    passed: int
    total: int
    cost: float | None
    cost_scored: float | None
    costed_scored: int


_CELLS_SQL = """
SELECT provider, model, problem_id, run_id,
       SUM(state = 'scored'),
       SUM(CASE WHEN state = 'scored' THEN coalesce(passed, 0) ELSE 0 END),
       COUNT(*),
       SUM(cost_usd),
       SUM(CASE WHEN state = 'scored' THEN cost_usd END),
       SUM(state = 'scored' AND cost_usd IS NOT NULL)
FROM rollouts
GROUP BY provider, model, problem_id, run_id
"""


async def _cells(pdb: Fetcher) -> list[_Cell]:
    rows = await pdb.fetchall(_CELLS_SQL)
    return [_Cell(*r) for r in rows]


async def _runs(pdb: Fetcher) -> dict[str, tuple[str | None, str | None]]:
    """Each run's start time and problem set."""
    rows = await pdb.fetchall("SELECT run_id, started_at, problem_set FROM runs")
    return {r[0]: (r[1], r[2]) for r in rows}


def _sum_opt(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    # Dollars to the nano-dollar: SQL's float sums leave 0.6000000000000004 otherwise.
    return round(math.fsum(known), 9) if known else None


def _row(provider: str, model: str, cells: Sequence[_Cell], **ident: Any) -> Row:
    per_problem: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for cell in cells:
        nc = per_problem[cell.problem_id]
        nc[0] += cell.scored
        nc[1] += cell.passed
    counts = [(n, c) for n, c in per_problem.values() if n > 0]
    n = sum(cell.scored for cell in cells)
    c = sum(cell.passed for cell in cells)
    ci = wilson(c, n)
    p10, p10n = mean_pass_at_k(counts, 10)
    p100, p100n = mean_pass_at_k(counts, 100)
    cost = _sum_opt(cell.cost for cell in cells)
    cost_per_rollout = _ratio(
        _sum_opt(cell.cost_scored for cell in cells), sum(cell.costed_scored for cell in cells)
    )
    solved = sum(1 for _, c_ in counts if c_ > 0)
    exp = expected_to_solve(c, n, cost_per_rollout)
    return Row(
        provider=provider,
        model=model,
        **ident,
        rollouts=n,
        passed=c,
        pass_at_1=c / n if n else None,
        pass_at_1_low=ci[0] if ci else None,
        pass_at_1_high=ci[1] if ci else None,
        pass_at_10=p10,
        pass_at_10_problems=p10n,
        pass_at_100=p100,
        pass_at_100_problems=p100n,
        problems=len(counts),
        problems_solved=solved,
        unscored=sum(cell.total - cell.scored for cell in cells),
        cost_usd=cost,
        cost_per_rollout=cost_per_rollout,
        cost_per_solved_problem=_ratio(cost, solved),
        expected_rollouts_to_solve=exp.rollouts,
        expected_rollouts_to_solve_low=exp.rollouts_low,
        expected_rollouts_to_solve_high=exp.rollouts_high,
        expected_usd_to_solve=exp.usd,
        expected_usd_to_solve_low=exp.usd_low,
        expected_usd_to_solve_high=exp.usd_high,
        note=exp.note,
    )


def _summarize(
    cells: Iterable[_Cell], by: By, runs: Mapping[str, tuple[str | None, str | None]]
) -> list[Row]:
    """Group rollout cells into report rows (the pure part of :func:`build_report`)."""
    groups: dict[tuple[str, ...], list[_Cell]] = defaultdict(list)
    for cell in cells:
        if by == "problem":
            key: tuple[str, ...] = (cell.provider, cell.model, cell.problem_id)
        elif by == "run":
            key = (cell.provider, cell.model, cell.run_id)
        else:
            key = (cell.provider, cell.model)
        groups[key].append(cell)
    rows = []
    for key, group in groups.items():
        ident: dict[str, Any] = {}
        if by == "problem":
            ident["problem_id"] = key[2]
        elif by == "run":
            ident["run_id"] = key[2]
            ident["run_started_at"] = runs.get(key[2], (None, None))[0]
        rows.append(_row(key[0], key[1], group, **ident))
    rows.sort(
        key=lambda r: (
            r.provider,
            r.model,
            r.run_started_at or "",
            r.run_id or "",
            r.problem_id or "",
        )
    )
    return rows


# --- the views ------------------------------------------------------------------------------


def _keys(cls: type[Any], drop: Iterable[str] = ()) -> tuple[str, ...]:
    dropped = set(drop)
    return tuple(f.name for f in fields(cls) if f.name not in dropped)


async def build_report(pdb: Fetcher, by: str = "model") -> Report:
    """The report per provider and model, or per problem or run of each (``by``)."""
    if by not in BY_CHOICES:
        raise UsageError(f"report: by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    rows = _summarize(await _cells(pdb), by, await _runs(pdb))
    drop = {
        "model": ("problem_id", "run_id", "run_started_at"),
        "problem": ("run_id", "run_started_at"),
        "run": ("problem_id",),
    }[by]
    cols: list[Column] = [
        Column("PROVIDER", lambda r: r.provider, False),
        Column("MODEL", lambda r: r.model, False),
    ]
    if by == "problem":
        cols.append(Column("PROBLEM", lambda r: r.problem_id, False))
    elif by == "run":
        cols += [
            Column("RUN", lambda r: r.run_id, False),
            Column("STARTED", lambda r: _when(r.run_started_at), False),
        ]
    if by != "problem":
        cols += [Column("PROBLEMS", lambda r: f"{r.problems_solved}/{r.problems}")]
    cols += [
        Column("ROLLOUTS", lambda r: _int(r.rollouts)),
        Column("PASSED", lambda r: _int(r.passed)),
        Column("PASS@1 (95%)", lambda r: _rate_ci(r.pass_at_1, r.pass_at_1_low, r.pass_at_1_high)),
        Column("PASS@10", lambda r: _pct(r.pass_at_10)),
        Column("PASS@100", lambda r: _pct(r.pass_at_100)),
        Column("COST", lambda r: _usd(r.cost_usd)),
    ]
    if by == "problem":
        cols += [
            Column("ROLLOUTS TO SOLVE", lambda r: _expect(r, "rollouts")),
            Column("$ TO SOLVE", lambda r: _expect(r, "usd")),
        ]
    else:
        cols += [Column("$/SOLVED PROBLEM", lambda r: _usd(r.cost_per_solved_problem))]
    notes = [
        "pass@1: share of scored rollouts that passed, 95% Wilson interval in brackets; "
        "pass@k: Chen et al. (2021), averaged over problems with at least k rollouts"
    ]
    if by == "problem":
        notes.append(
            "to solve: expected rollouts and dollars to a first solution (1/p), 95% range"
            " in brackets (none in N: no pass yet, only a lower bound)"
        )
    return Report(
        title=f"report by {by}",
        rows=tuple(rows),
        keys=_keys(Row, drop),
        columns=tuple(cols),
        notes=tuple(notes),
    )


async def build_trend(pdb: Fetcher) -> Report:
    """pass@1 per model per run, in start order, each run tested against the previous one."""
    runs = await _runs(pdb)
    per_run: dict[tuple[str, str, str | None, str], list[_Cell]] = defaultdict(list)
    for cell in await _cells(pdb):
        problem_set = runs.get(cell.run_id, (None, None))[1]
        per_run[(cell.provider, cell.model, problem_set, cell.run_id)].append(cell)
    series: dict[tuple[str, str, str | None], list[tuple[str | None, str, list[_Cell]]]] = defaultdict(list)
    for (provider, model, problem_set, run_id), cells in per_run.items():
        series[(provider, model, problem_set)].append((runs.get(run_id, (None, None))[0], run_id, cells))
    rows: list[TrendRow] = []
    for (provider, model, problem_set), items in sorted(
        series.items(), key=lambda kv: tuple(map(str, kv[0]))
    ):
        items.sort(key=lambda t: (t[0] or "", t[1]))
        prev: tuple[str, int, int] | None = None
        for started_at, run_id, cells in items:
            n = sum(c.scored for c in cells)
            k = sum(c.passed for c in cells)
            ci = wilson(k, n)
            change = p_value = significant = None
            prev_id = prev[0] if prev else None
            if prev is not None and n > 0:
                _, pk, pn = prev
                change = k / n - pk / pn
                p_value = fisher_exact(k, n, pk, pn)
                significant = p_value < ALPHA
            rows.append(
                TrendRow(
                    provider=provider,
                    model=model,
                    problem_set=problem_set,
                    run_id=run_id,
                    run_started_at=started_at,
                    problems=len({c.problem_id for c in cells if c.scored}),
                    rollouts=n,
                    passed=k,
                    pass_at_1=k / n if n else None,
                    pass_at_1_low=ci[0] if ci else None,
                    pass_at_1_high=ci[1] if ci else None,
                    previous_run_id=prev_id,
                    change=change,
                    p_value=p_value,
                    significant=significant,
                )
            )
            if n > 0:
                prev = (run_id, k, n)
    cols = (
        Column("PROVIDER", lambda r: r.provider, False),
        Column("MODEL", lambda r: r.model, False),
        Column("SET", lambda r: r.problem_set or "-", False),
        Column("RUN", lambda r: r.run_id, False),
        Column("STARTED", lambda r: _when(r.run_started_at), False),
        Column("ROLLOUTS", lambda r: _int(r.rollouts)),
        Column("PASSED", lambda r: _int(r.passed)),
        Column("PASS@1 (95%)", lambda r: _rate_ci(r.pass_at_1, r.pass_at_1_low, r.pass_at_1_high)),
        Column("CHANGE", lambda r: _pp(r.change)),
        Column("P", lambda r: _p(r.p_value)),
        Column("", lambda r: "beyond noise" if r.significant else "", False),
    )
    notes = (
        f"change: against the previous run of the same model and problem set; "
        f"P: Fisher's exact test, two-sided; beyond noise when P < {ALPHA}",
    )
    return Report(title="trend", rows=tuple(rows), keys=_keys(TrendRow), columns=cols, notes=notes)


_RELEASE_SQL = """
WITH released AS (
    SELECT o.problem_id AS problem_id, MIN(x.released_at) AS released_at
    FROM report_releases x JOIN rollouts o ON o.rollout_id = x.rollout_id
    GROUP BY o.problem_id
)
SELECT o.provider, o.model, o.problem_id, r.released_at,
       SUM(o.requested_at < r.released_at),
       SUM(CASE WHEN o.requested_at < r.released_at THEN coalesce(o.passed, 0) ELSE 0 END),
       SUM(o.requested_at >= r.released_at),
       SUM(CASE WHEN o.requested_at >= r.released_at THEN coalesce(o.passed, 0) ELSE 0 END)
FROM rollouts o JOIN released r ON r.problem_id = o.problem_id
WHERE o.state = 'scored'
GROUP BY o.provider, o.model, o.problem_id, r.released_at
ORDER BY o.provider, o.model, o.problem_id
"""


async def build_release_impact(pdb: Fetcher) -> Report:
    """Per model and released problem: pass@1 before and after the solution went public."""
    have = await pdb.fetchall(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (ReleasesProjection.name,)
    )
    if not have:
        raise UsageError(
            "report: the release impact needs the report_releases projection; "
            "open the projections with rollwatch.report.report_projections()"
        )
    rows: list[ReleaseRow] = []
    for provider, model, problem_id, released_at, bn, bc, an, ac in await pdb.fetchall(_RELEASE_SQL):
        b, a = wilson(bc, bn), wilson(ac, an)
        both = bn > 0 and an > 0
        p_value = fisher_exact(ac, an, bc, bn) if both else None
        rows.append(
            ReleaseRow(
                provider=provider,
                model=model,
                problem_id=problem_id,
                released_at=released_at,
                before_rollouts=bn,
                before_passed=bc,
                before_pass_at_1=bc / bn if bn else None,
                before_pass_at_1_low=b[0] if b else None,
                before_pass_at_1_high=b[1] if b else None,
                after_rollouts=an,
                after_passed=ac,
                after_pass_at_1=ac / an if an else None,
                after_pass_at_1_low=a[0] if a else None,
                after_pass_at_1_high=a[1] if a else None,
                change=ac / an - bc / bn if both else None,
                p_value=p_value,
                significant=p_value < ALPHA if p_value is not None else None,
            )
        )
    cols = (
        Column("PROVIDER", lambda r: r.provider, False),
        Column("MODEL", lambda r: r.model, False),
        Column("PROBLEM", lambda r: r.problem_id, False),
        Column("RELEASED", lambda r: _when(r.released_at), False),
        Column("BEFORE", lambda r: f"{r.before_passed}/{r.before_rollouts}"),
        Column(
            "PASS@1 BEFORE (95%)",
            lambda r: _rate_ci(r.before_pass_at_1, r.before_pass_at_1_low, r.before_pass_at_1_high),
        ),
        Column("AFTER", lambda r: f"{r.after_passed}/{r.after_rollouts}"),
        Column(
            "PASS@1 AFTER (95%)",
            lambda r: _rate_ci(r.after_pass_at_1, r.after_pass_at_1_low, r.after_pass_at_1_high),
        ),
        Column("CHANGE", lambda r: _pp(r.change)),
        Column("P", lambda r: _p(r.p_value)),
        Column("", lambda r: "beyond noise" if r.significant else "", False),
    )
    notes = (
        "released: the first public release of a solution of the problem; a rollout is before it "
        f"when it was requested earlier; P: Fisher's exact test, beyond noise when P < {ALPHA}",
    )
    return Report(title="release impact", rows=tuple(rows), keys=_keys(ReleaseRow), columns=cols, notes=notes)


async def report_json(
    pdb: Fetcher, by: str = "model", *, trend: bool = False, release_impact: bool = False
) -> list[dict[str, Any]]:
    """What ``GET /v1/report`` returns: rows by ``by``, or the trend, or the release impact."""
    if trend and release_impact:
        raise UsageError("report: JSON holds one view; ask for the trend or the release impact, not both")
    if trend:
        return to_json(await build_trend(pdb))
    if release_impact:
        return to_json(await build_release_impact(pdb))
    return to_json(await build_report(pdb, by))


# --- renderings -----------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    # JSON has no infinity or NaN; the estimators return None where those would be.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_json(report: Report) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (SPEC §2: a list of rows)."""
    return [{k: _plain(getattr(r, k)) for k in report.keys} for r in report.rows]


def to_csv(report: Report) -> str:
    """The rows as CSV with a header line; empty cells for nulls, ``true``/``false`` for flags."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(report.keys)
    for row in to_json(report):
        w.writerow(["" if v is None else str(v).lower() if isinstance(v, bool) else v for v in row.values()])
    return buf.getvalue()


def to_table(report: Report) -> str:
    """The rows as an aligned table for a terminal, with the notes under it."""
    header = [c.header for c in report.columns]
    body = [[c.text(r) for c in report.columns] for r in report.rows]
    widths = [max([len(h), *(len(line[i]) for line in body)]) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if col.right else cell.ljust(w)
            for cell, w, col in zip(cells, widths, report.columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(header), *(fmt(line) for line in body)]
    if not body:
        lines.append("(no rollouts)")
    lines += [f"  {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def _int(n: int) -> str:
    return f"{n:,}"


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    v = 100 * x
    if v == 0 or v == 100:
        return f"{v:.0f}%"
    return f"{v:.2f}%" if v < 10 else f"{v:.1f}%"


def _rate_ci(p: float | None, low: float | None, high: float | None) -> str:
    if p is None:
        return "-"
    return f"{_pct(p)} [{_pct(low)}, {_pct(high)}]"


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f} pp"


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x >= 0.001 else "<0.001"


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"${x:,.0f}"
    return f"${x:.2f}" if x >= 1 else f"${x:.4f}"


def _num(x: float | None) -> str:
    return "∞" if x is None else f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def _when(at: str | None) -> str:
    return "-" if not at else at[:16].replace("T", " ")


def _expect(r: Row, what: Literal["rollouts", "usd"]) -> str:
    if r.rollouts == 0:
        return "-"
    if what == "usd":
        point, low, high = (
            r.expected_usd_to_solve,
            r.expected_usd_to_solve_low,
            r.expected_usd_to_solve_high,
        )
        if r.cost_per_rollout is None:
            return "-"
        show: Callable[[float | None], str] = lambda x: "∞" if x is None else _usd(x)  # noqa: E731
    else:
        point, low, high = (
            r.expected_rollouts_to_solve,
            r.expected_rollouts_to_solve_low,
            r.expected_rollouts_to_solve_high,
        )
        show = _num
    if r.passed == 0:
        return f"none in {r.rollouts:,}: ≥{show(low)}"
    return f"{show(point)} [{show(low)}, {show(high)}]"
