"""The work board: how the rollouts of a run are shared out among the processes driving it.

A run is cut into *chunks*: one model, one problem, a few consecutive samples. A
process driving the run claims chunks, does their rollouts and marks them done.

* ``LocalBoard`` (a log one machine owns: SQLite) lives in the one process that
  drives the run (``RunLock`` keeps others out) and hands it every chunk.
* ``PostgresBoard`` (``store/postgres_work.py``) keeps the chunks in a table of the
  shared database, so every ``rollwatch serve`` on it takes part: a chunk is claimed
  with ``FOR UPDATE SKIP LOCKED`` under a lease that the owner renews; a chunk whose
  lease ran out (its node died) is claimed again by another node.

The board only coordinates; the log stays the record. A process that claims a chunk
that was handed out before reads its rollouts' state from the log, and every append
to a rollout's stream names the stream version it expects: if a node that lost its
lease (stalled, cut off) wakes up, its next append conflicts and it drops the rollout,
so no rollout is requested or answered by two nodes at once.

Budgets are kept here too, because several nodes spend them: a rollout reserves the
most it could cost before it starts and settles the real cost when it ends. A reservation
its owner never settled (a node that died, or stopped, with requests at the provider, which
may answer and bill them all the same) counts as spent, never void.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollwatch.abc import WorkBoard


@dataclass(frozen=True, slots=True)
class Unit:
    """A chunk as planned: ``count`` samples of one model on one problem from ``first``."""

    model: str
    problem_id: str
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """A claimed chunk. ``fresh``: never handed out before, so none of its rollouts has
    an event yet and its state need not be read from the log."""

    run_id: str
    index: int
    unit: Unit
    fresh: bool


@dataclass(frozen=True, slots=True)
class Status:
    """Where a run's chunks stand: ``open`` chunks (to do, or claimed under a live lease,
    by anyone), of which ``claimed`` are held; ``closed`` is why the run was ended
    early (budget, provider), else None."""

    open: int
    claimed: int
    closed: str | None


def plan_units(models: list[str], problems: list[str], rollouts: int, chunk: int) -> list[Unit]:
    """The chunks of a run, in the order its rollouts are to be done."""
    return [
        Unit(m, p, first, min(chunk, rollouts - first))
        for m in models
        for p in problems
        for first in range(0, rollouts, chunk)
    ]


class LocalBoard(WorkBoard):
    """The board of a process that drives its runs alone (the log is its machine's)."""

    claim_batch = 256

    def __init__(self) -> None:
        self._units: dict[str, list[Unit]] = {}
        self._next: dict[str, int] = {}
        self._fresh: dict[str, bool] = {}
        self._again: set[tuple[str, int]] = set()  # chunks handed back: not fresh any more
        self._held: dict[str, set[int]] = {}
        self._closed: dict[str, str] = {}
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        # Reservations not yet settled, counted: their USD sum, taken apart again in
        # another order, need not come back to 0.0 exactly.
        self._holding: dict[str, int] = {}

    async def plan(self, run_id: str, units: list[Unit], *, fresh: bool, prior_cost: float) -> None:
        if run_id in self._units:
            return
        self._units[run_id] = units
        self._next[run_id] = 0
        self._fresh[run_id] = fresh
        self._held[run_id] = set()
        self._spent[run_id] = prior_cost
        self._reserved[run_id] = 0.0
        self._holding[run_id] = 0

    async def claim(self, run_id: str, n: int) -> list[Chunk]:
        if run_id in self._closed:
            return []
        start = self._next[run_id]
        units = self._units[run_id][start : start + n]
        self._next[run_id] = start + len(units)
        self._held[run_id].update(range(start, start + len(units)))
        fresh = self._fresh[run_id]
        return [
            Chunk(run_id, i, u, fresh and (run_id, i) not in self._again)
            for i, u in enumerate(units, start=start)
        ]

    async def done(self, chunk: Chunk, *, finished: bool = True) -> None:
        self._held[chunk.run_id].discard(chunk.index)
        if not finished:
            units = self._units[chunk.run_id]
            self._again.add((chunk.run_id, len(units)))
            units.append(chunk.unit)

    async def release(self, run_id: str) -> None:
        # The plan is this process's own: what it did not finish is resumed from the log.
        self._units.pop(run_id, None)
        self._next.pop(run_id, None)
        self._fresh.pop(run_id, None)
        self._held.pop(run_id, None)
        self._spent.pop(run_id, None)
        self._reserved.pop(run_id, None)
        self._holding.pop(run_id, None)
        self._again = {a for a in self._again if a[0] != run_id}

    async def close(self, run_id: str, reason: str) -> None:
        self._closed.setdefault(run_id, reason)

    async def status(self, run_id: str) -> Status:
        held = len(self._held.get(run_id, ()))
        todo = len(self._units.get(run_id, ())) - self._next.get(run_id, 0)
        return Status(held + (0 if run_id in self._closed else todo), held, self._closed.get(run_id))

    async def reserve(self, chunk: Chunk, amount: float, budget: float) -> bool | None:
        run = chunk.run_id
        if run in self._closed:
            return None
        if self._spent[run] + self._reserved[run] + amount <= budget:
            self._reserved[run] += amount
            self._holding[run] += 1 if amount else 0
            return True
        return False if self._holding[run] else None

    async def settle(self, chunk: Chunk, reserved: float, cost: float) -> None:
        run = chunk.run_id
        if run in self._reserved:
            self._holding[run] -= 1 if reserved else 0
            self._reserved[run] = max(0.0, self._reserved[run] - reserved) if self._holding[run] else 0.0
            self._spent[run] += cost
