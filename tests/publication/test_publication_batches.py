"""The publication read models applied in batches hold the rows of one event at a time.

Random event sequences (duplicates, events of rollouts never requested, re-requests,
re-scores, decisions and releases out of order, runs finished twice) are applied to
the subscribers, feed and public projections (a) one event per ``apply`` and (b) in
random batch splits through ``apply_batch``; every table must hold the same rows.
"""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rollwatch import events as e
from rollwatch.events import Recorded, canonical_json, rfc3339
from rollwatch.projections import NULL
from rollwatch.publication.projections import publication_projections

ROLLOUTS = ["r0", "r1", "r2", "r3", "unknown"]
R = st.sampled_from(ROLLOUTS)
RUN = st.sampled_from(["run-0", "run-1"])
COST = st.sampled_from([None, 0.0, 0.01, 0.0185, 1.5])
NOT_BEFORE = st.sampled_from(["2026-01-01T00:00:00.000000Z", "2026-04-01T12:30:00.250000Z"])
HASH = st.sampled_from(["sha256:a", "sha256:b"])

EVENT = st.one_of(
    st.builds(
        lambda run: e.RunStarted(
            run_id=run, schedule="s", provider="openai", models=["m"], problem_set="ps", node="n", rollouts=3
        ),
        RUN,
    ),
    st.builds(
        lambda run, status: e.RunFinished(run_id=run, status=status, rollouts=3, passed=1, cost_usd=0.5),
        RUN,
        st.sampled_from(["completed", "failed"]),
    ),
    st.builds(
        lambda r, run, sample: e.RolloutRequested(
            rollout_id=r,
            run_id=run,
            provider="openai",
            model="m",
            problem_id="p1",
            problem_hash="sha256:a",
            sample=sample,
            attempt=1,
            request={},
            node="n",
        ),
        st.sampled_from(ROLLOUTS[:-1]),
        RUN,
        st.integers(0, 2),
    ),
    st.builds(lambda r, cost: e.RolloutResponded(rollout_id=r, attempt=1, text="x", cost_usd=cost), R, COST),
    st.builds(
        lambda r, final: e.RolloutFailed(
            rollout_id=r, attempt=1, kind="http", status=500, retryable=not final, message="m", final=final
        ),
        R,
        st.booleans(),
    ),
    st.builds(
        lambda r, passed: e.RolloutScored(rollout_id=r, passed=passed, score=float(passed), scorer="exact"),
        R,
        st.booleans(),
    ),
    st.builds(
        lambda r, passed, h: e.RolloutRescored(
            rollout_id=r,
            problem_id="p1",
            passed=passed,
            score=float(passed),
            scorer="exact",
            problem_hash=h,
            scorer_version="2",
            rescore_id="rs",
        ),
        R,
        st.booleans(),
        HASH,
    ),
    st.builds(
        lambda r, audience, nb: e.PublicationDecided(
            rollout_id=r, audience=audience, not_before=nb, embargo_s=60.0
        ),
        R,
        st.sampled_from(["public", "subscribers"]),
        NOT_BEFORE,
    ),
    st.builds(lambda r: e.PublicReleased(rollout_id=r), R),
    st.builds(
        lambda name: e.SubscriberAdded(name=name, key_hash="h", key_prefix="rw_x", scopes=["feed"]),
        st.sampled_from(["a", "b"]),
    ),
    st.builds(lambda name: e.SubscriberRevoked(name=name, note="gone"), st.sampled_from(["a", "b"])),
)


def _recorded(events: list[e.Event]) -> list[Recorded]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Recorded(
            seq=i + 1,
            id=f"ev-{i}",
            stream="s",
            version=i,
            type=ev.TYPE,
            schema=ev.SCHEMA,
            at=rfc3339(t0 + timedelta(seconds=i, microseconds=i * 137)),
            data_json=canonical_json(ev.to_data()),
            hash=f"h{i}",
        )
        for i, ev in enumerate(events)
    ]


def _rows(recs: list[Recorded], cuts: list[int] | None) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows after ``recs``: one ``apply`` per event (``cuts`` None), else
    ``apply_batch`` per slice between the ``cuts``; one transaction per call, as a catch-up."""
    projections = publication_projections()
    db = sqlite3.connect(":memory:", isolation_level=None)
    for p in projections:
        db.executescript(p.ddl)
    if cuts is None:
        for rec in recs:
            for p in projections:
                if rec.type in p.types:
                    db.execute("BEGIN")
                    p.apply(db, rec)
                    db.execute("COMMIT")
    else:
        bounds = [0, *sorted(cuts), len(recs)]
        for lo, hi in itertools.pairwise(bounds):
            db.execute("BEGIN")
            for p in projections:
                mine = [r for r in recs[lo:hi] if r.type in p.types]
                if mine:
                    p.apply_batch(db, mine)
            db.execute("COMMIT")
    out = {}
    for p in projections:
        for table in p.tables:
            out[table] = sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENT, max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_batches_hold_the_rows_of_one_event_at_a_time(events: list[e.Event], cuts: list[int]) -> None:
    recs = _recorded(events)
    one = _rows(recs, None)
    assert _rows(recs, [c for c in cuts if c <= len(recs)]) == one
    assert _rows(recs, []) == one  # the whole sequence as one batch


def test_null_binds_as_null() -> None:
    """What the rows in memory rely on: SQLite stores a NaN (``NULL``) as NULL, never a number."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a REAL, b TEXT, c INTEGER)")
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (NULL, "x", 0))
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (NULL, NULL, NULL))
    assert db.execute("SELECT a, typeof(a), b, c, typeof(b), typeof(c) FROM t").fetchall() == [
        (None, "null", "x", 0, "text", "integer"),
        (None, "null", None, None, "null", "null"),
    ]
