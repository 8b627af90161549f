"""The report's maintained aggregates: counts kept up to date as events arrive.

``rollwatch report``, ``GET /v1/report`` and the trend read these instead of grouping
every rollout at each request (0.64 s at 2M events, about 4 s at a year's 13M): the
work is done once per event, in the catch-up, and a report reads a few rows per
model and problem (``--by model``, ``--by problem``) or per run and problem (``--by
run``, ``--trend``), whatever the log's length.

The projection keeps its own row per rollout (what it counted the rollout as: the
group, scored or not, passed or not, its cost) so that a change (an answer naming
the served model, a score, a re-score) moves the rollout's contribution from what
it was to what it is. The counts are exactly what
:data:`rollwatch.report.views._CELLS_SQL` computes over ``rollouts`` (tests compare
the two after any sequence of events): each rollout counts with its newest verdict,
and with the model the provider said served it. Costs are kept in integer
nano-dollars, so adding and removing contributions never drifts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from rollwatch import events as e
from rollwatch.events import Recorded
from rollwatch.projections import Projection, RowBatch
from rollwatch.report.failures import PREFIX, UNSERVED, rollout_cause

_COUNTS = (
    "total",
    "scored",
    "passed",
    "cost_nusd",
    "costed",
    "cost_scored_nusd",
    "costed_scored",
    "list_nusd",
    "listed",
    "batch_paid_nusd",
    "batched",
    "unpriced",
)
_SET = ", ".join(f"{c} = {c} + excluded.{c}" for c in _COUNTS)


def _nusd(cost: float | None) -> int | None:
    return None if cost is None else round(cost * 1e9)


class ReportAggregatesProjection(Projection):
    """Per provider, model, problem, run and served model: rollouts, scored, passed, cost.

    ``agg_cells`` is that whole grouping; ``agg_models`` the same without the run (what
    ``--by model`` and ``--by problem`` read); ``agg_verdicts`` counts scored rollouts
    per problem version of their newest verdict and ``agg_problem_versions`` dates each
    version, for the report's note on verdicts under an older version.
    ``agg_failures`` counts the rollouts that did not pass by cause (see
    :mod:`rollwatch.report.failures`) per run, problem and served model, and
    ``agg_run_failures`` the same without the problem (what ``--by model`` and ``--by
    run`` read): the report keeps those of finished runs. ``agg_runs`` holds, per run, the
    seq of the last event that changed one of its rollouts here: the report by run makes
    a run's rows again only when it moved (:class:`rollwatch.report.views.KeptByRun`).

    A batch of events is applied in memory: each touched ``agg_rollouts`` row is read
    once (one query for the batch), the counts' changes are summed per row of each
    table, and each table is written once, with one ``executemany``.
    """

    name = "report_aggregates"
    build_weight = 0.9
    unread = e.BODIES  # reads no request, answer or scorer's findings
    # 2: agg_failures, agg_run_failures (the report's failures by cause); 3: agg_runs (the
    # report by run makes a run's rows again only once the run changed); 4: unpriced (answers
    # whose cost is unknown: the report's cost is then unknown, else 0 where none was spent)
    version = 4
    tables = (
        "agg_runs",
        "agg_rollouts",
        "agg_cells",
        "agg_models",
        "agg_verdicts",
        "agg_problem_versions",
        "agg_failures",
        "agg_run_failures",
    )
    types = frozenset(
        {
            "RolloutRequested",
            "RolloutResponded",
            "RolloutFailed",
            "RolloutScored",
            "RolloutRescored",
            "ProblemVersioned",
        }
    )
    ddl = """
    CREATE TABLE IF NOT EXISTS agg_runs (run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS agg_rollouts (
        rollout_id TEXT PRIMARY KEY, provider TEXT, model TEXT, problem_id TEXT, run_id TEXT,
        problem_hash TEXT, served_model TEXT NOT NULL, scored INTEGER NOT NULL, passed INTEGER NOT NULL,
        cost_nusd INTEGER, verdict_hash TEXT, list_nusd INTEGER,
        state TEXT NOT NULL, fail_kind TEXT, reason TEXT
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS agg_cells (
        provider TEXT, model TEXT, problem_id TEXT, run_id TEXT, served_model TEXT NOT NULL,
        total INTEGER NOT NULL, scored INTEGER NOT NULL, passed INTEGER NOT NULL,
        cost_nusd INTEGER NOT NULL, costed INTEGER NOT NULL,
        cost_scored_nusd INTEGER NOT NULL, costed_scored INTEGER NOT NULL,
        list_nusd INTEGER NOT NULL, listed INTEGER NOT NULL,
        batch_paid_nusd INTEGER NOT NULL, batched INTEGER NOT NULL, unpriced INTEGER NOT NULL,
        PRIMARY KEY (provider, model, problem_id, run_id, served_model)
    );
    CREATE INDEX IF NOT EXISTS agg_cells_run ON agg_cells (run_id);
    CREATE INDEX IF NOT EXISTS agg_cells_unserved ON agg_cells (run_id) WHERE served_model = char(0);
    CREATE TABLE IF NOT EXISTS agg_models (
        provider TEXT, model TEXT, served_model TEXT NOT NULL, problem_id TEXT,
        total INTEGER NOT NULL, scored INTEGER NOT NULL, passed INTEGER NOT NULL,
        cost_nusd INTEGER NOT NULL, costed INTEGER NOT NULL,
        cost_scored_nusd INTEGER NOT NULL, costed_scored INTEGER NOT NULL,
        list_nusd INTEGER NOT NULL, listed INTEGER NOT NULL,
        batch_paid_nusd INTEGER NOT NULL, batched INTEGER NOT NULL, unpriced INTEGER NOT NULL,
        PRIMARY KEY (provider, model, served_model, problem_id)
    );
    CREATE TABLE IF NOT EXISTS agg_verdicts (
        problem_id TEXT, verdict_hash TEXT, n INTEGER NOT NULL, PRIMARY KEY (problem_id, verdict_hash)
    );
    CREATE TABLE IF NOT EXISTS agg_problem_versions (
        problem_id TEXT NOT NULL, problem_hash TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (problem_id, problem_hash)
    );
    CREATE TABLE IF NOT EXISTS agg_failures (
        provider TEXT, model TEXT, problem_id TEXT, run_id TEXT, served_model TEXT NOT NULL,
        side TEXT NOT NULL, cause TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (provider, model, problem_id, run_id, served_model, side, cause)
    );
    CREATE TABLE IF NOT EXISTS agg_run_failures (
        provider TEXT, model TEXT, run_id TEXT, served_model TEXT NOT NULL,
        side TEXT NOT NULL, cause TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (run_id, provider, model, served_model, side, cause)
    )
    """

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Apply one event (a batch of one)."""
        self.apply_batch(db, [rec])

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        """Apply the batch's events to the rollouts' rows in memory, then move each touched
        rollout's contributions once, from what it was before the batch to what it is after."""
        rows = RowBatch(db, "agg_rollouts", _ROLLOUT_COLUMNS)
        evs = [(rec, rec.event()) for rec in recs]
        rows.prefetch(
            ev.rollout_id for _, ev in evs if isinstance(ev, _ROLLOUT) and type(ev.rollout_id) is str
        )
        acc = _Deltas()
        before: dict[str, dict[str, Any] | None] = {}  # each touched rollout's row before the batch
        runs: dict[str, int] = {}  # each touched run: the last event that touched one of its rollouts

        def touched(run: Any, seq: int) -> None:
            if type(run) is str:  # (anything else is in no log a rollwatch writer made)
                runs[run] = seq

        for rec, ev in evs:
            if isinstance(ev, e.ProblemVersioned):
                acc.version(ev.problem_id, ev.problem_hash, rec.seq, update=True)
                continue
            if not isinstance(ev, _ROLLOUT):
                continue
            rid = ev.rollout_id
            if type(rid) is not str:  # in no log a rollwatch writer made (an edited file)
                continue
            if isinstance(ev, e.RolloutRescored):
                acc.version(ev.problem_id, ev.problem_hash, rec.seq, update=False)
            row = rows.get(rid)
            if isinstance(ev, e.RolloutRequested):
                if row is None:
                    before.setdefault(rid, None)
                    touched(ev.run_id, rec.seq)
                    rows.insert_or_ignore(
                        rid,
                        {
                            "rollout_id": rid,
                            "provider": ev.provider,
                            "model": ev.model,
                            "problem_id": ev.problem_id,
                            "run_id": ev.run_id,
                            "problem_hash": ev.problem_hash,
                            "served_model": UNSERVED,
                            "scored": 0,
                            "passed": 0,
                            "state": "requested",
                        },
                    )
                elif row["state"] == "failed":  # asked again after a final failure
                    if rid not in before:
                        before[rid] = dict(row)
                    touched(row["run_id"], rec.seq)
                    rows.change(rid)
                    row["state"] = "requested"
                acc.version(ev.problem_id, ev.problem_hash, rec.seq, update=False)
                continue
            if row is None:
                continue
            if rid not in before:
                before[rid] = dict(row)
            touched(row["run_id"], rec.seq)
            rows.change(rid)
            if isinstance(ev, e.RolloutResponded):
                row["served_model"] = UNSERVED if ev.model is None else ev.model
                row["cost_nusd"] = _nusd(ev.cost_usd)
                row["list_nusd"] = _nusd(ev.list_cost_usd)
                if row["state"] != "scored":
                    row["state"] = "answered"
            elif isinstance(ev, e.RolloutFailed):
                row["fail_kind"] = ev.kind
                if ev.final and row["state"] == "requested":
                    row["state"] = "failed"
            elif isinstance(ev, e.RolloutScored):
                vhash = ev.problem_hash or row["problem_hash"]
                row.update(
                    scored=1,
                    passed=int(bool(ev.passed)),
                    verdict_hash=vhash,
                    state="scored",
                    reason=_reason(ev.reason),
                )
                acc.version(row["problem_id"], vhash, rec.seq, update=False)
            else:
                row.update(
                    passed=int(bool(ev.passed)), verdict_hash=ev.problem_hash, reason=_reason(ev.reason)
                )
        all_rows = rows.rows
        for rid, old in before.items():
            new = all_rows[rid]
            assert new is not None
            acc.move(old, new)
        rows.flush()
        acc.flush(db)
        if runs:
            db.executemany(
                "INSERT OR REPLACE INTO agg_runs (run_id, seq) VALUES (?, ?)",
                list(runs.items()),
            )


_ROLLOUT = (e.RolloutRequested, e.RolloutResponded, e.RolloutFailed, e.RolloutScored, e.RolloutRescored)

_ROLLOUT_COLUMNS = (
    "rollout_id",
    "provider",
    "model",
    "problem_id",
    "run_id",
    "problem_hash",
    "served_model",
    "scored",
    "passed",
    "cost_nusd",
    "verdict_hash",
    "list_nusd",
    "state",
    "fail_kind",
    "reason",
)


def _reason(reason: str | None) -> str | None:
    """As much of a verdict's reason as decides its cause (see ``failures.VERDICT_CAUSES``)."""
    return None if reason is None else str(reason)[:PREFIX]


def _contribution(row: dict[str, Any]) -> tuple[int, ...]:
    """A rollout's counts in ``agg_cells`` and ``agg_models``."""
    scored = row["scored"]
    cost = row["cost_nusd"]
    listed = row["list_nusd"]
    costed = cost is not None
    c = cost or 0
    # As _CELLS_SQL: the list price where a batch price was paid, else the price paid.
    batched = listed is not None and costed
    return (
        1,
        scored,
        int(bool(scored and row["passed"])),
        c,
        int(costed),
        c * scored,
        int(costed and bool(scored)),
        c if listed is None else listed,
        int(costed or listed is not None),
        c if batched else 0,
        int(batched),
        int(not costed and row["state"] in ("answered", "scored")),
    )


def _failure(row: dict[str, Any]) -> tuple[str, str] | None:
    """(side, cause) of a rollout that did not pass (the report counts those of finished runs)."""
    state = row["state"]
    if state == "scored" and row["passed"]:
        return None
    return rollout_cause(state, row["fail_kind"], row["reason"] if state == "scored" else None)


class _Deltas:
    """A batch's changes to the count tables, summed per row, written at :meth:`flush`.

    A row a change touches is written even when its changes sum to nothing (as an upsert
    per change would leave it): a batch leaves the rows event-by-event catch-up would.
    """

    __slots__ = ("cells", "fails", "models", "run_fails", "verdicts", "versions")

    def __init__(self) -> None:
        self.cells: dict[tuple[Any, ...], list[int]] = {}
        self.models: dict[tuple[Any, ...], list[int]] = {}
        self.verdicts: dict[tuple[Any, ...], int] = {}
        self.fails: dict[tuple[Any, ...], int] = {}
        self.run_fails: dict[tuple[Any, ...], int] = {}
        self.versions: dict[tuple[Any, Any], tuple[int, bool]] = {}

    def version(self, pid: str | None, phash: str | None, seq: int, *, update: bool) -> None:
        """``INSERT OR IGNORE`` (first seen) or, ``update``, upsert (``ProblemVersioned``)."""
        if pid is None or phash is None:
            return
        key = (pid, phash)
        if update:
            self.versions[key] = (seq, True)
        elif key not in self.versions:
            self.versions[key] = (seq, False)

    def move(self, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """Move one rollout's contributions from ``old`` (None: none yet) to ``new``."""
        provider, model, problem_id, run_id, served = (
            new["provider"],
            new["model"],
            new["problem_id"],
            new["run_id"],
            new["served_model"],
        )
        values = _contribution(new)
        if old is not None:
            was = _contribution(old)
            if old["served_model"] == served:
                values = tuple(a - b for a, b in zip(values, was, strict=True))
            else:
                self._add(provider, model, problem_id, run_id, old["served_model"], tuple(-x for x in was))
        if any(values):
            self._add(provider, model, problem_id, run_id, served, values)
        if old is not None and old["scored"] and old["verdict_hash"] is not None:
            k = (problem_id, old["verdict_hash"])
            self.verdicts[k] = self.verdicts.get(k, 0) - 1
        if new["scored"] and new["verdict_hash"] is not None:
            k = (problem_id, new["verdict_hash"])
            self.verdicts[k] = self.verdicts.get(k, 0) + 1
        was_failed = None if old is None else _failure(old)
        now_failed = _failure(new)
        if (
            old is not None
            and was_failed is not None
            and (was_failed, old["served_model"]) != (now_failed, served)
        ):
            self._fail(provider, model, problem_id, run_id, old["served_model"], was_failed, -1)
        if now_failed is not None and (
            old is None or (was_failed, old["served_model"]) != (now_failed, served)
        ):
            self._fail(provider, model, problem_id, run_id, served, now_failed, 1)

    def _add(
        self, provider: Any, model: Any, problem_id: Any, run_id: Any, served: Any, values: tuple[int, ...]
    ) -> None:
        for acc, key in (
            (self.cells, (provider, model, problem_id, run_id, served)),
            (self.models, (provider, model, served, problem_id)),
        ):
            have = acc.get(key)
            if have is None:
                acc[key] = list(values)
            else:
                for i, v in enumerate(values):
                    have[i] += v

    def _fail(
        self,
        provider: Any,
        model: Any,
        problem_id: Any,
        run_id: Any,
        served: Any,
        cause: tuple[str, str],
        n: int,
    ) -> None:
        k = (provider, model, problem_id, run_id, served, *cause)
        self.fails[k] = self.fails.get(k, 0) + n
        rk = (run_id, provider, model, served, *cause)
        self.run_fails[rk] = self.run_fails.get(rk, 0) + n

    def flush(self, db: sqlite3.Connection) -> None:
        """Write every changed row (one ``executemany`` per table), then delete the rows a
        change counted down to nothing: a row is there exactly when a rollout counts in it,
        however the events were batched."""
        for (upsert, delete), acc in (
            (_CELLS_SQL, self.cells),
            (_MODELS_SQL, self.models),
            (_VERDICTS_SQL, self.verdicts),
            (_FAILURES_SQL, self.fails),
            (_RUN_FAILURES_SQL, self.run_fails),
        ):
            changed = [(*k, *v) if isinstance(v, list) else (*k, v) for k, v in acc.items() if _nonzero(v)]
            if changed:
                db.executemany(upsert, changed)
            less = [k for k, v in acc.items() if _negative(v)]
            if less:
                db.executemany(delete, less)
        if self.versions:
            db.executemany(_VERSION_INSERT, [(*k, s) for k, (s, up) in self.versions.items() if not up])
            db.executemany(_VERSION_UPDATE, [(*k, s) for k, (s, up) in self.versions.items() if up])


def _nonzero(v: list[int] | int) -> bool:
    return any(v) if isinstance(v, list) else v != 0


def _negative(v: list[int] | int) -> bool:
    return any(x < 0 for x in v) if isinstance(v, list) else v < 0


def _sql(table: str, keys: tuple[str, ...], counts: tuple[str, ...]) -> tuple[str, str]:
    """The upsert adding counts to ``table``'s row, and the delete of that row once it counts nothing."""
    cols = (*keys, *counts)
    upsert = (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(f'{c} = {c} + excluded.{c}' for c in counts)}"
    )
    where = " AND ".join(f"{k} IS ?" for k in keys)
    return upsert, f"DELETE FROM {table} WHERE {where} AND {counts[0]} = 0"


_CELLS_SQL = _sql("agg_cells", ("provider", "model", "problem_id", "run_id", "served_model"), _COUNTS)
_MODELS_SQL = _sql("agg_models", ("provider", "model", "served_model", "problem_id"), _COUNTS)
_VERDICTS_SQL = _sql("agg_verdicts", ("problem_id", "verdict_hash"), ("n",))
_FAILURES_SQL = _sql(
    "agg_failures", ("provider", "model", "problem_id", "run_id", "served_model", "side", "cause"), ("n",)
)
_RUN_FAILURES_SQL = _sql(
    "agg_run_failures", ("run_id", "provider", "model", "served_model", "side", "cause"), ("n",)
)


_VERSION_INSERT = "INSERT OR IGNORE INTO agg_problem_versions (problem_id, problem_hash, seq) VALUES (?,?,?)"
_VERSION_UPDATE = (
    "INSERT INTO agg_problem_versions (problem_id, problem_hash, seq) VALUES (?,?,?)"
    " ON CONFLICT (problem_id, problem_hash) DO UPDATE SET seq = excluded.seq"
)
