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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio

from rollwatch.abc import EventStore
from rollwatch.config import Config, ScheduleConfig
from rollwatch.errors import ProviderError
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
)
from rollwatch.log import get_logger
from rollwatch.projections import ProjectionDB
from rollwatch.providers.base import Answer, Prompt

log = get_logger(__name__)

_ROLLOUT_NS = uuid.UUID("6f1d7f0e-3c9b-4c1e-9a57-2b8f0d4c7a11")


def rollout_id(run_id: str, model: str, problem_id: str, sample: int) -> str:
    """The stable id of one rollout: the same on every resume of the run."""
    return str(uuid.uuid5(_ROLLOUT_NS, f"{run_id}\x00{model}\x00{problem_id}\x00{sample}"))


def new_run_id() -> str:
    """A fresh run id: sortable by start time, unique across nodes."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def rollout_stream(rid: str) -> str:
    return f"rollout-{rid}"


def run_stream(run_id: str) -> str:
    return f"run-{run_id}"


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


@dataclass
class RunState:
    """Live figures of a run, for the progress bar, the summary and the metrics."""

    total: int = 0
    done: int = 0
    answered: int = 0
    scored: int = 0
    passed: int = 0
    cost_usd: float = 0.0
    reserved_usd: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
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


class _AttemptRecorder:
    """The provider client's AttemptLog for one rollout: every attempt becomes an event."""

    def __init__(self, run: Run, rid: str, model: str, problem: Any, sample: int, first_attempt: int) -> None:
        self.run = run
        self.rid = rid
        self.model = model
        self.problem = problem
        self.sample = sample
        self.offset = first_attempt - 1

    async def requested(self, attempt: int, request: dict[str, Any]) -> None:
        await self.run.append_rollout(
            self.rid,
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
        self.run.state.failures[error.kind] += final
        await self.run.append_rollout(
            self.rid,
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
        await self.run.append_rollout(
            self.rid,
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
        )
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

    # -- appending --------------------------------------------------------------------------

    async def append_rollout(self, rid: str, *events: Event) -> None:
        await self.services.store.append(rollout_stream(rid), list(events))

    # -- driving ------------------------------------------------------------------------------

    async def drive(self, *, grace: float = 30.0) -> RunFinished | None:
        """Carry the run to its end; return its ``RunFinished``, or None when stopped first."""
        lock = RunLock(self.services.locks_dir, self.run_id)
        if not lock.acquire():
            self.log.warning("run_locked_elsewhere", hint="another rollwatch process drives this run")
            return None
        try:
            return await self._drive(grace)
        finally:
            lock.release()

    async def _existing(self) -> dict[str, tuple[str, int, int | None, float | None]]:
        """Rollouts this run already has: id -> (state, attempts, answer_seq, cost)."""
        await self.services.projections.catch_up(self.services.store)
        rows = await self.services.projections.fetchall(
            "SELECT rollout_id, state, attempts, answer_seq, cost_usd, passed FROM rollouts WHERE run_id = ?",
            (self.run_id,),
        )
        out = {}
        for rid, st, attempts, answer_seq, cost, passed in rows:
            out[rid] = (st, attempts or 0, answer_seq, cost)
            if st in ("answered", "scored"):
                self.state.answered += 1
                self.state.cost_usd += cost or 0.0
            if st == "scored":
                self.state.scored += 1
                self.state.done += 1
                self.state.passed += int(bool(passed))
        return out

    async def _drive(self, grace: float) -> RunFinished | None:
        svc = self.services
        provider = svc.providers.get(self.provider_name)
        pset = svc.problem_sets.get(self.problem_set_name)
        if provider is None or pset is None:
            what = "provider" if provider is None else "problem set"
            name = self.provider_name if provider is None else self.problem_set_name
            return await self._finish(
                "failed", f"{what} {name!r} is not configured (or has no API key) on this node"
            )
        existing = await self._existing()
        problems = []
        for pid in self.problem_ids:
            try:
                problems.append(pset.get(pid))
            except KeyError:
                self.log.error("problem_missing", problem_id=pid)
                self.state.total -= len(self.models) * self.rollouts
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
                for model in self.models:
                    if not self._price_known(model) and self.budget is not None:
                        self.log.warning(
                            "budget_unenforceable",
                            model=model,
                            reason="no price for this model in [providers.prices]",
                        )
                plan = ((m, p, k) for m in self.models for p in problems for k in range(self.rollouts))
                for model, problem, sample in plan:
                    rid = rollout_id(self.run_id, model, problem.id, sample)
                    st, attempts, answer_seq, _cost = existing.get(rid, ("new", 0, None, None))
                    if st == "scored":
                        continue
                    await window.acquire()
                    if self.stopping.is_set() or provider.disabled is not None:
                        window.release()
                        break
                    if st == "answered" and answer_seq is not None:
                        work.start_soon(self._score_existing, window, rid, problem, answer_seq)
                        continue
                    estimate = await self._reserve(model, pset.prompt(problem))
                    if estimate is None:
                        window.release()
                        break
                    work.start_soon(
                        self._rollout, window, provider, rid, model, problem, sample, attempts + 1, estimate
                    )
            tg.cancel_scope.cancel()

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
        if provider.disabled is not None:
            return await self._finish("provider_failed", provider.disabled.message)
        if self.state.budget_hit:
            return await self._finish("budget_exhausted", f"budget ${self.budget:.2f} reached")
        return await self._finish("completed", "")

    async def _reserve(self, model: str, prompt: str) -> float | None:
        """Reserve the most this rollout could cost; None when the budget cannot allow it."""
        if self.budget is None or not self._price_known(model):
            return 0.0
        price = self.services.config.provider(self.provider_name).prices[model]
        # The most it could cost: every output token allowed, and a generous token
        # count for the prompt (fewer than one token per two characters in practice).
        worst = (
            (len(prompt) // 2 + 1000) * price.input + _max_output_tokens(self.params) * price.output
        ) / 1e6
        while self.state.cost_usd + self.state.reserved_usd + worst > self.budget:
            if self.state.reserved_usd <= 0:
                self.state.budget_hit = True
                self.log.info("budget_exhausted", spent=round(self.state.cost_usd, 6), budget=self.budget)
                return None
            # Rollouts in flight may cost less than reserved: wait for one to settle.
            await self._settled.wait()
        self.state.reserved_usd += worst
        return worst

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
        provider: ProviderLike,
        rid: str,
        model: str,
        problem: Any,
        sample: int,
        first_attempt: int,
        reserved: float,
    ) -> None:
        try:
            pset = self.services.problem_sets[self.problem_set_name]
            prompt = Prompt(
                text=pset.prompt(problem),
                system=self.services.config.provider(self.provider_name).system_prompt,
                reference_solution=getattr(problem, "reference_solution", None),
            )
            recorder = _AttemptRecorder(self, rid, model, problem, sample, first_attempt)
            try:
                answer = await provider.rollout(model, prompt, self.params, recorder)
                if answer is not None:
                    self.state.answered += 1
                    self.state.cost_usd += provider.cost(model, answer.usage) or 0.0
            finally:
                self.state.reserved_usd -= reserved
                self._notify_settled()
            if answer is None:
                self.state.done += 1
                self._report()
                return
            await self._score(rid, problem, answer.text)
        finally:
            window.release()

    async def _score_existing(self, window: anyio.Semaphore, rid: str, problem: Any, answer_seq: int) -> None:
        try:
            evs = [ev async for ev in self.services.store.read(after=answer_seq - 1, until=answer_seq)]
            await self._score(rid, problem, evs[0].data["text"])
        finally:
            window.release()

    async def _score(self, rid: str, problem: Any, text: str) -> None:
        self.state.scoring += 1
        try:
            result = await self.services.scorer.score(problem, text)
        finally:
            self.state.scoring -= 1
        d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
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
        await self.append_rollout(rid, scored, *decisions)
        self.state.scored += 1
        self.state.done += 1
        self.state.passed += int(scored.passed)
        self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.state)

    async def _finish(self, status: str, message: str) -> RunFinished:
        s = self.state
        fin = RunFinished(
            run_id=self.run_id,
            status=status,
            rollouts=s.answered,
            passed=s.passed,
            cost_usd=round(s.cost_usd, 6),
            scored=s.scored,
            failures=dict(s.failures),
            message=message,
            planned=s.total,
        )
        await self.services.store.append(run_stream(self.run_id), [fin])
        self.log.info(
            "run_finished",
            status=status,
            rollouts=s.answered,
            passed=s.passed,
            cost_usd=round(s.cost_usd, 6),
            failures=dict(s.failures),
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
