"""Group commit, shared by every store backend.

``append`` hands its events to one writer task and waits. The writer lets every task
that is ready to append queue first, then passes the whole group to the backend's
``commit`` (one transaction, one fsync or WAL flush for all of them). The backend sets
each call's ``result`` or ``error``: a call whose expected version no longer holds gets
``ConcurrencyConflict`` and contributes nothing, the others commit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from rollwatch.errors import StoreError
from rollwatch.events import Event, Recorded, canonical_json

MAX_GROUP_CALLS = 10_000


@dataclass(slots=True)
class Pending:
    """One append call waiting for the writer."""

    stream: str
    expected: int | None
    rows: list[tuple[str, str, int, str, str]]  # id, type, schema, at, data_json
    result: list[Recorded] | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Group:
    """The calls that will share the next commit, and the event that ends their wait."""

    calls: list[Pending] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)


class GroupCommitter:
    """The queue between ``append`` callers and a backend's ``commit(group)``."""

    def __init__(
        self,
        commit: Callable[[list[Pending]], Awaitable[None]],
        observer: Callable[[], Callable[[float], None] | None],
    ) -> None:
        self._commit = commit
        self._observer = observer
        self.open = False
        self._queue = _Group()
        self._wake = anyio.Event()

    async def append(self, stream: str, events: Sequence[Event], expected: int | None) -> list[Recorded]:
        """Queue one call's events, wait for their commit, return them as recorded."""
        if not self.open:
            raise StoreError("the event store is not open (use it with `async with`)")
        now = datetime.now(UTC)
        at = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"
        rows = [(str(uuid.uuid4()), e.TYPE, e.SCHEMA, at, canonical_json(e.to_data())) for e in events]
        pending = Pending(stream, expected, rows)
        t0 = time.perf_counter()
        group = self._queue
        group.calls.append(pending)
        self._wake.set()
        # Once queued, the append completes even if this task is cancelled: shield the
        # wait so a cancelled caller never mistakes a committed event for a lost one.
        with anyio.CancelScope(shield=True):
            await group.done.wait()
        observe = self._observer()
        if observe is not None:
            observe(time.perf_counter() - t0)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer loop (open once started); returns once closed and drained."""
        self.open = True
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            group = self._queue
            if not group.calls:
                if not self.open:
                    return
                continue
            # Let every task that is ready to append run first, so that one commit
            # carries all of them: stop when a pass adds nothing.
            n = -1
            while n != len(group.calls) and len(group.calls) < MAX_GROUP_CALLS:
                n = len(group.calls)
                await anyio.lowlevel.checkpoint()
            self._queue = _Group()
            with anyio.CancelScope(shield=True):
                try:
                    await self._commit(group.calls)
                finally:
                    group.done.set()
            if self._queue.calls:
                self._wake.set()

    def close(self) -> None:
        """Refuse new appends; the writer commits what is queued, then returns."""
        self.open = False
        self._wake.set()
