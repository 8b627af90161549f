"""The interfaces of rollwatch's plug-in points, with their contracts.

=================  ==========================  =========================================
interface          implementations             contract tests
=================  ==========================  =========================================
``EventStore``     ``store/sqlite.py``,        ``tests/test_store_contract.py``
                   ``store/postgres.py``
``WorkBoard``      ``work.LocalBoard``,        ``tests/test_work_board.py``
                   ``store/postgres_work.py``
``Projection``     ``projections.py``,         ``tests/test_report.py``, ``tests/publication``
                   ``publication/projections``,
                   ``report/views.py``
``WireAdapter``    ``providers/openai.py``,    ``tests/providers/test_contract.py``
                   ``anthropic.py``, ``gemini.py``
``AttemptLog``     ``runs/rollout.py``         ``tests/providers``
``Clock``          ``providers/base.AnyioClock`` ``tests/providers/test_limits.py``
``Scorer``,        ``scoring/function.py``,    ``tests/scoring``
``Sandbox``        ``stdio.py``, ``command.py``;
                   ``scoring/sandbox.py``
=================  ==========================  =========================================

``Scorer`` and ``Sandbox`` are defined in :mod:`rollwatch.scoring.base`, beside the
sample request and result types they exchange (and the settings the scorers share);
every other interface is defined here.

Implementations live in one module each and never import each other; the
composition root (``daemon.py``) wires them. This module imports only data types
(events, errors) at run time, so any implementation can import it.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

import anyio
from anyio.abc import TaskStatus

from rollwatch.errors import IntegrityError
from rollwatch.events import GENESIS, Event, Recorded, chain_hash

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rollwatch.errors import ProviderError
    from rollwatch.providers.base import Answer, Headers, Parsed, Prompt, WireRequest
    from rollwatch.work import Chunk, Status, Unit

#: ``expected_version`` for "this stream must not exist yet".
SUBSCRIBER_TYPES = ("SubscriberAdded", "SubscriberRevoked")
"""The events that give and take away the subscribers' keys (indexed apart: see
:meth:`EventStore.subscriber_events`)."""

NO_STREAM = 0

LEADERSHIP: ContextVar[object | None] = ContextVar("rollwatch_leadership", default=None)
"""The leadership the current task acts under, set by a shared store's :meth:`EventStore.lead`
for its body (and inherited by the tasks the body starts). An append made under a
leadership that has been lost since (a leader stalled or cut off while another took
over) is refused with :class:`~rollwatch.errors.NotLeading` instead of committed. Work
that may outlive the leadership (a run's rollouts, once its ``RunStarted`` is in) sets
it back to None."""


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
        self.append_failing: str | None = None
        """Why appends fail, while they do (None again once one succeeds): ``/healthz`` says so."""
        self.unreachable: str | None = None
        """Why the database is out of reach, while it is (a shared log's server down, its
        connections refused or cut; None again once a statement gets through): ``/healthz``
        says so while operations wait and retry."""

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
        """Append ``events`` to ``stream`` atomically and durably; return them as recorded.

        Under a lost :data:`LEADERSHIP` (shared stores), nothing is appended:
        :class:`~rollwatch.errors.NotLeading`."""

    @abstractmethod
    def read_batches(
        self,
        *,
        after: int = 0,
        stream: str | None = None,
        types: Collection[str] | None = None,
        until: int | None = None,
        batch: int = 1000,
        lean: bool = False,
    ) -> AsyncIterator[list[Recorded]]:
        """Events with ``seq > after`` (and ``<= until``), oldest first, in lists of at most ``batch``.

        ``lean``: each event's ``id``, ``stream`` and ``version`` are None, not read (what a
        catch-up hands the read models, which read none of them: see :meth:`Projection.apply`);
        a store may then give plain tuples in :class:`Recorded`'s field order instead of
        :class:`Recorded` (SQLite's rows as they come: a catch-up copies each into the tuple
        it hands the read models, and making a :class:`Recorded` first cost a 200k-event
        rebuild 6% of its CPU). Read them by index.
        """

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

    async def subscriber_events(self, *, after: int, until: int) -> list[Recorded]:
        """The ``SubscriberAdded`` and ``SubscriberRevoked`` events with ``after < seq <= until``.

        The stores answer from an index of those events alone (one that is exactly
        theirs: see :meth:`build_subscriber_index`), so that the keys at start do not
        read the whole log; this fallback, and a store whose index is missing or not
        theirs, reads every event. The scrub compares the answers with every event it
        reads (:meth:`rollwatch.publication.keys.SubscriberDirectory.check_seen`)."""
        return [r async for r in self.read(after=after, types=SUBSCRIBER_TYPES, until=until)]

    async def build_subscriber_index(self) -> None:
        """Make the index :meth:`subscriber_events` reads, if the log has none (a log
        written before it: one read of the whole log, once). Nothing in this fallback."""
        return

    async def read_at(self, seqs: Collection[int]) -> dict[int, Recorded]:
        """The events at positions ``seqs`` (those the log has), by seq. The stores read
        them in one query; this fallback reads them one at a time."""
        out: dict[int, Recorded] = {}
        for seq in sorted(set(seqs)):
            async for rec in self.read(after=seq - 1, until=seq):
                out[rec.seq] = rec
        return out

    async def read_streams(
        self, streams: Collection[str], *, types: Collection[str] | None = None, until: int | None = None
    ) -> list[Recorded]:
        """The events of ``streams`` (of ``types``, with ``seq <= until``), oldest first. The
        stores read them in one query through their ``(stream, version)`` index; this
        fallback reads one stream at a time."""
        out: list[Recorded] = []
        for stream in sorted(set(streams)):
            out += [r async for r in self.read(stream=stream, types=types, until=until)]
        out.sort(key=lambda r: r.seq)
        return out

    def opener(self) -> Callable[[], EventStore] | None:
        """A picklable callable that makes an unopened store reading this same log, for a
        process of our own (a projections build split in two); None where there is none."""
        return None

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

    async def clock_skew(self) -> float | None:
        """Seconds this host's wall clock is ahead of the clock of the database that
        processes on other machines share (negative: behind); None for a log one machine
        owns, which has no clock but this host's. Several nodes stamp events and embargo
        dates by their own clocks, so they must agree with one clock: the database's."""
        return None

    async def lead(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        stop: anyio.Event,
        *,
        lease: float = 30.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``body`` while this process is the one leader for ``name`` among every
        process sharing this log; return when ``body`` returns or ``stop`` is set.

        Reports started at once (not once leading). A store that one machine owns has
        one leader by construction: this default just runs ``body``. A shared store
        elects one (PostgreSQL: a session advisory lock) and cancels ``body`` if the
        leadership is lost. A leader that stops answering for ``lease`` seconds (stopped,
        frozen, cut off) loses the leadership to another process; whatever it appends
        under it afterwards is refused (:class:`~rollwatch.errors.NotLeading`).
        """
        task_status.started()
        await body()

    async def led(self, name: str) -> bool:
        """Whether some process leads ``name`` now (see :meth:`lead`): a shared store asks the
        database; a store one machine owns has no other process to ask about (False)."""
        return False

    @abstractmethod
    def work_board(self, owner: str, lease: float) -> WorkBoard:
        """The board on which the processes driving a run share its rollouts.

        ``owner`` names this process uniquely (node and a per-process token); ``lease``
        is how long a claim holds without renewal. A log one machine owns has one
        process driving each run: its board is that process's own (``LocalBoard``).
        """

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

    async def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Check the whole chain, then the stream versions; raise ``IntegrityError`` naming
        the first bad ``seq``."""
        events, head = await self._verify_chain(progress)
        await self.verify_versions(events)
        return VerifyReport(events=events, head_hash=head)

    async def check_same_file(self) -> None:
        """Raise :class:`IntegrityError` when the log this process opened is no longer the one
        its name gives (a file renamed over it, or removed): a restart would read another log.
        A store that is not a file has nothing to check."""
        return

    async def verify_versions(self, until: int) -> None:
        """What the hash chain does not cover: each stream's versions follow the order of
        the log (1, 2, 3, ... by seq) up to ``until``; ``IntegrityError`` naming the first
        seq that breaks it. For a caller that checks the chain in a pass of its own
        (:meth:`verify` calls it after its own). This fallback reads every event; the
        stores ask their database."""
        seen: dict[str, int] = {}
        async for page in self.read_batches(until=until, batch=5000):
            for rec in page:
                n = seen[rec.stream] = seen.get(rec.stream, 0) + 1
                if rec.version != n:
                    raise IntegrityError(rec.seq, "its stream version does not follow the order of the log")


# --- sharing a run's work -------------------------------------------------------------


class WorkBoard(ABC):
    """Chunks, leases and budget reservations of runs (see the module docstring)."""

    #: Whether processes other than this one take part (then idle nodes join runs).
    shared: bool = False
    #: How many chunks ``claim`` hands out at once, at most.
    claim_batch: int = 1

    @abstractmethod
    async def plan(self, run_id: str, units: list[Unit], *, fresh: bool, prior_cost: float) -> None:
        """Record a run's chunks unless they already are. ``fresh``: the run is new (no
        rollout has events); ``prior_cost``: what the run spent before they existed."""

    @abstractmethod
    async def claim(self, run_id: str, n: int) -> list[Chunk]:
        """Up to ``n`` chunks nobody holds, in plan order; none once the run is closed."""

    @abstractmethod
    async def done(self, chunk: Chunk, *, finished: bool = True) -> None:
        """This process is through with ``chunk``: every rollout of it finished, or (not
        ``finished``) some were left, and the chunk goes back to be claimed again."""

    @abstractmethod
    async def release(self, run_id: str) -> None:
        """Hand back every chunk of ``run_id`` this process holds and has not finished."""

    @abstractmethod
    async def close(self, run_id: str, reason: str) -> None:
        """End the run early: no more claims or reservations (the first reason stays)."""

    @abstractmethod
    async def status(self, run_id: str) -> Status: ...

    @abstractmethod
    async def reserve(self, chunk: Chunk, amount: float, budget: float) -> bool | None:
        """Reserve ``amount`` of the run's ``budget`` for a rollout of ``chunk``: True when
        reserved, False when it does not fit while others' reservations are pending
        (they may settle for less: try again), None when it cannot fit (or the run is
        closed)."""

    @abstractmethod
    async def settle(self, chunk: Chunk, reserved: float, cost: float) -> None:
        """A rollout that reserved ``reserved`` ended having cost ``cost``."""

    async def keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep this process's leases alive until cancelled (nothing to do locally)."""
        task_status.started()


# --- read models ----------------------------------------------------------------------


class Projection:
    """One read model: its tables, the event types it reads, and how it applies one.

    Bump ``version`` when ``ddl`` or ``apply`` changes meaning: the projection is then
    dropped and rebuilt from the log at the next start.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ()
    ddl: ClassVar[str] = ""
    types: ClassVar[frozenset[str]] = frozenset()
    build_weight: ClassVar[float] = 0.1
    """What building it from the whole log costs, relative to the others (about its seconds
    per 200k events, reading and decoding them apart: each process pays those once): a
    build split in two processes balances the halves by it."""
    unread: ClassVar[Mapping[str, frozenset[str]]] = {}
    """Fields of its event types (type -> names) that it never reads, such as the request
    and answer bodies (:data:`rollwatch.events.BODIES`). Where no read model of a catch-up
    reads a field, the catch-up leaves it unparsed: the event's attribute then holds its
    JSON text as a ``msgspec.Raw``, not its value. Declare none (the default) and every
    field is parsed."""

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Apply one event (of one of ``types``) inside the caller's transaction.

        Read the event's meaning from ``rec.event()`` (typed and upcast), and its
        position and time from ``rec.seq`` and ``rec.at``. Its ``id``, ``stream`` and
        ``version`` are None (a catch-up does not read them: ``read_batches(lean=True)``).
        """
        raise NotImplementedError

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        """Apply ``recs`` (of ``types``, in ``seq`` order) inside the caller's transaction.

        Must leave the same rows as :meth:`apply` on each in turn, whatever the batch's
        size: a catch-up hands over thousands at a time, a daemon following the log a
        few. Override it to write a batch with fewer statements (read each row once,
        write it back once); the default applies one event at a time.
        """
        for rec in recs:
            self.apply(db, rec)


# --- providers --------------------------------------------------------------------------


class AttemptLog(Protocol):
    """Where :meth:`ProviderClient.rollout` records every attempt (the run appends events).

    Contract: for each attempt, ``requested`` once the request is about to go out,
    then exactly one of ``responded`` or ``failed``. ``failed(final=True)`` is the last
    call of a rollout that produced no answer. A request that could not even be built
    (bad ``params``) gets ``failed(1, ..., final=True)`` with no ``requested`` before it:
    nothing was sent. ``request`` is the JSON body as sent; it never holds a key.
    """

    async def requested(self, attempt: int, request: dict[str, Any]) -> None:
        """Attempt ``attempt`` (1-based) is about to send ``request``."""

    async def failed(self, attempt: int, error: ProviderError, final: bool) -> None:
        """Attempt ``attempt`` failed; ``final`` when no further attempt will follow."""

    async def responded(self, attempt: int, answer: Answer, cost_usd: float | None) -> None:
        """Attempt ``attempt`` produced ``answer`` (the rollout's last call)."""


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds and a sleep on the same time line (tests may fake both)."""

    def now(self) -> float:
        """The current monotonic time in seconds."""

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` on this clock (at once when ``seconds <= 0``)."""


class WireAdapter(Protocol):
    """One vendor's HTTP wire format. Pure functions of their inputs: no I/O, no state.

    The client calls ``build`` once per rollout, sends ``POST base_url + path`` with
    ``auth_headers(key)`` merged in, then calls ``parse`` on a 2xx JSON body or
    ``error`` on anything else. ``parse`` raises ``ProviderError(kind="bad_response")``
    when the body does not have the documented shape (the client retries those).
    """

    kind: str

    def build(self, model: str, prompt: Prompt, params: Mapping[str, Any], system: str | None) -> WireRequest:
        """The request for one rollout; ``ProviderError("invalid_request")`` on bad params."""
        ...

    def auth_headers(self, key: str) -> dict[str, str]:
        """The headers that carry ``key`` (and only those)."""
        ...

    def parse(self, data: Any, headers: Headers) -> Parsed:
        """The answer in a decoded 2xx body."""
        ...

    def error(self, status: int, headers: Headers, body: bytes, now: float) -> ProviderError:
        """The classified error of a non-2xx response (``now``: wall-clock epoch seconds,
        for ``Retry-After`` dates)."""
        ...

    def pause_hint(self, headers: Headers, now: float) -> float | None:
        """Seconds the provider asks every request to wait, read from a *successful*
        response (e.g. a rate-limit window with nothing left in it); None: no wait.
        ``now`` is wall-clock epoch seconds, for reset times given as dates."""
        ...

    def models_request(self) -> WireRequest:
        """The request (GET ``base_url + path``, its ``body`` unused) that lists the
        models the provider serves."""
        ...

    def parse_models(self, data: Any) -> list[str]:
        """The model names in a decoded 2xx answer to :meth:`models_request`, as a
        rollout names them; ``ProviderError(kind="bad_response")`` on another shape."""
        ...
