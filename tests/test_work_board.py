"""The work board: the same contract on one process's board and on PostgreSQL's, where
several processes claim chunks of a run under leases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from rollwatch.abc import EventStore, WorkBoard
from rollwatch.errors import ConcurrencyConflict
from rollwatch.events import SchedulePaused
from rollwatch.store.postgres import PostgresEventStore
from rollwatch.work import Unit, plan_units
from tests.pg import ScratchPostgresStore, scratch_database

pytestmark = pytest.mark.anyio

UNITS = plan_units(["m1", "m2"], ["p1", "p2", "p3"], rollouts=5, chunk=2)


def test_plan_covers_every_rollout_once() -> None:
    assert len(UNITS) == 2 * 3 * 3
    samples = [(u.model, u.problem_id, k) for u in UNITS for k in range(u.first, u.first + u.count)]
    assert len(samples) == len(set(samples)) == 2 * 3 * 5
    assert UNITS[:3] == [Unit("m1", "p1", 0, 2), Unit("m1", "p1", 2, 2), Unit("m1", "p1", 4, 1)]


@pytest.fixture(params=["local", "postgres"])
async def board(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WorkBoard]:
    store: EventStore = ScratchPostgresStore() if request.param == "postgres" else _local_store(tmp_path)
    async with store:
        yield store.work_board("node-1/a", lease=30.0)


def _local_store(tmp_path: Path) -> EventStore:
    from rollwatch.store.sqlite import SQLiteEventStore

    return SQLiteEventStore(tmp_path / "events.db")


async def test_claims_hand_out_every_chunk_once_in_plan_order(board: WorkBoard) -> None:
    await board.plan("r1", UNITS, fresh=True, prior_cost=0.0)
    await board.plan("r1", UNITS[:1], fresh=False, prior_cost=9.0)  # a second plan changes nothing
    got = []
    while chunks := await board.claim("r1", 4):
        got.extend(chunks)
    assert [c.unit for c in got] == UNITS
    assert all(c.fresh for c in got)
    st = await board.status("r1")
    assert (st.open, st.claimed, st.closed) == (len(UNITS), len(UNITS), None)
    for c in got:
        await board.done(c)
    st = await board.status("r1")
    assert (st.open, st.claimed) == (0, 0)


async def test_a_chunk_handed_back_is_claimed_again_and_is_not_fresh(board: WorkBoard) -> None:
    await board.plan("r1", UNITS[:2], fresh=True, prior_cost=0.0)
    first, second = await board.claim("r1", 2)
    await board.done(first, finished=False)
    await board.done(second)
    [again] = await board.claim("r1", 2)
    assert again.unit == first.unit
    assert not again.fresh
    assert await board.claim("r1", 2) == []


async def test_a_resumed_run_is_not_fresh(board: WorkBoard) -> None:
    await board.plan("r1", UNITS, fresh=False, prior_cost=0.0)
    assert not any(c.fresh for c in await board.claim("r1", 3))


async def test_closing_stops_claims_and_reservations(board: WorkBoard) -> None:
    await board.plan("r1", UNITS, fresh=True, prior_cost=0.0)
    [c] = await board.claim("r1", 1)
    await board.close("r1", "budget_exhausted: spent")
    await board.close("r1", "provider_failed: later reasons do not replace the first")
    assert await board.claim("r1", 1) == []
    assert await board.reserve(c, 0.01, 100.0) is None
    st = await board.status("r1")
    assert (st.open, st.claimed, st.closed) == (1, 1, "budget_exhausted: spent")


async def test_reservations_keep_the_budget(board: WorkBoard) -> None:
    await board.plan("r1", UNITS, fresh=True, prior_cost=0.25)
    a, b = await board.claim("r1", 2)
    assert await board.reserve(a, 0.5, 1.0) is True
    # 0.25 spent before + 0.5 reserved + 0.5 > 1.0, with a reservation pending: wait.
    assert await board.reserve(b, 0.5, 1.0) is False
    await board.settle(a, 0.5, 0.125)
    assert await board.reserve(b, 0.5, 1.0) is True
    await board.settle(b, 0.5, 0.5)
    # 0.875 spent, nothing pending: nothing more fits, ever.
    assert await board.reserve(b, 0.5, 1.0) is None


async def test_a_budget_reached_with_nothing_pending_says_so_whatever_the_sums_round_to(
    board: WorkBoard,
) -> None:
    """Reservations of 0.1, 0.2 and 0.3 settled in another order leave 2.8e-17 reserved in
    floating point: the board took that for a reservation pending, and the run waited for it
    to settle for good (a run whose reservations grew once one answer cost more hung so)."""
    await board.plan("r1", UNITS, fresh=True, prior_cost=0.0)
    (a,) = await board.claim("r1", 1)
    for amount in (0.1, 0.2, 0.3):
        assert await board.reserve(a, amount, 0.65) is True
    for amount in (0.3, 0.1, 0.2):
        await board.settle(a, amount, amount)
    assert await board.reserve(a, 0.1, 0.65) is None


async def test_release_hands_back_unfinished_chunks_to_others() -> None:
    async with scratch_database() as url, PostgresEventStore(url) as s1, PostgresEventStore(url) as s2:
        one, two = s1.work_board("n1/a", 30.0), s2.work_board("n2/b", 30.0)
        await one.plan("r1", UNITS[:3], fresh=True, prior_cost=0.0)
        held = await one.claim("r1", 2)
        [third] = await two.claim("r1", 2)
        assert third.unit == UNITS[2]
        await one.release("r1")
        again = await two.claim("r1", 5)
        assert [c.unit for c in again] == [c.unit for c in held]
        assert not any(c.fresh for c in again)


async def test_concurrent_claimers_never_share_a_chunk() -> None:
    units = plan_units(["m"], [f"p{i}" for i in range(50)], rollouts=4, chunk=1)
    async with scratch_database() as url, AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(PostgresEventStore(url)) for _ in range(4)]
        boards = [s.work_board(f"n{i}/x", 30.0) for i, s in enumerate(stores)]
        await boards[0].plan("r1", units, fresh=True, prior_cost=0.0)
        claimed: dict[int, list[int]] = {i: [] for i in range(4)}

        async def claimer(i: int) -> None:
            while chunks := await boards[i].claim("r1", 3):
                claimed[i].extend(c.index for c in chunks)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(claimer, i)
        every = [idx for got in claimed.values() for idx in got]
        assert sorted(every) == list(range(len(units)))
        assert sum(1 for got in claimed.values() if got) >= 2


async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced() -> None:
    """A node that stalls past its lease loses its chunk: another claims it, the stalled
    node can no longer mark it done, and its next append to a rollout the new owner has
    written to conflicts (the stream version fences it)."""
    async with scratch_database() as url, PostgresEventStore(url) as s1, PostgresEventStore(url) as s2:
        stalled, other = s1.work_board("n1/a", 1.0), s2.work_board("n2/b", 30.0)
        await stalled.plan("r1", UNITS[:1], fresh=True, prior_cost=0.0)
        [mine] = await stalled.claim("r1", 1)
        assert await other.claim("r1", 1) == []  # the lease is live
        # Both read the rollout stream at version 0; the stalled node never renews.
        with anyio.fail_after(10):
            while not (taken := await other.claim("r1", 1)):
                await anyio.sleep(0.1)
        [theirs] = taken
        assert theirs.unit == mine.unit
        assert not theirs.fresh
        await s2.append("rollout-x", [SchedulePaused(schedule="s")], expected_version=0)
        with pytest.raises(ConcurrencyConflict):
            await s1.append("rollout-x", [SchedulePaused(schedule="s")], expected_version=0)
        await stalled.done(mine)  # not its chunk any more: no effect
        st = await other.status("r1")
        assert (st.open, st.claimed) == (1, 1)
        await other.done(theirs)
        assert (await other.status("r1")).open == 0


async def test_a_renewed_lease_is_not_taken_over() -> None:
    async with scratch_database() as url, PostgresEventStore(url) as s1, PostgresEventStore(url) as s2:
        alive, other = s1.work_board("n1/a", 1.0), s2.work_board("n2/b", 30.0)
        await alive.plan("r1", UNITS[:1], fresh=True, prior_cost=0.0)
        async with anyio.create_task_group() as tg:
            await tg.start(alive.keep)
            [mine] = await alive.claim("r1", 1)
            # Three lease lengths later the claim still holds: keep renewed it.
            deadline = anyio.current_time() + 3.0
            while anyio.current_time() < deadline:
                assert await other.claim("r1", 1) == []
                await anyio.sleep(0.2)
            await alive.done(mine)
            tg.cancel_scope.cancel()
        assert (await other.status("r1")).open == 0


async def test_a_dead_owners_reservation_counts_as_spent_and_its_late_settle_spares_the_new_owners() -> None:
    """A node whose lease ran out with a reservation unsettled (its request may be billed):
    the reservation still counts once its lease is out, becomes spent when another node
    takes the chunk over, and the stalled node's late settle adds its cost without taking
    the new owner's reservation away. Before, the reservation lapsed with the lease (the
    run spent it again) and the late settle cleared the new owner's."""
    async with scratch_database() as url, PostgresEventStore(url) as s1, PostgresEventStore(url) as s2:
        stalled, other = s1.work_board("n1/a", 1.0), s2.work_board("n2/b", 30.0)
        await stalled.plan("r1", UNITS[:2], fresh=True, prior_cost=0.0)
        [mine] = await stalled.claim("r1", 1)
        assert await stalled.reserve(mine, 0.5, 1.0) is True
        [second] = await other.claim("r1", 1)
        # 0.5 reserved + 0.6 passes the budget: wait while that reservation is live; once its
        # lease is out nothing is left to wait for, and it still counts (before: True).
        with anyio.fail_after(10):
            while (got := await other.reserve(second, 0.6, 1.0)) is False:
                await anyio.sleep(0.1)
        assert got is None
        await other.done(second)
        [theirs] = await other.claim("r1", 1)  # the stalled node's chunk, taken over
        assert theirs.unit == mine.unit
        assert await other.reserve(theirs, 0.4, 1.0) is True  # 0.5 spent + 0.4
        await stalled.settle(mine, 0.5, 0.1)  # late: 0.6 spent, the new owner's 0.4 still reserved
        assert await other.reserve(theirs, 0.05, 1.0) is False  # 1.05: wait for the 0.4
        await other.settle(theirs, 0.4, 0.3)
        assert await other.reserve(theirs, 0.05, 1.0) is True  # 0.9 spent + 0.05
