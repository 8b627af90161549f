"""The interfaces of rollwatch's plug-in points, with their contracts.

Implementations live in one module each (``store/sqlite.py``, ``store/postgres.py``,
``providers/openai.py``, ...) and never import each other; the composition root
(``daemon.py``) wires them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskStatus

from rollwatch.errors import IntegrityError
from rollwatch.events import GENESIS, Event, Recorded, chain_hash
from rollwatch.work import LocalBoard, WorkBoard

#: ``expected_version`` for "this stream must not exist yet".
NO_STREAM = 0


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify`` checked: the number of events and the head hash."""

    events: int
    head_hash: str


class EventStore(ABC):
    """An append-only, hash-chained log of events.

    Contract (pinned by ``tests/test_store_contract.py`` for every backend):

    * ``append`` writes one call's events atomically: all or none. Events get a
      gap-free global ``seq`` (1, 2, 3, ...) in append order and a per-stream
      ``version`` (1, 2, 3, ... within the stream). With ``expected_version`` the call
      writes nothing and raises ``ConcurrencyConflict`` unless the stream is at
      exactly that version (``NO_STREAM``: the stream must be new).
    * Once ``append`` returns, the events are durable (they survive kill -9 and
      power loss).
    * Concurrent ``append`` calls may share one transaction (group commit) but each
      stays atomic, and the events of one call are contiguous in ``seq``.
    * ``hash`` chains every event to the previous one (see ``rollwatch.events``).
    * Reads go in bounded batches: memory does not grow with the size of the log.
    * ``follow`` yields new events as they are appended, by this process or another.

    Use as an async context manager: it opens on enter and closes on exit.
    """

    #: Whether processes on other machines may append to this log too (PostgreSQL);
    #: then work that must happen once (schedules, checkpoints) goes through ``lead``.
    shared: bool = False

    def __init__(self) -> None:
        self._exit_stack: AsyncExitStack | None = None
        self.append_observer: Callable[[float], None] | None = None
        """Called with each append's latency in seconds (the daemon's metrics)."""

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._open(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            # The caller's exception is the caller's: close as on a clean exit (pending
            # appends still commit) and let it propagate unwrapped, rather than through
            # the writer's task group as an ExceptionGroup.
            await stack.__aexit__(None, None, None)

    @abstractmethod
    async def _open(self, stack: AsyncExitStack) -> None:
        """Open connections and start background tasks; register their clean-up on ``stack``."""

    @abstractmethod
    async def append(
        self, stream: str, events: Sequence[Event], *, expected_version: int | None = None
    ) -> list[Recorded]:
        """Append ``events`` to ``stream`` atomically and durably; return them as recorded."""

    @abstractmethod
    def read_batches(
        self,
        *,
        after: int = 0,
        stream: str | None = None,
        types: Collection[str] | None = None,
        until: int | None = None,
        batch: int = 1000,
    ) -> AsyncIterator[list[Recorded]]:
        """Events with ``seq > after`` (and ``<= until``), oldest first, in lists of at most ``batch``."""

    async def read(
        self,
        *,
        after: int = 0,
        stream: str | None = None,
        types: Collection[str] | None = None,
        until: int | None = None,
        batch: int = 1000,
    ) -> AsyncIterator[Recorded]:
        """Events one by one; see :meth:`read_batches`."""
        async for page in self.read_batches(
            after=after, stream=stream, types=types, until=until, batch=batch
        ):
            for ev in page:
                yield ev

    @abstractmethod
    async def head(self) -> int:
        """The highest ``seq`` in the log (0 when empty)."""

    @abstractmethod
    async def stream_version(self, stream: str) -> int:
        """The current version of ``stream`` (0 when it has no events)."""

    @abstractmethod
    async def wait_for_new(self, after: int, timeout: float) -> int:  # noqa: ASYNC109 (returns on timeout, never raises)
        """Wait until the log holds an event with ``seq > after`` or ``timeout`` passes; return the head."""

    async def follow(
        self, *, after: int = 0, types: Collection[str] | None = None
    ) -> AsyncIterator[Recorded]:
        """Every event after ``after``, then each new one as it is appended; never ends."""
        while True:
            head = await self.head()
            async for ev in self.read(after=after, types=types):
                yield ev
                after = ev.seq
            after = max(after, head)
            await self.wait_for_new(after, timeout=1.0)

    async def lead(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        stop: anyio.Event,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``body`` while this process is the one leader for ``name`` among every
        process sharing this log; return when ``body`` returns or ``stop`` is set.

        Reports started at once (not once leading). A store that one machine owns has
        one leader by construction: this default just runs ``body``. A shared store
        elects one (PostgreSQL: a session advisory lock) and cancels ``body`` if the
        leadership is lost.
        """
        task_status.started()
        await body()

    def work_board(self, owner: str, lease: float) -> WorkBoard:
        """The board on which the processes driving a run share its rollouts.

        ``owner`` names this process uniquely (node and a per-process token); ``lease``
        is how long a claim holds without renewal. A log one machine owns has one
        process driving each run: the default board is that process's own.
        """
        return LocalBoard()

    async def _verify_chain(self, progress: Callable[[int], None] | None) -> tuple[int, str]:
        """Walk the whole log in seq order checking gaps and hashes: (events, head hash).

        Raises ``IntegrityError`` naming the first missing or changed ``seq``.
        """
        prev = GENESIS
        expected = 1
        async for page in self.read_batches(batch=5000):
            for ev in page:
                if ev.seq != expected:
                    raise IntegrityError(
                        expected, f"event {expected} is missing (the next stored is {ev.seq})"
                    )
                if chain_hash(prev, ev.canonical()).hex() != ev.hash:
                    raise IntegrityError(ev.seq, "its hash does not match its content and the previous hash")
                prev = bytes.fromhex(ev.hash)
                expected += 1
            if progress is not None:
                progress(page[-1].seq)
        return expected - 1, prev.hex() if expected > 1 else ""

    @abstractmethod
    async def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Check the whole chain; raise ``IntegrityError`` naming the first bad ``seq``."""
