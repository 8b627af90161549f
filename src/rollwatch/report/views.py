"""The report as a read model: what the projections say, grouped into rows.

``build_report`` (and ``build_trend``, ``build_release_impact``) read the projections
and return a :class:`~rollwatch.report.render.Report`; ``report_json`` is what
``GET /v1/report`` returns and ``rollwatch report --format json`` prints. The
statistics are in :mod:`rollwatch.report.stats`, the renderings in
:mod:`rollwatch.report.render`.
"""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Protocol

from rollwatch.errors import UsageError
from rollwatch.events import PublicReleased, Recorded
from rollwatch.projections import Projection
from rollwatch.report.failures import (
    UNSERVED,
    Answers,
    Failures,
    Key,
    describe,
    failures_by_key,
    failures_by_run,
    has_aggregates,
)
from rollwatch.report.render import Column, Report, _int, _num, _p, _pct, _pp, _rate_ci, _usd, _when, to_json
from rollwatch.report.stats import (
    ALPHA,
    _ratio,
    expected_to_solve,
    fisher_exact,
    mean_pass_at_k,
    wilson,
)

By = Literal["model", "problem", "run"]
BY_CHOICES: tuple[By, ...] = ("model", "problem", "run")


class Fetcher(Protocol):
    """What the report needs of :class:`rollwatch.projections.ProjectionDB`."""

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


# --- the release dates (a projection of PublicReleased) --------------------------------


class ReleasesProjection(Projection):
    """When each rollout's result was released publicly (the first ``PublicReleased``).

    The report joins it with ``rollouts`` to date each problem's first public
    solution.
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

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Record the release of one rollout; a repeated release keeps the first date."""
        ev = rec.event()
        if isinstance(ev, PublicReleased):
            db.execute(
                "INSERT OR IGNORE INTO report_releases (rollout_id, released_at, released_seq)"
                " VALUES (?, ?, ?)",
                (ev.rollout_id, rec.at, rec.seq),
            )


# --- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the report: a provider and model, or one of its problems, or one of its runs.

    ``rollouts`` and ``passed`` count scored rollouts; ``unscored`` the others
    (in flight, awaiting a scorer, or failed at the provider). ``cost_usd`` is the
    whole spend of the group's answers, unscored rollouts included: 0 when none has cost
    anything yet (no answer so far), None only when an answer's cost is unknown (a model
    without a price); ``cost_per_rollout`` the mean cost of a scored one with a known cost. The ``expected_*`` fields follow from this row's pass rate:
    on a ``--by problem`` row they are the rollouts and dollars to a first solution
    of that problem; on wider rows, the rollouts and dollars per pass.

    ``served_model`` is the model the provider said answered (it may name a dated
    snapshot of ``model``, or another model altogether): rows are split by it, so that
    a silent upgrade behind a configured name shows as a row of its own. A rollout
    without an answer counts with the model that answered most of its run.
    """

    provider: str
    model: str
    served_model: str | None = None
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
    list_cost_usd: float | None = None
    """What the group would have cost at the synchronous (list) prices: batched answers
    at list price, the others as paid (None when none is priced)."""
    batch_saved_usd: float | None = None
    """What batch mode saved: ``list_cost_usd - cost_usd`` over the batched answers
    (None when the group has none)."""
    cost_per_rollout: float | None
    cost_per_solved_problem: float | None
    expected_rollouts_to_solve: float | None
    expected_rollouts_to_solve_low: float | None
    expected_rollouts_to_solve_high: float | None
    expected_usd_to_solve: float | None
    expected_usd_to_solve_low: float | None
    expected_usd_to_solve_high: float | None
    note: str = ""
    model_failures: dict[str, int] = field(default_factory=dict)
    """Rollouts of finished runs the model failed, by cause (``wrong_answer``, ``timeout``,
    ``limit``, ``no_code``, ``tampered``): see :mod:`rollwatch.report.failures`."""
    infra_failures: dict[str, int] = field(default_factory=dict)
    """Rollouts of finished runs that did not pass for a reason not the model's, by cause
    (the provider's error kind, ``budget_exhausted``, ``scorer_error``, ...)."""


@dataclass(frozen=True, kw_only=True)
class TrendRow:
    """pass@1 of one model in one run, and whether it moved beyond noise since the previous run.

    Runs are compared within one provider, model, served model and problem set, in start
    order (a change of served model starts a series of its own);
    ``p_value`` is Fisher's exact test of this run's passes against the previous
    run's, ``significant`` is ``p_value < 0.05`` (None for a series' first run).
    """

    provider: str
    model: str
    served_model: str | None
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


# --- reading the projection ---------------------------------------------------------------


@dataclass(slots=True)
class _Cell:
    """Rollouts of one provider, model, problem and run, counted by SQL."""

    provider: str
    model: str
    problem_id: str
    run_id: str
    served_model: str | None
    scored: int
    passed: int
    total: int
    cost: float | None
    cost_scored: float | None
    costed_scored: int
    list_cost: float | None
    batch_paid: float | None
    unpriced: int = 0
    """Answers whose cost is unknown (their model had no price)."""

    def values(self) -> tuple[Any, ...]:
        """Every field, in order (what a row made from this cell depends on)."""
        return (
            self.provider,
            self.model,
            self.problem_id,
            self.run_id,
            self.served_model,
            self.scored,
            self.passed,
            self.total,
            self.cost,
            self.cost_scored,
            self.costed_scored,
            self.list_cost,
            self.batch_paid,
            self.unpriced,
        )


_CELLS_SQL = """
SELECT provider, model, problem_id, run_id, served_model,
       SUM(state = 'scored'),
       SUM(CASE WHEN state = 'scored' THEN coalesce(passed, 0) ELSE 0 END),
       COUNT(*),
       SUM(cost_usd),
       SUM(CASE WHEN state = 'scored' THEN cost_usd END),
       SUM(state = 'scored' AND cost_usd IS NOT NULL),
       SUM(coalesce(list_cost_usd, cost_usd)),
       SUM(CASE WHEN list_cost_usd IS NOT NULL THEN cost_usd END),
       SUM(state IN ('answered', 'scored') AND cost_usd IS NULL)
FROM rollouts
GROUP BY provider, model, problem_id, run_id, served_model
"""


# One problem version's verdicts: each rollout's newest verdict under that version; the
# problem's rollouts without one count as unscored.
_VERSION_CELLS_SQL = """
WITH v AS (
    SELECT rollout_id, passed FROM verdicts
    WHERE seq IN (SELECT max(seq) FROM verdicts WHERE problem_hash = ? GROUP BY rollout_id)
)
SELECT o.provider, o.model, o.problem_id, o.run_id, o.served_model,
       SUM(v.rollout_id IS NOT NULL),
       SUM(coalesce(v.passed, 0)),
       COUNT(*),
       SUM(o.cost_usd),
       SUM(CASE WHEN v.rollout_id IS NOT NULL THEN o.cost_usd END),
       SUM(v.rollout_id IS NOT NULL AND o.cost_usd IS NOT NULL),
       SUM(coalesce(o.list_cost_usd, o.cost_usd)),
       SUM(CASE WHEN o.list_cost_usd IS NOT NULL THEN o.cost_usd END),
       SUM(o.state IN ('answered', 'scored') AND o.cost_usd IS NULL)
FROM rollouts o LEFT JOIN v ON v.rollout_id = o.rollout_id
WHERE o.problem_id = ?
GROUP BY o.provider, o.model, o.problem_id, o.run_id, o.served_model
"""


# Scored rollouts whose newest verdict is not under the newest version of their problem.
_STALE_SQL = """
WITH newest AS (
    SELECT problem_id, problem_hash FROM problem_versions p
    WHERE seq = (SELECT max(seq) FROM problem_versions q WHERE q.problem_id = p.problem_id)
)
SELECT count(*), count(DISTINCT o.problem_id)
FROM rollouts o JOIN newest n ON n.problem_id = o.problem_id
WHERE o.state = 'scored' AND o.verdict_hash IS NOT NULL AND o.verdict_hash != n.problem_hash
"""


async def resolve_version(pdb: Fetcher, version: str) -> tuple[str, str]:
    """(problem_id, full hash) of the problem version ``version`` names (a hash or a
    unique prefix of at least 4 of its hex digits, with or without ``sha256:``); UsageError
    otherwise."""
    text = version.strip()
    # At least 4 of the hash's own hex digits: `sha256:` counted, `sha256:6c2` (3 digits) and
    # `sha2` (none) named a version as a prefix of the text every hash starts with.
    digits = text.removeprefix("sha256:")
    prefix = "sha256:" + digits
    rows = await pdb.fetchall(
        "SELECT DISTINCT problem_id, problem_hash FROM problem_versions WHERE substr(problem_hash, 1, ?) = ?",
        (len(prefix), prefix),
    )
    if len(digits) < 4 or not rows:
        raise UsageError(
            f"report: no problem version {version!r} in the log (`rollwatch problems list` shows hashes)"
        )
    if len(rows) > 1:
        raise UsageError(f"report: problem version {version!r} is ambiguous: {len(rows)} versions start so")
    return str(rows[0][0]), str(rows[0][1])


_AGG_COLUMNS = (
    "scored, passed, total, cost_nusd, costed, cost_scored_nusd, costed_scored,"
    " list_nusd, listed, batch_paid_nusd, batched, unpriced"
)
# The whole grouping (for --by run and the trend), from the maintained aggregates.
_AGG_CELLS_SQL = (
    f"SELECT provider, model, problem_id, run_id, served_model, {_AGG_COLUMNS} FROM agg_cells WHERE total > 0"
)
# Without the run (for --by model and --by problem): answered rollouts by served model,
# and the unanswered ones by run (each is counted with its run's main served model).
_AGG_MODELS_SQL = (
    f"SELECT provider, model, problem_id, '', served_model, {_AGG_COLUMNS} FROM agg_models"
    " WHERE total > 0 AND served_model != char(0)"
)
_AGG_UNSERVED_SQL = (
    f"SELECT provider, model, problem_id, run_id, served_model, {_AGG_COLUMNS} FROM agg_cells"
    " WHERE served_model = char(0) AND total > 0"
)
_AGG_RUN_SERVED_SQL = """
SELECT provider, model, run_id, served_model, sum(total) FROM agg_cells
WHERE run_id IN (SELECT run_id FROM agg_cells WHERE served_model = char(0) AND total > 0)
  AND served_model != char(0) AND total > 0
GROUP BY provider, model, run_id, served_model
"""
# The stale-verdict note from the aggregates: scored rollouts per verdict version.
_AGG_STALE_SQL = """
WITH newest AS (
    SELECT problem_id, problem_hash FROM agg_problem_versions p
    WHERE seq = (SELECT max(seq) FROM agg_problem_versions q WHERE q.problem_id = p.problem_id)
)
SELECT coalesce(sum(v.n), 0), count(DISTINCT v.problem_id)
FROM agg_verdicts v JOIN newest n ON n.problem_id = v.problem_id
WHERE v.n > 0 AND v.verdict_hash != n.problem_hash
"""


def _agg_cell(row: tuple[Any, ...]) -> _Cell:
    provider, model, pid, run_id, served, scored, passed, total, cost, costed, cost_scored, costed_scored = (
        row[:12]
    )
    list_cost, listed, batch_paid, batched, unpriced = row[12:]
    return _Cell(
        provider,
        model,
        pid,
        run_id,
        None if served == UNSERVED else served,
        scored,
        passed,
        total,
        cost / 1e9 if costed else None,
        cost_scored / 1e9 if costed_scored else None,
        costed_scored,
        list_cost / 1e9 if listed else None,
        batch_paid / 1e9 if batched else None,
        unpriced,
    )


async def _cells(
    pdb: Fetcher, problem_version: str | None = None, *, per_run: bool = True, run_id: str | None = None
) -> list[_Cell]:
    """The cells (under one problem version when given), each unanswered one given the
    served model of most of its run's answers. ``per_run=False``: the cells may merge
    runs (their ``run_id`` is then empty), which is all ``--by model`` and ``--by
    problem`` need, and reads rows per model and problem rather than per run.
    ``run_id``: that run's cells only (from the maintained aggregates)."""
    answers: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    if problem_version is not None:
        pid, full = await resolve_version(pdb, problem_version)
        cells = [_Cell(*r) for r in await pdb.fetchall(_VERSION_CELLS_SQL, (full, pid))]
    elif not await has_aggregates(pdb):
        cells = [_Cell(*r) for r in await pdb.fetchall(_CELLS_SQL)]
    elif run_id is not None:
        cells = [_agg_cell(r) for r in await pdb.fetchall(_AGG_CELLS_SQL + " AND run_id = ?", (run_id,))]
    elif per_run:
        cells = [_agg_cell(r) for r in await pdb.fetchall(_AGG_CELLS_SQL)]
    else:
        cells = [_agg_cell(r) for r in await pdb.fetchall(_AGG_MODELS_SQL)]
        unserved = [_agg_cell(r) for r in await pdb.fetchall(_AGG_UNSERVED_SQL)]
        if unserved:
            for provider, model, run_id, served, total in await pdb.fetchall(_AGG_RUN_SERVED_SQL):
                answers[(provider, model, run_id)][served] += total
        cells += unserved
    if not answers:
        for c in cells:
            if c.served_model is not None:
                answers[(c.provider, c.model, c.run_id)][c.served_model] += c.total
    for c in cells:
        if c.served_model is None and (counts := answers.get((c.provider, c.model, c.run_id))):
            c.served_model = max(sorted(counts), key=lambda s: counts[s])
    return cells


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
    # What the group's answers cost: 0 where none has cost anything yet (no answer, or
    # answers of a model priced at 0), unknown (None) once one answer's cost is unknown
    # (its model had no price): a sum of the others would under-count it.
    cost = None if any(cell.unpriced for cell in cells) else _sum_opt([*(c.cost for c in cells), 0.0])
    cost_per_rollout = _ratio(
        _sum_opt(cell.cost_scored for cell in cells), sum(cell.costed_scored for cell in cells)
    )
    solved = sum(1 for _, c_ in counts if c_ > 0)
    exp = expected_to_solve(c, n, cost_per_rollout)
    list_cost = _sum_opt(cell.list_cost for cell in cells)
    batch_paid = _sum_opt(cell.batch_paid for cell in cells)
    # list - paid over everything equals list - paid over the batched answers (the
    # others count at what they cost on both sides).
    saved = None
    if batch_paid is not None and list_cost is not None and cost is not None:
        saved = round(list_cost - cost, 9)
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
        list_cost_usd=list_cost,
        batch_saved_usd=saved,
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
    cells: Iterable[_Cell],
    by: By,
    runs: Mapping[str, tuple[str | None, str | None]],
    found: dict[Key, Failures] | None = None,
    made: dict[Hashable, Row] | None = None,
) -> list[Row]:
    """Group rollout cells into report rows (the pure part of :func:`build_report`).

    ``found``: failures by row key, each taken (popped) into its row; those left name
    rows without cells. ``made``: the rows made last time, by what they were made from
    (their key, cells and failures); a row made from the same again is reused, and
    ``made`` is left holding this time's rows only.
    """
    groups: dict[tuple[str | None, ...], list[_Cell]] = defaultdict(list)
    for cell in cells:
        if by == "problem":
            key: tuple[str | None, ...] = (cell.provider, cell.model, cell.served_model, cell.problem_id)
        elif by == "run":
            key = (cell.provider, cell.model, cell.served_model, cell.run_id)
        else:
            key = (cell.provider, cell.model, cell.served_model)
        groups[key].append(cell)
    rows = []
    now: dict[Hashable, Row] = {}
    for key, group in groups.items():
        ident: dict[str, Any] = {"served_model": key[2]}
        if by == "problem":
            ident["problem_id"] = key[3]
        elif by == "run":
            ident["run_id"] = key[3]
            ident["run_started_at"] = runs.get(str(key[3]), (None, None))[0]
        f = None
        if found is not None:
            f = found.pop(
                (str(key[0]), str(key[1]), key[2], ident.get("problem_id"), ident.get("run_id")), None
            )
            if f is not None:
                ident["model_failures"], ident["infra_failures"] = f.model, f.infra
        if made is None:
            rows.append(_row(str(key[0]), str(key[1]), group, **ident))
            continue
        what = (
            key,
            ident.get("run_started_at"),
            tuple(c.values() for c in group),
            None if f is None else (tuple(f.model.items()), tuple(f.infra.items())),
        )
        row = made.get(what)
        if row is None:
            row = _row(str(key[0]), str(key[1]), group, **ident)
        now[what] = row
        rows.append(row)
    if made is not None:
        made.clear()
        made.update(now)
    rows.sort(key=_row_order)
    return rows


def _row_order(r: Row) -> tuple[str, ...]:
    return (
        r.provider,
        r.model,
        r.run_started_at or "",
        r.served_model or "",
        r.run_id or "",
        r.problem_id or "",
    )


# --- the views ------------------------------------------------------------------------------


def _keys(cls: type[Any], drop: Iterable[str] = ()) -> tuple[str, ...]:
    dropped = set(drop)
    return tuple(f.name for f in fields(cls) if f.name not in dropped)


class KeptByRun:
    """What the report keeps per run between reports, in one process.

    ``/v1/report`` is made again each time the log moves. A run's part of it depends on
    its own rollouts (``agg_runs`` dates the last change to them) and on its start and end
    (its failures count once it finished); so only the runs whose date, start or end moved
    are read again: the report by run's rows (:meth:`rows`), and each run's failures by
    problem, served model and cause, added up for the report by problem
    (:meth:`problem_failures`). What is kept carries the state it was made from: a run
    that moves while it is read is read again next time, never kept stale.
    """

    FEW = 16
    """More runs moved than this (or nothing kept yet): everything is read at once."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[tuple[Any, ...], list[Row]]] = {}
        self._fails: dict[str, tuple[tuple[Any, ...], dict[Key, Failures]]] = {}
        self._fail_total: dict[Key, Failures] = {}
        self.made: dict[Hashable, Row] = {}
        """The report by problem's rows, by what each was made from (see :func:`_summarize`)."""

    @staticmethod
    async def _state(pdb: Fetcher) -> dict[str, tuple[Any, ...]]:
        """Every run's (last change, start, end)."""
        marks = dict(await pdb.fetchall("SELECT run_id, seq FROM agg_runs"))
        state: dict[str, tuple[Any, ...]] = {
            str(run): (marks.get(run), started, finished)
            for run, started, finished in await pdb.fetchall(
                "SELECT run_id, started_at, finished_at FROM runs"
            )
        }
        for run, seq in marks.items():
            state.setdefault(str(run), (seq, None, None))
        return state

    def _moved(
        self, kept: dict[str, tuple[tuple[Any, ...], Any]], state: dict[str, tuple[Any, ...]]
    ) -> list[str]:
        return [run for run, now in state.items() if (k := kept.get(run)) is None or k[0] != now]

    async def rows(self, pdb: Fetcher) -> list[Row] | None:
        """Every row of the report by run, or None when it cannot be kept (no aggregates)."""
        if not await has_aggregates(pdb):
            return None
        state = await self._state(pdb)
        kept = self._rows
        moved = self._moved(kept, state)
        if not kept or len(moved) > self.FEW:
            runs = await _runs(pdb)
            cells = await _cells(pdb, per_run=True)
            rows = await _with_failures(pdb, _summarize(cells, "run", runs), "run", cells)
            by_run: dict[str, list[Row]] = {run: [] for run in state}
            for r in rows:
                if r.run_id not in by_run:
                    return rows  # a row of no run the state names: nothing kept
                by_run[r.run_id].append(r)
            self._rows = {run: (state[run], by_run[run]) for run in state}
            return rows
        if moved:
            runs = await _runs(pdb)
            for run in moved:
                cells = await _cells(pdb, run_id=run)
                made = await _with_failures(pdb, _summarize(cells, "run", runs), "run", cells, run)
                kept[run] = (state[run], made)
        for run in [run for run in kept if run not in state]:
            del kept[run]
        return sorted((r for _, rows in kept.values() for r in rows), key=_row_order)

    async def problem_failures(self, pdb: Fetcher) -> dict[Key, Failures] | None:
        """The report by problem's failures (as ``failures_by_key(pdb, "problem")``), or
        None when they cannot be kept (no aggregates)."""
        if not await has_aggregates(pdb):
            return None
        state = await self._state(pdb)
        kept = self._fails
        moved = self._moved(kept, state)
        total = self._fail_total
        if not kept or len(moved) > self.FEW:
            per_run = await failures_by_run(pdb, "problem", None, await _agg_answers(pdb))
            self._fails = {run: (now, per_run.pop(run, {})) for run, now in state.items()}
            total = self._fail_total = {}
            for _, part in self._fails.values():
                _count(total, part, 1)
            if per_run:  # failures of a run the state does not name: nothing kept
                self._fails, self._fail_total = {}, {}
                for part in per_run.values():
                    _count(total, part, 1)
        else:
            per_run = (
                await failures_by_run(pdb, "problem", moved, await _agg_answers(pdb, moved)) if moved else {}
            )
            for run in moved:
                if (old := kept.get(run)) is not None:
                    _count(total, old[1], -1)
                part = per_run.get(run, {})
                _count(total, part, 1)
                kept[run] = (state[run], part)
            for run in [run for run in kept if run not in state]:
                _count(total, kept.pop(run)[1], -1)
        return {k: v.sorted() for k, v in total.items()}


def _count(total: dict[Key, Failures], part: dict[Key, Failures], sign: int) -> None:
    """Add (``sign`` 1) or take away (-1) ``part``'s counts; keys and causes left at 0 go."""
    for key, f in part.items():
        into = total.setdefault(key, Failures())
        for side, counts in (("model", f.model), ("infra", f.infra)):
            mine = into.model if side == "model" else into.infra
            for cause, n in counts.items():
                left = mine.get(cause, 0) + sign * n
                if left:
                    mine[cause] = left
                else:
                    mine.pop(cause, None)
        if not into.model and not into.infra:
            del total[key]


async def build_report(
    pdb: Fetcher, by: str = "model", *, problem_version: str | None = None, kept: KeptByRun | None = None
) -> Report:
    """The report per provider and model, or per problem or run of each (``by``).

    Each rollout counts with its newest verdict (under the newest version of its problem
    that it was judged against); ``problem_version`` (a content hash or a prefix) shows
    that version of one problem instead: its rollouts with their verdicts under it.
    ``kept``: what the last reports kept per run (see :class:`KeptByRun`).
    """
    if by not in BY_CHOICES:
        raise UsageError(f"report: by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    rows_kept = None
    if by == "run" and problem_version is None and kept is not None:
        rows_kept = await kept.rows(pdb)
    if rows_kept is not None:
        rows = rows_kept
    else:
        cells = await _cells(pdb, problem_version, per_run=by == "run")
        failures = None
        if by == "problem" and problem_version is None and kept is not None:
            failures = await kept.problem_failures(pdb)
        if failures is not None and kept is not None:
            found = dict(failures)
            rows = _summarize(cells, by, {}, found, kept.made)
            rows = await _rows_with(pdb, rows, found)  # failures of rows without cells
        else:
            rows = _summarize(cells, by, await _runs(pdb) if by == "run" else {})
        if failures is None and problem_version is None:
            # Only cells of one run say which served models that run's answers came from.
            rows = await _with_failures(pdb, rows, by, cells if by == "run" else None)
    drop = {
        "model": ("problem_id", "run_id", "run_started_at"),
        "problem": ("run_id", "run_started_at"),
        "run": ("problem_id",),
    }[by]
    cols: list[Column] = [
        Column("PROVIDER", lambda r: r.provider, False),
        Column("MODEL", lambda r: r.model, False),
    ]
    if any(r.served_model not in (None, r.model) for r in rows):
        cols.append(Column("SERVED AS", lambda r: r.served_model or "-", False))
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
    ]
    if problem_version is None:
        cols += [
            Column("MODEL FAILED", lambda r: _int(sum(r.model_failures.values()))),
            Column("INFRA FAILED", lambda r: _int(sum(r.infra_failures.values()))),
        ]
    cols += [Column("COST", lambda r: _usd(r.cost_usd))]
    if by == "problem":
        cols += [
            Column("ROLLOUTS TO SOLVE", lambda r: _expect(r, "rollouts")),
            Column("$ TO SOLVE", lambda r: _expect(r, "usd")),
        ]
    else:
        cols += [Column("$/SOLVED PROBLEM", lambda r: _usd(r.cost_per_solved_problem))]
    if any(r.batch_saved_usd is not None for r in rows):
        cols += [Column("BATCH SAVED", lambda r: _usd(r.batch_saved_usd))]
    notes = [
        "pass@1: share of scored rollouts that passed, 95% Wilson interval in brackets; "
        "pass@k: Chen et al. (2021), averaged over problems with at least k rollouts"
    ]
    if by == "problem":
        notes.append(
            "to solve: expected rollouts and dollars to a first solution (1/p), 95% range"
            " in brackets (none in N: no pass yet, only a lower bound)"
        )
    if problem_version is not None:
        notes.append(f"verdicts under problem version {problem_version} only")
    else:
        notes.append("each rollout counts with its newest verdict (rollwatch rescore adds them)")
        notes += _failure_notes(rows)
        stale = await pdb.fetchall(_AGG_STALE_SQL if await has_aggregates(pdb) else _STALE_SQL)
        if stale and stale[0][0]:
            n, problems = int(stale[0][0]), int(stale[0][1])
            notes.append(
                f"{n} verdict{'s' if n != 1 else ''} on {problems} problem{'s' if problems != 1 else ''}"
                " under an older problem version than the newest the log knows: `rollwatch rescore`"
                " judges them again"
            )
    return Report(
        title=f"report by {by}",
        rows=tuple(rows),
        keys=_keys(Row, drop),
        columns=tuple(cols),
        notes=tuple(notes),
    )


async def _with_failures(
    pdb: Fetcher, rows: Sequence[Row], by: str, cells: Iterable[_Cell] | None, run_id: str | None = None
) -> list[Row]:
    """``rows`` with their failures by cause, the model's apart from ours. ``cells``, when
    they are per run, save reading each run's served models again. ``run_id``: the
    rows, cells and failures of that run only."""
    if cells is None:
        # Which served models each run's answers came from: from the aggregates (a row
        # per run, problem and served model) when kept, else failures_by_key groups them.
        kept = await _agg_answers(pdb) if await has_aggregates(pdb) else None
        return await _rows_with(pdb, rows, await failures_by_key(pdb, by, answers=kept))
    answers: Answers = defaultdict(dict)
    for c in cells:
        # The cells' served models, those of unanswered rollouts already filled in: the
        # same majority the failures need, so failures land on the rows they belong to.
        by_served = answers[(c.provider, c.model, c.run_id)]
        by_served[c.served_model] = by_served.get(c.served_model, 0) + c.total
    return await _rows_with(pdb, rows, await failures_by_key(pdb, by, run_id, answers=answers))


async def _agg_answers(pdb: Fetcher, runs: Sequence[str] | None = None) -> Answers:
    """Every run's (or ``runs``') rollouts by provider, model and served model (None: no answer)."""
    where = f" AND run_id IN ({', '.join('?' * len(runs))})" if runs is not None else ""
    out: Answers = defaultdict(dict)
    for provider, model, run, served, n in await pdb.fetchall(
        "SELECT provider, model, run_id, served_model, sum(total) FROM agg_cells WHERE total > 0"
        f"{where} GROUP BY provider, model, run_id, served_model",
        list(runs or ()),
    ):
        out[(str(provider), str(model), str(run))][None if served == UNSERVED else served] = int(n)
    return out


async def _rows_with(pdb: Fetcher, rows: Sequence[Row], found: dict[Key, Failures]) -> list[Row]:
    out = []
    for r in rows:
        f = found.pop((r.provider, r.model, r.served_model, r.problem_id, r.run_id), None)
        out.append(r if f is None else replace(r, model_failures=f.model, infra_failures=f.infra))
    if found:
        # A model none of whose rollouts was ever asked for (the budget ran out first)
        # still has its row: nothing scored, everything an infra failure.
        runs = await _runs(pdb)
        for (provider, model, served, problem, run), f in found.items():
            ident: dict[str, Any] = {"served_model": served, "problem_id": problem, "run_id": run}
            if run is not None:
                ident["run_started_at"] = runs.get(run, (None, None))[0]
            row = _row(provider, model, [], **ident)
            out.append(replace(row, model_failures=f.model, infra_failures=f.infra))
        out.sort(key=_row_order)
    return out


_MAX_FAILURE_NOTES = 20


def _failure_notes(rows: Sequence[Row]) -> list[str]:
    """Per row with failures, their causes: the model's apart from ours."""
    lines = []
    for r in rows:
        if not (r.model_failures or r.infra_failures):
            continue
        label = "/".join(
            filter(None, (r.provider, r.model, r.served_model if r.served_model != r.model else None))
        )
        label += "".join(f" {x}" for x in (r.problem_id, r.run_id) if x)
        lines.append(
            f"{label}: model failed {describe(r.model_failures)}; infra failed {describe(r.infra_failures)}"
        )
    if not lines:
        return []
    head = (
        "failed, in finished runs: by the model (wrong_answer, timeout, limit, no_code, tampered) apart from"
        " infra (the provider's error kinds, budget_exhausted, not_requested, unanswered: never scored,"
        " not in pass@1; scorer_error, sandbox_error: in pass@1 as failed until `rollwatch rescore`"
        " judges them again)"
    )
    more = len(lines) - _MAX_FAILURE_NOTES
    return [
        head,
        *lines[:_MAX_FAILURE_NOTES],
        *([f"... and {more} more rows with failures"] if more > 0 else []),
    ]


async def build_trend(pdb: Fetcher) -> Report:
    """pass@1 per model per run, in start order, each run tested against the previous one."""
    runs = await _runs(pdb)
    per_run: dict[tuple[str, str, str | None, str | None, str], list[_Cell]] = defaultdict(list)
    for cell in await _cells(pdb):
        problem_set = runs.get(cell.run_id, (None, None))[1]
        per_run[(cell.provider, cell.model, cell.served_model, problem_set, cell.run_id)].append(cell)
    series: dict[tuple[str, str, str | None, str | None], list[tuple[str | None, str, list[_Cell]]]] = (
        defaultdict(list)
    )
    for (provider, model, served, problem_set, run_id), cells in per_run.items():
        series[(provider, model, served, problem_set)].append(
            (runs.get(run_id, (None, None))[0], run_id, cells)
        )
    rows: list[TrendRow] = []
    for (provider, model, served, problem_set), items in sorted(
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
                    served_model=served,
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
    served_col = (
        [Column("SERVED AS", lambda r: r.served_model or "-", False)]
        if any(r.served_model not in (None, r.model) for r in rows)
        else []
    )
    cols = (
        Column("PROVIDER", lambda r: r.provider, False),
        Column("MODEL", lambda r: r.model, False),
        *served_col,
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
            "open the projections with rollwatch.readmodels.report_projections()"
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
    return Report(
        title="release impact",
        rows=tuple(rows),
        keys=_keys(ReleaseRow),
        columns=cols,
        notes=notes,
        empty=await _why_no_release_impact(pdb) if not rows else "",
    )


async def _why_no_release_impact(pdb: Fetcher) -> str:
    """Why the release impact has no rows: no rollouts, no release, or none of a released problem."""
    [(scored,)] = await pdb.fetchall("SELECT COUNT(*) FROM rollouts WHERE state = 'scored'")
    if not scored:
        return "(no rollouts)"
    [(released,)] = await pdb.fetchall(f"SELECT COUNT(*) FROM {ReleasesProjection.name}")
    if not released:
        return (
            f"(no releases yet: {scored:,} scored rollouts, but no solution of any problem has been "
            "released publicly, so there is no before and after to compare)"
        )
    return "(no scored rollout of a problem whose solution was released)"


async def report_json(
    pdb: Fetcher,
    by: str = "model",
    *,
    trend: bool = False,
    release_impact: bool = False,
    problem_version: str | None = None,
    kept: KeptByRun | None = None,
) -> list[dict[str, Any]]:
    """What ``GET /v1/report`` returns: rows by ``by``, or the trend, or the release impact
    (``kept``: see :class:`KeptByRun`)."""
    if trend and release_impact:
        raise UsageError("report: JSON holds one view; ask for the trend or the release impact, not both")
    if trend:
        return to_json(await build_trend(pdb))
    if release_impact:
        return to_json(await build_release_impact(pdb))
    return to_json(await build_report(pdb, by, problem_version=problem_version, kept=kept))


# --- renderings -----------------------------------------------------------------------------


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
