"""The public page's maintained aggregates: what it shows, counted as events arrive.

:func:`rollwatch.publication.public.public_view` used to group every scored rollout
at each new view (0.74 s at 2M events, about 5 s at a year's 13M). These tables hold
the same figures, kept up to date by the catch-up:

* ``pa_cells``: released results per provider, model and problem (count, first and
  last release);
* ``pa_runs``: per run and model, the scored rollouts, passes, newest score, public
  decisions and releases that decide whether the run's pass rate is disclosed;
* ``pa_pending``: passing results with a public decision not yet released, per
  provider, model and problem (the embargo counts).

Public means released *and* due by this process's clock (see
:mod:`rollwatch.publication.public`); the aggregates count releases as they are
logged and keep the latest ``not_before`` among them, so a reader uses a figure only
when that date has passed, and otherwise recomputes that cell or run from
``public_rollouts`` (a release logged ahead of its date, which the release job never
makes; or one released without a public decision, which SQL's NULLs make a case of
its own). Counts are added and removed exactly; a newest or oldest date cannot be
removed, so a change that would need it (a rollout scored twice) marks its row
``dirty`` and readers recompute that row.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any

from rollwatch import events as e
from rollwatch.events import Recorded, parse_rfc3339
from rollwatch.projections import Projection

_STATE = (
    "run_id, provider, model, problem_id, passed, scored_ts, decided, embargo_s, nb_ts, not_before,"
    " released, released_at, superseded"
)


class _S:
    """One rollout's state, as the aggregates counted it."""

    __slots__ = (
        "decided",
        "embargo_s",
        "model",
        "nb_ts",
        "not_before",
        "passed",
        "problem_id",
        "provider",
        "released",
        "released_at",
        "run_id",
        "scored_ts",
        "superseded",
    )

    def __init__(self, row: tuple[Any, ...]) -> None:
        (
            self.run_id,
            self.provider,
            self.model,
            self.problem_id,
            self.passed,
            self.scored_ts,
            self.decided,
            self.embargo_s,
            self.nb_ts,
            self.not_before,
            self.released,
            self.released_at,
            self.superseded,
        ) = row


# Each aggregate: (table, key columns, count columns, {column: (max|min, value)}) of a state.
Contribution = tuple[tuple[Any, ...], tuple[int, ...], dict[str, tuple[str, Any]]]


def _cell(s: _S) -> Contribution | None:
    if not (s.released and s.passed == 1 and s.nb_ts is not None):
        return None
    return (
        (s.provider, s.model, s.problem_id),
        (1,),
        {
            "first_released_at": ("min", s.released_at),
            "last_released_at": ("max", s.released_at),
            "max_nb_ts": ("max", s.nb_ts),
        },
    )


def _run(s: _S) -> Contribution | None:
    if s.scored_ts is None:
        return None
    ext: dict[str, tuple[str, Any]] = {"max_scored_ts": ("max", s.scored_ts)}
    if s.embargo_s is not None:
        ext["max_embargo_s"] = ("max", s.embargo_s)
    if s.released and s.nb_ts is not None:
        ext["max_released_nb_ts"] = ("max", s.nb_ts)
    return (
        (s.run_id, s.provider, s.model),
        (
            1,
            int(s.passed or 0),
            int(bool(s.decided)),
            int(bool(s.released) and s.nb_ts is not None),
            int(bool(s.released) and s.nb_ts is None),
        ),
        ext,
    )


def _pending(s: _S) -> Contribution | None:
    # A result a re-score failed since will never be released: not announced as solved.
    if not (s.passed == 1 and s.decided and not s.released and not s.superseded):
        return None
    return ((s.provider, s.model, s.problem_id), (1,), {})


_AGGREGATES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], Callable[[_S], Contribution | None]], ...] = (
    ("pa_cells", ("provider", "model", "problem_id"), ("n",), _cell),
    ("pa_runs", ("run_id", "provider", "model"), ("n", "passed", "decided", "released", "undecided"), _run),
    ("pa_pending", ("provider", "model", "problem_id"), ("n",), _pending),
)


class PublicAggregatesProjection(Projection):
    """The counts behind the public page (see the module docstring)."""

    name = "public_aggregates"
    version = 2  # 2: re-scores (a flip to pass makes a positive result; a flip to fail supersedes)
    tables = ("pa_rollouts", "pa_cells", "pa_runs", "pa_pending", "pa_run_ends")
    types = frozenset(
        {
            "RunStarted",
            "RunFinished",
            "RolloutRequested",
            "RolloutScored",
            "RolloutRescored",
            "PublicationDecided",
            "PublicReleased",
        }
    )
    ddl = """
    CREATE TABLE IF NOT EXISTS pa_rollouts (
        rollout_id TEXT PRIMARY KEY, run_id TEXT, provider TEXT, model TEXT, problem_id TEXT,
        passed INTEGER, scored_ts REAL, decided INTEGER NOT NULL DEFAULT 0, embargo_s REAL,
        nb_ts REAL, not_before TEXT, released INTEGER NOT NULL DEFAULT 0, released_at TEXT,
        superseded INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS pa_rollouts_pending ON pa_rollouts (provider, model, nb_ts)
        WHERE passed = 1 AND decided = 1 AND released = 0;
    CREATE INDEX IF NOT EXISTS pa_rollouts_released_nb ON pa_rollouts (nb_ts) WHERE released = 1;
    CREATE TABLE IF NOT EXISTS pa_cells (
        provider TEXT, model TEXT, problem_id TEXT, n INTEGER NOT NULL,
        first_released_at TEXT, last_released_at TEXT, max_nb_ts REAL, dirty INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (provider, model, problem_id)
    );
    CREATE TABLE IF NOT EXISTS pa_runs (
        run_id TEXT, provider TEXT, model TEXT, n INTEGER NOT NULL, passed INTEGER NOT NULL,
        decided INTEGER NOT NULL, released INTEGER NOT NULL, undecided INTEGER NOT NULL,
        max_scored_ts REAL, max_embargo_s REAL,
        max_released_nb_ts REAL, dirty INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, provider, model)
    );
    CREATE TABLE IF NOT EXISTS pa_pending (
        provider TEXT, model TEXT, problem_id TEXT, n INTEGER NOT NULL, dirty INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (provider, model, problem_id)
    );
    CREATE TABLE IF NOT EXISTS pa_run_ends (run_id TEXT PRIMARY KEY, finished_at TEXT)
    """

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Move the rollout's contributions from what they were to what this event makes them."""
        ev = rec.event()
        if isinstance(ev, e.RunStarted):
            db.execute("INSERT OR IGNORE INTO pa_run_ends (run_id) VALUES (?)", (ev.run_id,))
        elif isinstance(ev, e.RunFinished):
            db.execute("UPDATE pa_run_ends SET finished_at = ? WHERE run_id = ?", (rec.at, ev.run_id))
        elif isinstance(ev, e.RolloutRequested):
            db.execute(
                "INSERT OR IGNORE INTO pa_rollouts (rollout_id, run_id, provider, model, problem_id)"
                " VALUES (?,?,?,?,?)",
                (ev.rollout_id, ev.run_id, ev.provider, ev.model, ev.problem_id),
            )
        elif isinstance(ev, e.RolloutScored):
            ts = parse_rfc3339(rec.at).timestamp()
            self._change(db, ev.rollout_id, {"passed": int(bool(ev.passed)), "scored_ts": ts})
        elif isinstance(ev, e.RolloutRescored):
            # As the public projection: ``passed`` stays 1 once any verdict passed (the
            # first flip to pass stands for the result, dated by the re-score); a failing
            # re-score marks it superseded, a passing one lifts the mark.
            state = db.execute(_SELECT_STATE, (ev.rollout_id,)).fetchone()
            if state is not None:
                new: dict[str, Any] = {"superseded": 0 if ev.passed else 1}
                if ev.passed and state[_STATE_INDEX["passed"]] != 1:
                    new.update(passed=1, scored_ts=parse_rfc3339(rec.at).timestamp())
                self._change(db, ev.rollout_id, new)
        elif isinstance(ev, e.PublicationDecided) and ev.audience == "public":
            nb = {
                "decided": 1,
                "embargo_s": ev.embargo_s,
                "nb_ts": parse_rfc3339(ev.not_before).timestamp(),
                "not_before": ev.not_before,
            }
            self._change(db, ev.rollout_id, nb, first="decided")
        elif isinstance(ev, e.PublicReleased):
            self._change(db, ev.rollout_id, {"released": 1, "released_at": rec.at}, first="released")

    @staticmethod
    def _change(db: sqlite3.Connection, rid: str, new: dict[str, Any], first: str | None = None) -> None:
        """Set ``new`` on the rollout's row (once only, when ``first`` names a flag already
        set), moving its contributions."""
        row = db.execute(_SELECT_STATE, (rid,)).fetchone()
        if row is None or (first is not None and row[_STATE_INDEX[first]]):
            return
        db.execute(_update(tuple(new)), (*new.values(), rid))
        values = list(row)
        for k, v in new.items():
            values[_STATE_INDEX[k]] = v
        old, now = _S(row), _S(tuple(values))
        for table, keys, counts, fn in _AGGREGATES:
            _move(db, table, keys, counts, fn(old), fn(now))


_STATE_INDEX = {k.strip(): i for i, k in enumerate(_STATE.split(","))}
_SELECT_STATE = f"SELECT {_STATE} FROM pa_rollouts WHERE rollout_id = ?"


@functools.cache
def _update(columns: tuple[str, ...]) -> str:
    return f"UPDATE pa_rollouts SET {', '.join(f'{c} = ?' for c in columns)} WHERE rollout_id = ?"


@functools.cache
def _retract_sql(table: str, keys: tuple[str, ...], counts: tuple[str, ...]) -> str:
    where = " AND ".join(f"{k} = ?" for k in keys)
    sets = ", ".join(f"{c} = {c} - ?" for c in counts)
    return f"UPDATE {table} SET {sets}, dirty = 1 WHERE {where}"


@functools.cache
def _add_sql(
    table: str, keys: tuple[str, ...], counts: tuple[str, ...], ext: tuple[tuple[str, str], ...]
) -> str:
    cols = (*keys, *counts, *(c for c, _ in ext))
    upd = [f"{c} = {c} + excluded.{c}" for c in counts]
    for c, fn in ext:
        upd.append(f"{c} = CASE WHEN {c} IS NULL THEN excluded.{c} ELSE {fn}({c}, excluded.{c}) END")
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(upd)}"
    )


def _move(
    db: sqlite3.Connection,
    table: str,
    keys: tuple[str, ...],
    counts: tuple[str, ...],
    old: Contribution | None,
    new: Contribution | None,
) -> None:
    """Replace contribution ``old`` by ``new`` in ``table``."""
    if old == new:
        return
    if old is not None and (new is None or new[0] != old[0] or _shrinks(old[2], new[2])):
        # Counts come off exactly; a newest or oldest value cannot: readers recompute the row.
        db.execute(_retract_sql(table, keys, counts), (*old[1], *old[0]))
        old = None
    if new is None:
        return
    delta = new[1] if old is None else tuple(a - b for a, b in zip(new[1], old[1], strict=True))
    ext = new[2]
    sql = _add_sql(table, keys, counts, tuple((c, fn) for c, (fn, _) in ext.items()))
    db.execute(sql, (*new[0], *delta, *(v for _, v in ext.values())))


def _shrinks(old: dict[str, tuple[str, Any]], new: dict[str, tuple[str, Any]]) -> bool:
    """Whether an extreme ``old`` added is no longer implied by ``new``."""
    for c, (fn, v) in old.items():
        if v is None:
            continue
        nv = new.get(c, (fn, None))[1]
        if nv is None or (nv < v if fn == "max" else nv > v):
            return True
    return False


# --- reading ---------------------------------------------------------------------------------

CELLS_SQL = (
    "SELECT provider, model, problem_id, n, first_released_at, last_released_at FROM pa_cells"
    " WHERE n > 0 ORDER BY provider, model, problem_id"
)
CELLS_EXACT_SQL = "SELECT count(*) FROM pa_cells WHERE n > 0 AND (dirty = 1 OR max_nb_ts > ?)"
"""Cells whose figure cannot be used as it is now (0: all can)."""
RUNS_SQL = (
    "SELECT a.run_id, a.provider, a.model, a.n, a.passed, a.max_scored_ts, a.max_embargo_s, a.decided,"
    " a.released, u.finished_at, a.dirty OR a.undecided > 0 OR coalesce(a.max_released_nb_ts > ?, 0)"
    " FROM pa_runs a JOIN pa_run_ends u ON u.run_id = a.run_id WHERE a.n > 0 AND u.finished_at IS NOT NULL"
)
PENDING_SQL = (
    "SELECT provider, model, problem_id, n FROM pa_pending WHERE n > 0 ORDER BY provider, model, problem_id"
)
EARLY_SQL = (
    "SELECT provider, model, problem_id, not_before FROM pa_rollouts"
    " WHERE released = 1 AND nb_ts > ? AND passed = 1 AND decided = 1 AND superseded = 0"
)
"""Released ahead of their date by this clock: still embargoed."""
NEXT_SQL = (
    "SELECT not_before FROM pa_rollouts WHERE provider = ? AND model = ? AND passed = 1 AND decided = 1"
    " AND released = 0 AND superseded = 0 ORDER BY nb_ts LIMIT 1"
)
