"""The projections' catch-up: one pass over a real log, and what a failing read leaves."""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import pytest

from rollwatch.errors import StoreError
from rollwatch.events import PublicReleased, Recorded, rollout_stream
from rollwatch.projections import Projection, ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio


class DroppingStore(SQLiteEventStore):
    """A real SQLite log whose connection drops after ``pages`` pages of a read (as a
    PostgreSQL connection does when the server goes away)."""

    pages = 2

    async def read_batches(  # type: ignore[override]  # same parameters, an async generator
        self,
        *,
        after: int = 0,
        stream: str | None = None,
        types: Collection[str] | None = None,
        until: int | None = None,
        batch: int = 1000,
        lean: bool = False,
    ) -> AsyncIterator[list[Recorded]]:
        n = 0
        async for page in super().read_batches(
            after=after, stream=stream, types=types, until=until, batch=batch, lean=lean
        ):
            if n == self.pages:
                raise StoreError("connection to the database lost")
            n += 1
            yield page


async def test_a_read_that_fails_raises_its_store_error_and_marks_nothing_applied_it_did_not_apply(
    tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store:
        for i in range(30):
            await store.append(
                rollout_stream(f"r{i}"), [PublicReleased(rollout_id=f"r{i}") for _ in range(500)]
            )
        head = await store.head()
    async with (
        DroppingStore(db) as dropping,
        ProjectionDB(tmp_path / "p.db", default_projections()) as pdb,
    ):
        # The StoreError itself, as callers (the log follower, runs) catch it: not an ExceptionGroup.
        with pytest.raises(StoreError, match="connection to the database lost"):
            await pdb.catch_up(dropping)
        cps = await pdb.checkpoints()
        assert max(cps.values()) < head
        assert pdb.applied == 0
    async with SQLiteEventStore(db) as store, ProjectionDB(tmp_path / "p.db", default_projections()) as pdb:
        assert await pdb.catch_up(store) == head
        assert set((await pdb.checkpoints()).values()) == {head}
        rows = await pdb.fetchone("SELECT count(*) FROM report_releases")
        assert rows is not None
        assert rows[0] == 30  # each rollout released once, its first release kept


class GcWatcher(Projection):
    """Records, for each batch it is handed, its size and whether the collector ran."""

    name = "gc_watcher"
    types = frozenset({"PublicReleased"})

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool]] = []

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        self.seen.append((len(recs), gc.isenabled()))


@pytest.mark.parametrize("enabled", [True, False])
async def test_large_batches_pause_the_collector_and_leave_it_as_it_was(
    tmp_path: Path, enabled: bool
) -> None:
    """A batch of thousands is applied without cyclic collection (it would walk the batch's
    young objects again and again); a batch of a few is not; afterwards the collector is as
    it was before (left disabled if someone disabled it)."""
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await store.append(rollout_stream("r"), [PublicReleased(rollout_id="r") for _ in range(3000)])
        watcher = GcWatcher()
        async with ProjectionDB(tmp_path / "p.db", [watcher]) as pdb:
            was = gc.isenabled()
            (gc.enable if enabled else gc.disable)()
            try:
                await pdb.catch_up(store)
                await store.append(rollout_stream("r"), [PublicReleased(rollout_id="r")])
                await pdb.catch_up(store)
                assert gc.isenabled() is enabled
            finally:
                (gc.enable if was else gc.disable)()
        assert watcher.seen[0] == (3000, False)
        assert watcher.seen[-1] == (1, enabled)


class GcSeeingStore(SQLiteEventStore):
    """A real SQLite store that notes, as each page of a read is asked for, whether the
    cyclic collector is enabled."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[bool] = []

    async def read_batches(self, **kw: object) -> AsyncIterator[list[Recorded]]:  # type: ignore[override]
        pages = super().read_batches(**kw)  # type: ignore[arg-type]
        try:
            while True:
                self.reads.append(gc.isenabled())
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    return
                yield page
        finally:
            await pages.aclose()


async def test_a_build_beside_reads_its_batches_with_the_collector_paused(tmp_path: Path) -> None:
    """A build beside holds thousands of rows read from the log until their batch is applied:
    the collector is paused from a batch's first page until it is applied (it runs between
    batches), and is enabled again once the build is done."""
    async with GcSeeingStore(tmp_path / "events.db") as store:
        await store.append(rollout_stream("r"), [PublicReleased(rollout_id="r") for _ in range(12_000)])
        watcher = GcWatcher()
        assert gc.isenabled()
        async with ProjectionDB(tmp_path / "p.db", [watcher], setup=False, split_from=None) as pdb:
            await pdb.rebuild_beside(store)
        assert gc.isenabled()
    # Pages of 2,000: each batch's first page is read with the collector running, the
    # next pages of that batch with it paused.
    assert False in store.reads
    assert True in store.reads
    assert all(not enabled for _, enabled in watcher.seen)
