"""Runs end, whatever their parts do: every answer gets a verdict, every run a RunFinished.

The faults come in through the real plug-in points: a run is wired (``open_services``,
``Daemon``) with a scorer or a provider of the test's own, a real implementation of
the interface that raises where our code might. Everything else is real: the SQLite
log, the projections, the sandboxed scoring pool, the daemon's scheduler.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from rollwatch.abc import AttemptLog, EventStore
from rollwatch.config import Config, load_config
from rollwatch.daemon import Daemon, open_services
from rollwatch.errors import ProviderError
from rollwatch.events import (
    Event,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunInterrupted,
    RunStarted,
    ScheduleTriggered,
)
from rollwatch.problems import Problem
from rollwatch.providers.base import Answer, Prompt, Usage
from rollwatch.runs import MAX_CRASHES, Run, RunServices
from rollwatch.scoring import ScoringPool, settings_from_config
from rollwatch.scoring.base import Score
from tests.test_daemon import QUICK, bundled, daemon_toml

pytestmark = pytest.mark.anyio

SCHEDULE = "often"
E = TypeVar("E", bound=Event)


def write_config(tmp_path: Path, *, every: str = "1h") -> Config:
    """One schedule of one rollout per favorites problem (the quick six of the bundled
    ten: every scorer kind, dijkstra and n-queens among them); the provider is the test's."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        daemon_toml(tmp_path, bundled(tmp_path, *QUICK))
        + f"""
[[providers]]
name = "local"
kind = "reference"
[[schedules]]
name = "{SCHEDULE}"
provider = "local"
models = ["m1"]
problem_set = "favorites"
rollouts = 1
every = "{every}"
"""
    )
    return load_config(cfg)


class ReferenceAnswers:
    """A provider (the ``ProviderLike`` plug-in point) that answers with each problem's
    reference solution, recording its one attempt as the contract asks; ``fault``
    makes a rollout raise instead (a bug in an adapter, say), ``refuse`` makes it give
    up (a final failure), ``text`` changes what it answers."""

    disabled: ProviderError | None = None

    def __init__(self) -> None:
        self.fault: Callable[[Prompt], bool] = lambda _: False
        self.refuse: Callable[[Prompt], bool] = lambda _: False
        self.text: Callable[[Prompt, str], str] = lambda _, text: text

    async def rollout(
        self, model: str, prompt: Prompt, params: dict[str, object], log: AttemptLog
    ) -> Answer | None:
        """One answer, or the injected fault."""
        await log.requested(1, {"model": model, "prompt": prompt.text})
        if self.fault(prompt):
            raise RuntimeError("the adapter broke")
        if self.refuse(prompt):
            await log.failed(1, ProviderError("invalid_request", "the provider refused", status=400), True)
            return None
        solution = (prompt.reference_solution or "").rstrip("\n")
        answer = Answer(
            text=self.text(prompt, f"```python\n{solution}\n```\n"),
            reasoning=None,
            finish_reason="stop",
            usage=Usage(),
            request_id=None,
            latency_ms=0.0,
            model=model,
        )
        await log.responded(1, answer, None)
        return answer

    def cost(self, model: str, usage: Usage) -> float | None:
        """Free."""
        return None


class FaultyScorer:
    """The real scoring pool, except for the problems in ``faults``: for those the
    scorer (the ``ScorerLike`` plug-in point) fails the way our own code might."""

    def __init__(self, pool: ScoringPool, faults: dict[str, Callable[[Problem], Score]]) -> None:
        self.pool = pool
        self.faults = faults

    async def score(self, problem: Problem, answer: str) -> Score:
        """The pool's verdict, or the fault planted for ``problem``."""
        fault = self.faults.get(problem.id)
        if fault is not None:
            return fault(problem)
        return await self.pool.score(problem, answer)


def raises(_: Problem) -> Score:
    raise KeyError("a scorer bug")


def unrecordable(problem: Problem) -> Score:
    """A verdict whose detail is nested deeper than JSON encoding goes."""
    deep: dict[str, object] = {}
    for _ in range(200_000):
        deep = {"d": deep}
    return Score(passed=True, score=1.0, scorer=problem.scorer, reason="passed", detail=deep)


@asynccontextmanager
async def services(
    config: Config, provider: ReferenceAnswers, **faults: Callable[[Problem], Score]
) -> AsyncIterator[RunServices]:
    async with ScoringPool(settings_from_config(config.scoring)) as pool:
        scorer = FaultyScorer(pool, {k.replace("_", "-"): f for k, f in faults.items()})
        async with open_services(config, scorer=scorer, providers={"local": provider}) as svc:
            yield svc


async def events_of(store: EventStore, type_: type[E]) -> list[E]:
    """The typed events of ``type_`` in the log, oldest first."""
    return [ev async for rec in store.read(types={type_.TYPE}) if isinstance(ev := rec.event(), type_)]


async def wait_for(
    store: EventStore, type_: type[E], enough: Callable[[list[E]], bool], timeout: float = 60
) -> list[E]:
    """Poll the log until ``enough`` holds for its events of ``type_``; return them."""
    with anyio.fail_after(timeout):
        while True:
            head = await store.head()
            evs = await events_of(store, type_)
            if enough(evs):
                return evs
            await store.wait_for_new(head, timeout=1.0)


class TestEveryAnswerGetsAVerdict:
    async def test_a_scorer_fault_is_recorded_on_that_rollout_and_the_run_completes(
        self, tmp_path: Path
    ) -> None:
        """A scorer that raises on one rollout, and one that returns a verdict the log
        cannot hold on another: each of those rollouts is scored failed, score 0, with
        "scorer error: ..." and ``detail.error = "scorer"``; every other rollout gets the
        real pool's verdict; the run ends ``completed`` with every rollout scored."""
        config = write_config(tmp_path)
        async with services(config, ReferenceAnswers(), dijkstra=raises, n_queens=unrecordable) as svc:
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual")
            with anyio.fail_after(120):
                fin = await run.drive(grace=5)
            assert fin is not None
            assert fin.status == "completed", fin
            assert fin.scored == fin.planned == len(run.problem_ids)
            scored = {e.rollout_id: e for e in await events_of(svc.store, RolloutScored)}
            started = await events_of(svc.store, RolloutResponded)
            assert len(scored) == len(started) == fin.planned
            faulty = [e for e in scored.values() if e.detail.get("error") == "scorer"]
            assert sorted(e.reason.split(":")[1].strip() for e in faulty) == ["KeyError", "RecursionError"]
            for e in faulty:
                assert e.reason.startswith("scorer error: ")
                assert (e.passed, e.score) == (False, 0.0)
            others = [e for e in scored.values() if e not in faulty]
            assert len(others) == fin.planned - 2
            assert all(e.passed and e.reason == "passed" for e in others), others

    async def test_scorer_errors_are_infra_failures_and_rescore_judges_them_again(
        self, tmp_path: Path
    ) -> None:
        """The report counts the two scorer-error verdicts as infra failures, not the
        model's; once the scorer is mended, `rescore` judges them again (their problem
        unchanged) and they pass: the report then has no failure left."""
        from rollwatch.report import build_report, to_json
        from rollwatch.runs.rescore import rescore

        config = write_config(tmp_path)
        async with services(config, ReferenceAnswers(), dijkstra=raises, n_queens=unrecordable) as svc:
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual")
            with anyio.fail_after(120):
                fin = await run.drive(grace=5)
            assert fin is not None
            await svc.projections.catch_up(svc.store)
            (row,) = to_json(await build_report(svc.projections))
            assert row["infra_failures"] == {"scorer_error": 2}
            assert row["model_failures"] == {}
            assert row["passed"] == fin.planned - 2
            assert isinstance(svc.scorer, FaultyScorer)
            svc.scorer.faults = {}
            with anyio.fail_after(120):
                summary = await rescore(svc)
            assert {pid: (f.rescored, f.to_pass) for pid, f in summary.problems.items()} == {
                "dijkstra": (1, 1),
                "n-queens": (1, 1),
            }
            await svc.projections.catch_up(svc.store)
            (row,) = to_json(await build_report(svc.projections))
            assert (row["infra_failures"], row["model_failures"]) == ({}, {})
            assert row["passed"] == fin.planned
            with anyio.fail_after(120):
                assert (await rescore(svc)).rescored == 0, "a sound verdict is not judged again"

    async def test_an_answer_with_a_lone_surrogate_does_not_jam_the_run(self, tmp_path: Path) -> None:
        """A provider's answer text holding a lone surrogate ("\\ud800", which UTF-8
        cannot encode) is recorded and scored like any other; the run completes."""
        config = write_config(tmp_path)
        provider = ReferenceAnswers()
        answered: list[str] = []

        def first_with_a_surrogate(prompt: Prompt, text: str) -> str:
            answered.append(prompt.text)
            return text + "\ud800 trailing words" if len(answered) == 1 else text

        provider.text = first_with_a_surrogate
        async with services(config, provider) as svc:
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual")
            with anyio.fail_after(120):
                fin = await run.drive(grace=5)
            assert fin is not None
            assert fin.status == "completed", fin
            assert fin.scored == fin.planned
            answers = [e for e in await events_of(svc.store, RolloutResponded) if "trailing words" in e.text]
            assert len(answers) == 1


class TestRunStatus:
    async def test_a_run_with_rollouts_left_unscored_ends_partial_with_counts_by_cause(
        self, tmp_path: Path
    ) -> None:
        """SPEC §7: a run whose provider gave up on two rollouts (a final failure each)
        ends ``partial``, not ``completed``, with those two counted under their cause
        (the failure's kind); every other rollout is scored."""
        config = write_config(tmp_path)
        provider = ReferenceAnswers()
        refused: list[str] = []

        def two(prompt: Prompt) -> bool:
            if len(refused) < 2:
                refused.append(prompt.text)
                return True
            return False

        provider.refuse = two
        async with services(config, provider) as svc:
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual")
            with anyio.fail_after(120):
                fin = await run.drive(grace=5)
            assert fin is not None
            assert fin.status == "partial", fin
            assert fin.failures == {"invalid_request": 2}
            assert fin.scored == fin.planned - 2 == len(await events_of(svc.store, RolloutScored))


class TestEveryRunEnds:
    async def test_a_run_that_keeps_crashing_is_closed_as_failed_after_the_bound(
        self, tmp_path: Path
    ) -> None:
        """Driving a run whose provider raises records each crash (a RunInterrupted
        "crash: ...") and hands the error on; the crash that reaches MAX_CRASHES
        closes the run as ``failed`` with the reason, instead of raising again."""
        config = write_config(tmp_path)
        provider = ReferenceAnswers()
        provider.fault = lambda _: True
        async with services(config, provider) as svc:
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual")
            for _ in range(MAX_CRASHES - 1):
                with pytest.raises(BaseExceptionGroup):
                    await run.drive(grace=5)
                await svc.board.release(run.run_id)  # as the daemon does before a resume
                run = await Run.load(svc, run.run_id)
            fin = await run.drive(grace=5)
            assert fin is not None
            assert fin.status == "failed"
            assert f"crashed {MAX_CRASHES} times" in fin.message
            assert "RuntimeError: the adapter broke" in fin.message
            crashes = await events_of(svc.store, RunInterrupted)
            assert [e.reason.startswith("crash: ") for e in crashes] == [True] * MAX_CRASHES
            assert [e.run_id for e in await events_of(svc.store, RunFinished)] == [run.run_id]

    async def test_the_daemon_closes_a_crashing_run_and_the_schedule_fires_again(
        self, tmp_path: Path
    ) -> None:
        """Under ``serve``, a run that crashes at every resume is closed as ``failed``
        after MAX_CRASHES (not retried forever), and the schedule is free again: the
        next fire starts a new run, which completes."""
        config = write_config(tmp_path)
        provider = ReferenceAnswers()
        provider.fault = lambda _: True
        daemon = Daemon(config, grace=5, providers={"local": provider})
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            await tg.start(daemon.run)
            assert daemon.services is not None
            store = daemon.services.store
            finished = await wait_for(store, RunFinished, bool)
            assert len(finished) == 1
            assert finished[0].status == "failed"
            assert f"crashed {MAX_CRASHES} times" in finished[0].message
            # Resumes wait 1 s, then 2 s: bounded, not forever.
            assert time.monotonic() - t0 < 30

            provider.fault = lambda _: False
            await store.append(f"schedule-{SCHEDULE}", [ScheduleTriggered(schedule=SCHEDULE)])
            runs = await wait_for(store, RunFinished, lambda evs: len(evs) == 2)
            assert runs[1].status == "completed"
            started = await events_of(store, RunStarted)
            assert [e.trigger for e in started] == ["schedule", "trigger"]
            assert runs[1].run_id == started[1].run_id != runs[0].run_id
            daemon.stopping.set()


class TestRescoreFaults:
    async def test_a_scorer_fault_during_a_rescore_is_a_scorer_error_verdict(self, tmp_path: Path) -> None:
        """Two problems get a new version after a run, and the scorer fails on both
        during the re-score (one raises, one returns a verdict the log cannot hold):
        each of their rollouts gets a ``RolloutRescored`` scorer-error verdict under the
        new version, the re-score finishes, and no other rollout is touched."""
        from rollwatch.events import RescoreFinished, RolloutRescored
        from rollwatch.problems import ProblemSet
        from rollwatch.runs.rescore import rescore

        config = write_config(tmp_path)
        async with services(config, ReferenceAnswers(), dijkstra=raises, n_queens=unrecordable) as svc:
            pset = svc.problem_sets["favorites"]
            assert isinstance(pset, ProblemSet)
            healthy = [p for p in pset.problems if p.id not in ("dijkstra", "n-queens")]
            svc.problem_sets["favorites"] = dataclasses.replace(pset, problems=healthy, _by_id={})
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual")
            with anyio.fail_after(120):
                fin = await run.drive(grace=5)
            assert fin is not None
            changed = {
                p.id: dataclasses.replace(p, content_hash=p.content_hash + "-v2")
                for p in pset.problems
                if p.id in ("dijkstra", "n-queens", "lis-length")
            }
            # The set as it is now: two faulty problems back, one healthy problem changed.
            now = [changed.get(p.id, p) for p in pset.problems]
            svc.problem_sets["favorites"] = dataclasses.replace(pset, problems=now, _by_id={})
            with anyio.fail_after(120):
                summary = await rescore(svc)
            # dijkstra and n-queens had no rollouts in the run (they were left out): only
            # lis-length's one rollout is re-scored, and it still passes.
            assert {pid: (f.rescored, f.to_pass, f.to_fail) for pid, f in summary.problems.items()} == {
                "lis-length": (1, 0, 0)
            }
            # Now a run on all of them, then the faulty two changed again.
            svc.problem_sets["favorites"] = dataclasses.replace(pset, problems=list(pset.problems), _by_id={})
            svc.scorer.faults = {}
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual", rollouts=1)
            with anyio.fail_after(120):
                assert (await run.drive(grace=5)) is not None
            svc.problem_sets["favorites"] = dataclasses.replace(pset, problems=now, _by_id={})
            svc.scorer.faults = {"dijkstra": raises, "n-queens": unrecordable}
            with anyio.fail_after(120):
                summary = await rescore(svc, run=run.run_id)
            flips = {pid: (f.rescored, f.to_pass, f.to_fail) for pid, f in summary.problems.items()}
            assert flips == {"dijkstra": (1, 0, 1), "n-queens": (1, 0, 1), "lis-length": (1, 0, 0)}
            rescored = [
                e for e in await events_of(svc.store, RolloutRescored) if e.problem_id != "lis-length"
            ]
            assert len(rescored) == 2
            for e in rescored:
                assert e.reason.startswith("scorer error: ")
                assert (e.passed, e.detail.get("error")) == (False, "scorer")
                assert e.problem_hash.endswith("-v2")
            assert len(await events_of(svc.store, RescoreFinished)) == 2


class TestRunLock:
    async def test_a_run_is_locked_from_the_moment_its_run_started_is_in_the_log(
        self, tmp_path: Path
    ) -> None:
        """Once `Run.start` has recorded RunStarted, no other process can take the run's lock
        (the daemon's check of whether a schedule's run is going takes it); driving it keeps
        the same lock and lets go at the end. The lock was taken only once driving: a fire
        of the daemon in between found a `rollwatch run`'s new run unlocked and started
        another run of the schedule."""
        from rollwatch.runs import RunLock

        config = write_config(tmp_path)
        async with services(config, ReferenceAnswers()) as svc:
            run = await Run.start(svc, config.schedule(SCHEDULE), trigger="manual")
            assert not RunLock(svc.locks_dir, run.run_id).acquire()
            fin = await run.drive()
            assert fin is not None
            assert fin.status == "completed"
            assert not run.locked_elsewhere
            other = RunLock(svc.locks_dir, run.run_id)
            assert other.acquire()
            other.release()
