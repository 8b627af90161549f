"""The console's own read model: what its pages need, counted as the events arrive.

Every console page reads a few hundred rows whatever the size of the log (a million
events: 200,000 rollouts): nothing is counted at request time.

* ``ops_runs``: per run its planned size (problems × models × samples, from
  ``RunStarted``, the progress bar's denominator before ``RunFinished`` states one) and
  its rollouts requested, scored, passed and finally failed;
* ``ops_cells``: per problem, provider and model, rollouts, scored and passed (the
  problems pages' pass rates);
* ``ops_problem_versions``: per problem each content hash it had, when it was first
  seen and when recorded as a new version (``ProblemVersioned``), the verdicts given
  under it and the time limit they ran under;
* ``ops_rollouts``: each rollout's run, cell, state and newest verdict, so a second
  verdict on a rollout (a re-score) moves the counts by the difference instead of
  counting the rollout twice.

The states follow :class:`rollwatch.projections.RunsProjection` (the runs pages show
both), but only from the events: rebuilding this projection alone gives the same rows.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from rollwatch import events as e
from rollwatch.events import Recorded
from rollwatch.projections import Projection


class ConsoleRunsProjection(Projection):
    """Counts per run, per problem and model, and per problem version."""

    name = "ops_runs"
    build_weight = 0.55
    unread = e.BODIES  # reads no request, answer or scorer's findings
    version = 2  # 2: counts per run, cell and problem version (ops_rollouts, ops_cells, ops_problem_versions)
    tables = ("ops_runs", "ops_rollouts", "ops_cells", "ops_problem_versions")
    types = frozenset(
        {
            "RunStarted",
            "RolloutRequested",
            "RolloutResponded",
            "RolloutFailed",
            "RolloutScored",
            "RolloutRescored",
            "ProblemVersioned",
        }
    )
    ddl = """
    CREATE TABLE IF NOT EXISTS ops_runs (
        run_id TEXT PRIMARY KEY, planned INTEGER NOT NULL, requested INTEGER NOT NULL DEFAULT 0,
        scored INTEGER NOT NULL DEFAULT 0, passed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS ops_rollouts (
        rollout_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, cell INTEGER NOT NULL, problem_id TEXT NOT NULL,
        problem_hash TEXT, state TEXT NOT NULL, passed INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS ops_cells (
        id INTEGER PRIMARY KEY, problem_id TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
        rollouts INTEGER NOT NULL DEFAULT 0, scored INTEGER NOT NULL DEFAULT 0,
        passed INTEGER NOT NULL DEFAULT 0, UNIQUE (problem_id, provider, model)
    );
    CREATE TABLE IF NOT EXISTS ops_problem_versions (
        problem_id TEXT NOT NULL, problem_hash TEXT NOT NULL, problem_set TEXT,
        first_seq INTEGER NOT NULL, first_at TEXT NOT NULL, versioned_at TEXT, previous_hash TEXT,
        verdicts INTEGER NOT NULL DEFAULT 0, passed INTEGER NOT NULL DEFAULT 0, time_limit_s REAL,
        PRIMARY KEY (problem_id, problem_hash)
    )
    """

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Apply one event (a batch of one)."""
        self.apply_batch(db, [rec])

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        """Move the counts the events change, in order: each row the batch touches is read
        once (many in one query) and written back once, leaving the rows that the
        statements one event at a time would (an update of a row that does not exist does
        nothing; a new cell takes the id ``INSERT`` would give it, the largest + 1)."""
        # (kind, event): the event typed Any, its kind saying which class it is.
        kinds = _KINDS
        evs: list[tuple[Recorded, int, Any]] = [
            (rec, kinds.get(type(ev)) or _kind(ev), ev) for rec in recs if (ev := rec.event()) is not None
        ]
        rollout_ids: list[str] = []
        run_ids: list[str] = []
        requested: set[str] = set()  # the problems of the batch's requests
        problems: set[str] = set()  # and those of its new versions
        for _, kind, ev in evs:
            if kind <= _VERDICT:
                rollout_ids.append(ev.rollout_id)
                if kind == _REQUESTED:
                    run_ids.append(ev.run_id)
                    requested.add(ev.problem_id)
            elif kind == _STARTED:
                run_ids.append(ev.run_id)
            elif kind == _VERSIONED:
                problems.add(ev.problem_id)

        # The columns' DEFAULT 0 (the others' is NULL), which an INSERT naming only some gives.
        runs = _Rows(db, "ops_runs", _RUN_COLUMNS, 1, zero=("requested", "scored", "passed", "failed"))
        rollouts = _Rows(db, "ops_rollouts", _ROLLOUT_COLUMNS, 1)
        cells = _Rows(db, "ops_cells", _CELL_COLUMNS, 1, zero=("rollouts", "scored", "passed"))
        versions = _Rows(db, "ops_problem_versions", _VERSION_COLUMNS, 2, zero=("verdicts", "passed"))
        rollouts.prefetch(rollout_ids)
        known = [r for r in rollouts.rows.values() if r is not None]
        runs.prefetch(run_ids + [r["run_id"] for r in known])
        cells.prefetch(r["cell"] for r in known)
        cells.prefetch(requested, "problem_id")
        # (problem_id, provider, model) -> id: every cell of the requested problems
        cell_of = {
            (r["problem_id"], r["provider"], r["model"]): k for k, r in cells.rows.items() if r is not None
        }
        next_cell: list[int] = []  # the id the next new cell takes, once read
        versions.prefetch(problems | requested | {r["problem_id"] for r in known})
        # Every rollout and run the batch names is read (None: no such row), and the cell of
        # every rollout: their dicts are used directly, and ``*_changed`` marks the rows to write.
        rollout_rows, rollouts_changed = rollouts.rows, rollouts.changed
        run_rows, runs_changed = runs.rows, runs.changed
        cell_rows, cells_changed = cells.rows, cells.changed
        version_rows, versions_changed = versions.rows, versions.changed  # not every key read: .get()

        def move(row: dict[str, Any], state: str) -> None:
            # The state (the caller sets the verdict), and the run's count of final failures.
            delta = (state == "failed") - (row["state"] == "failed")
            row["state"] = state
            if delta and (run := run_rows[row["run_id"]]) is not None:
                run["failed"] += delta
                runs_changed[row["run_id"]] = None

        for rec, kind, ev in evs:
            if kind == _REQUESTED:
                rid = ev.rollout_id
                if (row := rollout_rows[rid]) is not None:  # a retry, or a resumed run asking again
                    if row["state"] == "failed":
                        move(row, "requested")
                        rollouts_changed[rid] = None
                    continue
                key = (ev.problem_id, ev.provider, ev.model)
                cell = cell_of.get(key)
                if cell is None:
                    if not next_cell:  # INSERT's rowid: the largest + 1 (no row is ever deleted)
                        top = db.execute("SELECT max(id) FROM ops_cells").fetchone()[0]
                        next_cell.append((top or 0) + 1)
                    cell = cell_of[key] = next_cell[0]
                    next_cell[0] += 1
                    cells.insert_or_ignore(
                        cell,
                        {
                            "id": cell,
                            "problem_id": key[0],
                            "provider": key[1],
                            "model": key[2],
                            "rollouts": 1,
                        },
                    )
                elif (c := cell_rows[cell]) is not None:
                    c["rollouts"] += 1
                    cells_changed[cell] = None
                rollout_rows[rid] = {
                    "rollout_id": rid,
                    "run_id": ev.run_id,
                    "cell": cell,
                    "problem_id": ev.problem_id,
                    "problem_hash": ev.problem_hash,
                    "state": "requested",
                    "passed": None,
                }
                rollouts_changed[rid] = None
                if (run := run_rows[ev.run_id]) is not None:
                    run["requested"] += 1
                    runs_changed[ev.run_id] = None
                if ev.problem_hash and version_rows.get((ev.problem_id, ev.problem_hash)) is None:
                    versions.insert_or_ignore(
                        (ev.problem_id, ev.problem_hash),
                        {
                            "problem_id": ev.problem_id,
                            "problem_hash": ev.problem_hash,
                            "first_seq": rec.seq,
                            "first_at": rec.at,
                        },
                    )
            elif kind == _RESPONDED:
                if (row := rollout_rows[ev.rollout_id]) is not None:
                    if row["state"] == "requested":
                        row["state"] = "answered"
                        rollouts_changed[ev.rollout_id] = None
                    elif row["state"] == "failed":  # an answer after a final failure (rare)
                        move(row, "answered")
                        rollouts_changed[ev.rollout_id] = None
            elif kind == _VERDICT:
                if (row := rollout_rows[ev.rollout_id]) is None:
                    continue  # a verdict on a rollout this log never requested
                rollouts_changed[ev.rollout_id] = None
                now = int(bool(ev.passed))
                before = row["passed"]
                cell, run_id = row["cell"], row["run_id"]
                if row["state"] != "scored" and isinstance(ev, e.RolloutScored):
                    move(row, "scored")
                    row["passed"] = now
                    if (c := cell_rows[cell]) is not None:
                        c["scored"] += 1
                        c["passed"] += now
                        cells_changed[cell] = None
                    if (run := run_rows[run_id]) is not None:
                        run["scored"] += 1
                        run["passed"] += now
                        runs_changed[run_id] = None
                else:
                    row["passed"] = now
                    if row["state"] == "scored" and before is not None and before != now:
                        if (c := cell_rows[cell]) is not None:
                            c["passed"] += now - before
                            cells_changed[cell] = None
                        if (run := run_rows[run_id]) is not None:
                            run["passed"] += now - before
                            runs_changed[run_id] = None
                vhash = ev.problem_hash or row["problem_hash"]
                if not vhash:
                    continue
                pid = row["problem_id"]
                vkey = (pid, vhash)
                if (v := version_rows.get(vkey)) is None:
                    if vhash != row["problem_hash"]:  # the request's version is in already
                        versions.insert_or_ignore(
                            vkey,
                            {
                                "problem_id": pid,
                                "problem_hash": vhash,
                                "first_seq": rec.seq,
                                "first_at": rec.at,
                            },
                        )
                    v = versions.get(vkey)
                if v is not None:
                    versions_changed[vkey] = None
                    v["verdicts"] += 1
                    v["passed"] += now
                    if ev.time_limit_s is not None:
                        v["time_limit_s"] = ev.time_limit_s
            elif kind == _FAILED:
                if (
                    ev.final
                    and (row := rollout_rows[ev.rollout_id]) is not None
                    and row["state"] == "requested"
                ):
                    move(row, "failed")
                    rollouts_changed[ev.rollout_id] = None
            elif kind == _STARTED:
                # A resumed run's RunStarted keeps the first planned size.
                planned = len(ev.problems or []) * len(ev.models or []) * int(ev.rollouts or 0)
                runs.insert_or_ignore(ev.run_id, {"run_id": ev.run_id, "planned": planned})
            elif kind == _VERSIONED:
                vkey = (ev.problem_id, ev.problem_hash)
                versions.insert_or_ignore(
                    vkey,
                    {
                        "problem_id": ev.problem_id,
                        "problem_hash": ev.problem_hash,
                        "first_seq": rec.seq,
                        "first_at": rec.at,
                    },
                )
                if (v := versions.change(vkey)) is not None:
                    v.update(problem_set=ev.problem_set, versioned_at=rec.at, previous_hash=ev.previous_hash)
        runs.flush()
        rollouts.flush()
        cells.flush()
        versions.flush()


# The kinds of event this projection reads; the rollouts' first (up to _VERDICT).
_REQUESTED, _RESPONDED, _FAILED, _VERDICT, _STARTED, _VERSIONED, _OTHER = range(1, 8)  # none 0 (falsy)
_KINDS: dict[type, int] = {}


def _kind(ev: e.Event) -> int:
    """The kind of ``ev`` (by ``isinstance``, remembered per class)."""
    try:
        return _KINDS[type(ev)]
    except KeyError:
        pass
    kind = _OTHER
    for k, cls in (
        (_STARTED, e.RunStarted),
        (_REQUESTED, e.RolloutRequested),
        (_RESPONDED, e.RolloutResponded),
        (_FAILED, e.RolloutFailed),
        (_VERDICT, e.RolloutScored | e.RolloutRescored),
        (_VERSIONED, e.ProblemVersioned),
    ):
        if isinstance(ev, cls):
            kind = k
            break
    _KINDS[type(ev)] = kind
    return kind


_RUN_COLUMNS = ("run_id", "planned", "requested", "scored", "passed", "failed")
_ROLLOUT_COLUMNS = ("rollout_id", "run_id", "cell", "problem_id", "problem_hash", "state", "passed")
_CELL_COLUMNS = ("id", "problem_id", "provider", "model", "rollouts", "scored", "passed")
_VERSION_COLUMNS = (
    "problem_id", "problem_hash", "problem_set", "first_seq", "first_at", "versioned_at", "previous_hash",
    "verdicts", "passed", "time_limit_s",
)  # fmt: skip
_ROLLOUT_EVENTS = (
    e.RolloutRequested,
    e.RolloutResponded,
    e.RolloutFailed,
    e.RolloutScored,
    e.RolloutRescored,
)


class _Rows:
    """One table's rows a batch touches, each read once and written back once.

    A row is a dict of every column, ``None`` one that does not exist. The first ``key``
    columns are the primary key (a tuple of them when more than one). Rows are written
    back with an upsert on the key, so a row keeps its rowid (and a new cell the id given
    it here)."""

    __slots__ = ("_complete", "_db", "_new", "_save", "_table", "changed", "columns", "key", "rows")

    def __init__(
        self,
        db: sqlite3.Connection,
        table: str,
        columns: tuple[str, ...],
        key: int,
        zero: tuple[str, ...] = (),
    ) -> None:
        """``zero``: the columns whose DEFAULT is 0 (the others' is NULL)."""
        self._db = db
        self._new = {c: 0 if c in zero else None for c in columns}
        self._table = table
        self.columns = columns
        self.key = key
        cols = ", ".join(columns)
        keys = ", ".join(columns[:key])
        sets = ", ".join(f"{c} = excluded.{c}" for c in columns[key:])
        self._save = (
            f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT ({keys}) DO UPDATE SET {sets}"
        )
        self.rows: dict[Any, dict[str, Any] | None] = {}
        self.changed: dict[
            Any, None
        ] = {}  # in the order first changed: new rows' rowids as INSERTs give them
        self._complete: set[Any] = set()  # first key column's values whose rows are all read

    def _key(self, r: tuple[Any, ...]) -> Any:
        return r[0] if self.key == 1 else r[: self.key]

    def prefetch(self, values: Iterable[Any], column: str | None = None) -> None:
        """Read every row whose ``column`` (the first key column by default) is one of
        ``values``, a few hundred values per query."""
        column = column or self.columns[0]
        first = column == self.columns[0]
        complete = self._complete
        want = [v for v in dict.fromkeys(values) if v not in complete] if first else list(set(values))
        cols = ", ".join(self.columns)
        for i in range(0, len(want), 500):
            chunk = want[i : i + 500]
            sql = f"SELECT {cols} FROM {self._table} WHERE {column} IN ({', '.join('?' * len(chunk))})"
            for r in self._db.execute(sql, chunk):
                self.rows.setdefault(self._key(r), dict(zip(self.columns, r, strict=True)))
            if first:
                self._complete.update(chunk)
                if self.key == 1:
                    for v in chunk:
                        self.rows.setdefault(v, None)

    def get(self, key: Any) -> dict[str, Any] | None:
        """The row of ``key`` as it stands in this batch, or None."""
        try:
            return self.rows[key]
        except KeyError:
            pass
        params = key if self.key > 1 else (key,)
        if params[0] in self._complete:
            row = None
        else:
            where = " AND ".join(f"{c} = ?" for c in self.columns[: self.key])
            r = self._db.execute(
                f"SELECT {', '.join(self.columns)} FROM {self._table} WHERE {where}", params
            ).fetchone()
            row = None if r is None else dict(zip(self.columns, r, strict=True))
        self.rows[key] = row
        return row

    def change(self, key: Any) -> dict[str, Any] | None:
        """The row of ``key`` to change in place (written back at :meth:`flush`), or None."""
        row = self.get(key)
        if row is not None:
            self.changed[key] = None
        return row

    def insert_or_ignore(self, key: Any, values: dict[str, Any]) -> None:
        """``INSERT OR IGNORE`` of ``values`` (the other columns their defaults)."""
        if self.get(key) is None:
            self.rows[key] = {**self._new, **values}
            self.changed[key] = None

    def flush(self) -> None:
        """Write every changed row back."""
        if self.changed:
            values = operator.itemgetter(*self.columns)
            rows = self.rows
            self._db.executemany(self._save, [values(r) for k in self.changed if (r := rows[k]) is not None])
            self.changed.clear()
