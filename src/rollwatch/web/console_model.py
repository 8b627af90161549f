"""The console's own read model: what the shared projections do not keep.

A running run's planned size (problems × models × samples, from ``RunStarted``), so
that its progress bar has a denominator before ``RunFinished`` states one.
"""

from __future__ import annotations

import sqlite3

from rollwatch import events as e
from rollwatch.events import Recorded
from rollwatch.projections import Projection


class ConsoleRunsProjection(Projection):
    """Each run's planned number of rollouts."""

    name = "ops_runs"
    version = 1
    tables = ("ops_runs",)
    types = frozenset({"RunStarted"})
    ddl = "CREATE TABLE IF NOT EXISTS ops_runs (run_id TEXT PRIMARY KEY, planned INTEGER NOT NULL)"

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Record the planned size of a run when it starts (a resume keeps the first)."""
        ev = rec.event()
        if isinstance(ev, e.RunStarted):
            planned = len(ev.problems or []) * len(ev.models or []) * int(ev.rollouts or 0)
            db.execute("INSERT OR IGNORE INTO ops_runs (run_id, planned) VALUES (?, ?)", (ev.run_id, planned))


class ConsoleProblemsProjection(Projection):
    """Per problem: its versions (content hashes) over time, and pass rates per model.

    Built from the events alone (never from another projection's rows, so rebuilding it
    alone gives the same tables): ``ops_rollouts`` keeps each rollout's cell and newest
    verdict, so a second verdict on a rollout (a re-score) moves the cell's count by
    the difference instead of counting the rollout twice. The console's problem pages
    read a few hundred rows whatever the size of the log.
    """

    name = "ops_problems"
    version = 1
    tables = ("ops_problem_versions", "ops_cells", "ops_rollouts")
    types = frozenset({"RolloutRequested", "RolloutScored", "RolloutRescored", "ProblemVersioned"})
    ddl = """
    CREATE TABLE IF NOT EXISTS ops_problem_versions (
        problem_id TEXT NOT NULL, problem_hash TEXT NOT NULL, problem_set TEXT,
        first_seq INTEGER NOT NULL, first_at TEXT NOT NULL, versioned_at TEXT, previous_hash TEXT,
        verdicts INTEGER NOT NULL DEFAULT 0, passed INTEGER NOT NULL DEFAULT 0, time_limit_s REAL,
        PRIMARY KEY (problem_id, problem_hash)
    );
    CREATE TABLE IF NOT EXISTS ops_cells (
        id INTEGER PRIMARY KEY, problem_id TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
        rollouts INTEGER NOT NULL DEFAULT 0, scored INTEGER NOT NULL DEFAULT 0,
        passed INTEGER NOT NULL DEFAULT 0, UNIQUE (problem_id, provider, model)
    );
    CREATE TABLE IF NOT EXISTS ops_rollouts (
        rollout_id TEXT PRIMARY KEY, cell INTEGER NOT NULL, problem_hash TEXT, passed INTEGER
    ) WITHOUT ROWID
    """

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Count the rollout into its cell, a verdict into its cell and version, a version in."""
        ev = rec.event()
        if isinstance(ev, e.RolloutRequested):
            if db.execute("SELECT 1 FROM ops_rollouts WHERE rollout_id = ?", (ev.rollout_id,)).fetchone():
                return  # a retry's second request
            key = (ev.problem_id, ev.provider, ev.model)
            row = db.execute(
                "SELECT id FROM ops_cells WHERE problem_id = ? AND provider = ? AND model = ?", key
            ).fetchone()
            if row is None:
                cell = db.execute(
                    "INSERT INTO ops_cells (problem_id, provider, model, rollouts) VALUES (?, ?, ?, 1)", key
                ).lastrowid
            else:
                cell = row[0]
                db.execute("UPDATE ops_cells SET rollouts = rollouts + 1 WHERE id = ?", (cell,))
            db.execute(
                "INSERT INTO ops_rollouts (rollout_id, cell, problem_hash) VALUES (?, ?, ?)",
                (ev.rollout_id, cell, ev.problem_hash),
            )
            if ev.problem_hash:
                db.execute(
                    "INSERT OR IGNORE INTO ops_problem_versions (problem_id, problem_hash, first_seq, first_at)"
                    " VALUES (?, ?, ?, ?)",
                    (ev.problem_id, ev.problem_hash, rec.seq, rec.at),
                )
        elif isinstance(ev, e.RolloutScored | e.RolloutRescored):
            row = db.execute(
                "SELECT r.cell, r.problem_hash, r.passed, c.problem_id FROM ops_rollouts r"
                " JOIN ops_cells c ON c.id = r.cell WHERE r.rollout_id = ?",
                (ev.rollout_id,),
            ).fetchone()
            if row is None:
                return  # a verdict on a rollout this log never requested
            cell, requested_hash, before, problem_id = row
            now = int(bool(ev.passed))
            if before is None:
                db.execute(
                    "UPDATE ops_cells SET scored = scored + 1, passed = passed + ? WHERE id = ?", (now, cell)
                )
            elif before != now:
                db.execute("UPDATE ops_cells SET passed = passed + ? WHERE id = ?", (now - before, cell))
            db.execute("UPDATE ops_rollouts SET passed = ? WHERE rollout_id = ?", (now, ev.rollout_id))
            vhash = ev.problem_hash or requested_hash
            if vhash:
                db.execute(
                    "INSERT OR IGNORE INTO ops_problem_versions (problem_id, problem_hash, first_seq, first_at)"
                    " VALUES (?, ?, ?, ?)",
                    (problem_id, vhash, rec.seq, rec.at),
                )
                db.execute(
                    "UPDATE ops_problem_versions SET verdicts = verdicts + 1, passed = passed + ?,"
                    " time_limit_s = coalesce(?, time_limit_s) WHERE problem_id = ? AND problem_hash = ?",
                    (now, ev.time_limit_s, problem_id, vhash),
                )
        elif isinstance(ev, e.ProblemVersioned):
            db.execute(
                "INSERT INTO ops_problem_versions (problem_id, problem_hash, problem_set, first_seq, first_at,"
                " versioned_at, previous_hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (problem_id, problem_hash) DO UPDATE SET problem_set = excluded.problem_set,"
                " versioned_at = excluded.versioned_at, previous_hash = excluded.previous_hash",
                (ev.problem_id, ev.problem_hash, ev.problem_set, rec.seq, rec.at, rec.at, ev.previous_hash),
            )
