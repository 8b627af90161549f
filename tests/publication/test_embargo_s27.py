"""Session 27's attacks on the embargo (helper s27-emb): the release clock stepped in small
steps, forward and back around a release, and across a month's end, with the release job and
the public view going by it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from rollwatch.events import PublicReleased, rollout_stream
from rollwatch.projections import ProjectionDB
from rollwatch.publication.clock import JUMP_S, ReleaseClock
from rollwatch.publication.public import public_view
from rollwatch.publication.release import caught_up, release_job
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import add_rollout, all_projections, new_run_id, start_run

pytestmark = pytest.mark.anyio


class Clocks:
    """A wall clock and a steady one, moved by the test (seconds since the epoch)."""

    def __init__(self, at: datetime) -> None:
        self.wall_s = self.steady_s = at.timestamp()

    def wall(self) -> float:
        return self.wall_s

    def steady(self) -> float:
        return self.steady_s

    def tick(self, s: float) -> None:
        """Time passes, on both clocks."""
        self.wall_s += s
        self.steady_s += s

    def step(self, s: float) -> None:
        """The wall clock alone is set (``date -s``, an NTP step)."""
        self.wall_s += s


def test_a_clock_moved_in_steps_each_under_the_limit_is_caught_by_their_sum() -> None:
    """Steps of 50 s, each under the jump limit: the second makes 100 s from the steady clock and
    holds releases; ``now()`` stays on the steady clock's time (held: new, nothing tested the
    clock's arithmetic apart from a daemon under libfaketime)."""
    c = Clocks(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    clock = ReleaseClock(c.wall, c.steady)
    c.step(50)
    assert not clock.held
    c.step(50)
    assert clock.held
    assert clock.now().timestamp() == c.steady_s
    c.step(-100 + JUMP_S / 2)
    assert not clock.held
    c.step(-JUMP_S * 2)  # stepped back past the limit: going by the earlier, the wall clock
    assert clock.held
    assert clock.now().timestamp() == c.wall_s


async def test_a_clock_stepped_over_a_release_and_a_month_end_and_back_releases_nothing_early(
    tmp_path: Path,
) -> None:
    """A pass public from 2026-12-01T00:00:00Z, the release job running on a clock at
    23:58 on 30 November: the wall clock stepped a day ahead (into December, past the date),
    then back, then a minute of real time: nothing is released, and the public view shows
    nothing, until the steady clock says the date has come; then it is released once
    (held: new, the job's own loop with a clock stepped over a month's end)."""
    date = datetime(2026, 12, 1, tzinfo=UTC)
    c = Clocks(date - timedelta(minutes=2))
    clock = ReleaseClock(c.wall, c.steady)
    clock._checked_log = True  # the log's newest event is now (its events are dated by the host)
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
    ):
        run = new_run_id()
        await start_run(store, run)
        rid = await add_rollout(store, run, passed=True, not_before=date)

        async def released() -> bool:
            async for rec in store.read(stream=rollout_stream(rid)):
                if rec.type == PublicReleased.__name__:
                    return True
            return False

        async def shown() -> bool:
            await caught_up(store, pdb)
            view = await public_view(store, pdb, now=clock.now(), embargo_default=0.0)
            return any(r.rollout_id == rid for r in view.recent)

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: release_job(
                    store, pdb, interval=0.05, stop_event=stop, clock=clock, task_status=task_status
                )
            )
            c.step(86400)  # into December by the wall clock alone
            await anyio.sleep(0.5)
            assert clock.held
            assert not await released()
            assert not await shown()
            c.step(-86400)
            c.tick(60)  # 23:59 by both
            await anyio.sleep(0.5)
            assert not clock.held
            assert not await released()
            assert not await shown()
            c.tick(61)  # 00:00:01 on 1 December
            with anyio.fail_after(10):
                while not await released():
                    await anyio.sleep(0.05)
            assert await shown()
            stop.set()
        n = 0
        async for rec in store.read(stream=rollout_stream(rid)):
            n += rec.type == PublicReleased.__name__
        assert n == 1
