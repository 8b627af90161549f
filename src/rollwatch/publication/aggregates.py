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
import operator
import sqlite3
from collections.abc import Sequence
from typing import Any

from rollwatch import events as e
from rollwatch.events import Recorded, date_length, parse_rfc3339, restored_date
from rollwatch.projections import Projection

_STATE = (
    "run_id",
    "provider",
    "model",
    "problem_id",
    "passed",
    "scored_ts",
    "decided",
    "embargo_s",
    "nb_ts",
    "not_before",
    "released",
    "released_at",
    "superseded",
    "date_s",
    "restored",
)
"""A rollout's state as the aggregates counted it: ``pa_rollouts``'s columns after its key."""
(RUN, PROVIDER, MODEL, PROBLEM, PASSED, SCORED_TS, DECIDED, EMBARGO_S, NB_TS, NOT_BEFORE, RELEASED,
 RELEASED_AT, SUPERSEDED, DATE_S, RESTORED) = range(len(_STATE))  # fmt: skip
_UNSET = (None, None, 0, None, None, None, 0, None, 0, None, 0)
"""A requested rollout's state after its place, before any is set (the table's defaults)."""
_NOTHING = (None, None, None)
"""What such a state adds to the aggregates: nothing."""

State = list[Any] | tuple[Any, ...]
ABSENT: Any = ...
"""An extreme a contribution does not set (its statement leaves the column alone): a value
no event holds (JSON has no ``...``), and one the garbage collector does not track."""
# What a state adds to an aggregate: (key, counts, extremes); the extremes (a value, or
# ABSENT) are those of the aggregate's ``ext`` columns, each kept as its max or min.
# Tuples of plain values: no dict, nothing the garbage collector keeps looking at.
Contribution = tuple[tuple[Any, ...], tuple[int, ...], tuple[Any, ...]]


def _cell(s: State) -> Contribution | None:
    if not (s[RELEASED] and s[PASSED] == 1 and s[NB_TS] is not None):
        return None
    # first_released_at (min), last_released_at (max), max_nb_ts (max)
    return ((s[PROVIDER], s[MODEL], s[PROBLEM]), (1,), (s[RELEASED_AT], s[RELEASED_AT], s[NB_TS]))


def _run(s: State) -> Contribution | None:
    if s[SCORED_TS] is None:
        return None
    released = bool(s[RELEASED])
    nb_ts = s[NB_TS]
    embargo_s = s[EMBARGO_S]
    # A pass a re-score failed before its release will never be released: the run counts it
    # as the failure it is, undecided (see public._WITHDRAWN).
    withdrawn = bool(s[SUPERSEDED]) and not released
    return (
        (s[RUN], s[PROVIDER], s[MODEL]),
        (
            1,
            int(s[PASSED] == 1 and not withdrawn),
            int(bool(s[DECIDED]) and not withdrawn),
            int(released and nb_ts is not None),
            int(released and nb_ts is None),
        ),
        (
            s[SCORED_TS],  # max_scored_ts
            ABSENT if embargo_s is None else embargo_s,  # max_embargo_s
            nb_ts if released and nb_ts is not None else ABSENT,  # max_released_nb_ts
        ),
    )


def _pending(s: State) -> Contribution | None:
    # A result a re-score failed since will never be released: not announced as solved.
    if not (s[PASSED] == 1 and s[DECIDED] and not s[RELEASED] and not s[SUPERSEDED]):
        return None
    return ((s[PROVIDER], s[MODEL], s[PROBLEM]), (1,), ())


def _contributions(s: State) -> tuple[Contribution | None, ...]:
    """What state ``s`` adds to each aggregate (each function's first test inlined)."""
    return (
        _cell(s) if s[RELEASED] else None,
        None if s[SCORED_TS] is None else _run(s),
        _pending(s) if s[DECIDED] and s[PASSED] == 1 else None,
    )


class _Aggregate:
    """One aggregate table (``_cell``, ``_run``, ``_pending`` say what a state adds to it)
    and its rows a batch touches.

    A batch first records in :attr:`ops`, event by event, the statements the contributions'
    moves make (see :func:`_move`: a retraction, or an upsert); :meth:`flush` then reads every row they name in a few
    queries, runs them in memory in order — as SQL would: a retraction of an absent row
    does nothing, an addition to one inserts it — and writes each changed row once.
    """

    __slots__ = ("counts", "ext", "fns", "keys", "ops", "table")

    def __init__(
        self,
        table: str,
        keys: tuple[str, ...],
        counts: tuple[str, ...],
        ext: tuple[tuple[str, str], ...],
    ) -> None:
        """``ext``: the extremes' columns, each with ``max`` or ``min``."""
        self.table, self.keys, self.counts = table, keys, counts
        self.ext = tuple(c for c, _ in ext)
        self.fns = tuple(fn for _, fn in ext)
        self.ops: Ops = []

    def flush(self, db: sqlite3.Connection) -> None:
        """Run the recorded statements on the rows they name, and write those rows back."""
        if not self.ops:
            return
        ncounts = len(self.counts)
        first_ext = ncounts
        dirty = ncounts + len(self.ext)
        fns = [max if fn == "max" else min for fn in self.fns]
        rows = self._load(db, {k for k, _, _ in self.ops if None not in k})
        inserted: dict[tuple[Any, ...], list[Any]] = {}
        changed: set[tuple[Any, ...]] = set()
        orphans: list[list[Any]] = []  # added under a key with a NULL: a new row each time
        for key, counts, ext in self.ops:
            row = rows.get(key)
            if ext is None:  # UPDATE ... SET c = c - ?, dirty = 1 (nothing if there is no row)
                if row is not None:
                    for i in range(ncounts):
                        row[i] -= counts[i]
                    row[dirty] = 1
                    changed.add(key)
            elif row is None:  # the upsert's INSERT
                row = [*counts, *(None if v is ABSENT else v for v in ext), 0]
                if None in key:
                    orphans.append([*key, *row])
                else:
                    rows[key] = inserted[key] = row
            else:  # ... ON CONFLICT DO UPDATE: counts added, extremes extended
                if ncounts == 1:
                    row[0] += counts[0]
                else:
                    row[:ncounts] = map(operator.add, row[:ncounts], counts)
                for i, v in enumerate(ext, first_ext):
                    if v is ABSENT:
                        continue
                    cur = row[i]
                    # CASE WHEN c IS NULL THEN v ELSE max(c, v) END; SQL's max(c, NULL) is NULL.
                    row[i] = v if cur is None else None if v is None else fns[i - first_ext](cur, v)
                changed.add(key)
        columns = (*self.counts, *self.ext, "dirty")
        cols = (*self.keys, *columns)
        insert = f"INSERT INTO {self.table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        db.executemany(insert, [[*k, *r] for k, r in inserted.items()] + orphans)
        where = " AND ".join(f"{k} = ?" for k in self.keys)
        update = f"UPDATE {self.table} SET {', '.join(f'{c} = ?' for c in columns)} WHERE {where}"
        db.executemany(update, [[*rows[k], *k] for k in changed if k not in inserted])
        self.ops.clear()

    def _load(self, db: sqlite3.Connection, keys: set[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[Any]]:
        """The rows of ``keys`` that exist: their counts, extremes and dirty mark."""
        nk = len(self.keys)
        cols = ", ".join((*self.keys, *self.counts, *self.ext, "dirty"))
        rows: dict[tuple[Any, ...], list[Any]] = {}
        want = list(keys)
        for i in range(0, len(want), 300):
            chunk = want[i : i + 300]
            values = ", ".join([f"({', '.join('?' * nk)})"] * len(chunk))
            pick = ", ".join(f"column{j + 1}" for j in range(nk))
            sql = (
                f"SELECT {cols} FROM {self.table} WHERE ({', '.join(self.keys)})"
                f" IN (SELECT {pick} FROM (VALUES {values}))"
            )
            for r in db.execute(sql, [v for k in chunk for v in k]):
                rows[r[:nk]] = list(r[nk:])
        return rows


def _aggregates() -> tuple[_Aggregate, ...]:
    return (
        _Aggregate(
            "pa_cells",
            ("provider", "model", "problem_id"),
            ("n",),
            (("first_released_at", "min"), ("last_released_at", "max"), ("max_nb_ts", "max")),
        ),
        _Aggregate(
            "pa_runs",
            ("run_id", "provider", "model"),
            ("n", "passed", "decided", "released", "undecided"),
            (("max_scored_ts", "max"), ("max_embargo_s", "max"), ("max_released_nb_ts", "max")),
        ),
        _Aggregate("pa_pending", ("provider", "model", "problem_id"), ("n",), ()),
    )


class PublicAggregatesProjection(Projection):
    """The counts behind the public page (see the module docstring)."""

    name = "public_aggregates"
    build_weight = 0.7
    unread = e.BODIES  # reads no request, answer or scorer's findings
    # 2: re-scores (a flip to pass makes a positive result; a flip to fail supersedes); 3: "none"
    # embargoes; 4: a re-score of any verdict moves its run's newest score, a pass withdrawn
    # unreleased counts as a failure; 5: a pass withdrawn before its release and restored is dated
    # from the restore (date_s, restored)
    version = 5
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
        superseded INTEGER NOT NULL DEFAULT 0, date_s REAL, restored INTEGER NOT NULL DEFAULT 0
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
        """Apply one event (a batch of one)."""
        self.apply_batch(db, [rec])

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        """Move each rollout's contributions from what they were to what each event makes them.

        Each ``pa_rollouts`` row the batch touches is read once (many in a query), changed in
        memory event by event, and written once; so is each aggregate row (see
        :class:`_Aggregate`). The rows are those a statement per event would leave.
        """
        evs: list[Any] = [rec.event() for rec in recs]  # typed by kind
        kinds = _KINDS
        ids = []
        for ev in evs:
            kind = kinds.get(type(ev))
            if kind is None:
                kind = kinds[type(ev)] = _kind(type(ev))
            if kind >= _REQUESTED:
                rid = ev.rollout_id
                ids.append(rid if type(rid) is str else _text(db, rid))
        rollouts = _Rollouts(db, ids)
        rows, inserted, updated = rollouts.rows, rollouts.inserted, rollouts.updated
        cells, runs, pending = aggregates = _aggregates()
        # Each state's contributions as last computed, so that a change computes only the new.
        contributions: dict[Any, tuple[Contribution | None, ...]] = {}

        for rec, ev in zip(recs, evs, strict=True):
            kind = kinds[type(ev)]
            if not kind:
                continue
            if kind == _STARTED:
                db.execute("INSERT OR IGNORE INTO pa_run_ends (run_id) VALUES (?)", (ev.run_id,))
                continue
            if kind == _FINISHED:
                db.execute("UPDATE pa_run_ends SET finished_at = ? WHERE run_id = ?", (rec.at, ev.run_id))
                continue
            rid = ev.rollout_id
            if type(rid) is not str:
                rid = _text(db, rid)
            state = rows.get(rid)
            if kind == _REQUESTED:  # INSERT OR IGNORE
                if state is None:
                    run_id, provider, model, problem_id = ev.run_id, ev.provider, ev.model, ev.problem_id
                    if not (type(run_id) is type(provider) is type(model) is type(problem_id) is str):
                        run_id, provider, model, problem_id = (
                            _text(db, v) for v in (run_id, provider, model, problem_id)
                        )
                    if rid is None:  # never found: a row each time
                        rollouts.nulls.append([None, run_id, provider, model, problem_id, *_UNSET])
                    else:
                        rows[rid] = [run_id, provider, model, problem_id, *_UNSET]
                        inserted[rid] = None
                        contributions[rid] = _NOTHING
                continue
            if state is None:
                continue
            was = contributions.get(rid)
            if was is None:
                was = contributions[rid] = _contributions(state)
            if kind == _SCORED:
                state[PASSED] = int(bool(ev.passed))
                state[SCORED_TS] = parse_rfc3339(rec.at).timestamp()
                columns: tuple[int, ...] = (PASSED, SCORED_TS)
            elif kind == _RESCORED:
                # As the public projection: ``passed`` stays 1 once any verdict passed (the
                # first flip to pass stands for the result, dated by the re-score); a failing
                # re-score marks it superseded, a passing one lifts the mark.
                # Whatever it says, a re-score is the run's newest verdict: its pass rate waits
                # an embargo after it (a flip to pass alone took a disclosed run off the chart).
                ts = parse_rfc3339(rec.at).timestamp()
                restore: tuple[int, ...] = ()
                if ev.passed and state[SUPERSEDED] and state[DECIDED] and not state[RELEASED]:
                    # A pass withdrawn before its release, restored: dated an embargo after this
                    # event (as the public projection; events.PublicDate).
                    nb = restored_date(rec.at, state[DATE_S] or 0.0)
                    state[NB_TS] = parse_rfc3339(nb).timestamp()
                    state[NOT_BEFORE] = nb
                    state[RESTORED] = 1
                    restore = (NB_TS, NOT_BEFORE, RESTORED)
                if ev.passed and state[PASSED] != 1:
                    state[PASSED] = 1
                    state[SCORED_TS] = ts
                    columns = (PASSED, SCORED_TS, SUPERSEDED)
                elif state[SCORED_TS] is not None and ts > state[SCORED_TS]:
                    state[SCORED_TS] = ts
                    columns = (SCORED_TS, SUPERSEDED)
                else:
                    columns = (SUPERSEDED,)
                state[SUPERSEDED] = 0 if ev.passed else 1
                columns += restore
            elif kind == _DECIDED:
                embargo_s = ev.embargo_s
                embargo_s = embargo_s if type(embargo_s) is float else _real(db, embargo_s)
                if ev.audience == "none" and embargo_s:
                    # The embargo in force (as the public projection): the run's disclosure
                    # waits for the largest, whatever its verdicts.
                    state[EMBARGO_S] = _larger(state[EMBARGO_S], embargo_s)
                    columns = (EMBARGO_S,)
                elif ev.audience != "public" or (
                    # once only: a second changes nothing, but a restore's own (see above)
                    state[DECIDED] and not (state[RESTORED] and not state[SUPERSEDED] and not state[RELEASED])
                ):
                    continue
                else:
                    state[DECIDED] = 1
                    state[EMBARGO_S] = _larger(state[EMBARGO_S], embargo_s)
                    state[NB_TS] = parse_rfc3339(ev.not_before).timestamp()
                    state[NOT_BEFORE] = _text(db, ev.not_before)
                    state[DATE_S] = date_length(ev, rec.at)
                    state[RESTORED] = 0
                    columns = (DECIDED, EMBARGO_S, NB_TS, NOT_BEFORE, DATE_S, RESTORED)
            else:  # released, once only
                if state[RELEASED]:
                    continue
                state[RELEASED] = 1
                state[RELEASED_AT] = rec.at
                columns = (RELEASED, RELEASED_AT)
            if rid not in inserted:
                updated.setdefault(rid, set()).update(columns)
            now = contributions[rid] = _contributions(state)
            if was[0] != now[0]:
                _move(cells, was[0], now[0])
            if was[1] != now[1]:
                _move(runs, was[1], now[1])
            if was[2] != now[2]:
                _move(pending, was[2], now[2])
        rollouts.flush()
        for agg in aggregates:
            agg.flush(db)


_STARTED, _FINISHED, _REQUESTED, _SCORED, _RESCORED, _DECIDED, _RELEASED = range(1, 8)
_KINDS: dict[type, int] = {}
"""Event class -> what the batch does with it (0: nothing)."""


def _kind(cls: type) -> int:
    for k, t in (
        (_STARTED, e.RunStarted),
        (_FINISHED, e.RunFinished),
        (_REQUESTED, e.RolloutRequested),
        (_SCORED, e.RolloutScored),
        (_RESCORED, e.RolloutRescored),
        (_DECIDED, e.PublicationDecided),
        (_RELEASED, e.PublicReleased),
    ):
        if issubclass(cls, t):
            return k
    return 0


Ops = list[tuple[tuple[Any, ...], tuple[int, ...], tuple[Any, ...] | None]]


def _move(agg: _Aggregate, old: Contribution | None, new: Contribution | None) -> None:
    """Record the statements that replace contribution ``old`` by ``new`` (not equal)."""
    ops = agg.ops
    if old is not None and (new is None or new[0] != old[0] or _shrinks(old[2], new[2], agg.fns)):
        # Counts come off exactly; a newest or oldest value cannot: readers recompute the row.
        ops.append((old[0], old[1], None))
        old = None
    if new is None:
        return
    ops.append((new[0], new[1] if old is None else tuple(map(operator.sub, new[1], old[1])), new[2]))


class _Rollouts:
    """The ``pa_rollouts`` rows of a batch's rollouts: read in a few queries, changed in
    memory, written back once (new rows inserted in the order they came, changed ones
    updated in the columns that changed, so indexes on the others are left alone)."""

    __slots__ = ("_db", "inserted", "nulls", "rows", "updated")

    def __init__(self, db: sqlite3.Connection, ids: list[Any]) -> None:
        self._db = db
        self.rows: dict[Any, list[Any] | None] = {}
        self.inserted: dict[Any, None] = {}
        self.updated: dict[Any, set[int]] = {}
        self.nulls: list[list[Any]] = []
        want = list(dict.fromkeys(ids))
        for i in range(0, len(want), 500):
            chunk = want[i : i + 500]
            self.rows.update(dict.fromkeys(chunk))
            sql = f"SELECT rollout_id, {', '.join(_STATE)} FROM pa_rollouts WHERE rollout_id IN"
            for r in db.execute(f"{sql} ({', '.join('?' * len(chunk))})", chunk):
                self.rows[r[0]] = list(r[1:])

    def flush(self) -> None:
        """Write the new and changed rows."""
        db, rows = self._db, self.rows
        insert = f"INSERT INTO pa_rollouts (rollout_id, {', '.join(_STATE)}) VALUES ({', '.join('?' * (len(_STATE) + 1))})"
        db.executemany(insert, [[rid, *rows[rid]] for rid in self.inserted] + self.nulls)  # type: ignore[misc]
        by_columns: dict[tuple[int, ...], list[list[Any]]] = {}
        for rid, columns in self.updated.items():
            cs = tuple(sorted(columns))
            row = rows[rid]
            assert row is not None
            by_columns.setdefault(cs, []).append([*(row[i] for i in cs), rid])
        for cs, params in by_columns.items():
            db.executemany(_update(tuple(_STATE[i] for i in cs)), params)


def _text(db: sqlite3.Connection, v: Any) -> Any:
    """``v`` as a TEXT column stores it (and compares it): as it is if a string or NULL."""
    return v if v is None or type(v) is str else _stored(db, "t", v)


def _larger(have: Any, embargo: Any) -> Any:
    """The larger of a rollout's embargo (None: none yet) and a decision's."""
    return embargo if have is None or embargo > have else have


def _real(db: sqlite3.Connection, v: Any) -> Any:
    """``v`` as a REAL column stores it."""
    if v is None or type(v) is float:
        return v
    return float(v) if type(v) is int else _stored(db, "r", v)


def _stored(db: sqlite3.Connection, column: str, v: Any) -> Any:
    # An event holding an odd type (only a log written around rollwatch): ask SQLite.
    db.execute("CREATE TEMP TABLE IF NOT EXISTS pa_affinity (t TEXT, r REAL)")
    db.execute("DELETE FROM temp.pa_affinity")
    db.execute(f"INSERT INTO temp.pa_affinity ({column}) VALUES (?)", (v,))
    return db.execute(f"SELECT {column} FROM temp.pa_affinity").fetchone()[0]


@functools.cache
def _update(columns: tuple[str, ...]) -> str:
    return f"UPDATE pa_rollouts SET {', '.join(f'{c} = ?' for c in columns)} WHERE rollout_id = ?"


def _shrinks(old: tuple[Any, ...], new: tuple[Any, ...], fns: tuple[str, ...]) -> bool:
    """Whether an extreme ``old`` added is no longer implied by ``new``."""
    for v, nv, fn in zip(old, new, fns, strict=True):
        if v is None or v is ABSENT:
            continue
        if nv is None or nv is ABSENT or (nv < v if fn == "max" else nv > v):
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
