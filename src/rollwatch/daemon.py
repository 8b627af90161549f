"""The composition root: wires the store, projections, providers, scorer, scheduler,
runs and HTTP server together (``rollwatch serve``).

Lifecycle (modelled on APScheduler 4's ``run_until_stopped``): everything opens on
one ``AsyncExitStack``, the daemon's tasks as *stages* (see :class:`Stages`) started
in order and stopped in reverse. The HTTP server listens first, having imported little
more than the config and /healthz (which answers at once; other requests wait the few
hundred milliseconds until the rest is imported, in a worker thread, and opened: the
store, the scoring pool, the providers, the integrity service, every route); READY=1
goes to systemd then; the projections are built behind it (``/healthz`` and ``STATUS=`` lines
show how far, and the routes that read them answer 503 with ``Retry-After`` until
they are current); only then do the loops, the runs and the schedules start. SIGTERM/SIGINT:
STOPPING=1, the scheduler stops firing, every run stops starting rollouts and gives
those in flight a grace period, the background loops stop, a final checkpoint is
signed, the HTTP server closes, and the process exits 0.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import socket
import sqlite3
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus

from rollwatch.config import Config, ScheduleConfig
from rollwatch.errors import IntegrityError, NewerSchema, NotLeading, StoreError, storage_failure
from rollwatch.log import get_logger
from rollwatch.metrics import Metrics
from rollwatch.notify import Notifier

if TYPE_CHECKING:
    from starlette.routing import Route
    from starlette.types import ASGIApp

    from rollwatch.integrity.service import Integrity
    from rollwatch.projections import ProjectionDB
    from rollwatch.publication.clock import ReleaseClock
    from rollwatch.publication.keys import SubscriberDirectory
    from rollwatch.publication.routes import PublicationAPI
    from rollwatch.runs import ProblemSetLike, ProviderLike, Run, RunServices, ScorerLike
    from rollwatch.scheduler import Scheduler
    from rollwatch.web.access import Operators
    from rollwatch.web.server import HTTPServer

#: What ``serve`` needs beyond answering /healthz: imported after the server listens (in a
#: worker thread, so that the event loop answers meanwhile), never before. The start of
#: ``serve`` imports only the HTTP server, /healthz and /metrics (tests/test_start.py).
LATER = (
    "prometheus_client",
    "rollwatch.events",
    "rollwatch.store",
    "rollwatch.projections",
    "rollwatch.readmodels",
    "rollwatch.problems",
    "rollwatch.scoring",
    "rollwatch.providers.client",
    "rollwatch.runs",
    "rollwatch.scheduler",
    "rollwatch.integrity.service",
    "rollwatch.publication.keys",
    "rollwatch.publication.proofs",
    "rollwatch.publication.release",
    "rollwatch.publication.routes",
    "rollwatch.web.console",
)


def import_later() -> None:
    """Import :data:`LATER` (what the daemon needs once it listens), and compile the pages'
    templates."""
    for name in LATER:
        importlib.import_module(name)
    from rollwatch.web.render import compile_templates

    compile_templates()


log = get_logger(__name__)

_REBUILD_AT_MOST_EVERY = 60.0
"""Seconds between two builds of the read models that readers asked for (see
``Daemon._rebuild_when_distrusted``): a finding that a build does not clear waits this long."""
_PROGRESS_EVERY = 5.0
"""Seconds between progress lines (log and systemd STATUS=) while the projections build."""


def load_problem_sets(config: Config) -> dict[str, ProblemSetLike]:
    """Every configured problem set that loads; a broken one is logged and left out."""
    from rollwatch.errors import ProblemError
    from rollwatch.problems import load_problem_set

    out: dict[str, ProblemSetLike] = {}
    for ps in config.problem_sets:
        try:
            out[ps.name] = load_problem_set(ps)
        except ProblemError as e:
            log.error("problem_set_invalid", problem_set=ps.name, error=str(e))
    return out


@asynccontextmanager
async def open_services(
    config: Config,
    *,
    scorer: ScorerLike | None = None,
    providers: dict[str, ProviderLike] | None = None,
    defer_projections: bool = False,
) -> AsyncIterator[RunServices]:
    """Open everything a run needs; close it all on exit.

    ``defer_projections``: the projections' tables are not touched on opening; the
    caller builds them (:meth:`ProjectionDB.build`), and they are not ``ready`` until then.

    ``scorer`` and ``providers``, when given, are used instead of the scoring pool and
    the provider clients the config describes (another implementation of the same
    plug-in point: a test's, say); they are the caller's to open and close.
    """
    from rollwatch.projections import ProjectionDB
    from rollwatch.readmodels import default_projections
    from rollwatch.runs import RunServices
    from rollwatch.scoring import ScoringPool, settings_from_config
    from rollwatch.store import open_store

    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(config.store))
        pdb = await stack.enter_async_context(
            ProjectionDB(config.store.projections_path, default_projections(), setup=not defer_projections)
        )
        problem_sets = load_problem_sets(config)
        if scorer is None:
            scorer = await stack.enter_async_context(ScoringPool(settings_from_config(config.scoring)))
        if providers is None:
            providers = await _open_providers(config, stack)
        # The owner name is unique per process, so a node restarted under the same name
        # never renews the leases of its previous life.
        board = store.work_board(f"{config.node}/{uuid.uuid4().hex[:8]}", config.cluster.lease)
        leases: TaskGroup = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(leases.cancel_scope.cancel)
        await leases.start(board.keep)
        yield RunServices(
            config=config,
            store=store,
            projections=pdb,
            providers=providers,
            problem_sets=problem_sets,
            scorer=scorer,
            node=config.node,
            locks_dir=config.store.projections_path.parent / "locks",
            board=board,
        )


async def _open_providers(config: Config, stack: AsyncExitStack) -> dict[str, ProviderLike]:
    """A client for every configured provider that has a key, closed with ``stack``."""
    from rollwatch.providers.client import ProviderClient

    providers: dict[str, ProviderLike] = {}
    for p in config.providers:
        if not p.has_key():
            log.info(
                "provider_skipped",
                provider=p.name,
                reason="no API key set",
                key_source=p.api_key_env or p.api_key_file,
            )
            continue
        providers[p.name] = await stack.enter_async_context(ProviderClient(p))
    return providers


class Stages:
    """The daemon's parts as stages on one exit stack: started in order, stopped in
    the reverse order.

    A stage is a task group; its ``stop`` is how its tasks are told to end (set an
    event, cancel the group, or nothing when they end on their own), and the stage is
    stopped once they have. So a stage started later always stops first, and each
    keeps whatever it uses from the stages before it until it is through.
    """

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack

    async def start(self, name: str, *, stop: Callable[[TaskGroup], object]) -> TaskGroup:
        """Open stage ``name``; its tasks go in the task group returned."""
        return await self._stack.enter_async_context(_stage(name, stop))


@asynccontextmanager
async def _stage(name: str, stop: Callable[[TaskGroup], object]) -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as tg:
        yield tg
        log.debug("daemon_stage_stopping", stage=name)
        stop(tg)


class Daemon:
    """``rollwatch serve``: scheduler, runs, release job and feed server."""

    def __init__(
        self,
        config: Config,
        *,
        grace: float = 30.0,
        notifier: Notifier | None = None,
        scorer: ScorerLike | None = None,
        providers: dict[str, ProviderLike] | None = None,
        stop_requested: list[int] | None = None,
    ) -> None:
        """``scorer`` and ``providers``: see :func:`open_services`. ``stop_requested``: the
        SIGTERMs received before the daemon catches them (``serve`` collects them from its
        first moment): one there stops the daemon as soon as it can stop cleanly."""
        self.config = config
        self._stop_requested = stop_requested if stop_requested is not None else []
        self.grace = grace
        self.notifier = notifier or Notifier()
        self._scorer = scorer
        self._providers = providers
        self.metrics = Metrics()
        self.active: dict[str, Run] = {}  # run_id -> Run driven by this process
        self.leading = False
        """Whether this node leads (fires schedules; on a shared log, checks problems)."""
        self._problems_lock = anyio.Lock()
        self.by_schedule: dict[str, str] = {}  # schedule -> run_id
        self.stopping = anyio.Event()
        self.http: HTTPServer | None = None
        self.services: RunServices | None = None
        self.scheduler: Scheduler | None = None
        self.publication: PublicationAPI | None = None
        self.directory: SubscriberDirectory | None = None
        """Who may read (the feed's keys, the console's ``ops`` keys), read from the log."""
        self.clock: ReleaseClock | None = None
        """The clock releases go by (made once the services are open)."""
        self._runs: TaskGroup | None = None  # where every run this process drives goes

    # -- runs -----------------------------------------------------------------------------

    async def is_running(self, schedule: str) -> bool:
        """Whether a run of ``schedule`` is going, here or in another process: a
        ``rollwatch run`` of it (which holds its run's lock), or, on a shared log, any
        unfinished run of it (every node joins those)."""
        from rollwatch.runs import RunLock

        assert self.services is not None
        svc = self.services
        await svc.projections.catch_up(svc.store)
        if (mine := self.by_schedule.get(schedule)) is not None:
            # Driven or joined here; finished in the log already if another node ended it
            # a moment ago and this one's driver has not seen it yet (a trigger then was
            # skipped as an overlap with a run that was over).
            row = await svc.projections.fetchone("SELECT finished_at FROM runs WHERE run_id = ?", (mine,))
            if row is None or row[0] is None:
                return True
        rows = await svc.projections.fetchall(
            "SELECT run_id FROM runs WHERE schedule = ? AND finished_at IS NULL", (schedule,)
        )
        for (run_id,) in rows:
            if svc.board.shared:
                return True
            lock = RunLock(svc.locks_dir, run_id)
            if not lock.acquire():
                return True
            lock.release()
        return False

    async def _drive(self, run: Run) -> None:
        """Drive ``run`` until it ends or the daemon stops. A run that fails (the
        database went away, say) is resumed from the log after a pause that doubles up
        to a minute: the daemon stays up and the run is not abandoned."""
        from rollwatch.runs import Run

        assert self.services is not None
        self.active[run.run_id] = run
        self.by_schedule[run.schedule] = run.run_id
        pause = 1.0
        try:
            while True:
                if self.stopping.is_set():
                    run.stopping.set()
                try:
                    await run.drive(grace=self.grace)
                    return
                except Exception as e:
                    if (failure := storage_failure(e)) is not None:
                        log.error("run_crashed", run_id=run.run_id, error=failure, retry_in_s=pause)
                    else:
                        log.exception("run_crashed", run_id=run.run_id, retry_in_s=pause)
                while True:
                    with anyio.move_on_after(pause):
                        await self.stopping.wait()
                    if self.stopping.is_set():
                        return
                    pause = min(pause * 2, 60.0)
                    try:
                        # Chunks this process still holds go back first: the new
                        # attempt claims them again and reads their state from the log.
                        await self.services.board.release(run.run_id)
                        run = await Run.load(self.services, run.run_id)
                        break
                    except Exception as e:
                        log.warning("run_resume_failed", run_id=run.run_id, error=str(e), retry_in_s=pause)
                self.active[run.run_id] = run
        finally:
            self.active.pop(run.run_id, None)
            if self.by_schedule.get(run.schedule) == run.run_id:
                del self.by_schedule[run.schedule]

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
        """A scheduler fire: record RunStarted, report started, drive the run."""
        from rollwatch.runs import Run
        from rollwatch.runs.services import TriesAgain

        assert self.services is not None
        if self.stopping.is_set():
            task_status.started()
            return
        provider = self.services.providers.get(s.provider)
        if isinstance(provider, TriesAgain):
            # A provider disabled by a rejected key is tried again by this run's first
            # request (a rollout, or a batch's create: see ``providers/client.py``).
            provider.try_again()
        try:
            run = await Run.start(
                self.services, s, trigger=kind, trigger_seq=trigger_seq, fire_time=fire_time, due=due
            )
        except NotLeading as e:
            # Deposed while firing: the new leader decides this fire.
            log.warning("run_not_started", schedule=s.name, reason=str(e))
            task_status.started()
            return
        # Only now: a fire whose RunStarted could not be appended (the log locked or out of
        # reach) raises to the scheduler, which looks again shortly and fires it then.
        # Reported started first, the error went to the scheduler's task group instead,
        # and took the daemon down.
        task_status.started()
        # The run outlives this node's leadership: its rollouts are no leader's work.
        from rollwatch.abc import LEADERSHIP

        LEADERSHIP.set(None)
        await self._drive(run)

    async def resume_unfinished(self, tg: TaskGroup) -> int:
        """Start driving every run that has no RunFinished and that this process does not
        drive yet (nor, on a log one machine owns, another process)."""
        from rollwatch.runs import Run, RunLock, unfinished_runs

        assert self.services is not None
        n = 0
        for run_id in await unfinished_runs(self.services):
            if run_id in self.active or self.stopping.is_set():
                continue
            if not self.services.board.shared:
                lock = RunLock(self.services.locks_dir, run_id)
                if not lock.acquire():
                    continue
                lock.release()
            run = await Run.load(self.services, run_id)
            self.active[run.run_id] = run
            log.info(
                "run_joining" if self.services.board.shared else "run_resuming",
                run_id=run_id,
                schedule=run.schedule,
            )
            tg.start_soon(self._drive, run, name=f"run {run_id}")
            n += 1
        return n

    async def _join_runs(self) -> None:
        """On a shared log: take part in every unfinished run, whoever started it (at
        start, and within a second of each RunStarted); returns once stopping."""
        assert self.services is not None
        assert self._runs is not None
        store = self.services.store
        async with anyio.create_task_group() as tg:

            async def until_stopping() -> None:
                await self.stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(until_stopping)
            after = await store.head()
            await self.resume_unfinished(self._runs)
            while True:
                try:
                    head = await store.wait_for_new(after, timeout=5.0)
                    if [ev async for ev in store.read(after=after, until=head, types={"RunStarted"})]:
                        await self.resume_unfinished(self._runs)
                    after = head
                except IntegrityError:
                    raise
                except StoreError as e:
                    log.warning("join_runs_failed", error=str(e), retry_in_s=5.0)
                    await anyio.sleep(4.0)
                await anyio.sleep(1.0)  # at most one look a second, however busy the log

    # -- background tasks ----------------------------------------------------------------------

    async def _follow_log(self) -> None:
        """Keep metrics and projections current, and wake the scheduler on schedule events."""
        assert self.services is not None
        svc = self.services
        after = await svc.store.head()
        self.metrics.events_seen = after
        while True:
            wake = False
            try:
                async for page in svc.store.read_batches(after=after, batch=1000):
                    for ev in page:
                        self.metrics.observe_event(ev)
                        if ev.type.startswith("Schedule") and ev.type not in (
                            "ScheduleSkipped",
                            "ScheduleMissed",
                        ):
                            wake = True
                        elif ev.type == "RunFinished":
                            # A schedule whose fires were skipped while this run went
                            # records them now, not at its next fire.
                            wake = True
                    after = page[-1].seq
                if wake and self.scheduler is not None:
                    await svc.projections.catch_up(svc.store)
                    self.scheduler.wake()
                await svc.store.wait_for_new(after, timeout=1.0)
            except IntegrityError:
                raise
            except StoreError as e:
                log.warning("follow_log_failed", error=str(e), retry_in_s=5.0)
                await anyio.sleep(5.0)

    async def _rebuild_when_distrusted(self) -> None:
        """Build the read models again from the log whenever a reader finds the file in use
        contradicting it (``projections_tampered``: a row edited by someone holding the
        file). Until the new file is in, the routes keep leaving out what does not hold.
        At most one build every ``_REBUILD_AT_MOST_EVERY`` seconds."""
        assert self.services is not None
        svc = self.services
        pdb = svc.projections
        wanted = anyio.Event()
        reasons: list[str] = []

        def distrusted(why: str) -> None:
            reasons.append(why)
            wanted.set()

        pdb.on_distrusted = distrusted
        try:
            while True:
                await wanted.wait()
                started = anyio.current_time()
                log.warning(
                    "projections_rebuilding",
                    reason=reasons[0],
                    findings=len(reasons),
                    hint="the read models contradicted the log: built again from it",
                )
                wanted = anyio.Event()
                reasons.clear()
                try:
                    head = await pdb.rebuild_beside(svc.store)
                except StoreError as e:
                    log.error("projections_rebuild_failed", error=str(e))
                else:
                    log.info("projections_rebuilt", seq=head, took_s=round(anyio.current_time() - started, 2))
                await anyio.sleep(max(0.0, started + _REBUILD_AT_MOST_EVERY - anyio.current_time()))
        finally:
            pdb.on_distrusted = None

    async def _lead(self) -> None:
        """The leader's work, until stopping: fire schedules (and, on a log one machine
        owns, resume unfinished runs; on a shared log every node joins them anyway)."""
        assert self.scheduler is not None
        assert self.services is not None
        assert self._runs is not None
        resumed = 0 if self.services.board.shared else await self.resume_unfinished(self._runs)
        log.info("leading", node=self.config.node, resumed=resumed)
        self.leading = True
        try:
            async with anyio.create_task_group() as loops:
                await self.scheduler.run_in(loops, self._runs)
                if self.services.board.shared:
                    # The check at start was left to the leader: that is us now.
                    loops.start_soon(self.check_problems, self.services, "leading")
                await self.stopping.wait()
                loops.cancel_scope.cancel()
        finally:
            self.leading = False

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            # The receiver first: a SIGTERM from now on is its, one before it is in the list.
            early = bool(self._stop_requested)
            signum = self._stop_requested[0] if early else await anext(aiter(signals))
            log.info(
                "shutdown_requested",
                signal=signal.Signals(signum).name,
                runs=len(self.active),
                grace_s=self.grace,
                **({"while_starting": True} if early else {}),
            )
            self.notifier.notify(STOPPING=1, STATUS="stopping")
            self.stopping.set()

    async def _watch_problems(self, svc: RunServices, hups: AsyncIterator[int]) -> None:
        """Notice changed problems at start and on SIGHUP (the problem folders are read
        again): see :meth:`check_problems`. Runs already going keep the problem
        versions they started with. ``hups`` was opened as the daemon began: a SIGHUP
        while it was starting (which would otherwise have ended it) is read here."""
        await self.check_problems(svc, "start")
        async for _ in hups:
            try:
                fresh = await anyio.to_thread.run_sync(load_problem_sets, self.config)
            except Exception:
                log.error("problems_reload_failed", exc_info=True)
                continue
            svc.problem_sets.update(fresh)
            log.info("problems_reloaded", problem_sets=sorted(fresh))
            await self.check_problems(svc, "sighup")
            # A schedule, or an unfinished run, that waited for a set loaded now.
            if self.scheduler is not None:
                self.scheduler.wake()
            if self._runs is not None and (self.leading or svc.board.shared):
                try:
                    await self.resume_unfinished(self._runs)
                except StoreError as e:
                    log.warning("runs_resume_failed", error=str(e))

    async def check_problems(self, svc: RunServices, why: str) -> None:
        """Record the new version of every changed problem and, with ``scoring.rescore =
        "auto"``, re-score the archive against it, one sample at a time so runs keep
        the pool. On a shared log only the leading node does it (each node would
        otherwise re-score the same answers); it checks when it comes to lead. Never
        raises: a failure is logged and the next start or SIGHUP tries again."""
        from rollwatch.runs.rescore import record_versions, rescore

        if svc.board.shared and not self.leading:
            log.info("problems_check_left_to_leader", trigger=why)
            return
        async with self._problems_lock:
            try:
                if self.config.scoring.rescore == "auto":
                    summary = await rescore(svc, parallel=1, infra=False)
                    log.info(
                        "problems_checked",
                        trigger=why,
                        new_versions=len(summary.versions),
                        rescored=summary.rescored,
                    )
                    return
                versions = await record_versions(svc)
                if versions:
                    log.warning(
                        "problems_changed",
                        trigger=why,
                        problems=[f"{v.problem_set}/{v.problem_id}" for v in versions],
                        hint="`rollwatch rescore` judges the archived answers again"
                        ' (or set scoring.rescore = "auto")',
                    )
            except Exception:
                log.error("problems_check_failed", trigger=why, exc_info=True)

    # -- the whole lifetime --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (or ``stopping`` is set), then stop cleanly.

        The server listens first, with /healthz only (the rest of the routes wait for the
        whole app): what the other routes, the runs and the scoring need is imported and
        opened once it answers, and READY=1 follows once it is all open.
        """
        from rollwatch.web.app import Starting, build_app
        from rollwatch.web.server import HTTPServer, listening_sockets, raise_open_file_limit

        async with AsyncExitStack() as stack:
            # SIGHUP (a reload) is caught from the first moment: while the daemon starts it
            # waits in this receiver, and is read once the problems are watched. (Its
            # default would end the daemon.) Once the receiver is closed, it is ignored.
            stack.callback(signal.signal, signal.SIGHUP, signal.SIG_IGN)
            hups = stack.enter_context(anyio.open_signal_receiver(signal.SIGHUP))
            # The address first: a busy port is reported before anything is opened or
            # created (a scoring pool, a fresh checkpoint key).
            host, port = self.config.server.host, self.config.server.port
            raise_open_file_limit()  # before the server sizes its connection limits by it
            sockets = await anyio.to_thread.run_sync(listening_sockets, host, port)
            for s in sockets:
                stack.callback(s.close)
            # Then one daemon per SQLite log (after the port: a busy one is said first, with
            # nothing made for nothing).
            lock = await anyio.to_thread.run_sync(one_daemon_per_sqlite_log, self.config)
            if lock is not None:
                stack.callback(os.close, lock)
            gate = Starting(build_app(self.metrics, status=self.projection_status))
            http = self.http = HTTPServer(
                gate, host, port, head_timeout=self.config.server.request_head_timeout, sockets=sockets
            )

            # The stages, started in this order and stopped in the reverse order once
            # ``stopping`` is set.
            stages = Stages(stack)
            signals = await stages.start("signals", stop=lambda tg: tg.cancel_scope.cancel())
            signals.start_soon(self._signals)
            signals.start_soon(self.notifier.watchdog)
            # The server listens before anything else is opened (its task group is the
            # outer one), and is stopped by the "serving" stage below, after what opens
            # later (a task group entered later exits first): it keeps the services it
            # answers from until it has stopped. This stage only cancels a server that a
            # failure to start left running.
            http_done = anyio.Event()

            async def serve_http(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                try:
                    await http.run(task_status=task_status)
                finally:
                    http_done.set()

            listening = await stages.start("listening", stop=lambda tg: tg.cancel_scope.cancel())
            await listening.start(serve_http)
            # /healthz answers from here on; the imports run in a worker thread so that
            # the event loop is free to answer it meanwhile.
            try:
                await anyio.to_thread.run_sync(import_later)
                integrity = await self._open(stack)
            except BaseException:
                # A failure to start (say, no sandbox): the server closes its socket and
                # connections (a cancelled one would leave them open), then the error is told.
                http.stop()
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await http_done.wait()
                raise
            from rollwatch.publication.clock import ReleaseClock
            from rollwatch.publication.release import release_job
            from rollwatch.scheduler import Scheduler

            svc = self.services
            assert svc is not None
            # The clock's offset from the steady one is taken now, and compared with the
            # log before this daemon appends anything to it.
            clock = self.clock = ReleaseClock()
            await clock.check_log(svc.store)
            if clock.skewed is not None:
                # Before this node appends or decides anything by its clock.
                from rollwatch.errors import ClockSkewed
                from rollwatch.publication.clock import SKEW_S

                raise ClockSkewed(clock.skewed, SKEW_S)
            # Every decision this node makes is dated by the latest time it knows has passed.
            svc.decision_time = clock.decision_time
            gate.open(self._whole_app(svc, integrity))
            # Stopped, the server closes its socket and lets open requests finish (for
            # at most its graceful-shutdown timeout). It listens before the projections
            # are built: /healthz shows their progress, and the routes that read them
            # answer 503 with Retry-After until they are current.
            serving = await stages.start("serving", stop=lambda _: http.stop())
            serving.start_soon(http_done.wait)
            # READY=1 now, not once caught up: the daemon serves (health, metrics, the
            # integrity routes) and says how far it is. A catch-up of millions of events
            # takes minutes, longer than any start timeout one could set in advance; and
            # `systemctl start` would hang for as long. STATUS= lines carry the progress.
            self.notifier.notify(READY=1, STATUS="listening; building the read models")
            log.info("daemon_listening", listen=f"{host}:{http.port}", node=self.config.node)
            # The tree and checkpoints outlive the runs and the loops: the final
            # checkpoint covers everything they recorded. A log that no longer matches
            # what was signed raises here and stops the daemon, loudly.
            # The projections build meanwhile (the integrity check at start reads the
            # log in its own process); nothing that reads them starts before they are built.
            built = anyio.Event()
            current = False
            # The check at start waits for a build of the read models from the whole log:
            # each takes both cores (two processes each), so one after the other the read
            # models are current in about half the time, and the check ends when it would
            # have. A catch-up in place (one process) and a build that failed do not hold it.
            check_may_start = anyio.Event()

            def planned(beside: bool) -> None:
                if not beside:
                    check_may_start.set()

            async def build() -> None:
                nonlocal current
                try:
                    current = await self._build_projections(svc, planned)
                finally:
                    built.set()
                    check_may_start.set()
                if current and self.publication is not None:
                    # The reports' first answers made now, not on the first request.
                    await self.publication.prime_reports()

            building = await stages.start("projections", stop=lambda tg: tg.cancel_scope.cancel())
            building.start_soon(build)
            building.start_soon(self._load_keys)
            integrity_stop = anyio.Event()
            checkpoints = await stages.start("checkpoints", stop=lambda _: integrity_stop.set())
            # The integrity service's start gives way to a stop, as the build does: the
            # scrub at start reads the whole log (40 s a million events), and SIGTERM
            # meanwhile ends the daemon now, not once it is done. A start cut short signs
            # nothing (the log was not checked) and runs nothing.
            if not await self._unless_stopping(
                checkpoints.start,
                functools.partial(integrity.run, check_after=check_may_start.wait),
                integrity_stop,
            ):
                task_status.started()
                log.info("daemon_stopped", while_starting=True)
                return
            await built.wait()
            if not current:
                task_status.started()
                await self.stopping.wait()
                log.info("daemon_stopped")
                return
            schedules = self._active_schedules(svc)
            self.scheduler = Scheduler(
                schedules,
                svc.projections,
                svc.store,
                self.start_run,
                self.is_running,
                lambda: svc.projections.catch_up(svc.store),
                can_fire=self._can_fire,
            )
            background = await stages.start("background", stop=lambda tg: tg.cancel_scope.cancel())
            background.start_soon(self._follow_log)
            background.start_soon(self._rebuild_when_distrusted)
            await background.start(
                functools.partial(
                    release_job,
                    svc.store,
                    svc.projections,
                    interval=self.config.publication.release_check,
                    stop_event=self.stopping,
                    health=integrity.health,
                    clock=clock,
                    check=integrity,
                    missed=integrity.take_due,
                )
            )
            background.start_soon(self._watch_problems, svc, hups)
            # Runs, once told to stop, start no more rollouts; those in flight get the
            # grace period.
            self._runs = await stages.start("runs", stop=lambda _: self._stop_runs())
            # One node among those sharing the log fires schedules; the others stand by
            # to take over. On a shared log every node takes part in every run. Both
            # return once ``stopping`` is set.
            leading = await stages.start("leading", stop=lambda _: None)
            await leading.start(
                functools.partial(svc.store.lead, lease=self.config.cluster.lease),
                "scheduler",
                self._lead,
                self.stopping,
            )
            if svc.board.shared:
                leading.start_soon(self._join_runs)

            if self.publication is not None:
                await self.publication.prime_public()
            self.notifier.notify(STATUS=f"serving on {self.config.server.listen}")
            log.info(
                "daemon_ready",
                listen=f"{self.config.server.host}:{http.port}",
                node=self.config.node,
                schedules=[s.name for s in schedules],
            )
            task_status.started()
            await self.stopping.wait()
        log.info("daemon_stopped")

    async def _unless_stopping(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Await ``fn(*args)``, cancelled once ``stopping`` is set; whether it finished."""
        done = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await self.stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await fn(*args)
            done = True
            tg.cancel_scope.cancel()
        return done

    async def _open(self, stack: AsyncExitStack) -> Integrity:
        """Open the services (:attr:`services`) and the integrity service on ``stack``."""
        from rollwatch.integrity.service import open_integrity
        from rollwatch.providers.client import ProviderClient

        svc = await stack.enter_async_context(
            open_services(self.config, scorer=self._scorer, providers=self._providers, defer_projections=True)
        )
        self.services = svc
        svc.store.append_observer = self.metrics.append_latency.observe
        self.metrics.scoring_queue = lambda: sum(r.state.scoring for r in self.active.values())
        self.metrics.providers = lambda: [
            c.stats for c in svc.providers.values() if isinstance(c, ProviderClient)
        ]
        integrity = await stack.enter_async_context(
            open_integrity(
                self.config.integrity,
                self.config.store,
                svc.store,
                self.config.node,
                lease=self.config.cluster.lease,
            )
        )
        self.metrics.witnessed = integrity.witnessed if integrity.witnessing is not None else None
        return integrity

    async def _load_keys(self) -> None:
        """Read the subscribers' keys from the log now, rather than at the first keyed request."""
        if self.directory is None:
            return
        started = anyio.current_time()
        try:
            await self.directory.refresh(force=True)
        except Exception as e:  # the next keyed request reads them again, and says why
            # (an unreadable event here is the read models' and the scrub's to name as tampering)
            log.warning("subscribers_not_loaded", error=str(e), error_type=type(e).__name__)
            return
        log.info("subscribers_loaded", took_s=round(anyio.current_time() - started, 3))
        # A log written before the subscribers' index has none yet: the read above stepped
        # through every event, and builds it now, once (after READY=1: /healthz answers
        # meanwhile; SQLite's appends wait for it, PostgreSQL's do not).
        try:
            await self.directory.store.build_subscriber_index()
        except Exception as e:
            log.warning("subscriber_index_not_built", error=str(e), error_type=type(e).__name__)

    def _whole_app(self, svc: RunServices, integrity: Integrity) -> ASGIApp:
        """Every route: the publication's, the integrity service's, the console's."""
        from rollwatch.publication.keys import SubscriberDirectory
        from rollwatch.scheduler import cannot_run
        from rollwatch.web.access import Operators
        from rollwatch.web.app import build_app

        # One directory of keys for the feed, the operator's routes and the console
        # (which shows each key's last use).
        directory = self.directory = SubscriberDirectory(
            svc.store, clock=self.clock.decision_time if self.clock is not None else None, check=integrity
        )
        # The scrub compares the subscriber events it reads with those the keys came from.
        integrity.subscribers = directory.check_seen
        server = self.config.server
        own_names = [server.host, urllib.parse.urlsplit(server.url).hostname or "", socket.gethostname()]
        operators = Operators(server.trusted_peers, directory, hosts=own_names)
        return build_app(
            self.metrics,
            [
                *self.extra_routes(integrity, directory),
                *integrity.routes(operators),
                *self._console(svc, operators, directory, integrity),
            ],
            operators=operators,
            health=integrity.health,
            cannot_run=lambda: cannot_run(self.config, svc.providers, svc.problem_sets),
            status=self.projection_status,
            # Each as (what anyone may read, what the operator reads): the store's errors name
            # its file or URL, the clock's the seconds it is off.
            failing=lambda: [
                *(
                    [("the log refuses appends", f"the log refuses appends: {e}")]
                    if (e := svc.store.append_failing)
                    else []
                ),
                *([("the database is out of reach", u)] if (u := svc.store.unreachable) else []),
                *(
                    (f"{r.partition(':')[0]}: releases held", r)
                    for r in (self.clock.reasons() if self.clock is not None else [])
                ),
            ],
        )

    def projection_status(self) -> dict[str, object]:
        """/healthz's ``projections``: ``state`` (``building`` or ``current``) and, while
        building, ``phase``, ``seq``, ``head``, ``percent``, ``events_per_s``, ``eta_s``
        (``phase`` is ``starting`` while the store and the rest are still being opened, and
        ``checking the log`` once they are built, until the log has passed its check at start)."""
        if self.services is None:
            return {"projections": {"state": "building", "phase": "starting"}}
        pdb = self.services.projections
        api = self.publication
        if pdb.ready and api is not None and api.integrity is not None and not api.integrity.checked:
            # Current, but not served until the log has passed its check at start.
            return {"projections": {"state": "building", "phase": "checking the log"}}
        if pdb.ready:
            return {"projections": {"state": "current"}}
        prog = pdb.progress
        figures = prog.figures() if prog is not None else {"phase": "setting up"}
        return {"projections": {"state": "building", **figures}}

    async def _build_projections(self, svc: RunServices, planned: Callable[[bool], None]) -> bool:
        """Build the projections (set up, check they are this log's, catch up) while the
        server answers; log and report the progress every few seconds. A failure that
        may pass (the file locked by another process, the database away) is logged and
        retried. False if the daemon was told to stop first. ``planned``: see
        :meth:`ProjectionDB.build`; told False too when an attempt failed, or when a
        build has not moved between two reports (its second process stopped, say)."""
        pdb = svc.projections

        async def build() -> None:
            async with anyio.create_task_group() as tg:

                async def report() -> None:
                    last = None
                    while True:
                        await anyio.sleep(_PROGRESS_EVERY)
                        self._report_progress(pdb)
                        now = None if pdb.progress is None else (pdb.progress.phase, pdb.progress.done)
                        if now is not None and now == last:
                            planned(False)
                        last = now

                tg.start_soon(report)
                started = anyio.current_time()
                log.info("projections_building", projections=[p.name for p in pdb.projections])
                pause = 1.0
                while True:
                    try:
                        head = await pdb.build(svc.store, planned=planned)
                        break
                    except (NewerSchema, IntegrityError):
                        # A newer rollwatch wrote the log (a downgrade), or a row was edited
                        # to look so: no retry reads it, and the daemon would answer 503
                        # behind a 200 /healthz for good.
                        raise
                    except (sqlite3.OperationalError, StoreError) as e:
                        planned(False)
                        log.warning("projections_build_failed", error=str(e), retry_in_s=pause)
                        await anyio.sleep(pause)
                        pause = min(pause * 2, 30.0)
                log.info("projections_current", seq=head, took_s=round(anyio.current_time() - started, 2))
                tg.cancel_scope.cancel()

        return await self._unless_stopping(build)

    def _report_progress(self, pdb: ProjectionDB) -> None:
        prog = pdb.progress
        if prog is None:
            return
        f = prog.figures()
        log.info("projections_catching_up", **f)
        if f["phase"] != "catching up":
            self.notifier.notify(STATUS=f"listening; read models: {f['phase']}")
            return
        eta = f["eta_s"]
        left = f", about {int(eta)} s left" if isinstance(eta, float | int) else ""
        self.notifier.notify(
            STATUS=f"listening; read models {f['percent']}% (seq {f['seq']} of {f['head']},"
            f" {f['events_per_s'] or 0} events/s{left})"
        )

    def _active_schedules(self, svc: RunServices) -> list[ScheduleConfig]:
        """The schedules this node can fire (its provider has a key). One whose problem
        set did not load is among them: it fires once a SIGHUP has loaded the set (see
        :meth:`_can_fire`).

        Those that cannot run are logged (a WARNING, and /healthz degraded, unless an
        ``optional`` schedule merely lacks its key).
        """
        from rollwatch.scheduler import cannot_run

        schedules = [s for s in self.config.schedules if s.provider in svc.providers]
        blocked = cannot_run(self.config, svc.providers, svc.problem_sets)
        for s in self.config.schedules:
            if s.name in blocked:
                log.warning("schedule_cannot_run", schedule=s.name, reason=blocked[s.name])
            elif s not in schedules and s.enabled:
                log.info(
                    "schedule_inactive", schedule=s.name, reason="optional, and its provider has no API key"
                )
        return schedules

    def _can_fire(self, s: ScheduleConfig) -> str | None:
        """Why ``s`` cannot start a run now (its problem set is not loaded), or None."""
        assert self.services is not None
        if s.problem_set not in self.services.problem_sets:
            return f"problem set {s.problem_set!r} did not load (see problem_set_invalid in the log)"
        return None

    def _stop_runs(self) -> None:
        for run in list(self.active.values()):
            run.stopping.set()

    def _console(
        self,
        svc: RunServices,
        operators: Operators,
        directory: SubscriberDirectory,
        integrity: Integrity | None = None,
    ) -> list[Route]:
        """The operator's console (``/ops/``) and ``GET /`` (a redirect to the public page)."""
        from starlette.routing import Route

        from rollwatch.publication.proofs import ProofBundles
        from rollwatch.scoring.pool import ScoringPool
        from rollwatch.web.console import Console, root_redirect

        scheduler = self.scheduler
        console = Console(
            svc.store,
            svc.projections,
            self.config,
            operators,
            problem_sets=svc.problem_sets,
            next_fires=(lambda: scheduler.next_fires) if scheduler is not None else None,
            last_used=lambda: directory.last_used,
            time_limits=svc.scorer.known_limits if isinstance(svc.scorer, ScoringPool) else None,
            proofs=ProofBundles(svc.store, integrity.tree) if integrity is not None else None,
        )
        return [Route("/", root_redirect, methods=["GET"]), *console.routes()]

    def extra_routes(
        self, integrity: Integrity | None = None, subscribers: SubscriberDirectory | None = None
    ) -> list[Route]:
        """Routes beyond /healthz and /metrics: the subscriber feed and the public release
        (whose items carry inclusion proofs when ``integrity`` is given)."""
        from rollwatch.publication.routes import PublicationAPI

        svc = self.services
        assert svc is not None
        self.publication = PublicationAPI(
            svc.store, svc.projections, svc.config, self.metrics, integrity, subscribers, self.clock
        )
        return self.publication.routes()


def one_daemon_per_sqlite_log(config: Config) -> int | None:
    """An exclusive lock on ``LOG.serve.lock`` beside a SQLite log, held while serve runs.

    A log on SQLite has one leader by construction (one daemon): a second ``serve`` on it
    (another port, another config naming the same file) ran beside the first, and both
    fired every schedule and resumed the same unfinished runs. Now it stops at once (exit
    2) naming the first one. PostgreSQL logs elect a leader and take several daemons.
    A lock file that cannot be made (a read-only folder) is no lock: the store says why.
    """
    import fcntl

    from rollwatch.errors import UsageError

    path = config.store.sqlite_path
    if path is None:
        return None
    lock_path = path.with_name(path.name + ".serve.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        raise UsageError(
            f"another `rollwatch serve`{f' (pid {holder})' if holder.isdigit() else ''} already serves "
            f"the log {path} (it holds {lock_path}); one daemon per SQLite log: stop that one first, "
            "or move to PostgreSQL for several (README, Moving to PostgreSQL)"
        ) from None
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
