"""``Run``: one run's pipeline, from its chunks claimed to its ``RunFinished``.

See the package docstring for how a run is bounded and how it resumes.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup

from rollwatch.config import ScheduleConfig
from rollwatch.errors import ConcurrencyConflict, StoreError
from rollwatch.events import (
    RunFinished,
    RunInterrupted,
    RunStarted,
    ServedModelChanged,
    rollout_stream,
    run_stream,
)
from rollwatch.log import get_logger
from rollwatch.problems import Problem
from rollwatch.providers.client import ProviderClient
from rollwatch.publication.policy import Embargo
from rollwatch.runs.batches import Batcher
from rollwatch.runs.budget import Budget
from rollwatch.runs.rollout import NEW, ChunkWork, Known, Rollouts
from rollwatch.runs.services import ProviderLike, RunLock, RunServices, RunState
from rollwatch.work import Chunk, plan_units

log = get_logger(__name__)

_ROLLOUT_NS = uuid.UUID("6f1d7f0e-3c9b-4c1e-9a57-2b8f0d4c7a11")


def rollout_id(run_id: str, model: str, problem_id: str, sample: int) -> str:
    """The stable id of one rollout: the same on every resume of the run."""
    return str(uuid.uuid5(_ROLLOUT_NS, f"{run_id}\x00{model}\x00{problem_id}\x00{sample}"))


def new_run_id() -> str:
    """A fresh run id: sortable by start time, unique across nodes."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


#: How many times a run may crash (driving it raised; a fault of ours, say, that every
#: resume meets again) before it is closed as ``failed``. Each crash is recorded as a
#: ``RunInterrupted`` whose reason starts with ``CRASH``; outages of the log are not
#: crashes (nothing can be recorded then, and the run is not at fault).
MAX_CRASHES = 3
CRASH = "crash: "
#: The cause counted for rollouts never requested, when the run was not closed early.
NOT_REQUESTED = "not_requested"
#: The cause counted for rollouts never requested whose problem left the set mid-run.
PROBLEM_MISSING = "problem_missing"


def _leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions an exception group holds, at any depth (or ``error`` itself)."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


@dataclass(frozen=True, slots=True)
class _Driving:
    """What one drive of a run works with (made once the provider is known to be here)."""

    provider: ProviderLike
    problems: dict[str, Problem]
    budget: Budget
    rollouts: Rollouts
    window: anyio.Semaphore


class Run:
    """Drives one run to its end (or until asked to stop), from wherever its log left it.

    A run is what its ``RunStarted`` event says: the same whether this process started
    it or resumes (or joins) it.
    """

    def __init__(
        self,
        services: RunServices,
        started: RunStarted,
        *,
        on_progress: Callable[[RunState], None] | None = None,
        fresh: bool = False,
    ) -> None:
        self.services = services
        self.started = started
        self.run_id = started.run_id
        self.schedule = started.schedule
        self.provider_name = started.provider
        self.models = started.models
        self.problem_set_name = started.problem_set
        self.problem_ids = started.problems or []
        self.rollouts = started.rollouts
        self.budget_usd = started.budget_usd
        self.params: dict[str, object] = started.params or {}
        self.batch = started.batch
        """The rollouts go through the provider's batch API (``runs/batches.py``)."""
        self.publication = Embargo(max(services.config.publication.embargo, started.embargo_s or 0.0))
        """What this node decides the run's verdicts with: the longer of its own embargo
        and the one the run was started with (see ``RunStarted.embargo_s``)."""
        self.batcher: Batcher | None = None
        self.on_progress = on_progress
        self.fresh = fresh
        """Created by this process just now: no rollout of it has events yet."""
        self.state = RunState(total=len(self.models) * len(self.problem_ids) * self.rollouts)
        self.stopping = anyio.Event()
        self.missing: list[str] = []
        """Problems of the run that its problem set no longer has (this drive)."""
        self.locked_elsewhere = False
        """Set when :meth:`drive` found another process of this host driving the run."""
        self._lock: RunLock | None = None
        """The run's lock, taken by :meth:`start` before its RunStarted, for :meth:`drive`."""
        self.log = log.bind(run_id=self.run_id, schedule=self.schedule, provider=self.provider_name)
        own = services.config.publication.embargo
        if started.embargo_s is not None and started.embargo_s != own:
            self.log.warning(
                "run_embargo_differs",
                run_embargo_s=started.embargo_s,
                own_embargo_s=own,
                deciding_with_s=self.publication.embargo,
                hint="give every node the same [publication] embargo",
            )

    # -- creating and resuming ------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        services: RunServices,
        schedule: ScheduleConfig,
        *,
        trigger: str,
        rollouts: int | None = None,
        models: list[str] | None = None,
        trigger_seq: int = 0,
        fire_time: str | None = None,
        due: str | None = None,
        on_progress: Callable[[RunState], None] | None = None,
    ) -> Run:
        """Record ``RunStarted`` for a new run of ``schedule`` and return it (not yet driven)."""
        pset = services.problem_sets[schedule.problem_set]
        pconf = services.config.provider(schedule.provider)
        started = RunStarted(
            batch=schedule.batch if schedule.batch is not None else pconf.batch,
            run_id=new_run_id(),
            schedule=schedule.name,
            provider=schedule.provider,
            models=list(models or schedule.models),
            problem_set=schedule.problem_set,
            node=services.node,
            rollouts=rollouts or schedule.rollouts,
            problems=[p.id for p in pset.problems],
            budget_usd=schedule.budget_usd,
            params=dict(schedule.params),
            trigger=trigger,
            trigger_seq=trigger_seq,
            fire_time=fire_time,
            due=due,
            embargo_s=services.config.publication.embargo,
        )
        run = cls(services, started, on_progress=on_progress, fresh=True)
        # The plan goes on the board first, so that nodes joining at RunStarted find it.
        await run._plan()
        if not services.board.shared:
            # Locked before its RunStarted is in the log, where the daemon looks for a
            # run of the schedule going: taken only once driving, a fire of the daemon
            # between the two found the run unlocked and started a second one.
            run._lock = RunLock(services.locks_dir, run.run_id)
            run._lock.acquire()
        try:
            await services.store.append(run_stream(run.run_id), [started], expected_version=0)
        except BaseException:
            if run._lock is not None:
                run._lock.release()
            raise
        run.log.info(
            "run_started",
            models=run.models,
            problems=len(run.problem_ids),
            rollouts=run.rollouts,
            total=run.state.total,
            trigger=trigger,
        )
        return run

    @classmethod
    async def load(
        cls, services: RunServices, run_id: str, on_progress: Callable[[RunState], None] | None = None
    ) -> Run:
        """The run ``run_id`` as its ``RunStarted`` event describes it."""
        first = [ev async for ev in services.store.read(stream=run_stream(run_id), types={"RunStarted"})]
        started = first[0].event()
        assert isinstance(started, RunStarted)
        if started.embargo_s is None:
            # A run from before RunStarted.embargo_s: the embargo its verdicts were decided with.
            started = dataclasses.replace(started, embargo_s=await decided_embargo(services, run_id))
        return cls(services, started, on_progress=on_progress)

    async def _plan(self, prior_cost: float = 0.0) -> None:
        """Put the run's chunks on the board (a no-op when another node already did)."""
        units = plan_units(self.models, self.problem_ids, self.rollouts, self.services.config.cluster.chunk)
        await self.services.board.plan(self.run_id, units, fresh=self.fresh, prior_cost=prior_cost)

    # -- driving ------------------------------------------------------------------------------

    async def drive(self, *, grace: float = 30.0) -> RunFinished | None:
        """Carry the run to its end; return its ``RunFinished`` (recorded here or, on a
        shared log, by another node), or None when stopped first.

        When driving raises, the crash is recorded and the exception goes to the caller
        (the daemon resumes the run later), unless the run has now crashed
        ``MAX_CRASHES`` times: then it is closed as ``failed`` with the reason.
        """
        if self.services.board.shared:
            return await self._drive_or_count(grace)
        lock, self._lock = self._lock or RunLock(self.services.locks_dir, self.run_id), None
        if not lock.held and not lock.acquire():
            self.locked_elsewhere = True
            self.log.warning("run_locked_elsewhere", hint="another rollwatch process drives this run")
            return None
        try:
            return await self._drive_or_count(grace)
        finally:
            lock.release()

    async def _drive_or_count(self, grace: float) -> RunFinished | None:
        try:
            return await self._drive(grace)
        except Exception as e:
            if any(isinstance(leaf, StoreError) for leaf in _leaves(e)):
                # The log is out of reach (an outage): not the run's fault, and nothing
                # could be recorded anyway. The daemon resumes it once the log is back.
                raise
            crashes, reason = await self._record_crash(e)
            if crashes < MAX_CRASHES:
                raise
        message = f"crashed {crashes} times, the last: {reason}"
        self.log.error("run_abandoned", crashes=crashes, reason=reason)
        board = self.services.board
        with anyio.CancelScope(shield=True):
            await board.close(self.run_id, f"failed: {message}")
            await board.release(self.run_id)
        return await self._finish(message, failed=True)

    async def _record_crash(self, error: Exception) -> tuple[int, str]:
        """Record that driving the run raised ``error``; (crashes so far, the reason)."""
        leaf = next(iter(_leaves(error)))
        reason = f"{type(leaf).__name__}: {leaf}"[:500].encode("utf-8", "replace").decode("utf-8")
        stream = run_stream(self.run_id)
        await self.services.store.append(
            stream,
            [
                RunInterrupted(
                    run_id=self.run_id,
                    node=self.services.node,
                    done=self.state.done,
                    total=self.state.total,
                    reason=f"{CRASH}{reason}",
                )
            ],
        )
        crashes = 0
        async for rec in self.services.store.read(stream=stream, types={"RunInterrupted"}):
            ev = rec.event()
            if isinstance(ev, RunInterrupted) and ev.reason.startswith(CRASH):
                crashes += 1
        self.log.warning("run_crash_recorded", crashes=crashes, max_crashes=MAX_CRASHES, reason=reason)
        return crashes, reason

    async def _drive(self, grace: float) -> RunFinished | None:
        svc = self.services
        board = svc.board
        provider = svc.providers.get(self.provider_name)
        pset = svc.problem_sets.get(self.problem_set_name)
        if provider is None or pset is None:
            config = svc.config
            if provider is None and all(p.name != self.provider_name for p in config.providers):
                message = f"provider {self.provider_name!r} is no longer configured"
            elif pset is None and all(p.name != self.problem_set_name for p in config.problem_sets):
                message = f"problem set {self.problem_set_name!r} is no longer configured"
            else:
                # Configured, and missing here for now: a key not set at this start, a
                # problem set that did not load (a folder moved, a file being edited).
                # The run waits, unfinished, for a start (or, for a problem set, a
                # SIGHUP) that has it: closed, its rollouts not yet asked never would be.
                why = (
                    f"provider {self.provider_name!r} has no API key"
                    if provider is None
                    else f"problem set {self.problem_set_name!r} did not load (see problem_set_invalid)"
                )
                if board.shared:
                    # Other nodes may have it: leave the run to them.
                    self.log.warning("run_not_joined", reason=f"{why} on this node")
                else:
                    self.log.error(
                        "run_cannot_resume",
                        reason=why,
                        hint="the run stays unfinished and resumes at the next start (or SIGHUP,"
                        " for a problem set) that has it",
                    )
                return None
            if board.shared:
                self.log.warning("run_not_joined", reason=message)
                return None
            return await self._finish(message, failed=True)
        problems: dict[str, Problem] = {}
        for pid in self.problem_ids:
            try:
                problems[pid] = pset.get(pid)
            except KeyError:
                # Gone from the set since the run started: its rollouts stay planned, those
                # never asked counted under PROBLEM_MISSING when the run ends.
                self.log.error("problem_missing", problem_id=pid, problem_set=self.problem_set_name)
                self.missing.append(pid)
        if not self.fresh:
            # Resumed or joined: the live figures start from what the log already has.
            s = self.state
            s.answered, s.scored, s.passed, s.cost_usd = await self._summary()
            s.done = s.scored
            # What the budget counted beyond the costs (answers of unknown usage, attempts
            # that may have been billed) counts again: the log has it.
            await self._plan(prior_cost=s.cost_usd + await self._budget_extra())
        pconf = svc.config.provider(self.provider_name)
        budget = Budget(board, self.budget_usd, pconf.prices, self.params, batch=self.batch)
        places = max(2, pconf.max_concurrency * 2)
        if self.batch:
            if not isinstance(provider, ProviderClient):
                return await self._finish(f"provider {self.provider_name!r} has no batch API", failed=True)
            self.batcher = Batcher(self, provider)
            await self.batcher.load()
            # A batch holds many rollouts at once: room for one full batch forming while
            # another is submitted.
            places = max(places, 2 * pconf.batch_max_requests)
        for model in self.models:
            if self.budget_usd is not None and not budget.enforceable(model):
                self.log.warning(
                    "budget_unenforceable",
                    model=model,
                    reason="no price for this model in [providers.prices]",
                )
        self.report_progress()
        driving = _Driving(
            provider=provider,
            problems=problems,
            budget=budget,
            rollouts=Rollouts(self, budget),
            # Places for rollout tasks: those in flight at the provider and those whose
            # answer waits for a scorer. Beyond this the producer waits, so memory stays flat.
            window=anyio.Semaphore(places),
        )
        interrupted = False

        async with anyio.create_task_group() as tg:

            async def watch_stop() -> None:
                nonlocal interrupted
                await self.stopping.wait()
                interrupted = True
                # In-flight rollouts get a grace period, then are cancelled; their
                # events so far are in the log and the next start resumes them.
                await anyio.sleep(grace)
                tg.cancel_scope.cancel()

            tg.start_soon(watch_stop)
            async with anyio.create_task_group() as work:
                await self._produce(work, driving)
            tg.cancel_scope.cancel()

        closed = (await board.status(self.run_id)).closed
        with anyio.CancelScope(shield=True):
            await board.release(self.run_id)
        if interrupted:
            await svc.store.append(
                run_stream(self.run_id),
                [
                    RunInterrupted(
                        run_id=self.run_id,
                        node=svc.node,
                        done=self.state.done,
                        total=self.state.total,
                        reason="shutdown",
                    )
                ],
            )
            self.log.info("run_interrupted", done=self.state.done, total=self.state.total)
            return None
        # Closed early ("budget_exhausted: ...", "provider_failed: ..."): the rollouts
        # never requested are counted under that cause.
        message = closed or (
            f"{PROBLEM_MISSING}: no longer in problem set {self.problem_set_name!r}: {', '.join(self.missing)}"
            if self.missing
            else ""
        )
        return await self._finish(message, cause=(closed or "").partition(": ")[0] or NOT_REQUESTED)

    async def _produce(self, work: TaskGroup, d: _Driving) -> None:
        """Claim chunks and start their rollouts until the run has no work left for us."""
        board = self.services.board
        # How often an idle node looks for chunks handed back or left by a dead node.
        poll = min(1.0, self.services.config.cluster.lease / 4)
        while not self.stopping.is_set():
            if d.provider.disabled is not None:
                await board.close(self.run_id, f"provider_failed: {d.provider.disabled.message}")
            elif d.budget.exhausted:
                await board.close(self.run_id, f"budget_exhausted: budget ${self.budget_usd:.2f} reached")
            chunks = await board.claim(self.run_id, board.claim_batch)
            if chunks:
                known = await self._known(chunks)
                for i, chunk in enumerate(chunks):
                    if not await self._start_chunk(work, d, chunk, known):
                        # Stopping: the chunks not started go back at once (to another
                        # node, or to whoever resumes the run).
                        for rest in chunks[i + 1 :]:
                            await board.done(rest, finished=False)
                        break
                continue
            if not board.shared:
                return
            # Nothing to claim: the run ends once no chunk is open anywhere (ours included:
            # a chunk we give back is claimed again), or once it is closed and every
            # node has let go of its chunks.
            st = await board.status(self.run_id)
            if st.open == 0 or (st.closed is not None and st.claimed == 0):
                return
            with anyio.move_on_after(poll):
                await self.stopping.wait()

    async def _known(self, chunks: list[Chunk]) -> dict[str, Known]:
        """What the log says about the rollouts of chunks that were handed out before."""
        rids = [
            rollout_id(self.run_id, c.unit.model, c.unit.problem_id, k)
            for c in chunks
            if not c.fresh
            for k in range(c.unit.first, c.unit.first + c.unit.count)
        ]
        if not rids:
            return {}
        svc = self.services
        # Each stream's version first, then the state: the version fences our appends
        # (see AttemptRecorder). An append by the chunk's previous owner after this read
        # makes ours conflict; one before it is in the catch-up below, so its rollout is
        # seen as it is (a verdict appended meanwhile is not given a second one).
        versions = {rid: await svc.store.stream_version(rollout_stream(rid)) for rid in rids}
        await svc.projections.catch_up(svc.store)
        out: dict[str, Known] = {}
        for i in range(0, len(rids), 500):
            part = rids[i : i + 500]
            rows = await svc.projections.fetchall(
                "SELECT rollout_id, state, attempts, answer_seq FROM rollouts"
                f" WHERE rollout_id IN ({','.join('?' * len(part))})",
                tuple(part),
            )
            for rid, st, attempts, answer_seq in rows:
                out[rid] = Known(st, attempts or 0, answer_seq, 0 if st == "scored" else versions[rid])
        return out

    async def _start_chunk(self, work: TaskGroup, d: _Driving, chunk: Chunk, known: dict[str, Known]) -> bool:
        """Start the rollouts of ``chunk``; False when the run must stop starting any."""
        u = chunk.unit
        progress = ChunkWork(self.services.board, chunk)
        problem = d.problems.get(u.problem_id)
        if problem is not None:
            for sample in range(u.first, u.first + u.count):
                rid = rollout_id(self.run_id, u.model, problem.id, sample)
                k = known.get(rid, NEW)
                if k.state == "scored":
                    continue
                await d.window.acquire()
                if self.stopping.is_set() or d.provider.disabled is not None:
                    d.window.release()
                    await progress.end(finished=False)
                    return False
                if k.state == "answered" and k.answer_seq is not None:
                    progress.add()
                    work.start_soon(d.rollouts.score_recorded, d.window, progress, rid, sample, problem, k)
                    continue
                reserved = await d.budget.reserve(chunk, u.model, d.rollouts.prompt_text(problem))
                if reserved is None:
                    self.log.info(
                        "budget_exhausted", spent=round(self.state.cost_usd, 6), budget=self.budget_usd
                    )
                    d.window.release()
                    await progress.end(finished=False)
                    return False
                progress.add()
                work.start_soon(
                    d.rollouts.request, d.window, progress, d.provider, rid, sample, problem, k, reserved
                )
        await progress.end()
        return True

    def report_progress(self) -> None:
        """Show the live figures to whoever follows the run (the CLI's progress bar)."""
        if self.on_progress is not None:
            self.on_progress(self.state)

    async def _summary(self) -> tuple[int, int, int, float]:
        """(answered, scored, passed, cost) of the run, from the log."""
        pdb = self.services.projections
        await pdb.catch_up(self.services.store)
        row = await pdb.fetchone(
            "SELECT COUNT(*) FILTER (WHERE state IN ('answered','scored')),"
            " COUNT(*) FILTER (WHERE state = 'scored'),"
            " COALESCE(SUM(passed) FILTER (WHERE state = 'scored'), 0), COALESCE(SUM(cost_usd), 0)"
            " FROM rollouts WHERE run_id = ?",
            (self.run_id,),
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2]), float(row[3])

    async def _budget_extra(self) -> float:
        """What the run's attempts counted against its budget beyond their costs (their
        events' ``budget_usd``), from the log: attempts with no outcome (in flight when
        the run last stopped) count their reservation."""
        row = await self.services.projections.fetchone(
            "SELECT COALESCE(SUM(budget_extra_usd), 0) + COALESCE(SUM(open_budget_usd), 0)"
            " FROM rollouts WHERE run_id = ?",
            (self.run_id,),
        )
        return float(row[0]) if row is not None else 0.0

    async def _unscored(self, cause: str) -> dict[str, int]:
        """The run's rollouts without a verdict, by cause: the final provider failure's
        kind, ``unanswered`` (requested, no answer), ``unscored`` (answered, no
        verdict), or, for those never requested, ``cause``."""
        rows = await self.services.projections.fetchall(
            "SELECT state, fail_kind, COUNT(*) FROM rollouts WHERE run_id = ? AND state != 'scored'"
            " GROUP BY state, fail_kind",
            (self.run_id,),
        )
        out: dict[str, int] = {}
        seen = 0
        for state, kind, n in rows:
            why = {"failed": str(kind or "failed"), "requested": "unanswered", "answered": "unscored"}
            key = why.get(str(state), str(state))
            out[key] = out.get(key, 0) + int(n)
            seen += int(n)
        scored_rows = await self.services.projections.fetchone(
            "SELECT COUNT(*) FROM rollouts WHERE run_id = ? AND state = 'scored'", (self.run_id,)
        )
        assert scored_rows is not None
        never = self.state.total - int(scored_rows[0]) - seen
        if self.missing and never > 0:
            marks = ",".join("?" * len(self.missing))
            asked = await self.services.projections.fetchone(
                f"SELECT COUNT(*) FROM rollouts WHERE run_id = ? AND problem_id IN ({marks})",
                (self.run_id, *self.missing),
            )
            assert asked is not None
            gone = min(never, len(self.models) * self.rollouts * len(self.missing) - int(asked[0]))
            if gone > 0:
                out[PROBLEM_MISSING] = out.get(PROBLEM_MISSING, 0) + gone
                never -= gone
        if never > 0:
            out[cause] = out.get(cause, 0) + never
        return dict(sorted(out.items()))

    async def _finish(self, message: str, *, failed: bool = False, cause: str = NOT_REQUESTED) -> RunFinished:
        """Record the run's end with its summary, unless another node already did (then
        return the one it recorded). Its status: ``failed`` when ``failed``, else
        ``completed`` when every planned rollout has a verdict, else ``partial``, with
        ``failures`` counting the rollouts left without one by cause (``cause`` for
        those never requested)."""
        answered, scored, passed, cost = await self._summary()
        unscored = await self._unscored(cause)
        status = "failed" if failed else "partial" if unscored else "completed"
        fin = RunFinished(
            run_id=self.run_id,
            status=status,
            rollouts=answered,
            passed=passed,
            cost_usd=round(cost, 6),
            scored=scored,
            failures=unscored,
            message=message,
            planned=self.state.total,
        )
        changes = await self._served_model_changes()
        stream = run_stream(self.run_id)
        while True:
            evs = [ev async for ev in self.services.store.read(stream=stream)]
            done = [ev.event() for ev in evs if ev.type == "RunFinished"]
            if done:
                assert isinstance(done[0], RunFinished)
                self.log.info("run_finished_elsewhere", status=done[0].status)
                return done[0]
            try:
                # One append: the changes are recorded exactly when the end is.
                await self.services.store.append(
                    stream, [*changes, fin], expected_version=evs[-1].version if evs else 0
                )
                break
            except ConcurrencyConflict:
                continue  # another node appended to the run: look again
        for change in changes:
            self.log.warning(
                "served_model_changed",
                model=change.model,
                served=change.served,
                previous=change.previous,
                previous_run_id=change.previous_run_id,
                note="the provider answered this model with other models than last run; "
                "the report splits its rows by served model",
            )
        self.log.info("run_finished", **fin.to_data())
        return fin

    async def _served_model_changes(self) -> list[ServedModelChanged]:
        """For each model of the run: a change when the models the provider said served
        it here are not those of the last earlier run of this provider and model that
        got an answer (by ``RunStarted`` order)."""
        pdb = self.services.projections
        changes = []
        for model in self.models:
            served = await self._served(model, self.run_id)
            if not served:
                continue
            row = await pdb.fetchone(
                "SELECT r.run_id FROM rollouts r JOIN runs u ON u.run_id = r.run_id"
                " WHERE r.provider = ? AND r.model = ? AND r.served_model IS NOT NULL"
                " AND u.started_seq < (SELECT started_seq FROM runs WHERE run_id = ?)"
                " ORDER BY u.started_seq DESC LIMIT 1",
                (self.provider_name, model, self.run_id),
            )
            if row is None:
                continue
            previous = await self._served(model, row[0])
            if set(previous) != set(served):
                changes.append(
                    ServedModelChanged(
                        run_id=self.run_id,
                        provider=self.provider_name,
                        model=model,
                        served=served,
                        previous=previous,
                        previous_run_id=row[0],
                    )
                )
        return changes

    async def _served(self, model: str, run_id: str) -> dict[str, int]:
        """Served model → answers, of ``model`` in run ``run_id``."""
        rows = await self.services.projections.fetchall(
            "SELECT served_model, COUNT(*) FROM rollouts WHERE run_id = ? AND model = ?"
            " AND served_model IS NOT NULL GROUP BY served_model ORDER BY served_model",
            (run_id, model),
        )
        return {str(r[0]): int(r[1]) for r in rows}


async def unfinished_runs(services: RunServices) -> list[str]:
    """Runs that have a ``RunStarted`` and no ``RunFinished``, oldest first."""
    await services.projections.catch_up(services.store)
    rows = await services.projections.fetchall(
        "SELECT run_id FROM runs WHERE finished_at IS NULL ORDER BY started_seq"
    )
    return [r[0] for r in rows]


async def unfinished_run_of(services: RunServices, schedule: str) -> str | None:
    """The newest run of ``schedule`` that has no ``RunFinished`` (None: there is none).

    ``rollwatch run SCHEDULE`` resumes it rather than paying for its answered rollouts
    again in a new run.
    """
    await services.projections.catch_up(services.store)
    row = await services.projections.fetchone(
        "SELECT run_id FROM runs WHERE schedule = ? AND finished_at IS NULL ORDER BY started_seq DESC LIMIT 1",
        (schedule,),
    )
    return None if row is None else str(row[0])


async def run_embargo(services: RunServices, run_id: str) -> Embargo:
    """What this node decides ``run_id``'s verdicts with, as :attr:`Run.publication` (the
    longer of its own embargo and the run's), without loading the run."""
    started = None
    async for rec in services.store.read(stream=run_stream(run_id), types={"RunStarted"}):
        ev = rec.event()
        if isinstance(ev, RunStarted):
            started = ev.embargo_s
    if started is None:
        started = await decided_embargo(services, run_id)
    return Embargo(max(services.config.publication.embargo, started or 0.0))


async def decided_embargo(services: RunServices, run_id: str) -> float | None:
    """The longest embargo the run's verdicts were decided with (``PublicationDecided.embargo_s``,
    "none" decisions included), from the projections; None when none carries one.

    The run's embargo for a run from before ``RunStarted.embargo_s``: resumed or re-scored
    under a configuration changed since to a shorter one, its verdicts would otherwise be
    decided with that (a flip of a 90-day run's was public at once). The projections are
    caught up first: another node's decisions may be in the log and not yet in them."""
    await services.projections.catch_up(services.store)
    row = await services.projections.fetchone(
        "SELECT max(embargo_s) FROM public_rollouts WHERE run_id = ?", (run_id,)
    )
    return float(row[0]) if row is not None and row[0] is not None and row[0] > 0 else None
