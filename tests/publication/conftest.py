"""Fixtures of the publication tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rollwatch.projections import ProjectionDB
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import all_projections, start_run
from tests.publication.test_releases import Log


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[Log]:
    """A log with one run started and its read models, for exports (``Log`` adds results)."""
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
    ):
        lg = Log(store, pdb)
        await start_run(store, lg.run_id)
        yield lg
