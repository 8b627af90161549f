"""The work board in PostgreSQL: every ``rollwatch serve`` on the database shares the runs.

The pattern of PostgreSQL job queues (procrastinate, graphile-worker, pg-boss): a row per
chunk, claimed with ``UPDATE ... WHERE (run_id, idx) IN (SELECT ... FOR UPDATE SKIP
LOCKED)`` so that concurrent claimers never wait for nor take each other's rows, and a
lease (``lease_until``, on the database's clock, so the nodes' clocks do not matter)
that the owner renews every third of the lease. A chunk whose lease ran out counts as
to do again. These tables coordinate; they are not the record: the event log is, and
a chunk handed out a second time is resumed from it (see ``rollwatch.work``).

Budget reservations of a run are serialized by a row lock on its ``work_runs`` row;
only reservations under a live lease count, so a dead node's vanish with its lease.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from rollwatch.abc import WorkBoard
from rollwatch.log import get_logger
from rollwatch.work import Chunk, Status, Unit

log = get_logger(__name__)

#: Runs a function on a pooled connection, retrying it when the connection is lost
#: (``PostgresEventStore._with_conn``): every statement here is safe to repeat.
WithConn = Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS work_runs (
    run_id     text PRIMARY KEY,
    closed     text,                          -- why the run was ended early, once it was
    prior_cost double precision NOT NULL DEFAULT 0,
    planned_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS work_chunks (
    run_id      text    NOT NULL REFERENCES work_runs ON DELETE CASCADE,
    idx         integer NOT NULL,
    model       text    NOT NULL,
    problem_id  text    NOT NULL,
    first       integer NOT NULL,
    count       integer NOT NULL,
    state       text    NOT NULL DEFAULT 'todo',   -- todo | claimed | done
    owner       text,
    lease_until timestamptz,
    claims      integer NOT NULL DEFAULT 0,        -- > 0: its rollouts may have events
    reserved    double precision NOT NULL DEFAULT 0,
    spent       double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, idx)
);
CREATE INDEX IF NOT EXISTS work_chunks_owner ON work_chunks (owner) WHERE state = 'claimed';
"""

_LIVE = "state = 'claimed' AND lease_until >= clock_timestamp()"
#: USD reserved below which nothing is pending: reservations of 0.1, 0.2 and 0.3 settled in
#: another order leave 2.8e-17 (floating point), and a reservation never is that small.
_NONE_PENDING = 1e-9
_TODO = "(state = 'todo' OR (state = 'claimed' AND lease_until < clock_timestamp()))"

_CLAIM = f"""
UPDATE work_chunks c
   SET state = 'claimed', owner = $2, lease_until = clock_timestamp() + make_interval(secs => $3),
       claims = c.claims + 1, spent = c.spent + c.reserved, reserved = 0
  FROM (SELECT run_id, idx, owner AS previous FROM work_chunks
         WHERE run_id = $1 AND {_TODO}
           AND NOT EXISTS (SELECT 1 FROM work_runs r WHERE r.run_id = $1 AND r.closed IS NOT NULL)
         ORDER BY idx LIMIT $4 FOR UPDATE SKIP LOCKED) s
 WHERE c.run_id = s.run_id AND c.idx = s.idx
RETURNING c.idx, c.model, c.problem_id, c.first, c.count, c.claims, s.previous
"""


class PostgresBoard(WorkBoard):
    """Chunks, leases and reservations in two tables of the log's database."""

    shared = True
    claim_batch = 2  # small, so that the chunks of a run spread over every node

    def __init__(self, with_conn: WithConn, owner: str, lease: float) -> None:
        self._with_conn = with_conn
        self.owner = owner
        self.lease = lease
        # The chunks this process knows it holds: only these are renewed. A claim whose
        # answer was lost with its connection holds chunks we do not know of; their
        # lease runs out and they are claimed again.
        self._held: set[tuple[str, int]] = set()

    async def plan(self, run_id: str, units: list[Unit], *, fresh: bool, prior_cost: float) -> None:
        await self._with_conn(lambda conn: self._plan(conn, run_id, units, fresh, prior_cost))

    async def _plan(self, conn: Any, run_id: str, units: list[Unit], fresh: bool, prior_cost: float) -> None:
        async with conn.transaction():
            new = await conn.fetchval(
                "INSERT INTO work_runs (run_id, prior_cost) VALUES ($1, $2)"
                " ON CONFLICT (run_id) DO NOTHING RETURNING true",
                run_id,
                prior_cost,
            )
            if new:
                claims = 0 if fresh else 1
                await conn.copy_records_to_table(
                    "work_chunks",
                    records=[
                        (run_id, i, u.model, u.problem_id, u.first, u.count, claims)
                        for i, u in enumerate(units)
                    ],
                    columns=("run_id", "idx", "model", "problem_id", "first", "count", "claims"),
                )

    async def claim(self, run_id: str, n: int) -> list[Chunk]:
        rows = await self._with_conn(lambda c: c.fetch(_CLAIM, run_id, self.owner, self.lease, n))
        out = []
        for idx, model, problem_id, first, count, claims, previous in sorted(tuple(r) for r in rows):
            if previous is not None and previous != self.owner:
                log.info("chunk_taken_over", run_id=run_id, chunk=idx, previous_owner=previous)
            out.append(Chunk(run_id, idx, Unit(model, problem_id, first, count), fresh=claims == 1))
            self._held.add((run_id, idx))
        return out

    async def done(self, chunk: Chunk, *, finished: bool = True) -> None:
        # Only while still ours: a chunk taken over is the new owner's to finish.
        sql = (
            "UPDATE work_chunks SET state = $4, owner = CASE WHEN $4 = 'done' THEN owner END,"
            " lease_until = NULL, spent = spent + reserved, reserved = 0"
            " WHERE run_id = $1 AND idx = $2 AND owner = $3 AND state = 'claimed'"
        )
        state = "done" if finished else "todo"
        await self._with_conn(lambda c: c.execute(sql, chunk.run_id, chunk.index, self.owner, state))
        self._held.discard((chunk.run_id, chunk.index))

    async def release(self, run_id: str) -> None:
        sql = (
            "UPDATE work_chunks SET state = 'todo', owner = NULL, lease_until = NULL,"
            " spent = spent + reserved, reserved = 0"
            " WHERE run_id = $1 AND owner = $2 AND state = 'claimed'"
        )
        n = await self._with_conn(lambda c: c.execute(sql, run_id, self.owner))
        self._held = {h for h in self._held if h[0] != run_id}
        if n != "UPDATE 0":
            log.info("chunks_released", run_id=run_id, chunks=int(n.split()[-1]))

    async def close(self, run_id: str, reason: str) -> None:
        sql = "UPDATE work_runs SET closed = COALESCE(closed, $2) WHERE run_id = $1"
        await self._with_conn(lambda c: c.execute(sql, run_id, reason))

    async def status(self, run_id: str) -> Status:
        sql = (
            f"SELECT COUNT(*) FILTER (WHERE {_TODO}), COUNT(*) FILTER (WHERE {_LIVE}),"
            " (SELECT closed FROM work_runs WHERE run_id = $1)"
            " FROM work_chunks WHERE run_id = $1"
        )
        row = await self._with_conn(lambda c: c.fetchrow(sql, run_id))
        assert row is not None
        todo, claimed, closed = row
        return Status(claimed + (0 if closed else todo), claimed, closed)

    async def reserve(self, chunk: Chunk, amount: float, budget: float) -> bool | None:
        # Repeated after a lost connection, a reservation may count twice until the
        # chunk is done: the budget is then kept with room to spare, never passed.
        result: bool | None = await self._with_conn(lambda conn: self._reserve(conn, chunk, amount, budget))
        return result

    async def _reserve(self, conn: Any, chunk: Chunk, amount: float, budget: float) -> bool | None:
        async with conn.transaction():
            run = await conn.fetchrow(
                "SELECT closed, prior_cost FROM work_runs WHERE run_id = $1 FOR UPDATE", chunk.run_id
            )
            if run is None or run["closed"] is not None:
                return None
            # Every reservation counts, a dead owner's too: its requests may have reached
            # the provider, which bills them all the same. Only live ones are waited for.
            totals = await conn.fetchrow(
                "SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(reserved), 0),"
                f" COALESCE(SUM(reserved) FILTER (WHERE {_LIVE}), 0)"
                " FROM work_chunks WHERE run_id = $1",
                chunk.run_id,
            )
            assert totals is not None
            spent, held, reserved = totals
            if run["prior_cost"] + spent + held + amount <= budget:
                await conn.execute(
                    "UPDATE work_chunks SET reserved = reserved + $3 WHERE run_id = $1 AND idx = $2",
                    chunk.run_id,
                    chunk.index,
                    amount,
                )
                return True
            return False if reserved > _NONE_PENDING else None

    async def settle(self, chunk: Chunk, reserved: float, cost: float) -> None:
        # A chunk taken over since (our lease ran out) has counted our reservation as spent
        # and holds its new owner's: the cost is added, the reservations are left alone
        # (ours then counts twice: kept with room to spare, never passed).
        sql = (
            "UPDATE work_chunks SET spent = spent + $4,"
            " reserved = CASE WHEN owner = $5 AND state = 'claimed' THEN GREATEST(reserved - $3, 0)"
            " ELSE reserved END"
            " WHERE run_id = $1 AND idx = $2"
        )
        await self._with_conn(lambda c: c.execute(sql, chunk.run_id, chunk.index, reserved, cost, self.owner))

    async def keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failing_since: float | None = None
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                await self._renew(sorted(self._held))
                failing_since = None
            except Exception as e:
                now = anyio.current_time()
                failing_since = failing_since or now
                # Past the lease, other nodes may take our chunks; our appends to their
                # rollouts then conflict and we drop them (see rollwatch.work).
                level = log.error if now - failing_since >= self.lease else log.warning
                level("lease_renewal_failed", owner=self.owner, error=str(e))

    async def _renew(self, held: list[tuple[str, int]]) -> None:
        if not held:
            return
        sql = (
            "UPDATE work_chunks c SET lease_until = clock_timestamp() + make_interval(secs => $2)"
            " FROM unnest($3::text[], $4::int[]) AS h(run_id, idx)"
            " WHERE c.run_id = h.run_id AND c.idx = h.idx AND c.owner = $1 AND c.state = 'claimed'"
        )
        runs, idxs = [r for r, _ in held], [i for _, i in held]
        await self._with_conn(lambda c: c.execute(sql, self.owner, self.lease, runs, idxs))
