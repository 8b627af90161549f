"""One run: models × problems × samples, requested, scored and recorded as events.

The same code serves ``rollwatch run`` and the daemon. A run is a pipeline bounded at
every stage: the producer starts a rollout task only when one of ``window`` places is
free (requests in flight plus answers waiting for a scorer), the provider client
enforces the provider's own concurrency and rate limits, and the scoring pool its
worker count. So memory stays flat however many rollouts a run has.

Crash safety comes from the log: a run without ``RunFinished`` is resumed from what
its events say. Rollout ids are derived from (run, model, problem, sample), so a
resumed run finds every rollout it had: answered ones are never requested again,
answered but unscored ones are scored, the rest are requested.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio

from rollwatch.abc import EventStore
from rollwatch.config import Config, ScheduleConfig
from rollwatch.errors import ConcurrencyConflict, ProviderError
from rollwatch.events import (
    Event,
    PublicationDecided,
    RolloutFailed,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunInterrupted,
    RunStarted,
    rfc3339,
    rollout_stream,
    run_stream,
)
from rollwatch.log import get_logger
from rollwatch.projections import ProjectionDB
from rollwatch.providers.base import Answer, Prompt
from rollwatch.work import Chunk, LocalBoard, WorkBoard, plan_units

log = get_logger(__name__)

_ROLLOUT_NS = uuid.UUID("6f1d7f0e-3c9b-4c1e-9a57-2b8f0d4c7a11")


def rollout_id(run_id: str, model: str, problem_id: str, sample: int) -> str:
    """The stable id of one rollout: the same on every resume of the run."""
    return str(uuid.uuid5(_ROLLOUT_NS, f"{run_id}\x00{model}\x00{problem_id}\x00{sample}"))


def new_run_id() -> str:
    """A fresh run id: sortable by start time, unique across nodes."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class ProblemSetLike(Protocol):
    name: str

    def get(self, problem_id: str) -> Any: ...
    def prompt(self, problem: Any) -> str: ...
    @property
    def problems(self) -> list[Any]: ...


class ScorerLike(Protocol):
    async def score(self, problem: Any, text: str) -> Any: ...


class ProviderLike(Protocol):
    disabled: ProviderError | None

    async def rollout(
        self, model: str, prompt: Prompt, params: dict[str, Any], log: Any
    ) -> Answer | None: ...
    def cost(self, model: str, usage: Any) -> float | None: ...


@dataclass
class RunServices:
    """What a run needs, wired by the composition root (``daemon.py`` or the CLI)."""

    config: Config
    store: EventStore
    projections: ProjectionDB
    providers: dict[str, ProviderLike]
    problem_sets: dict[str, ProblemSetLike]
    scorer: ScorerLike
    node: str
    locks_dir: Path
    board: WorkBoard = field(default_factory=LocalBoard)
    """Shares the rollouts of a run among the processes driving it (see ``rollwatch.work``)."""


@dataclass
class RunState:
    """Live figures of a run, for the progress bar and the metrics (the summary in
    RunFinished is counted from the log, so it covers every node and every resume)."""

    total: int = 0
    done: int = 0
    answered: int = 0
    scored: int = 0
    passed: int = 0
    cost_usd: float = 0.0
    budget_hit: bool = False
    scoring: int = 0
    """Answers waiting for or being scored."""


class RunLock:
    """An exclusive ``flock`` on a run, so two processes never drive the same run.

    The kernel drops it when the process dies, so a crashed run is free to resume.
    """

    def __init__(self, locks_dir: Path, run_id: str) -> None:
        locks_dir.mkdir(parents=True, exist_ok=True)
        self.path = locks_dir / f"{run_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)


def _max_output_tokens(params: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens", "maxOutputTokens"):
        v = params.get(key)
        if isinstance(v, int) and v > 0:
            return v
    return 32_000


class _TakenOver(Exception):
    """A rollout's stream moved on under us: another node has it now (see ``rollwatch.work``)."""


class _AttemptRecorder:
    """The provider client's AttemptLog for one rollout: every attempt becomes an event.

    Every append names the stream version it expects, so a node that lost its lease on
    the rollout's chunk cannot add to a rollout that another node has taken over.
    """

    def __init__(
        self, run: Run, rid: str, model: str, problem: Any, sample: int, first_attempt: int, version: int
    ) -> None:
        self.run = run
        self.rid = rid
        self.model = model
        self.problem = problem
        self.sample = sample
        self.offset = first_attempt - 1
        self.version = version

    async def append(self, *events: Event) -> None:
        try:
            await self.run.services.store.append(
                rollout_stream(self.rid), list(events), expected_version=self.version
            )
        except ConcurrencyConflict as e:
            raise _TakenOver(str(e)) from e
        self.version += len(events)

    async def requested(self, attempt: int, request: dict[str, Any]) -> None:
        await self.append(
            RolloutRequested(
                rollout_id=self.rid,
                run_id=self.run.run_id,
                provider=self.run.provider_name,
                model=self.model,
                problem_id=self.problem.id,
                problem_hash=self.problem.content_hash,
                sample=self.sample,
                attempt=attempt + self.offset,
                request=request,
                node=self.run.services.node,
            ),
        )

    async def failed(self, attempt: int, error: ProviderError, final: bool) -> None:
        await self.append(
            RolloutFailed(
                rollout_id=self.rid,
                attempt=attempt + self.offset,
                kind=error.kind,
                status=error.status,
                retryable=error.retryable,
                message=error.message,
                retry_after_s=error.retry_after,
                final=final,
            ),
        )

    async def responded(self, attempt: int, answer: Answer, cost_usd: float | None) -> None:
        await self.append(
            RolloutResponded(
                rollout_id=self.rid,
                attempt=attempt + self.offset,
                text=answer.text,
                reasoning=answer.reasoning,
                finish_reason=answer.finish_reason,
                usage=answer.usage.to_dict(),
                cost_usd=cost_usd,
                latency_ms=round(answer.latency_ms, 3),
                request_id=answer.request_id,
                model=answer.model,
            ),
        )


@dataclass(frozen=True, slots=True)
class _Known:
    """A rollout's state in the log when its chunk was claimed."""

    state: str
    attempts: int
    answer_seq: int | None
    version: int


class _ChunkWork:
    """Counts a chunk's rollouts in progress; the last to end reports the chunk to the board."""

    def __init__(self, board: WorkBoard, chunk: Chunk) -> None:
        self.board = board
        self.chunk = chunk
        self.left = 1  # the producer's own share, until it has started every rollout
        self.finished = True

    def add(self) -> None:
        self.left += 1

    async def end(self, finished: bool = True) -> None:
        self.finished &= finished
        self.left -= 1
        if self.left == 0:
            await self.board.done(self.chunk, finished=self.finished)


class Run:
    """Drives one run to its end (or until asked to stop), from wherever its log left it."""

    def __init__(
        self,
        services: RunServices,
        *,
        run_id: str,
        schedule: str,
        provider: str,
        models: list[str],
        problem_set: str,
        problems: list[str],
        rollouts: int,
        budget_usd: float | None,
        params: dict[str, Any],
        on_progress: Callable[[RunState], None] | None = None,
        fresh: bool = False,
    ) -> None:
        self.services = services
        self.run_id = run_id
        self.schedule = schedule
        self.provider_name = provider
        self.models = models
        self.problem_set_name = problem_set
        self.problem_ids = problems
        self.rollouts = rollouts
        self.budget = budget_usd
        self.params = params
        self.on_progress = on_progress
        self.fresh = fresh
        """Created by this process just now: no rollout of it has events yet."""
        self.state = RunState(total=len(models) * len(problems) * rollouts)
        self.stopping = anyio.Event()
        self.log = log.bind(run_id=run_id, schedule=schedule, provider=provider)

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
        on_progress: Callable[[RunState], None] | None = None,
    ) -> Run:
        """Record ``RunStarted`` for a new run of ``schedule`` and return it (not yet driven)."""
        pset = services.problem_sets[schedule.problem_set]
        run = cls(
            services,
            run_id=new_run_id(),
            schedule=schedule.name,
            provider=schedule.provider,
            models=list(models or schedule.models),
            problem_set=schedule.problem_set,
            problems=[p.id for p in pset.problems],
            rollouts=rollouts or schedule.rollouts,
            budget_usd=schedule.budget_usd,
            params=dict(schedule.params),
            on_progress=on_progress,
            fresh=True,
        )
        # The plan goes on the board first, so that nodes joining at RunStarted find it.
        await run._plan()
        await services.store.append(
            run_stream(run.run_id),
            [
                RunStarted(
                    run_id=run.run_id,
                    schedule=run.schedule,
                    provider=run.provider_name,
                    models=run.models,
                    problem_set=run.problem_set_name,
                    node=services.node,
                    rollouts=run.rollouts,
                    problems=run.problem_ids,
                    budget_usd=run.budget,
                    params=run.params,
                    trigger=trigger,
                    trigger_seq=trigger_seq,
                    fire_time=fire_time,
                )
            ],
            expected_version=0,
        )
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
        d = first[0].data
        return cls(
            services,
            run_id=run_id,
            schedule=d["schedule"],
            provider=d["provider"],
            models=d["models"],
            problem_set=d["problem_set"],
            problems=d.get("problems") or [],
            rollouts=d["rollouts"],
            budget_usd=d.get("budget_usd"),
            params=d.get("params") or {},
            on_progress=on_progress,
        )

    async def _plan(self, prior_cost: float = 0.0) -> None:
        """Put the run's chunks on the board (a no-op when another node already did)."""
        units = plan_units(self.models, self.problem_ids, self.rollouts, self.services.config.cluster.chunk)
        await self.services.board.plan(self.run_id, units, fresh=self.fresh, prior_cost=prior_cost)

    # -- driving ------------------------------------------------------------------------------

    async def drive(self, *, grace: float = 30.0) -> RunFinished | None:
        """Carry the run to its end; return its ``RunFinished`` (recorded here or, on a
        shared log, by another node), or None when stopped first."""
        if self.services.board.shared:
            return await self._drive(grace)
        lock = RunLock(self.services.locks_dir, self.run_id)
        if not lock.acquire():
            self.log.warning("run_locked_elsewhere", hint="another rollwatch process drives this run")
            return None
        try:
            return await self._drive(grace)
        finally:
            lock.release()

    async def _drive(self, grace: float) -> RunFinished | None:
        svc = self.services
        board = svc.board
        provider = svc.providers.get(self.provider_name)
        pset = svc.problem_sets.get(self.problem_set_name)
        if provider is None or pset is None:
            what = "provider" if provider is None else "problem set"
            name = self.provider_name if provider is None else self.problem_set_name
            message = f"{what} {name!r} is not configured (or has no API key) on this node"
            if board.shared:
                # Other nodes may have it: leave the run to them.
                self.log.warning("run_not_joined", reason=message)
                return None
            return await self._finish("failed", message)
        problems: dict[str, Any] = {}
        for pid in self.problem_ids:
            try:
                problems[pid] = pset.get(pid)
            except KeyError:
                self.log.error("problem_missing", problem_id=pid)
                self.state.total -= len(self.models) * self.rollouts
        if not self.fresh:
            # Resumed or joined: the live figures start from what the log already has.
            s = self.state
            s.answered, s.scored, s.passed, s.cost_usd, _ = await self._summary()
            s.done = s.scored
            await self._plan(prior_cost=s.cost_usd)
        for model in self.models:
            if not self._price_known(model) and self.budget is not None:
                self.log.warning(
                    "budget_unenforceable",
                    model=model,
                    reason="no price for this model in [providers.prices]",
                )
        self._report()

        # Places for rollout tasks: those in flight at the provider and those whose answer
        # waits for a scorer. Beyond this the producer waits, so memory stays flat.
        window = anyio.Semaphore(max(2, svc.config.provider(self.provider_name).max_concurrency * 2))
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
                await self._produce(work, window, provider, problems)
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
        status, _, message = (closed or "completed").partition(": ")
        return await self._finish(status, message)

    async def _produce(
        self,
        work: anyio.abc.TaskGroup,
        window: anyio.Semaphore,
        provider: ProviderLike,
        problems: dict[str, Any],
    ) -> None:
        """Claim chunks and start their rollouts until the run has no work left for us."""
        board = self.services.board
        # How often an idle node looks for chunks handed back or left by a dead node.
        poll = min(1.0, self.services.config.cluster.lease / 4)
        while not self.stopping.is_set():
            if provider.disabled is not None:
                await board.close(self.run_id, f"provider_failed: {provider.disabled.message}")
            elif self.state.budget_hit:
                await board.close(self.run_id, f"budget_exhausted: budget ${self.budget:.2f} reached")
            chunks = await board.claim(self.run_id, board.claim_batch)
            if chunks:
                known = await self._known(chunks)
                for i, chunk in enumerate(chunks):
                    if not await self._start_chunk(work, window, provider, problems, chunk, known):
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

    async def _known(self, chunks: list[Chunk]) -> dict[str, _Known]:
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
        await svc.projections.catch_up(svc.store)
        out: dict[str, _Known] = {}
        for i in range(0, len(rids), 500):
            part = rids[i : i + 500]
            rows = await svc.projections.fetchall(
                "SELECT rollout_id, state, attempts, answer_seq FROM rollouts"
                f" WHERE rollout_id IN ({','.join('?' * len(part))})",
                tuple(part),
            )
            for rid, st, attempts, answer_seq in rows:
                # The version fences our appends (see _AttemptRecorder); only rollouts we
                # will append to need it.
                version = 0 if st == "scored" else await svc.store.stream_version(rollout_stream(rid))
                out[rid] = _Known(st, attempts or 0, answer_seq, version)
        return out

    async def _start_chunk(
        self,
        work: anyio.abc.TaskGroup,
        window: anyio.Semaphore,
        provider: ProviderLike,
        problems: dict[str, Any],
        chunk: Chunk,
        known: dict[str, _Known],
    ) -> bool:
        """Start the rollouts of ``chunk``; False when the run must stop starting any."""
        u = chunk.unit
        progress = _ChunkWork(self.services.board, chunk)
        problem = problems.get(u.problem_id)
        if problem is not None:
            for sample in range(u.first, u.first + u.count):
                rid = rollout_id(self.run_id, u.model, problem.id, sample)
                k = known.get(rid, _Known("new", 0, None, 0))
                if k.state == "scored":
                    continue
                await window.acquire()
                if self.stopping.is_set() or provider.disabled is not None:
                    window.release()
                    await progress.end(finished=False)
                    return False
                if k.state == "answered" and k.answer_seq is not None:
                    progress.add()
                    work.start_soon(self._score_existing, window, progress, rid, sample, problem, k)
                    continue
                reserved = await self._reserve(chunk, u.model, problem)
                if reserved is None:
                    window.release()
                    await progress.end(finished=False)
                    return False
                progress.add()
                work.start_soon(self._rollout, window, progress, provider, rid, sample, problem, k, reserved)
        await progress.end()
        return True

    async def _reserve(self, chunk: Chunk, model: str, problem: Any) -> float | None:
        """Reserve the most this rollout could cost; None when the budget cannot allow it."""
        if self.budget is None or not self._price_known(model):
            return 0.0
        price = self.services.config.provider(self.provider_name).prices[model]
        prompt = self.services.problem_sets[self.problem_set_name].prompt(problem)
        # The most it could cost: every output token allowed, and a generous token
        # count for the prompt (fewer than one token per two characters in practice).
        worst = (
            (len(prompt) // 2 + 1000) * price.input + _max_output_tokens(self.params) * price.output
        ) / 1e6
        while True:
            ok = await self.services.board.reserve(chunk, worst, self.budget)
            if ok:
                return worst
            if ok is None:
                self.state.budget_hit = True
                self.log.info("budget_exhausted", spent=round(self.state.cost_usd, 6), budget=self.budget)
                return None
            # Rollouts in flight (here or on other nodes) may cost less than reserved:
            # wait for one to settle.
            with anyio.move_on_after(0.5 if self.services.board.shared else float("inf")):
                await self._settled.wait()

    def _price_known(self, model: str) -> bool:
        return model in self.services.config.provider(self.provider_name).prices

    @property
    def _settled(self) -> anyio.Event:
        ev = getattr(self, "_settled_ev", None)
        if ev is None:
            ev = self._settled_ev = anyio.Event()
        return ev

    def _notify_settled(self) -> None:
        ev = getattr(self, "_settled_ev", None)
        if ev is not None:
            ev.set()
            self._settled_ev = anyio.Event()

    async def _rollout(
        self,
        window: anyio.Semaphore,
        progress: _ChunkWork,
        provider: ProviderLike,
        rid: str,
        sample: int,
        problem: Any,
        known: _Known,
        reserved: float,
    ) -> None:
        model = progress.chunk.unit.model
        try:
            pset = self.services.problem_sets[self.problem_set_name]
            prompt = Prompt(
                text=pset.prompt(problem),
                system=self.services.config.provider(self.provider_name).system_prompt,
                reference_solution=getattr(problem, "reference_solution", None),
            )
            recorder = _AttemptRecorder(self, rid, model, problem, sample, known.attempts + 1, known.version)
            cost = 0.0
            try:
                answer = await provider.rollout(model, prompt, self.params, recorder)
                if answer is not None:
                    cost = provider.cost(model, answer.usage) or 0.0
                    self.state.answered += 1
                    self.state.cost_usd += cost
            finally:
                if reserved:
                    with anyio.CancelScope(shield=True):
                        await self.services.board.settle(progress.chunk, reserved, cost)
                self._notify_settled()
            if answer is not None:
                await self._score(recorder, problem, answer.text)
            else:
                self.state.done += 1
                self._report()
        except _TakenOver as e:
            self.log.warning("rollout_taken_over", rollout_id=rid, error=str(e))
            await progress.end(finished=False)
            return
        finally:
            window.release()
        # A rollout given up for a disabled provider is not finished: a later run of
        # the chunk (after the key is fixed) requests it again.
        await progress.end(finished=answer is not None or provider.disabled is None)

    async def _score_existing(
        self,
        window: anyio.Semaphore,
        progress: _ChunkWork,
        rid: str,
        sample: int,
        problem: Any,
        known: _Known,
    ) -> None:
        try:
            assert known.answer_seq is not None
            evs = [
                ev
                async for ev in self.services.store.read(after=known.answer_seq - 1, until=known.answer_seq)
            ]
            u = progress.chunk.unit
            recorder = _AttemptRecorder(
                self, rid, u.model, problem, sample, known.attempts + 1, known.version
            )
            await self._score(recorder, problem, evs[0].data["text"])
        except _TakenOver as e:
            self.log.warning("rollout_taken_over", rollout_id=rid, error=str(e))
            await progress.end(finished=False)
            return
        finally:
            window.release()
        await progress.end()

    async def _score(self, recorder: _AttemptRecorder, problem: Any, text: str) -> None:
        self.state.scoring += 1
        try:
            result = await self.services.scorer.score(problem, text)
        finally:
            self.state.scoring -= 1
        d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        rid = recorder.rid
        scored = RolloutScored(
            rollout_id=rid,
            passed=bool(d.get("passed")),
            score=float(d.get("score") or 0.0),
            scorer=str(d.get("scorer", "")),
            reason=str(d.get("reason", "")),
            extraction=str(d.get("extraction", "")),
            duration_ms=float(d.get("duration_ms") or 0.0),
            detail=d.get("detail") or {},
        )
        now = datetime.now(UTC)
        embargo = self.services.config.publication.embargo
        decisions: list[Event] = [
            PublicationDecided(rollout_id=rid, audience="subscribers", not_before=rfc3339(now))
        ]
        if scored.passed:
            decisions.append(
                PublicationDecided(
                    rollout_id=rid,
                    audience="public",
                    not_before=rfc3339(now + timedelta(seconds=embargo)),
                    embargo_s=embargo,
                )
            )
        await recorder.append(scored, *decisions)
        self.state.scored += 1
        self.state.done += 1
        self.state.passed += int(scored.passed)
        self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.state)

    async def _summary(self) -> tuple[int, int, int, float, dict[str, int]]:
        """(answered, scored, passed, cost, final failures by kind) of the run, from the log."""
        pdb = self.services.projections
        await pdb.catch_up(self.services.store)
        row = await pdb.fetchone(
            "SELECT COUNT(*) FILTER (WHERE state IN ('answered','scored')),"
            " COUNT(*) FILTER (WHERE state = 'scored'),"
            " COALESCE(SUM(passed) FILTER (WHERE state = 'scored'), 0), COALESCE(SUM(cost_usd), 0)"
            " FROM rollouts WHERE run_id = ?",
            (self.run_id,),
        )
        failures = await pdb.fetchall(
            "SELECT fail_kind, COUNT(*) FROM rollouts WHERE run_id = ? AND state = 'failed'"
            " GROUP BY fail_kind ORDER BY fail_kind",
            (self.run_id,),
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2]), float(row[3]), {str(k): int(n) for k, n in failures}

    async def _finish(self, status: str, message: str) -> RunFinished:
        """Record the run's end with its summary, unless another node already did (then
        return the one it recorded)."""
        answered, scored, passed, cost, failures = await self._summary()
        fin = RunFinished(
            run_id=self.run_id,
            status=status,
            rollouts=answered,
            passed=passed,
            cost_usd=round(cost, 6),
            scored=scored,
            failures=failures,
            message=message,
            planned=self.state.total,
        )
        stream = run_stream(self.run_id)
        while True:
            evs = [ev async for ev in self.services.store.read(stream=stream)]
            done = [ev.event() for ev in evs if ev.type == "RunFinished"]
            if done:
                assert isinstance(done[0], RunFinished)
                self.log.info("run_finished_elsewhere", status=done[0].status)
                return done[0]
            try:
                await self.services.store.append(
                    stream, [fin], expected_version=evs[-1].version if evs else 0
                )
                break
            except ConcurrencyConflict:
                continue  # another node appended to the run: look again
        self.log.info(
            "run_finished",
            status=status,
            rollouts=answered,
            passed=passed,
            cost_usd=round(cost, 6),
            failures=failures,
            message=message,
        )
        return fin


async def unfinished_runs(services: RunServices) -> list[str]:
    """Runs that have a ``RunStarted`` and no ``RunFinished``, oldest first."""
    await services.projections.catch_up(services.store)
    rows = await services.projections.fetchall(
        "SELECT run_id FROM runs WHERE finished_at IS NULL ORDER BY started_seq"
    )
    return [r[0] for r in rows]
