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
        once (many in one query) and written back once, leaving the rows that one
        statement after another per event would (an update of a row that does not exist
        does nothing; a new cell takes the id ``INSERT`` would give it, the largest + 1)."""
        evs = [(rec, rec.event()) for rec in recs]
        # The columns' DEFAULT 0 (the others' is NULL), which an INSERT naming only some gives.
        runs = _Rows(db, "ops_runs", _RUN_COLUMNS, 1, zero=("requested", "scored", "passed", "failed"))
        rollouts = _Rows(db, "ops_rollouts", _ROLLOUT_COLUMNS, 1)
        cells = _Rows(db, "ops_cells", _CELL_COLUMNS, 1, zero=("rollouts", "scored", "passed"))
        versions = _Rows(db, "ops_problem_versions", _VERSION_COLUMNS, 2, zero=("verdicts", "passed"))

        rollouts.prefetch(ev.rollout_id for _, ev in evs if isinstance(ev, _ROLLOUT_EVENTS))
        known = [r for r in rollouts.rows.values() if r is not None]
        runs.prefetch(
            [ev.run_id for _, ev in evs if isinstance(ev, e.RunStarted | e.RolloutRequested)]
            + [r["run_id"] for r in known]
        )
        requested = {ev.problem_id for _, ev in evs if isinstance(ev, e.RolloutRequested)}
        cells.prefetch(r["cell"] for r in known)
        cells.prefetch(requested, "problem_id")
        # (problem_id, provider, model) -> id, complete for the problems of ``requested``
        cell_of = {
            (r["problem_id"], r["provider"], r["model"]): k for k, r in cells.rows.items() if r is not None
        }
        next_cell: list[int] = []  # the id the next new cell takes, once read
        versions.prefetch(
            {ev.problem_id for _, ev in evs if isinstance(ev, e.ProblemVersioned)}
            | requested
            | {r["problem_id"] for r in known}
        )

        def add_to_run(run_id: str, **amounts: int) -> None:
            run = runs.change(run_id)
            if run is not None:
                for column, amount in amounts.items():
                    run[column] += amount

        def move(row: dict[str, Any], state: str) -> None:
            # _move: the state (the verdict is set by the caller), and the run's final failures.
            delta = (state == "failed") - (row["state"] == "failed")
            row["state"] = state
            if delta:
                add_to_run(row["run_id"], failed=delta)

        def version_seen(pid: str, vhash: str, rec: Recorded) -> None:
            versions.insert_or_ignore(
                (pid, vhash),
                {"problem_id": pid, "problem_hash": vhash, "first_seq": rec.seq, "first_at": rec.at},
            )

        for rec, ev in evs:
            if isinstance(ev, e.RunStarted):
                # A resumed run's RunStarted keeps the first planned size.
                planned = len(ev.problems or []) * len(ev.models or []) * int(ev.rollouts or 0)
                runs.insert_or_ignore(ev.run_id, {"run_id": ev.run_id, "planned": planned})
            elif isinstance(ev, e.RolloutRequested):
                row = rollouts.change(ev.rollout_id)
                if row is not None:  # a retry, or a resumed run asking again
                    if row["state"] == "failed":
                        move(row, "requested")
                    continue
                key = (ev.problem_id, ev.provider, ev.model)
                found = cell_of.get(key)
                if found is None:
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
                else:
                    cell = found
                    if (c := cells.change(cell)) is not None:
                        c["rollouts"] += 1
                rollouts.insert_or_ignore(
                    ev.rollout_id,
                    {
                        "rollout_id": ev.rollout_id,
                        "run_id": ev.run_id,
                        "cell": cell,
                        "problem_id": ev.problem_id,
                        "problem_hash": ev.problem_hash,
                        "state": "requested",
                    },
                )
                add_to_run(ev.run_id, requested=1)
                if ev.problem_hash:
                    version_seen(ev.problem_id, ev.problem_hash, rec)
            elif isinstance(ev, e.RolloutResponded):
                if (row := rollouts.change(ev.rollout_id)) is not None:
                    if row["state"] == "requested":
                        row["state"] = "answered"
                    elif row["state"] == "failed":  # an answer after a final failure (rare)
                        move(row, "answered")
            elif isinstance(ev, e.RolloutFailed):
                row = rollouts.get(ev.rollout_id) if ev.final else None
                if row is not None and row["state"] == "requested":
                    move(row, "failed")
                    rollouts.change(ev.rollout_id)
            elif isinstance(ev, e.RolloutScored | e.RolloutRescored):
                if (row := rollouts.change(ev.rollout_id)) is None:
                    continue  # a verdict on a rollout this log never requested
                now = int(bool(ev.passed))
                before = row["passed"]
                if row["state"] != "scored" and isinstance(ev, e.RolloutScored):
                    move(row, "scored")
                    row["passed"] = now
                    if (c := cells.change(row["cell"])) is not None:
                        c["scored"] += 1
                        c["passed"] += now
                    add_to_run(row["run_id"], scored=1, passed=now)
                else:
                    row["passed"] = now
                    if row["state"] == "scored" and before is not None and before != now:
                        if (c := cells.change(row["cell"])) is not None:
                            c["passed"] += now - before
                        add_to_run(row["run_id"], passed=now - before)
                vhash = ev.problem_hash or row["problem_hash"]
                if not vhash:
                    continue
                if vhash != row["problem_hash"]:  # the request's version is in already
                    version_seen(row["problem_id"], vhash, rec)
                if (v := versions.change((row["problem_id"], vhash))) is not None:
                    v["verdicts"] += 1
                    v["passed"] += now
                    if ev.time_limit_s is not None:
                        v["time_limit_s"] = ev.time_limit_s
            elif isinstance(ev, e.ProblemVersioned):
                vkey = (ev.problem_id, ev.problem_hash)
                if (v := versions.change(vkey)) is None:
                    version_seen(ev.problem_id, ev.problem_hash, rec)
                    v = versions.change(vkey)
                    assert v is not None
                v.update(problem_set=ev.problem_set, versioned_at=rec.at, previous_hash=ev.previous_hash)
        runs.flush()
        rollouts.flush()
        cells.flush()
        versions.flush()


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

    __slots__ = ("_changed", "_complete", "_db", "_new", "_save", "_table", "columns", "key", "rows")

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
        self._changed: dict[
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
        want = (
            list(dict.fromkeys(v for v in values if v not in self._complete)) if first else list(set(values))
        )
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
            self._changed[key] = None
        return row

    def insert_or_ignore(self, key: Any, values: dict[str, Any]) -> None:
        """``INSERT OR IGNORE`` of ``values`` (the other columns their defaults)."""
        if self.get(key) is None:
            self.rows[key] = {**self._new, **values}
            self._changed[key] = None

    def flush(self) -> None:
        """Write every changed row back."""
        if self._changed:
            values = operator.itemgetter(*self.columns)
            rows = self.rows
            self._db.executemany(self._save, [values(r) for k in self._changed if (r := rows[k]) is not None])
            self._changed.clear()
