"""Schedules: when to start runs, rebuilt from the log and the config at every start.

APScheduler 3.11's triggers compute fire times (``IntervalTrigger`` with jitter,
``CronTrigger`` with a time zone); the loop that waits for them is ours, one anyio
task per schedule inside the daemon's task group. APScheduler's own scheduler would
start jobs as bare asyncio tasks outside our task group and keep its state outside
our log; here every decision is an event (runs started, fires skipped or missed,
pauses, resumes, triggers) and the state is derived from those events.

Rules: an ``every`` schedule that never ran starts at once; a ``cron`` one waits for
its time. Fires missed while the daemon was down collapse into one catch-up run (one
``ScheduleMissed`` records how many), within the ``catch_up`` window when one is set.
A fire while the schedule's previous run is still going is skipped and recorded; so
are the fires that passed while it was paused, once it is resumed (one
``ScheduleSkipped``; no run).

Fires skipped while one run goes are not one event each (``every = "1s"`` over an
hour-long run made 3,600 of them, in a log kept forever): the first is recorded at
once, the following ones are counted and recorded together (``ScheduleSkipped.fires``,
from ``first_fire_time`` to ``fire_time``) when the run is over, when the schedule is
paused or stopped, and at least once per hour of fires (:data:`_SKIPS_RECORDED_EVERY`),
so that a daemon killed meanwhile loses at most that hour of the count (its fires then
count as missed at the restart).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast

import anyio
import structlog
from anyio.abc import TaskStatus
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from rollwatch.abc import EventStore
from rollwatch.config import Config, ScheduleConfig
from rollwatch.cron import Trigger, crontab
from rollwatch.errors import IntegrityError, StoreError
from rollwatch.events import ScheduleMissed, ScheduleSkipped, parse_rfc3339, rfc3339, schedule_stream
from rollwatch.log import get_logger
from rollwatch.projections import ProjectionDB

log = get_logger(__name__)
_Logger = structlog.stdlib.BoundLogger

_MAX_COUNT = 10_000
"""Missed fires counted at most (each counted is a look at the trigger: 25 µs for a cron)."""

_SKIPS_RECORDED_EVERY = timedelta(hours=1)
"""Fires skipped while a run goes are recorded together at least this often (of fire time)."""

OVERLAP = "the previous run of this schedule is still going"
"""``ScheduleSkipped.reason`` of fires skipped because the schedule's run was going."""


class WallClock:
    """The time schedules fire by: the UTC wall clock, and a wait until a time on it
    (or until ``wake`` is set). A test replaces it to pass hours at once."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def wait_until(self, at: datetime, wake: anyio.Event) -> None:
        delay = (at - self.now()).total_seconds()
        if delay > 0:
            with anyio.move_on_after(delay):
                await wake.wait()


@dataclass
class _Overlap:
    """Fires of a schedule skipped while its run goes, since the last one recorded."""

    recorded: datetime
    """The fire time of the last one recorded."""
    fires: int = 0
    first: datetime | None = None
    last: datetime | None = None
    last_due: datetime | None = None

    def add(self, fire_time: datetime, due: datetime | None) -> None:
        self.fires += 1
        self.first = self.first or fire_time
        self.last, self.last_due = fire_time, due

    @property
    def handled(self) -> datetime | None:
        """The time the next fire counts from: the last one skipped (before its jitter)."""
        return self.last_due or self.last


def make_trigger(s: ScheduleConfig) -> Trigger:
    """The trigger that computes ``s``'s fire times: APScheduler's, with our jitter."""
    base: Trigger
    if s.cron is not None:
        base = crontab(s.cron, s.timezone)
    else:
        assert s.every is not None
        base = cast(Trigger, IntervalTrigger(seconds=s.every, timezone=UTC))
    return JitteredTrigger(base, s.name, s.jitter) if s.jitter > 0 else base


@dataclass(frozen=True)
class JitteredTrigger:
    """A trigger whose fires are delayed by a jitter drawn once per fire, not per call.

    APScheduler draws its jitter with ``random`` on every ``get_next_fire_time``, so each
    look at a schedule (every ``schedules list``, every wake-up of the daemon's loop)
    saw another time. Here the delay is a function of the schedule's name and the
    un-jittered fire time (SHA-256 of both, scaled to ``[0, jitter)``): the same for
    every process that asks, so the NEXT that ``schedules list`` prints is when the
    daemon fires, and two schedules with one period still spread out.
    """

    base: Trigger
    name: str
    jitter: float
    """Seconds: each fire is delayed by at least 0 and less than this."""

    def delay(self, at: datetime) -> timedelta:
        """The jitter of the fire whose un-jittered time is ``at``."""
        digest = hashlib.sha256(f"{self.name}\0{rfc3339(at)}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        return timedelta(microseconds=int(fraction * self.jitter * 1_000_000))

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The base trigger's next time after ``previous_fire_time`` plus its jitter."""
        at = self.base.get_next_fire_time(previous_fire_time, now)
        return None if at is None else at + self.delay(at)


class _Provider(Protocol):
    @property
    def disabled(self) -> object | None:
        """Why a run gives up on the provider now (a rejected key), or None."""
        ...


def cannot_run(
    config: Config, providers: Mapping[str, _Provider | None], problem_sets: Container[str]
) -> dict[str, str]:
    """Each enabled schedule that cannot run, with why: its problem set did not load, its
    provider has no API key (unless the schedule is ``optional``), or its provider was
    disabled (a key the provider rejected).

    ``providers``: the provider clients by name (a name absent: no key; None: a key, no
    client to ask, as in the CLI); ``problem_sets``: the names of the sets that loaded.
    """
    out: dict[str, str] = {}
    for s in config.schedules:
        if not s.enabled:
            continue
        if s.problem_set not in problem_sets:
            out[s.name] = f"problem set {s.problem_set!r} did not load (see problem_set_invalid in the log)"
        elif s.provider not in providers:
            if not s.optional:
                out[s.name] = (
                    f"provider {s.provider!r} has no API key ({config.provider(s.provider).missing_key()})"
                )
        elif (client := providers[s.provider]) is not None and (
            # A ProviderClient's ``rejected`` stays set while its key is tried again
            # (``disabled`` is None then), until an answer comes.
            why := getattr(client, "rejected", None) or client.disabled
        ) is not None:
            out[s.name] = f"{disabled_prefix(s.provider)}{why}"
    return out


def disabled_prefix(provider: str) -> str:
    """How :func:`cannot_run` begins a reason that is a disabled provider: that one
    alone does not refuse ``schedules trigger``, which tries the key again."""
    return f"provider {provider!r} was disabled: "


@dataclass
class ScheduleState:
    """What the log says about one schedule."""

    name: str
    paused: bool = False
    note: str = ""
    triggered_seq: int = 0
    handled_trigger_seq: int = 0
    last_fire_at: datetime | None = None
    last_run_id: str | None = None
    last_status: str | None = None
    last_started_at: str | None = None
    last_finished_at: str | None = None
    skipped: int = 0
    missed: int = 0


async def load_states(pdb: ProjectionDB) -> dict[str, ScheduleState]:
    """Every schedule's state from the schedules projection."""
    rows = await pdb.fetchall(
        "SELECT name, paused, note, triggered_seq, handled_trigger_seq, last_fire_at, last_run_id,"
        " last_status, last_started_at, last_finished_at, skipped, missed FROM schedules"
    )
    out = {}
    for r in rows:
        out[r[0]] = ScheduleState(
            name=r[0],
            paused=bool(r[1]),
            note=r[2] or "",
            triggered_seq=r[3] or 0,
            handled_trigger_seq=r[4] or 0,
            last_fire_at=parse_rfc3339(r[5]) if r[5] else None,
            last_run_id=r[6],
            last_status=r[7],
            last_started_at=r[8],
            last_finished_at=r[9],
            skipped=r[10] or 0,
            missed=r[11] or 0,
        )
    return out


def next_fire(
    s: ScheduleConfig, trigger: Trigger, last_fire: datetime | None, now: datetime, *, running: bool = False
) -> tuple[datetime | None, int, datetime | None]:
    """(next fire time, fires missed before ``now``, the latest missed fire time).

    With fires missed, the next fire is "now" (one catch-up run), unless all of them
    are older than the ``catch_up`` window: then they are only counted (up to
    :data:`_MAX_COUNT`; past it the count is that, and the latest is taken as now).

    ``running``: a run of the schedule is going, so the fires since ``last_fire`` were
    skipped (a daemon records them together later), not missed: the next fire is the
    first after ``now`` (what a reader of the log, such as ``schedules list``, shows).
    """
    if last_fire is None:
        if s.every is not None:
            return now, 0, None
        return trigger.get_next_fire_time(None, now), 0, None
    if last_fire > now:
        # The wall clock went back past the last fire: counted from it, an ``every``
        # schedule would wait the whole step back on top of its period.
        last_fire = now
    nxt = trigger.get_next_fire_time(last_fire, now)
    missed = 0
    latest: datetime | None = None
    while nxt is not None and nxt <= now:
        missed += 1
        latest = nxt
        if missed == _MAX_COUNT:
            # Too many to walk one by one (a period of seconds over a week down): the
            # count stops here and the fires go on from now. Left in the past, the next
            # fire started another count of missed fires, and another, each its own
            # ScheduleMissed and seconds of this loop's time.
            latest = now
            nxt = trigger.get_next_fire_time(now, now)
            break
        nxt = trigger.get_next_fire_time(nxt, now)
    if missed == 0 or running:
        return nxt, 0, None
    window = s.catch_up
    if window is not None and latest is not None and (now - latest).total_seconds() > window:
        return nxt, missed, latest
    return now, missed, latest


def recorded_fire(trigger: Trigger, last_fire: datetime | None, at: datetime, now: datetime) -> datetime:
    """What a fire at ``at`` that followed ``last_fire`` records as due (``RunStarted.due``):
    its time before its jitter, from which the next fire is counted. Counted from the
    jittered time, each fire of an ``every`` schedule came half the jitter later on
    average than the one before (``every = "24h"``, ``jitter = "1h"``: 15 hours later a
    month on), where each should be delayed by less than the jitter from the schedule's
    own time."""
    if isinstance(trigger, JitteredTrigger) and last_fire is not None:
        base = trigger.base.get_next_fire_time(min(last_fire, now), now)
        if base is not None and base + trigger.delay(base) == at:
            return base
    return at


class FireFn(Protocol):
    """``Daemon.start_run``: what a fire of a schedule starts."""

    async def __call__(
        self,
        s: ScheduleConfig,
        kind: str,
        trigger_seq: int,
        fire_time: str,
        *,
        due: str | None = None,
        task_status: TaskStatus[None] = ...,
    ) -> None:
        """Record RunStarted for a run of ``s``, call ``task_status.started()``, then
        drive the run to its end. ``kind``: schedule, catch_up or trigger."""
        ...


class Scheduler:
    """One task per schedule; ``wake()`` after the log changed (pause, resume, trigger)."""

    def __init__(
        self,
        schedules: list[ScheduleConfig],
        projections: ProjectionDB,
        store: EventStore,
        start_run: FireFn,
        is_running: Callable[[str], Awaitable[bool]],
        refresh: Callable[[], Awaitable[object]],
        *,
        can_fire: Callable[[ScheduleConfig], str | None] = lambda s: None,
        clock: WallClock | None = None,
    ) -> None:
        """``can_fire``: why a schedule cannot start a run now (None: it can). Its fires
        wait meanwhile (``wake()`` once that may have changed); a trigger is skipped."""
        self.schedules = schedules
        self.pdb = projections
        self.store = store
        self.start_run = start_run
        self.is_running = is_running
        self.refresh = refresh
        self.can_fire = can_fire
        self.clock = clock or WallClock()
        self._wake: dict[str, anyio.Event] = {s.name: anyio.Event() for s in schedules}
        self.next_fires: dict[str, datetime | None] = {}
        self._overlaps: dict[str, _Overlap] = {}
        """Schedule → the fires skipped while its run goes, once the first is recorded."""

    def wake(self) -> None:
        """Make every schedule loop look at the log again."""
        for name, ev in list(self._wake.items()):
            ev.set()
            self._wake[name] = anyio.Event()

    async def run_in(self, loops: anyio.abc.TaskGroup, runs: anyio.abc.TaskGroup) -> None:
        """Start one loop per schedule in ``loops``; the runs they fire go to ``runs``.

        Two groups, so that stopping the scheduler (cancelling ``loops``) never cancels a
        run: runs stop on their own terms, with a grace period.
        """
        for s in self.schedules:
            loops.start_soon(self._loop, s, runs, name=f"schedule {s.name}")

    async def _loop(self, s: ScheduleConfig, tg: anyio.abc.TaskGroup) -> None:
        slog = log.bind(schedule=s.name)
        try:
            while True:
                try:
                    await self._loop_once(s, tg, slog)
                except IntegrityError:
                    raise
                except StoreError as e:
                    # The log is out of reach for now (a database outage): nothing was
                    # decided, so look again shortly.
                    slog.warning("schedule_loop_failed", error=str(e), retry_in_s=5.0)
                    await anyio.sleep(5.0)
        except anyio.get_cancelled_exc_class():
            # Stopped: the fires skipped and not yet recorded go in the log now (else the
            # next start would count them as missed).
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                try:
                    await self._record_skips(s, slog, ended=True)
                except StoreError as e:  # out of reach, or the leadership lost
                    slog.warning("schedule_skips_unrecorded", error=str(e))
            raise

    async def _loop_once(self, s: ScheduleConfig, tg: anyio.abc.TaskGroup, slog: _Logger) -> None:
        trigger = make_trigger(s)
        was_paused = False
        while True:
            wake = self._wake[s.name]
            await self.refresh()
            if s.name in self._overlaps and not await self.is_running(s.name):
                await self._record_skips(s, slog, ended=True)  # the run is over
            st = (await load_states(self.pdb)).get(s.name, ScheduleState(name=s.name))
            now = self.clock.now()
            blocked = self.can_fire(s)
            if (ov := self._overlaps.get(s.name)) is not None and ov.handled is not None:
                # Fires skipped since the log's last: the next one counts from them.
                st.last_fire_at = max(st.last_fire_at or ov.handled, ov.handled)
            if st.triggered_seq > st.handled_trigger_seq:
                if blocked is not None:
                    await self._skip(s, f"the schedule cannot run: {blocked}", now, st.triggered_seq)
                    slog.warning("schedule_skipped", reason=blocked, trigger="trigger")
                    continue
                await self._fire(s, st, tg, "trigger", st.triggered_seq, now, slog)
                continue
            if st.paused or not s.enabled or blocked is not None:
                await self._record_skips(s, slog, ended=True)
                was_paused = was_paused or st.paused
                self.next_fires[s.name] = None
                await wake.wait()
                continue
            nxt, missed, latest = next_fire(s, trigger, st.last_fire_at, now)
            self.next_fires[s.name] = nxt
            if missed and was_paused:
                # Resumed: the fires that passed during the pause were the operator's to
                # stop, not missed (a catch-up run at once, ScheduleMissed counting them).
                was_paused = False
                await self._skip(s, "fires passed while the schedule was paused", latest or now, 0)
                slog.info("schedule_resumed_after_fires", skipped_fires=missed)
                continue
            was_paused = False
            if missed:
                await self.store.append(
                    schedule_stream(s.name),
                    [
                        ScheduleMissed(
                            schedule=s.name,
                            missed=missed,
                            since=rfc3339(st.last_fire_at or now),
                        )
                    ],
                )
                slog.info("schedule_missed", missed=missed, catch_up=nxt == now)
                if nxt != now:
                    # Too old to catch up: remember them as handled and wait for the next.
                    await self.store.append(
                        schedule_stream(s.name),
                        [
                            ScheduleSkipped(
                                schedule=s.name,
                                reason="missed fires older than the catch_up window",
                                fire_time=rfc3339(latest or now),
                            )
                        ],
                    )
                    continue
            if nxt is None:
                await wake.wait()
                continue
            if nxt > now:
                await self.clock.wait_until(nxt, wake)
                if self.clock.now() < nxt:
                    continue  # woken by the log: look again
            due = None if missed else recorded_fire(trigger, st.last_fire_at, nxt, now)
            await self._fire(
                s, st, tg, "catch_up" if missed else "schedule", 0, nxt, slog, due=None if due == nxt else due
            )

    async def _fire(
        self,
        s: ScheduleConfig,
        st: ScheduleState,
        tg: anyio.abc.TaskGroup,
        kind: str,
        trigger_seq: int,
        fire_time: datetime,
        slog: _Logger,
        *,
        due: datetime | None = None,
    ) -> None:
        """``due``: the fire's time before its jitter (see :func:`recorded_fire`)."""
        ft = rfc3339(fire_time)
        if await self.is_running(s.name):
            ov = self._overlaps.get(s.name)
            if kind == "trigger" or ov is None:
                # A trigger is answered in the log at once; a run's first skipped fire is
                # recorded at once (a reader learns that its fires are being skipped).
                await self._skip(s, OVERLAP, fire_time, trigger_seq, due=due)
                slog.info("schedule_skipped", reason="overlap", fire_time=ft, trigger=kind)
                if kind != "trigger":
                    self._overlaps[s.name] = _Overlap(recorded=fire_time)
                return
            # Counted, recorded with the others (see the module docstring).
            slog.debug("schedule_skipped", reason="overlap", fire_time=ft, trigger=kind, counted=True)
            ov.add(fire_time, due)
            if fire_time - ov.recorded >= _SKIPS_RECORDED_EVERY:
                await self._record_skips(s, slog, ended=False)
            return
        await self._record_skips(s, slog, ended=True)
        # The run records RunStarted before start() returns, so the next look at the log
        # sees this fire as done.
        await tg.start(
            functools.partial(self.start_run, due=None if due is None else rfc3339(due)),
            s,
            kind,
            trigger_seq,
            ft,
            name=f"run of {s.name}",
        )

    async def _record_skips(self, s: ScheduleConfig, slog: _Logger, *, ended: bool) -> None:
        """Record the fires of ``s`` skipped while its run goes and not recorded yet, as
        one ``ScheduleSkipped``; ``ended``: the overlap is over (the run ended, or the
        schedule is paused or stopped)."""
        ov = self._overlaps.get(s.name)
        if ov is None:
            return
        if ov.fires:
            assert ov.first is not None
            assert ov.last is not None
            await self.store.append(
                schedule_stream(s.name),
                [
                    ScheduleSkipped(
                        schedule=s.name,
                        reason=OVERLAP,
                        fire_time=rfc3339(ov.last),
                        due=None if ov.last_due is None else rfc3339(ov.last_due),
                        fires=ov.fires,
                        first_fire_time=rfc3339(ov.first),
                    )
                ],
            )
            slog.info(
                "schedule_skips_recorded", fires=ov.fires, first=rfc3339(ov.first), last=rfc3339(ov.last)
            )
            self._overlaps[s.name] = _Overlap(recorded=ov.last)
        if ended:
            del self._overlaps[s.name]

    async def _skip(
        self,
        s: ScheduleConfig,
        reason: str,
        fire_time: datetime,
        trigger_seq: int,
        *,
        due: datetime | None = None,
    ) -> None:
        """Record a fire of ``s`` that starts no run (the trigger ``trigger_seq`` answered)."""
        await self.store.append(
            schedule_stream(s.name),
            [
                ScheduleSkipped(
                    schedule=s.name,
                    reason=reason,
                    fire_time=rfc3339(fire_time),
                    trigger_seq=trigger_seq,
                    due=None if due is None else rfc3339(due),
                )
            ],
        )


def fmt_next(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    return rfc3339(dt)[:19] + "Z"


__all__ = [
    "OVERLAP",
    "JitteredTrigger",
    "ScheduleState",
    "Scheduler",
    "WallClock",
    "disabled_prefix",
    "fmt_next",
    "load_states",
    "make_trigger",
    "next_fire",
    "recorded_fire",
]
