"""Group commit, shared by every store backend.

``append`` hands its events to one writer task and waits. The writer lets every task
that is ready to append queue first, then passes the whole group to the backend's
``commit`` (one transaction, one fsync or WAL flush for all of them). The backend sets
each call's ``result`` or ``error``: a call whose expected version no longer holds gets
``ConcurrencyConflict`` and contributes nothing, the others commit.

Under load, when a full group is already queued as a commit ends, the writer passes it
to the backend at once and wakes the callers of the commit that just ended only when
the backend calls ``wake_previous``: SQLite does so once the new group is written and
its COMMIT (SQLite's own work and the fsync, without the GIL) starts. Those callers
then encode their next events, which needs the GIL, while the writer's thread does not,
instead of delaying the next group or fighting the writer's thread for the GIL (on two
cores, each hand-over of the GIL to a thread that wants it back can take a switch
interval, 5 ms). Every append is still durable when it returns.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from rollwatch.errors import ConcurrencyConflict, StoreError
from rollwatch.events import Event, Recorded, json_str, stored_json

MAX_GROUP_CALLS = 10_000
# A group closes at this many events even with more calls waiting: the callers of the
# committed group then encode their next events while the next group commits, so
# encoding and committing overlap on two cores.
MAX_GROUP_EVENTS = 2_000


def _uuid4s(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as strings, from one read of the OS's entropy."""
    raw = bytearray(os.urandom(16 * n))
    out = []
    for i in range(0, 16 * n, 16):
        raw[i + 6] = raw[i + 6] & 0x0F | 0x40
        raw[i + 8] = raw[i + 8] & 0x3F | 0x80
        h = raw[i : i + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


@dataclass(slots=True)
class Pending:
    """One append call waiting for the writer."""

    stream: str
    expected: int | None
    at: str
    rows: list[tuple[str, str, int, str]]  # id, type, schema, data_json
    result: list[Recorded] | None = None
    error: BaseException | None = None
    fence: object | None = None
    """The leadership the call was made under (``abc.LEADERSHIP``); the backend refuses
    the call if it has been lost."""
    done: anyio.Event = field(default_factory=anyio.Event)


class GroupCommitter:
    """The queue between ``append`` callers and a backend's ``commit(group)``."""

    def __init__(
        self,
        commit: Callable[[list[Pending], Callable[[], None]], Awaitable[None]],
        observer: Callable[[], Callable[[float], None] | None],
    ) -> None:
        self._commit = commit
        self._observer = observer
        self.open = False
        self._queue: list[Pending] = []
        self._queued_events = 0  # rows in self._queue
        self._wake = anyio.Event()

    async def append(
        self, stream: str, events: Sequence[Event], expected: int | None, fence: object | None = None
    ) -> list[Recorded]:
        """Queue one call's events, wait for their commit, return them as recorded."""
        if not self.open:
            raise StoreError("the event store is not open (use it with `async with`)")
        now = datetime.now(UTC)
        at = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"
        encode = stored_json
        rows = [
            (i, e.TYPE, e.SCHEMA, encode(e.to_data()))
            for i, e in zip(_uuid4s(len(events)), events, strict=True)
        ]
        pending = Pending(stream, expected, at, rows, fence=fence)
        t0 = time.perf_counter()
        self._queue.append(pending)
        self._queued_events += len(rows)
        self._wake.set()
        # Once queued, the append completes even if this task is cancelled: shield the
        # wait so a cancelled caller never mistakes a committed event for a lost one.
        with anyio.CancelScope(shield=True):
            await pending.done.wait()
        observe = self._observer()
        if observe is not None:
            observe(time.perf_counter() - t0)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _full(self) -> bool:
        return self._queued_events >= MAX_GROUP_EVENTS or len(self._queue) >= MAX_GROUP_CALLS

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer loop (open once started); returns once closed and drained."""
        self.open = True
        task_status.started()
        # The calls of the last commit whose callers are not woken yet: with a full group
        # queued, the backend wakes them while committing that group (see the module's
        # docstring); otherwise, or if it does not, they are woken here.
        held: list[Pending] = []
        try:
            while True:
                if not self._full():
                    _wake(held)
                    held = []
                    # Calls left over from the last group are not waited for: they queued
                    # (and set the wake) before it was cut, and with nobody appending after
                    # them, waiting for a wake stranded them for good (a burst of 2,001
                    # appends: the last never returned).
                    if not self._queue:
                        if not self.open:
                            return
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    if not self._queue:
                        if not self.open:
                            return
                        continue
                    # Let every task that is ready to append run first, so that one
                    # commit carries all of them: stop when a pass adds nothing.
                    n = -1
                    while n != len(self._queue) and not self._full():
                        n = len(self._queue)
                        await anyio.lowlevel.checkpoint()
                # Close the group at MAX_GROUP_EVENTS; later calls go with the next commit.
                events = 0
                cut = len(self._queue)
                for i, call in enumerate(self._queue):
                    events += len(call.rows)
                    if events >= MAX_GROUP_EVENTS:
                        cut = i + 1
                        break
                group, self._queue = self._queue[:cut], self._queue[cut:]
                self._queued_events -= events
                previous = held
                with anyio.CancelScope(shield=True):
                    try:
                        await self._commit(group, partial(_wake, previous))
                    finally:
                        _wake(previous)
                held = group
        finally:
            _wake(held)

    def close(self) -> None:
        """Refuse new appends; the writer commits what is queued, then returns."""
        self.open = False
        self._wake.set()


def _wake(calls: list[Pending]) -> None:
    for call in calls:
        call.done.set()


def assign(
    group: Iterable[Pending], seq: int, prev: bytes, versions: dict[str, int], out: list[Recorded]
) -> tuple[int, bytes]:
    """Check each call's expected version and give its events seq, version and hash.

    Fills ``out`` and each call's ``result`` (or ``error``); returns the new tip.
    """
    # The hot loop of a commit, run with the write lock held: per event it builds the
    # canonical bytes (the same bytes as rollwatch.events.canonical_bytes, pinned by
    # tests/test_store_contract.py), hashes them and makes the Recorded row. The parts
    # that do not change within a call (at, stream, type) are escaped once per call, and
    # the id needs no escaping: it is one of the UUIDs ``append`` made (hex and dashes).
    sha256 = hashlib.sha256
    for p in group:
        if p.error is not None:
            continue  # refused before (a lost leadership)
        stream = p.stream
        current = versions[stream]
        if p.expected is not None and p.expected != current:
            p.error = ConcurrencyConflict(stream, p.expected, current)
            continue
        at = p.at
        head = f'{{"at":{json_str(at)},"data":'
        stream_part = f',"stream":{json_str(stream)},"type":'
        typ_now: str | None = None
        tail = ""
        first = len(out)
        for version, (eid, typ, schema, data) in enumerate(p.rows, start=current + 1):
            if typ is not typ_now:
                typ_now, tail = typ, f"{stream_part}{json_str(typ)}}}"
            seq += 1
            canonical = f'{head}{data},"id":"{eid}","schema":{schema},"seq":{seq}{tail}'.encode()
            prev = sha256(prev + canonical).digest()  # chain_hash, inlined
            out.append(
                tuple.__new__(Recorded, (seq, eid, stream, version, typ, schema, at, data, prev.hex()))
            )
        versions[stream] = current + len(p.rows)
        p.result = out[first:]
    return seq, prev
