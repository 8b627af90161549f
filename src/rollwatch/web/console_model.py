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

import sqlite3
from typing import NamedTuple

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
        """Move the counts the event changes (a few indexed statements an event: a catch-up
        applies it to every rollout of the log)."""
        ev = rec.event()
        if isinstance(ev, e.RunStarted):
            # A resumed run's RunStarted keeps the first planned size.
            planned = len(ev.problems or []) * len(ev.models or []) * int(ev.rollouts or 0)
            db.execute("INSERT OR IGNORE INTO ops_runs (run_id, planned) VALUES (?, ?)", (ev.run_id, planned))
        elif isinstance(ev, e.RolloutRequested):
            self._requested(db, rec, ev)
        elif isinstance(ev, e.RolloutResponded):
            moved = db.execute(
                "UPDATE ops_rollouts SET state = 'answered' WHERE rollout_id = ? AND state = 'requested'",
                (ev.rollout_id,),
            ).rowcount
            if not moved:  # an answer after a final failure (rare): the failure no longer counts
                row = _rollout(db, ev.rollout_id)
                if row is not None and row.state == "failed":
                    _move(db, row, "answered")
        elif isinstance(ev, e.RolloutFailed):
            if ev.final:
                row = _rollout(db, ev.rollout_id)
                if row is not None and row.state == "requested":
                    _move(db, row, "failed")
        elif isinstance(ev, e.RolloutScored | e.RolloutRescored):
            self._verdict(db, rec, ev)
        elif isinstance(ev, e.ProblemVersioned):
            db.execute(
                "INSERT INTO ops_problem_versions (problem_id, problem_hash, problem_set, first_seq, first_at,"
                " versioned_at, previous_hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (problem_id, problem_hash) DO UPDATE SET problem_set = excluded.problem_set,"
                " versioned_at = excluded.versioned_at, previous_hash = excluded.previous_hash",
                (ev.problem_id, ev.problem_hash, ev.problem_set, rec.seq, rec.at, rec.at, ev.previous_hash),
            )

    @staticmethod
    def _requested(db: sqlite3.Connection, rec: Recorded, ev: e.RolloutRequested) -> None:
        row = _rollout(db, ev.rollout_id)
        if row is not None:  # a retry, or a resumed run asking again
            if row.state == "failed":
                _move(db, row, "requested")
            return
        key = (ev.problem_id, ev.provider, ev.model)
        found = db.execute(
            "SELECT id FROM ops_cells WHERE problem_id = ? AND provider = ? AND model = ?", key
        ).fetchone()
        if found is None:
            cell = db.execute(
                "INSERT INTO ops_cells (problem_id, provider, model, rollouts) VALUES (?, ?, ?, 1)", key
            ).lastrowid
        else:
            cell = found[0]
            db.execute("UPDATE ops_cells SET rollouts = rollouts + 1 WHERE id = ?", (cell,))
        db.execute(
            "INSERT INTO ops_rollouts (rollout_id, run_id, cell, problem_id, problem_hash, state)"
            " VALUES (?, ?, ?, ?, ?, 'requested')",
            (ev.rollout_id, ev.run_id, cell, ev.problem_id, ev.problem_hash),
        )
        db.execute("UPDATE ops_runs SET requested = requested + 1 WHERE run_id = ?", (ev.run_id,))
        if ev.problem_hash:
            db.execute(
                "INSERT OR IGNORE INTO ops_problem_versions (problem_id, problem_hash, first_seq, first_at)"
                " VALUES (?, ?, ?, ?)",
                (ev.problem_id, ev.problem_hash, rec.seq, rec.at),
            )

    @staticmethod
    def _verdict(db: sqlite3.Connection, rec: Recorded, ev: e.RolloutScored | e.RolloutRescored) -> None:
        row = _rollout(db, ev.rollout_id)
        if row is None:
            return  # a verdict on a rollout this log never requested
        now = int(bool(ev.passed))
        if row.state != "scored" and isinstance(ev, e.RolloutScored):
            _move(db, row, "scored", now)
            db.execute(
                "UPDATE ops_cells SET scored = scored + 1, passed = passed + ? WHERE id = ?", (now, row.cell)
            )
            db.execute(
                "UPDATE ops_runs SET scored = scored + 1, passed = passed + ? WHERE run_id = ?",
                (now, row.run_id),
            )
        else:
            db.execute("UPDATE ops_rollouts SET passed = ? WHERE rollout_id = ?", (now, row.rollout_id))
            if row.state == "scored" and row.passed is not None and row.passed != now:
                db.execute(
                    "UPDATE ops_cells SET passed = passed + ? WHERE id = ?", (now - row.passed, row.cell)
                )
                db.execute(
                    "UPDATE ops_runs SET passed = passed + ? WHERE run_id = ?", (now - row.passed, row.run_id)
                )
        vhash = ev.problem_hash or row.problem_hash
        if not vhash:
            return
        if vhash != row.problem_hash:  # the request's version is in already
            db.execute(
                "INSERT OR IGNORE INTO ops_problem_versions (problem_id, problem_hash, first_seq, first_at)"
                " VALUES (?, ?, ?, ?)",
                (row.problem_id, vhash, rec.seq, rec.at),
            )
        db.execute(
            "UPDATE ops_problem_versions SET verdicts = verdicts + 1, passed = passed + ?,"
            " time_limit_s = coalesce(?, time_limit_s) WHERE problem_id = ? AND problem_hash = ?",
            (now, ev.time_limit_s, row.problem_id, vhash),
        )


class _Rollout(NamedTuple):
    rollout_id: str
    run_id: str
    cell: int
    problem_id: str
    problem_hash: str | None
    state: str
    passed: int | None


def _rollout(db: sqlite3.Connection, rollout_id: str) -> _Rollout | None:
    """A rollout's row, None when this log never requested it."""
    row = db.execute(
        "SELECT rollout_id, run_id, cell, problem_id, problem_hash, state, passed FROM ops_rollouts"
        " WHERE rollout_id = ?",
        (rollout_id,),
    ).fetchone()
    return None if row is None else _Rollout(*row)


def _move(db: sqlite3.Connection, row: _Rollout, state: str, passed: int | None = None) -> None:
    """Set a rollout's state (and verdict), keeping its run's count of final failures."""
    if passed is None:
        db.execute("UPDATE ops_rollouts SET state = ? WHERE rollout_id = ?", (state, row.rollout_id))
    else:
        db.execute(
            "UPDATE ops_rollouts SET state = ?, passed = ? WHERE rollout_id = ?",
            (state, passed, row.rollout_id),
        )
    delta = (state == "failed") - (row.state == "failed")
    if delta:
        db.execute("UPDATE ops_runs SET failed = failed + ? WHERE run_id = ?", (delta, row.run_id))
