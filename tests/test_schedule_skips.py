"""Fires of a schedule skipped while its run goes: counted, recorded together, truthfully.

In process: the real scheduler on a real SQLite log and projections, with a wall clock
that passes hours at once (``FakeWallClock``: each wait for a fire returns at its time)
and a run that "goes" for a set span of that clock. Then a real ``rollwatch serve`` whose
one-second schedule overlaps a run held by the loopback provider.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus

from rollwatch.config import ScheduleConfig, load_config
from rollwatch.events import (
    RunFinished,
    RunStarted,
    ScheduleMissed,
    ScheduleSkipped,
    parse_rfc3339,
    rfc3339,
    run_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.scheduler import OVERLAP, Scheduler, WallClock, load_states
from rollwatch.store.sqlite import SQLiteEventStore
from tests.test_daemon import _provider, config
from tests.test_runs import events_of
from tests.test_schedules_over_time import schedule, serving, write_config

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeWallClock(WallClock):
    """A wall clock that stands still until a wait for a time moves it there."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime:
        return self.t

    async def wait_until(self, at: datetime, wake: anyio.Event) -> None:
        self.t = max(self.t, at)
        await anyio.lowlevel.checkpoint()


class Runs:
    """The scheduler's ``start_run`` and ``is_running``: each run records ``RunStarted`` and
    goes for ``span`` of the clock (its ``RunFinished`` recorded once that has passed)."""

    def __init__(self, store: SQLiteEventStore, clock: FakeWallClock, span: timedelta, stop_at: int) -> None:
        self.store = store
        self.clock = clock
        self.span = span
        self.started: list[tuple[str, datetime]] = []
        self.stop_at = stop_at
        self.enough = anyio.Event()
        """Set once ``stop_at`` runs started."""
        self.finished: set[str] = set()

    async def start_run(
        self,
        s: ScheduleConfig,
        kind: str,
        trigger_seq: int,
        fire_time: str,
        *,
        due: str | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        run_id = f"run-{len(self.started) + 1}"
        started = RunStarted(
            run_id=run_id,
            schedule=s.name,
            provider="reference",
            models=["reference"],
            problem_set="favorites",
            node="test-node",
            rollouts=1,
            trigger=kind,
            trigger_seq=trigger_seq,
            fire_time=fire_time,
            due=due,
        )
        await self.store.append(run_stream(run_id), [started], expected_version=0)
        self.started.append((run_id, self.clock.now()))
        if len(self.started) >= self.stop_at:
            self.enough.set()
        task_status.started()

    async def is_running(self, schedule: str) -> bool:
        if not self.started:
            return False
        run_id, at = self.started[-1]
        if self.clock.now() < at + self.span:
            return True
        if run_id not in self.finished:
            self.finished.add(run_id)
            fin = RunFinished(run_id=run_id, status="completed", rollouts=1, passed=1, cost_usd=0.0)
            await self.store.append(run_stream(run_id), [fin])
        return False


async def drive(tmp_path: Path, runs_factory: Any, clock: FakeWallClock, until: Any) -> None:
    """Run a scheduler of the one-second schedule ``often`` until ``until(runs)`` is set."""
    path = tmp_path / "rollwatch.toml"
    if not path.exists():
        write_config(tmp_path, schedule("often", 'every = "1s"'))
    cfg = load_config(path)
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(tmp_path / "projections.db", default_projections()) as pdb,
    ):
        runs = runs_factory(store)
        sched = Scheduler(
            cfg.schedules,
            pdb,
            store,
            runs.start_run,
            runs.is_running,
            lambda: pdb.catch_up(store),
            clock=clock,
        )
        async with anyio.create_task_group() as runs_tg, anyio.create_task_group() as loops:
            await sched.run_in(loops, runs_tg)
            with anyio.fail_after(300):
                await until(runs)
            loops.cancel_scope.cancel()


async def log_of(tmp_path: Path) -> tuple[list[ScheduleSkipped], list[ScheduleMissed], list[RunStarted], int]:
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(tmp_path / "projections.db", default_projections()) as pdb,
    ):
        await pdb.catch_up(store)
        skipped = await events_of(store, ScheduleSkipped)
        missed = await events_of(store, ScheduleMissed)
        started = await events_of(store, RunStarted)
        counted = (await load_states(pdb))["often"].skipped
    return skipped, missed, started, counted


def covered(skips: list[ScheduleSkipped]) -> list[datetime]:
    """Every fire time the records stand for, in order (one a second within a record)."""
    out: list[datetime] = []
    for sk in skips:
        last = parse_rfc3339(sk.fire_time)
        first = parse_rfc3339(sk.first_fire_time) if sk.first_fire_time else last
        assert first + (sk.fires - 1) * SECOND == last, sk
        out.extend(first + i * SECOND for i in range(sk.fires))
    return out


@pytest.mark.anyio
class TestSkipsWhileARunGoes:
    async def test_a_one_second_schedule_over_a_long_run_records_a_few_counts(self, tmp_path: Path) -> None:
        """``every = "1s"`` while a run goes for an hour and a half: 5,399 fires are
        skipped. The log records the first at once, then the others counted, once per hour
        of fires and at the run's end: three ScheduleSkipped (1 + 3,600 + 1,798) that
        together name every skipped fire once, one a second. ``schedules``' skipped count
        is 5,399; no fire counts as missed; the next run is the first fire after the run
        ended. Before: 5,399 ScheduleSkipped, one per fire."""
        clock = FakeWallClock(T0)
        span = timedelta(hours=1, minutes=30)
        await drive(
            tmp_path,
            lambda store: Runs(store, clock, span, stop_at=2),
            clock,
            lambda runs: runs.enough.wait(),
        )
        skipped, missed, started, counted = await log_of(tmp_path)
        assert [s.fires for s in skipped] == [1, 3600, 1798]
        assert {s.reason for s in skipped} == {OVERLAP}
        fires = covered(skipped)
        assert fires == [T0 + i * SECOND for i in range(1, 5400)]
        assert counted == 5399
        assert not missed
        assert [(r.trigger, r.fire_time) for r in started] == [
            ("schedule", rfc3339(T0)),
            ("schedule", rfc3339(T0 + span)),
        ]

    async def test_a_daemon_stopped_mid_run_records_its_count_and_the_next_counts_on(
        self, tmp_path: Path
    ) -> None:
        """The scheduler stops half an hour into an hour-long run (the daemon stopping):
        the 1,800 fires skipped so far are in the log as it stops. Started again five
        minutes later, the run still going, the scheduler counts as missed only the 300
        fires of those five minutes (``since`` the last one skipped), its catch-up fire is
        skipped, and it skips on until the run ends. Without the count recorded at the
        stop, the restart took every fire since the first skipped one as missed."""
        clock = FakeWallClock(T0)
        span = timedelta(hours=1)
        first: list[Runs] = []

        def runs(store: SQLiteEventStore) -> Runs:
            first.append(Runs(store, clock, span, stop_at=99))
            return first[-1]

        async def half_an_hour(_: Runs) -> None:
            # The clock moves to a fire's time as the scheduler starts to wait for it:
            # at 12:30:01, the fire of 12:30:00 was made and that of 12:30:01 is not.
            while clock.now() <= T0 + timedelta(minutes=30):
                await anyio.lowlevel.checkpoint()

        await drive(tmp_path, runs, clock, half_an_hour)
        skipped, missed, _, counted = await log_of(tmp_path)
        assert covered(skipped) == [T0 + i * SECOND for i in range(1, 1801)]
        assert counted == 1800
        assert not missed

        clock.t = T0 + timedelta(minutes=35)

        def resumed(store: SQLiteEventStore) -> Runs:
            r = Runs(store, clock, span, stop_at=1)
            r.started = list(first[0].started)  # the run still going, as a restart resumes it
            return r

        await drive(tmp_path, resumed, clock, lambda r: r.enough.wait())
        skipped, missed, started, counted = await log_of(tmp_path)
        assert [(m.missed, m.since) for m in missed] == [(300, rfc3339(T0 + timedelta(minutes=30)))]
        # 12:35:00 is the catch-up fire, skipped (the run goes on) and recorded at once.
        assert covered(skipped) == [T0 + i * SECOND for i in (*range(1, 1801), *range(2100, 3600))]
        assert counted == 1800 + 1500
        assert [(r.trigger, r.fire_time) for r in started] == [
            ("schedule", rfc3339(T0)),
            ("schedule", rfc3339(T0 + span)),
        ]


def _skips_said(err: Path) -> int:
    """Fires the daemon said it skipped: one ``schedule_skipped`` line each (debug for
    those it counts, info for those it records at once)."""
    return sum("schedule_skipped" in line for line in err.read_text().splitlines())


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider holding every answer until ``<request log>.release`` exists."""
    yield from _provider(tmp_path, 0.05, hold_after=0)


def test_a_real_daemon_records_a_one_second_schedules_overlap_in_two_events(
    tmp_path: Path, held: tuple[str, Path]
) -> None:
    """``rollwatch serve`` with ``every = "1s"`` and a run the provider holds: the first
    fire during the run is in the log at once; a dozen more pass (the daemon's debug log
    names each) with nothing more in the log; the run is released and ends. Then one
    more ScheduleSkipped counts the others, recorded after the run's RunFinished and
    before the next run's RunStarted; every fire the daemon said it skipped is counted
    in the log once (the daemon stopped: its last count recorded as it stops), and
    ``schedules list`` shows that count."""
    base_url, requests = held
    cfg = config(tmp_path, base_url, rollouts=1, every="1s")
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    with serving(cfg, env, args=("--log-level", "debug")) as d:
        d.until(lambda: d.events("ScheduleSkipped"), "the first fire skipped while the run goes")
        d.until(lambda: _skips_said(d.err) >= 12, "a dozen fires skipped", 60)
        assert len(d.events("ScheduleSkipped")) == 1
        Path(f"{requests}.release").touch()
        d.until(lambda: len(d.events("RunStarted")) >= 2, "the run after the held one")
        d.stop()
    said = _skips_said(d.err)
    fin = d.events("RunFinished")[0][0]
    second = d.events("RunStarted")[1][0]
    skips = [(seq, data) for seq, _, data in d.events("ScheduleSkipped")]
    during = [data for seq, data in skips if seq < second]
    assert len(during) == 2, during
    assert during[0]["fires"] == 1
    assert during[1]["fires"] >= 11
    assert {data["reason"] for data in during} == {OVERLAP}
    assert fin < [seq for seq, _ in skips][1] < second
    assert sum(data["fires"] for _, data in skips) == said
    listed = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "schedules", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["skipped"] == said
