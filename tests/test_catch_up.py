"""The projections' catch-up: one pass over a real log, and what a failing read leaves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from rollwatch.errors import StoreError
from rollwatch.events import PublicReleased, Recorded, rollout_stream
from rollwatch.projections import ProjectionDB
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
    ) -> AsyncIterator[list[Recorded]]:
        n = 0
        async for page in super().read_batches(
            after=after, stream=stream, types=types, until=until, batch=batch
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
