"""Shared fixtures: the anyio backend, and an event store per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rollwatch.abc import EventStore
from rollwatch.store.sqlite import SQLiteEventStore
from tests.pg import ScratchPostgresStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _sqlite(tmp_path: Path) -> EventStore:
    return SQLiteEventStore(tmp_path / "events.db")


def _postgres(tmp_path: Path) -> EventStore:
    return ScratchPostgresStore()


STORE_FACTORIES = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(STORE_FACTORIES), ids=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """An open, empty event store of each backend."""
    async with STORE_FACTORIES[request.param](tmp_path) as s:
        yield s
