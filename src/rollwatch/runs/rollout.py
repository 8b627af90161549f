"""One rollout, from its request to its verdict.

The provider client makes the attempts (retries and limits are its own); every
attempt becomes an event on the rollout's stream through :class:`AttemptRecorder`.
The budget reservation made before the request is settled with the real cost, the
answer is scored, and the verdict goes to the log with its publication decisions in
one append.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from rollwatch.abc import WorkBoard
from rollwatch.errors import ConcurrencyConflict, ProviderError
from rollwatch.events import (
    Event,
    RolloutFailed,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    canonical_json_fast,
    rollout_stream,
)
from rollwatch.problems import Problem
from rollwatch.providers.base import Answer, Prompt
from rollwatch.publication.policy import decide
from rollwatch.runs.budget import Budget
from rollwatch.runs.services import ProviderLike
from rollwatch.scoring.base import recorded_detail, scorer_version
from rollwatch.work import Chunk

if TYPE_CHECKING:
    from rollwatch.runs.pipeline import Run


class _TakenOver(Exception):
    """A rollout's stream moved on under us: another node has it now (see ``rollwatch.work``)."""


@dataclass(frozen=True, slots=True)
class Known:
    """A rollout's state in the log when its chunk was claimed."""

    state: str
    attempts: int
    answer_seq: int | None
    version: int


NEW = Known("new", 0, None, 0)


#: Failures after which the provider may have generated the answer, and billed it: a body
#: we could not read (a token count that is no count, an answer cut off), an answer too slow.
#: Each counts its rollout's reservation against the budget, since what it cost is unknown;
#: so does any failure after part of the answer came (``ProviderError.generated``: an
#: error event mid-stream, which before counted nothing however many attempts it took).
MAY_BE_BILLED = frozenset({"bad_response", "timeout"})


@dataclass(slots=True)
class AttemptRecorder:
    """The provider client's AttemptLog for one rollout: every attempt becomes an event.

    Every append names the stream version it expects, so a node that lost its lease on
    the rollout's chunk cannot add to a rollout that another node has taken over.
    """

    rollouts: Rollouts
    rid: str
    model: str
    problem: Problem
    sample: int
    offset: int
    """Attempts recorded before this process took the rollout up (the client counts from 1)."""
    version: int
    """The rollout stream's version as we last saw it."""
    reserved: float = 0.0
    """What the rollout reserved of its run's budget (0.0: no budget to enforce)."""
    extra: float = 0.0
    """What the attempts recorded count against the budget beyond the answer's cost: the
    reservation once per attempt that failed after the provider may have answered, and
    billed (see :data:`MAY_BE_BILLED`), and what an answer of unknown usage may have cost
    beyond its priced tokens. Recorded in the events (``budget_usd``), so that a run
    resumed after a restart counts it too."""
    unknown_usage: bool = False
    """The answer gave no count of its output tokens, or none of its prompt's."""

    async def append(self, *events: Event) -> None:
        """Append to the rollout's stream at the version we last saw; _TakenOver if it moved."""
        try:
            await self.rollouts.run.services.store.append(
                rollout_stream(self.rid), list(events), expected_version=self.version
            )
        except ConcurrencyConflict as e:
            raise _TakenOver(str(e)) from e
        self.version += len(events)

    async def requested(self, attempt: int, request: dict[str, object]) -> None:
        """See ``AttemptLog.requested``."""
        r = self.rollouts.run
        await self.append(
            RolloutRequested(
                rollout_id=self.rid,
                run_id=r.run_id,
                provider=r.provider_name,
                model=self.model,
                problem_id=self.problem.id,
                problem_hash=self.problem.content_hash,
                sample=self.sample,
                attempt=attempt + self.offset,
                request=request,
                node=r.services.node,
                budget_usd=None if r.batch else self.reserved or None,
            ),
        )

    async def failed(self, attempt: int, error: ProviderError, final: bool) -> None:
        """See ``AttemptLog.failed``."""
        billed = error.kind in MAY_BE_BILLED or error.generated
        counted = self.reserved if billed and self.reserved else None
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
                budget_usd=counted,
            ),
        )
        self.extra += counted or 0.0

    async def responded(
        self, attempt: int, answer: Answer, cost_usd: float | None, *, list_cost_usd: float | None = None
    ) -> None:
        """See ``AttemptLog.responded``; ``list_cost_usd`` for a batched answer (its
        cost at the synchronous prices)."""
        cost = cost_usd or 0.0
        # No count of what was generated, or of the prompt (every request has one: a count
        # of 0 is one the provider left out): the cost is unknown, so the budget counts the
        # most it could have been.
        self.unknown_usage = (
            not answer.usage.output_tokens and bool(answer.text or answer.reasoning)
        ) or not answer.usage.input_tokens
        counted = self.reserved if self.unknown_usage and self.reserved > cost else None
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
                system_fingerprint=answer.system_fingerprint,
                ttft_ms=round(answer.ttft_ms, 3) if answer.ttft_ms is not None else None,
                list_cost_usd=list_cost_usd,
                budget_usd=counted,
            ),
        )
        if counted is not None:
            self.extra += counted - cost


class ChunkWork:
    """Counts a chunk's rollouts in progress; the last to end reports the chunk to the board."""

    def __init__(self, board: WorkBoard, chunk: Chunk) -> None:
        self.board = board
        self.chunk = chunk
        self.left = 1  # the producer's own share, until it has started every rollout
        self.finished = True

    def add(self) -> None:
        """One more rollout of the chunk is under way."""
        self.left += 1

    async def end(self, finished: bool = True) -> None:
        """One share of the chunk ended (``finished``: nothing of it is left to do)."""
        self.finished &= finished
        self.left -= 1
        if self.left == 0:
            await self.board.done(self.chunk, finished=self.finished)


@dataclass(frozen=True, slots=True)
class Rollouts:
    """The rollouts of one run as this process carries them: each a task that holds a
    place of the run's window until its verdict is recorded (or it stops); each
    updates the run's live figures as it ends."""

    run: Run
    budget: Budget

    def prompt_text(self, problem: Problem) -> str:
        """The text the model is asked for ``problem``."""
        run = self.run
        return run.services.problem_sets[run.problem_set_name].prompt(problem)

    async def request(
        self,
        window: anyio.Semaphore,
        progress: ChunkWork,
        provider: ProviderLike,
        rid: str,
        sample: int,
        problem: Problem,
        known: Known,
        reserved: float,
    ) -> None:
        """Ask the provider (its attempts recorded), settle the budget, score the answer."""
        model = progress.chunk.unit.model
        answer: Answer | None = None
        try:
            prompt = Prompt(
                text=self.prompt_text(problem),
                system=self.run.services.config.provider(self.run.provider_name).system_prompt,
                reference_solution=problem.reference_solution,
            )
            recorder = AttemptRecorder(
                self, rid, model, problem, sample, known.attempts, known.version, reserved=reserved
            )
            cost = counted = 0.0
            batcher = self.run.batcher
            try:
                if batcher is not None:
                    answer, cost = await batcher.rollout(
                        rid, model, prompt, self.run.params, recorder, known.attempts
                    )
                else:
                    answer = await provider.rollout(model, prompt, self.run.params, recorder)
                    if answer is not None:
                        cost = provider.cost(model, answer.usage) or 0.0
                if answer is not None:
                    self.run.state.answered += 1
                    self.run.state.cost_usd += cost
                    counted = cost
                    if reserved and recorder.unknown_usage:
                        self.budget.unknown_cost(self.run.log, rid)
            finally:
                # What the recorded attempts count beyond the answer's cost (in their
                # events' budget_usd): unknown usage, attempts that may have been billed.
                counted += recorder.extra
                await self.budget.settle(progress.chunk, reserved, counted)
            if answer is not None:
                await self.score(recorder, problem, answer.text)
            else:
                self.run.state.done += 1
                self.run.report_progress()
        except _TakenOver as e:
            self.run.log.warning("rollout_taken_over", rollout_id=rid, error=str(e))
            await progress.end(finished=False)
            return
        finally:
            window.release()
        # A rollout given up for a disabled provider is not finished: a later run of
        # the chunk (after the key is fixed) requests it again.
        await progress.end(finished=answer is not None or provider.disabled is None)

    async def score_recorded(
        self,
        window: anyio.Semaphore,
        progress: ChunkWork,
        rid: str,
        sample: int,
        problem: Problem,
        known: Known,
    ) -> None:
        """Score the answer the log already holds for ``rid`` (answered before a stop)."""
        try:
            assert known.answer_seq is not None
            answered = [
                ev.event()
                async for ev in self.run.services.store.read(
                    after=known.answer_seq - 1, until=known.answer_seq
                )
            ]
            assert isinstance(answered[0], RolloutResponded)
            recorder = AttemptRecorder(
                self, rid, progress.chunk.unit.model, problem, sample, known.attempts, known.version
            )
            await self.score(recorder, problem, answered[0].text)
        except _TakenOver as e:
            self.run.log.warning("rollout_taken_over", rollout_id=rid, error=str(e))
            await progress.end(finished=False)
            return
        finally:
            window.release()
        await progress.end()

    async def score(self, recorder: AttemptRecorder, problem: Problem, text: str) -> None:
        """Judge ``text``; record the verdict and its publication decisions in one append."""
        self.run.state.scoring += 1
        try:
            scored = await self.verdict(recorder.rid, problem, text)
        finally:
            self.run.state.scoring -= 1
        decisions = decide(self.run.publication, scored, self.run.services.decision_time())
        await recorder.append(scored, *decisions)
        self.run.state.scored += 1
        self.run.state.done += 1
        self.run.state.passed += int(scored.passed)
        self.run.report_progress()

    async def verdict(self, rid: str, problem: Problem, text: str) -> RolloutScored:
        """The verdict on ``text``, whatever happens: a scorer that raises (a bug of
        ours, since the answer's own faults come back as failed verdicts), or returns a
        verdict the log cannot hold, gives a scorer error on this rollout alone, so
        the run goes on."""
        try:
            result = await self.run.services.scorer.score(problem, text)
            scored = RolloutScored(
                rollout_id=rid,
                passed=bool(result.passed),
                score=float(result.score),
                scorer=result.scorer,
                reason=result.reason,
                extraction=result.extraction,
                duration_ms=result.duration_ms,
                detail=recorded_detail(bool(result.passed), result.detail),
                problem_hash=problem.content_hash,
                scorer_version=scorer_version(),
                time_limit_s=result.time_limit_s,
            )
            # What the append would do first: a detail nested too deep or holding what
            # JSON cannot say fails here, not halfway through recording the verdict.
            canonical_json_fast(scored.to_data())
        except Exception as e:
            self.run.log.error("scorer_error", rollout_id=rid, problem_id=problem.id, exc_info=True)
            return scorer_error(rid, problem, e)
        return scored


#: The longest exception message a scorer-error verdict keeps.
_MAX_ERROR_MESSAGE = 500


def scorer_error(rid: str, problem: Problem, error: BaseException) -> RolloutScored:
    """The verdict on a rollout whose scoring failed in our own code: failed, score 0,
    marked ``detail.error = "scorer"`` so reports tell it from the model's failures."""
    message = f"{type(error).__name__}: {error}"[:_MAX_ERROR_MESSAGE]
    # The message may quote the answer; a lone surrogate in it could not be stored.
    message = message.encode("utf-8", "replace").decode("utf-8")
    return RolloutScored(
        rollout_id=rid,
        passed=False,
        score=0.0,
        scorer=problem.scorer,
        reason=f"scorer error: {message}",
        detail={"error": "scorer", "exception": type(error).__name__},
        problem_hash=problem.content_hash,
        scorer_version=scorer_version(),
    )
