"""The subscribers' keys read through an index of their events alone (helper-64).

At start the daemon read every event of the log for the few subscriber events: a minute at
13 million events, every keyed request a 503 meanwhile. The stores now keep an index of
``SubscriberAdded`` and ``SubscriberRevoked`` events and read through it, only when its
definition is exactly theirs: redefined (a revocation left out by its condition), it is
refused and named, and the keys are read from every row. What an index leaves out with its
definition intact is the scrub's to find (tests/integrity/test_subscriber_index_tamper.py).
Real SQLite files, real PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import structlog

from rollwatch.abc import EventStore
from rollwatch.publication.keys import SubscriberDirectory
from rollwatch.store.sqlite import SUBSCRIBER_INDEX_SQL, SQLiteEventStore
from tests.integrity.conftest import append_n
from tests.pg import ScratchPostgresStore
from tests.publication.helpers import add_subscriber, revoke

pytestmark = pytest.mark.anyio

EVENTS = 20_000


async def _fill(store: EventStore) -> tuple[str, str, int]:
    """A log of EVENTS events around two subscribers, one of them revoked: (good key, revoked key, its revocation's seq)."""
    await append_n(store, EVENTS // 2, per_call=1000, tag="a")  # type: ignore[arg-type]
    good = await add_subscriber(store, "good")
    gone = await add_subscriber(store, "gone")
    await append_n(store, EVENTS // 2, per_call=1000, tag="b")  # type: ignore[arg-type]
    seq = await revoke(store, "gone")
    await append_n(store, 100, per_call=100, tag="c")  # type: ignore[arg-type]
    return good, gone, seq


async def _verdicts(store: EventStore, good: str, gone: str) -> tuple[str, str]:
    d = SubscriberDirectory(store)
    await d.refresh(force=True)
    ok, refused = await d.authenticate(good), await d.authenticate(gone)
    return (ok.subscriber.name if ok.subscriber else ok.reason), refused.reason


async def test_the_keys_at_start_read_the_index_not_the_log(tmp_path: Path) -> None:
    """SQLite: the first read of the keys steps through a few index entries, not 20,000 rows
    (counted in SQLite's virtual machine instructions, through a progress handler on the
    store's reading connection). Before, it stepped through every row."""
    async with SQLiteEventStore(tmp_path / "e.db") as store:
        good, gone, _ = await _fill(store)
        await store.build_subscriber_index()
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        await store._conn(reader=True).run(lambda db: db.set_progress_handler(count, 100))
        d = SubscriberDirectory(store)
        await d.refresh(force=True)
        await store._conn(reader=True).run(lambda db: db.set_progress_handler(None, 100))
        # A scan: at least a few instructions per row, 20,000 rows (over 1,000 calls here).
        assert steps < 50, steps
        assert sorted(d._by_name) == ["gone", "good"]
        assert (await d.authenticate(gone)).reason == "this API key has been revoked"
        assert (await d.authenticate(good)).subscriber is not None


async def test_a_log_without_the_index_is_read_whole_then_gets_it(tmp_path: Path) -> None:
    """A log written before the index (none in its schema) gives the same keys, read from
    every row; building the index then makes exactly our definition."""
    async with SQLiteEventStore(tmp_path / "e.db") as store:
        good, gone, _ = await _fill(store)
        assert await _verdicts(store, good, gone) == ("good", "this API key has been revoked")
        await store.build_subscriber_index()
        con = sqlite3.connect(tmp_path / "e.db")
        try:
            (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'events_subscribers'").fetchone()
        finally:
            con.close()
        assert sql == SUBSCRIBER_INDEX_SQL
        assert await _verdicts(store, good, gone) == ("good", "this API key has been revoked")


async def test_a_redefined_index_is_refused_and_named(tmp_path: Path) -> None:
    """SQLite: the index dropped and made again with ``AND seq != N`` (N the revocation), as
    someone holding the file can: every entry it holds is consistent with its definition
    (SQLite's own check passes), and read through it the revoked key worked again. Its
    definition is not ours: it is refused (named in an ERROR), the keys read from the rows."""
    db = tmp_path / "e.db"
    async with SQLiteEventStore(db) as store:
        good, gone, seq = await _fill(store)
        await store.build_subscriber_index()
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("DROP INDEX events_subscribers")
        con.execute(f"{SUBSCRIBER_INDEX_SQL} AND seq != {seq}")
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
    async with SQLiteEventStore(db) as store:
        with structlog.testing.capture_logs() as logs:
            assert await _verdicts(store, good, gone) == ("good", "this API key has been revoked")
    refused = [e for e in logs if e["event"] == "subscriber_index_refused"]
    assert refused, logs
    assert f"seq != {seq}" in str(refused[0]["found"]), logs
    assert refused[0]["log_level"] == "error"


async def test_postgres_reads_the_index_and_refuses_a_redefined_one() -> None:
    """PostgreSQL: the read of the keys is an index scan of ``events_subscribers`` (its plan),
    not a scan of the table; the index dropped and made again leaving the revocation out is
    refused, named, and the keys read from the rows."""
    async with ScratchPostgresStore() as store:
        good, gone, seq = await _fill(store)
        await store.build_subscriber_index()
        from rollwatch.store.postgres import _SUBSCRIBER_READ

        async def plan(conn: object) -> str:
            await conn.execute("ANALYZE events")  # type: ignore[attr-defined]
            rows = await conn.fetch("EXPLAIN " + _SUBSCRIBER_READ, 0, 10**9)  # type: ignore[attr-defined]
            return "\n".join(r[0] for r in rows)

        shown = await store._with_conn(plan)
        assert "events_subscribers" in shown, shown
        assert "Seq Scan" not in shown, shown
        assert await _verdicts(store, good, gone) == ("good", "this API key has been revoked")

        async def redefine(conn: object) -> None:
            await conn.execute("DROP INDEX events_subscribers")  # type: ignore[attr-defined]
            await conn.execute(  # type: ignore[attr-defined]
                "CREATE INDEX events_subscribers ON events (seq)"
                f" WHERE type IN ('SubscriberAdded', 'SubscriberRevoked') AND seq <> {seq}"
            )

        await store._with_conn(redefine)
        with structlog.testing.capture_logs() as logs:
            assert await _verdicts(store, good, gone) == ("good", "this API key has been revoked")
        refused = [e for e in logs if e["event"] == "subscriber_index_refused"]
        assert refused, logs
        assert f"{seq}" in str(refused[0]["found"]), logs


async def test_postgres_makes_an_invalid_index_again() -> None:
    """PostgreSQL: a ``CREATE INDEX CONCURRENTLY`` cut short leaves the index INVALID (here
    marked so by hand): it is refused, named, and made again at the next build."""
    async with ScratchPostgresStore() as store:
        good, gone, _ = await _fill(store)
        await store.build_subscriber_index()

        async def invalidate(conn: object) -> None:
            await conn.execute(  # type: ignore[attr-defined]
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'events_subscribers'::regclass"
            )

        async def valid(conn: object) -> bool:
            return bool(
                await conn.fetchval(  # type: ignore[attr-defined]
                    "SELECT indisvalid FROM pg_index WHERE indexrelid = 'events_subscribers'::regclass"
                )
            )

        await store._with_conn(invalidate)
        with structlog.testing.capture_logs() as logs:
            assert await _verdicts(store, good, gone) == ("good", "this API key has been revoked")
        assert any(e["event"] == "subscriber_index_refused" and "INVALID" in e["found"] for e in logs), logs
        await store.build_subscriber_index()
        assert await store._with_conn(valid)
