"""A revocation left out of the subscribers' index, its definition intact (helper-64).

The keys are read through an index of the subscriber events alone (not every row of the
log, which took a minute at start on a big log). Someone holding the SQLite file can build
that index without the revocation and give it our definition's text (``writable_schema``):
no row, no hash, no leaf changes, and read through it the revoked key works again. The
scrub reads every row: it compares the subscriber events it finds (seq and hash) with those
the keys were read from, and on a difference names the seq and closes every key (503).
Until the first scrub, the index's answer is used (the README's threat model says so).
Real SQLite files, the real scrub (its worker process), a real daemon for the restart.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from rollwatch.errors import IntegrityError, ServiceUnavailable
from rollwatch.integrity.scrub import ScrubTarget, scrub_pass
from rollwatch.integrity.tree import MerkleTree
from rollwatch.publication.keys import SubscriberDirectory
from rollwatch.store.sqlite import SUBSCRIBER_INDEX_SQL, SQLiteEventStore
from tests.integrity.conftest import append_n
from tests.integrity.served import _poll, _stop, serving
from tests.integrity.test_early_release import _site
from tests.pg import ScratchPostgresStore
from tests.publication.helpers import add_subscriber, revoke

pytestmark = pytest.mark.anyio


def leave_out_of_index(db: Path, seq: int) -> None:
    """The subscribers' index built again without the event at ``seq``, and its definition's
    text set back to ours, as someone holding the file can (the table is untouched)."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("DROP INDEX events_subscribers")
        con.execute(f"{SUBSCRIBER_INDEX_SQL} AND seq != {seq}")
        (version,) = con.execute("PRAGMA schema_version").fetchone()
        con.execute("PRAGMA writable_schema = ON")
        con.execute(
            "UPDATE sqlite_master SET sql = ? WHERE name = 'events_subscribers'", (SUBSCRIBER_INDEX_SQL,)
        )
        con.execute(f"PRAGMA schema_version = {version + 1}")
        con.execute("COMMIT")
    finally:
        con.close()


async def test_a_revocation_left_out_of_the_index_is_found_by_the_scrub(tmp_path: Path) -> None:
    """Read through the edited index the revoked key works (the window until the scrub); the
    scrub's pass then names the revocation's seq and every key gets 503 from then on. Without
    the comparison the revoked key kept working (SQLite's own index check names the index,
    but nothing closed the keys)."""
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store, MerkleTree(tmp_path / "merkle.db") as tree:
        await append_n(store, 300, per_call=100)
        good = await add_subscriber(store, "good")
        gone = await add_subscriber(store, "gone")
        await store.build_subscriber_index()
        d = SubscriberDirectory(store, max_age=0)
        assert (await d.authenticate(gone)).subscriber is not None
        seq = await revoke(store, "gone")
        await append_n(store, 30, per_call=10, tag="after")
        await anyio.to_thread.run_sync(leave_out_of_index, db, seq)
        # The window: read through the index, the revocation is not there.
        assert (await d.authenticate(gone)).subscriber is not None
        await tree.catch_up(store)  # type: ignore[arg-type]
        target = ScrubTarget(f"sqlite:{db}", tree.path, None, None)
        with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
            await scrub_pass(target, d.check_seen)
    assert found.value.seq == seq, found.value
    assert d.closed is not None
    assert f"seq {seq}" in d.closed
    for key in (gone, good):
        with pytest.raises(ServiceUnavailable):
            await d.authenticate(key)


async def test_an_untouched_index_passes_the_scrub(tmp_path: Path) -> None:
    """The comparison finds nothing in an honest log (keys added and revoked around the pass)."""
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store, MerkleTree(tmp_path / "merkle.db") as tree:
        await append_n(store, 100, per_call=50)
        good = await add_subscriber(store, "good")
        await store.build_subscriber_index()
        await add_subscriber(store, "gone")
        await revoke(store, "gone")
        d = SubscriberDirectory(store, max_age=0)
        assert (await d.authenticate(good)).subscriber is not None
        await tree.catch_up(store)  # type: ignore[arg-type]
        with anyio.fail_after(60):
            events, _ = await scrub_pass(ScrubTarget(f"sqlite:{db}", tree.path, None, None), d.check_seen)
        assert events == await store.head()
        assert d.closed is None
        assert (await d.authenticate(good)).subscriber is not None


def test_a_restart_on_an_index_without_the_revocation_refuses(tmp_path: Path) -> None:
    """The daemon stopped, a revocation left out of the index, the daemon started again: the
    scrub at start names the revocation's seq and the daemon refuses to start."""
    s, _, _ = _site(tmp_path)

    async def prepare() -> int:
        async with SQLiteEventStore(s.db) as store:
            await add_subscriber(store, "gone")
            await store.build_subscriber_index()
            return await revoke(store, "gone")

    seq = anyio.run(prepare)
    with serving(s):  # the first start: the log as appended passes, and is signed
        pass
    leave_out_of_index(s.db, seq)
    proc = s.serve()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 1, err[-2000:]
    assert f"seq {seq}" in err, err[-2000:]


async def test_postgres_a_revocation_left_out_of_the_index_is_found_by_the_scrub(tmp_path: Path) -> None:
    """PostgreSQL: the index's file swapped for one built without the revocation (a superuser
    points ``pg_class.relfilenode`` at it; the index's definition stays ours): the revoked
    key works through it until the scrub's pass names the seq and closes every key."""
    async with ScratchPostgresStore() as store, MerkleTree(tmp_path / "merkle.db") as tree:
        await append_n(store, 300, per_call=100)  # type: ignore[arg-type]
        good = await add_subscriber(store, "good")
        gone = await add_subscriber(store, "gone")
        await store.build_subscriber_index()
        d = SubscriberDirectory(store, max_age=0)
        assert (await d.authenticate(gone)).subscriber is not None
        seq = await revoke(store, "gone")
        await append_n(store, 30, per_call=10, tag="after")  # type: ignore[arg-type]

        async def swap(conn: Any) -> None:
            await conn.execute(
                "CREATE INDEX shadow ON events (seq)"
                f" WHERE type IN ('SubscriberAdded', 'SubscriberRevoked') AND seq <> {seq}"
            )
            await conn.execute(
                "UPDATE pg_class SET relfilenode = (SELECT relfilenode FROM pg_class WHERE relname = 'shadow')"
                " WHERE relname = 'events_subscribers'"
            )

        await store._with_conn(swap)
        assert (await d.authenticate(gone)).subscriber is not None  # the window
        await tree.catch_up(store)  # type: ignore[arg-type]
        target = ScrubTarget(store.url, tree.path, None, None)
        with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
            await scrub_pass(target, d.check_seen)
    assert found.value.seq == seq, found.value
    for key in (gone, good):
        with pytest.raises(ServiceUnavailable):
            await d.authenticate(key)


def test_a_log_from_before_the_index_gets_it_after_start(tmp_path: Path) -> None:
    """A log written without the index (as every log before it): the daemon serves, reads the
    keys from every row, then builds the index once, after it answers ``/healthz``."""
    s, _, _ = _site(tmp_path)

    def index() -> list[tuple[str]]:
        con = sqlite3.connect(s.db)
        try:
            return con.execute("SELECT sql FROM sqlite_master WHERE name = 'events_subscribers'").fetchall()
        finally:
            con.close()

    assert index() == []
    with serving(s):
        assert httpx.get(s.url + "/healthz", timeout=10).status_code == 200
        _poll(lambda: index() == [(SUBSCRIBER_INDEX_SQL,)], 30, "the subscribers' index")
