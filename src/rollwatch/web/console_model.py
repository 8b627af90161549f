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
