"""The console's read model applied in batches (each row read once, written once) leaves
exactly the rows of its statements applied one event at a time, whatever the events and
wherever the batches split: duplicates, retries, final failures asked again, answers after a
failure, verdicts on unknown rollouts, re-scores before and after the first verdict, new
problem versions, runs started twice or never, requests without a version.

Three databases get the same events: the reference (the statements one event at a time, as
the projection was written first), the projection one event per batch, and the projection in
random batches. Every table must hold the same rows, with the same rowids (a cell's id is
referenced by its rollouts)."""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollwatch import events as e
from rollwatch.events import Recorded, canonical_json
from rollwatch.web.console_model import ConsoleRunsProjection

H1, H2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
RUNS = ("run-0", "run-1", "run-9")  # run-9: rollouts of a run never started (no row to count in)
ROLLOUTS = ("x0", "x1", "x2", "x3")
PROBLEMS = ("p0", "p1")
HASHES = (H1, H2, "", None)  # "" and None: no version named
LIMITS = (None, 1.5, 3)

runs = st.sampled_from(RUNS)
rollouts = st.sampled_from(ROLLOUTS)
problems = st.sampled_from(PROBLEMS)
hashes = st.sampled_from(HASHES)

STARTED = st.builds(
    lambda run, n, models: e.RunStarted(
        run_id=run,
        schedule="s",
        provider="p",
        models=models,
        problem_set="set",
        node="n",
        rollouts=n,
        problems=list(PROBLEMS),
    ),
    st.sampled_from(RUNS[:2]),
    st.integers(0, 3),
    st.sampled_from([["m0"], ["m0", "m1"]]),
)

REQUESTED = st.builds(
    lambda rid, run, pid, provider, model, h: e.RolloutRequested(
        rollout_id=rid,
        run_id=run,
        provider=provider,
        model=model,
        problem_id=pid,
        problem_hash=h,  # None: as an edited log may hold
        sample=0,
        attempt=1,
        request={},
        node="n",
    ),
    rollouts,
    runs,
    problems,
    st.sampled_from(["p", "q"]),
    st.sampled_from(["m0", "m1"]),
    hashes,
)

RESPONDED = st.builds(
    lambda rid: e.RolloutResponded(rollout_id=rid, attempt=1, text="t", cost_usd=0.01),
    rollouts,
)

FAILED = st.builds(
    lambda rid, final: e.RolloutFailed(
        rollout_id=rid, attempt=1, kind="http", status=500, retryable=True, message="x", final=final
    ),
    rollouts,
    st.booleans(),
)

SCORED = st.builds(
    lambda rid, passed, h, limit: e.RolloutScored(
        rollout_id=rid, passed=passed, score=float(passed), scorer="f", problem_hash=h, time_limit_s=limit
    ),
    rollouts,
    st.booleans(),
    hashes,
    st.sampled_from(LIMITS),
)

RESCORED = st.builds(
    lambda rid, pid, passed, h, limit: e.RolloutRescored(
        rollout_id=rid,
        problem_id=pid,
        passed=passed,
        score=float(passed),
        scorer="f",
        problem_hash=h,
        scorer_version="v",
        rescore_id="rs",
        time_limit_s=limit,
    ),
    st.sampled_from((*ROLLOUTS, "unknown")),
    problems,
    st.booleans(),
    st.sampled_from([H1, H2]),
    st.sampled_from(LIMITS),
)

VERSIONED = st.builds(
    lambda pid, h, prev, pset: e.ProblemVersioned(
        problem_set=pset, problem_id=pid, problem_hash=h, previous_hash=prev
    ),
    problems,
    st.sampled_from([H1, H2, "sha256:3"]),
    st.sampled_from([None, H1]),
    st.sampled_from(["set", "other"]),
)

# Requests and verdicts weigh more: the counts move with them.
EVENT: st.SearchStrategy[e.Event] = st.sampled_from(
    [REQUESTED, REQUESTED, SCORED, SCORED, RESPONDED, FAILED, RESCORED, VERSIONED, STARTED]
).flatmap(lambda strategy: strategy)


def recorded(events: list[e.Event]) -> list[Recorded]:
    """The events as the log stores them (decoded again by ``rec.event()``)."""
    return [
        Recorded(
            seq,
            f"id{seq}",
            "s",
            seq,
            ev.TYPE,
            ev.SCHEMA,
            f"2026-01-01T00:{seq:05d}",
            canonical_json(ev.to_data()),
            "",
        )
        for seq, ev in enumerate(events, 1)
    ]


def fresh() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    for stmt in filter(str.strip, ConsoleRunsProjection.ddl.split(";")):
        db.execute(stmt)
    return db


def rows(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, with the rowid of the rowid tables."""
    return {
        "ops_runs": db.execute("SELECT rowid, * FROM ops_runs ORDER BY rowid").fetchall(),
        "ops_rollouts": db.execute("SELECT * FROM ops_rollouts ORDER BY rollout_id").fetchall(),
        "ops_cells": db.execute("SELECT * FROM ops_cells ORDER BY id").fetchall(),
        "ops_problem_versions": db.execute(
            "SELECT rowid, * FROM ops_problem_versions ORDER BY rowid"
        ).fetchall(),
    }


def batched(recs: list[Recorded], cuts: set[int]) -> list[list[Recorded]]:
    """``recs`` cut before each index of ``cuts``."""
    out: list[list[Recorded]] = [[]]
    for i, rec in enumerate(recs):
        if i in cuts and out[-1]:
            out.append([])
        out[-1].append(rec)
    return out


def apply_all(recs: list[Recorded], cuts: set[int]) -> dict[str, list[tuple[Any, ...]]]:
    db, p = fresh(), ConsoleRunsProjection()
    for batch in batched(recs, cuts):
        db.execute("BEGIN")
        p.apply_batch(db, batch)
        db.execute("COMMIT")
    return rows(db)


class TestBatches:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(events=st.lists(EVENT, min_size=20, max_size=80), cuts=st.sets(st.integers(0, 80)))
    def test_any_batches_leave_the_rows_of_one_event_at_a_time(
        self, events: list[e.Event], cuts: set[int]
    ) -> None:
        """The reference statements one event at a time, the projection one event per
        batch, and the projection in random batches leave the same rows in every table."""
        recs = recorded(events)
        ref = fresh()
        for rec in recs:
            reference_apply(ref, rec)
        expected = rows(ref)
        assert apply_all(recs, set(range(len(recs)))) == expected
        assert apply_all(recs, cuts) == expected

    def test_the_histories_reach_every_path(self) -> None:
        """A history with each odd case, so the comparison has something to compare: cells
        made in several batches (their ids), a re-score flipping a verdict, a failure asked
        again, an answer after a final failure, a verdict on an unknown rollout."""
        evs: list[e.Event] = [
            e.RunStarted(
                run_id="run-0",
                schedule="s",
                provider="p",
                models=["m0"],
                problem_set="set",
                node="n",
                rollouts=1,
            ),
        ]
        for rid, model in (("x0", "m0"), ("x1", "m1"), ("x2", "m0")):
            evs.append(
                e.RolloutRequested(
                    rollout_id=rid, run_id="run-0", provider="p", model=model, problem_id="p0",
                    problem_hash=H1, sample=0, attempt=1, request={}, node="n",
                )
            )  # fmt: skip
        evs += [
            e.RolloutFailed(rollout_id="x2", attempt=1, kind="http", status=500, retryable=False, message="x", final=True),
            e.RolloutResponded(rollout_id="x2", attempt=1, text="t"),
            e.RolloutScored(rollout_id="x0", passed=True, score=1.0, scorer="f"),
            e.RolloutRescored(
                rollout_id="x0", problem_id="p0", passed=False, score=0.0, scorer="f", problem_hash=H2,
                scorer_version="v", rescore_id="rs", time_limit_s=2.0,
            ),
            e.RolloutScored(rollout_id="nobody", passed=True, score=1.0, scorer="f"),
        ]  # fmt: skip
        recs = recorded(evs)
        ref = fresh()
        for rec in recs:
            reference_apply(ref, rec)
        expected = rows(ref)
        assert [r[0] for r in expected["ops_cells"]] == [1, 2]
        assert expected["ops_runs"] == [(1, "run-0", 0, 3, 1, 0, 0)]
        assert {r[0]: r[5:] for r in expected["ops_rollouts"]}["x2"] == ("answered", None)
        for cuts in (set(), {2, 5}, set(range(len(recs)))):
            assert apply_all(recs, cuts) == expected


# --- the reference: the projection's statements one event at a time, as first written ---


def reference_apply(db: sqlite3.Connection, rec: Recorded) -> None:
    """The projection as it was before its ``apply_batch`` (main at b044dfe): a few statements an
    event, each event alone. The batched code must leave exactly its rows."""
    ev = rec.event()
    if isinstance(ev, e.RunStarted):
        # A resumed run's RunStarted keeps the first planned size.
        planned = len(ev.problems or []) * len(ev.models or []) * int(ev.rollouts or 0)
        db.execute("INSERT OR IGNORE INTO ops_runs (run_id, planned) VALUES (?, ?)", (ev.run_id, planned))
    elif isinstance(ev, e.RolloutRequested):
        _requested(db, rec, ev)
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
        _verdict(db, rec, ev)
    elif isinstance(ev, e.ProblemVersioned):
        db.execute(
            "INSERT INTO ops_problem_versions (problem_id, problem_hash, problem_set, first_seq, first_at,"
            " versioned_at, previous_hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (problem_id, problem_hash) DO UPDATE SET problem_set = excluded.problem_set,"
            " versioned_at = excluded.versioned_at, previous_hash = excluded.previous_hash",
            (ev.problem_id, ev.problem_hash, ev.problem_set, rec.seq, rec.at, rec.at, ev.previous_hash),
        )


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
            db.execute("UPDATE ops_cells SET passed = passed + ? WHERE id = ?", (now - row.passed, row.cell))
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
