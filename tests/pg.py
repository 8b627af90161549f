"""A scratch PostgreSQL database per test, for the PostgreSQL event store's tests.

The server is ``$ROLLWATCH_TEST_PG`` (default: the local one, trust auth, database
``test``); each test gets ``CREATE DATABASE rw_<random>``, dropped afterwards. When
the server cannot be reached the test is skipped, saying so (``make test`` starts it),
except on CI (``$CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from rollwatch.store.postgres import PostgresEventStore

ADMIN_URL = os.environ.get("ROLLWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """The URL of a new, empty database; it is dropped (with its sessions) on exit."""
    import asyncpg

    try:
        admin = await asyncpg.connect(ADMIN_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        reason = f"PostgreSQL at {ADMIN_URL} is unreachable ({e}); start it with `make services`"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI runs the server: a skip there would hide a broken setup
        pytest.skip(reason)
    name = f"rw_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(ADMIN_URL, name)
        finally:
            # FORCE: a killed child process may have left a session behind.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class ScratchPostgresStore(PostgresEventStore):
    """A PostgreSQL event store in its own scratch database, dropped when it closes."""

    def __init__(self) -> None:
        super().__init__("postgresql://unset/")

    async def _open(self, stack: AsyncExitStack) -> None:
        # Registered first, so the database is dropped after the store has closed.
        self.url = await stack.enter_async_context(scratch_database())
        await super()._open(stack)
