"""One SQLite connection used from async code, one thread hop per unit of work.

aiosqlite hops to its thread once per statement; a group commit or a page of reads
is several statements, so we hand the whole unit (a plain function over a
``sqlite3.Connection``) to ``anyio.to_thread`` instead. The lock keeps units on one
connection strictly one at a time, as sqlite3 connections require.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.from_thread

T = TypeVar("T")

# Python's sqlite3 binds ``None`` through its adapter protocol (it binds only ints,
# floats and strings directly): it builds a key, misses the adapters' table and looks
# for ``__adapt__`` and ``__conform__``, about 2 us per NULL. A registered adapter is
# found at the first step: half the time. It returns its argument (``{}.get(None)``
# is None, a call that stays in C), so what is bound is NULL as before. Rows of 20
# columns, many NULL, are what a rebuild writes by the hundred thousand.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))


def rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any: SQLite rolls back by itself on some errors
    (a full disk, I/O), and a ROLLBACK then fails and hides the error that mattered."""
    if db.in_transaction:
        db.execute("ROLLBACK")


_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB: the file's pages are not a database's


def is_damaged(e: BaseException) -> bool:
    """Whether ``e`` says the database file itself is damaged (a torn copy, a bad disk),
    not that a statement failed or a lock was busy."""
    return isinstance(e, sqlite3.DatabaseError) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _DAMAGED


class ThreadConnection:
    """A ``sqlite3.Connection`` whose work runs in a worker thread, one unit at a time."""

    def __init__(
        self, db: sqlite3.Connection, damaged: Callable[[sqlite3.DatabaseError], Exception] | None = None
    ) -> None:
        self.db = db
        self.damaged = damaged
        """What to raise instead of SQLite's error when the file is damaged (naming the file
        and what to do); None: SQLite's error as it is."""
        self._lock = anyio.Lock()
        # Held by the worker thread for the whole unit. The async lock is not enough on its
        # own: Ctrl-C under asyncio.run cancels the main task natively, through the
        # shield, so a unit may still run when ``close`` comes (closing under it crashed
        # the process with a segmentation fault in the middle of a rebuild).
        self._busy = threading.Lock()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # another anyio backend
            self._loop = None

    @classmethod
    async def open(
        cls,
        path: Path,
        pragmas: Sequence[str],
        damaged: Callable[[sqlite3.DatabaseError], Exception] | None = None,
        *,
        uri: str | None = None,
    ) -> ThreadConnection:
        """Open ``path`` (or the SQLite ``uri``, e.g. ``file:…?immutable=1``) in autocommit mode
        (we write BEGIN/COMMIT) and apply ``pragmas``."""

        def connect() -> sqlite3.Connection:
            db = (
                sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                if uri is not None
                else sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            )
            for p in pragmas:
                db.execute(p)
            return db

        return cls(await anyio.to_thread.run_sync(connect), damaged)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in a worker thread."""
        async with self._lock:
            # The thread finishes its unit even if we are cancelled; shielding keeps the
            # lock held until it has, so the next unit never overlaps it.
            with anyio.CancelScope(shield=True):
                try:
                    return await anyio.to_thread.run_sync(self._unit, fn, *args)
                except sqlite3.DatabaseError as e:
                    if self.damaged is not None and is_damaged(e):
                        raise self.damaged(e) from e
                    raise
        raise AssertionError("unreachable: a shielded scope swallows no exception")

    def _unit(self, fn: Callable[..., T], *args: Any) -> T:
        with self._busy:
            return fn(self.db, *args)

    def _close_when_idle(self) -> None:
        with self._busy:
            self.db.close()

    def call_soon(self, fn: Callable[[], object]) -> None:
        """From inside a unit: have the event loop call ``fn``, without waiting for it.

        ``anyio.from_thread.run_sync`` waits for the call, and then for the GIL, which
        the loop's thread holds if ``fn`` gave it work: on asyncio, ask the loop directly.
        """
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)
        else:
            anyio.from_thread.run_sync(fn)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return every row."""
        return await self.run(lambda db: db.execute(sql, params).fetchall())

    async def close(self) -> None:
        """Close the connection once no unit is running."""
        async with self._lock:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_when_idle)
