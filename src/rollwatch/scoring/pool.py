"""The scoring pool: extraction, a sandbox per worker slot, a scorer per kind.

    async with ScoringPool(settings) as pool:
        log.info("sandbox", isolation=pool.isolation, workers=pool.workers)
        score = await pool.score(problem, answer_text)

At most ``workers`` samples run at once, each in its own slot's sandbox; callers
beyond that wait their turn in order. Nothing here blocks the event loop: the
sandboxes are separate processes spoken to over pipes.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from rollwatch.errors import IsolationUnavailable, SandboxError
from rollwatch.events import stored_text
from rollwatch.log import get_logger
from rollwatch.problems import Problem
from rollwatch.scoring.base import Outcome, Score, Scorer, ScoringSettings, TimeLimit
from rollwatch.scoring.cgroup import cgroups
from rollwatch.scoring.command import CommandScorer
from rollwatch.scoring.extract import EXTRACT_MAX, Extraction, code_sha256, extract_code
from rollwatch.scoring.function import FunctionScorer
from rollwatch.scoring.sandbox import (
    SANDBOXES,
    ZygoteSandbox,
    fs_plan,
    isolation_candidates,
    missing_isolation,
    privileged,
    shown_to_samples,
)
from rollwatch.scoring.stdio import StdioScorer
from rollwatch.scoring.uids import UidLease, take_uids

log = get_logger(__name__)

SCORERS: dict[str, type[Scorer]] = {
    FunctionScorer.kind: FunctionScorer,
    StdioScorer.kind: StdioScorer,
    CommandScorer.kind: CommandScorer,
}


STARVED_RETRIES = (2.0, 8.0)
"""Pauses before judging again a sample the host starved of CPU (then its sandbox error stands)."""

EXTRACT_INLINE = 16 * 1024
"""Answers up to this many characters are extracted from on the event loop (a few ms at
worst: a thread's hop would cost more than most extractions); longer ones in a thread."""


def as_stored(text: str) -> str:
    """``text`` as the event log stores it (:func:`rollwatch.events.stored_text`): a lone
    surrogate (which a provider's JSON can carry as ``"\\ud800"``) becomes U+FFFD.

    An answer is judged as it is archived, so that ``rescore`` judges the same text and the
    verdict's ``code_sha256`` names a part of the answer as recorded. Judged raw, such an
    answer to a ``command`` problem failed to be written out (a scorer error, counted ours).
    """
    return stored_text(text)


def plain_text(s: str, limit: int = 4000) -> str:
    """``s`` cut to ``limit`` characters and encodable as UTF-8 (lone surrogates become "?")."""
    return s[:limit].encode("utf-8", "replace").decode("utf-8")


def plain_detail(value: Any, depth: int = 0) -> Any:
    """A score's detail as the event log can always store it: bounded depth, size and text.

    Parts of it come from the sample (its stderr, its exception's message) or from a
    checker that may echo the sample's output: nothing there may stop a run.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return plain_text(value)
    if depth >= 8:
        return "…"
    if isinstance(value, dict):
        return {plain_text(str(k), 200): plain_detail(v, depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple):
        return [plain_detail(v, depth + 1) for v in value[:100]]
    return plain_text(repr(value), 200)


class ScoringPool:
    """Scores answers in sandboxes; an async context manager.

    ``isolation`` (after entering) is "bwrap", "unshare" or "none": log it at start.
    Entering raises IsolationUnavailable when ``require_isolation`` is set and no
    namespace sandbox starts, and SandboxError when no sandbox starts at all.
    """

    def __init__(self, settings: ScoringSettings | None = None, *, isolation: str | None = None) -> None:
        settings = settings or ScoringSettings()
        if isolation is not None:
            settings = replace(settings, isolation=isolation)  # type: ignore[arg-type]
        self.settings = settings
        self.workers = settings.worker_count
        self.isolation = ""
        self.sandboxes: list[ZygoteSandbox] = []
        self._helper_dir = ""
        self._scorers: dict[str, Scorer] = {}
        self._limits: dict[str, TimeLimit] = {}
        self._shown_folders: dict[str, str | None] = {}
        self._calibrating: dict[str, anyio.Lock] = {}
        self._free_tx: MemoryObjectSendStream[ZygoteSandbox] | None = None
        self._free_rx: MemoryObjectReceiveStream[ZygoteSandbox] | None = None
        self._uids: UidLease | None = None
        self._extracting = anyio.CapacityLimiter(1)

    # -- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._helper_dir = tempfile.mkdtemp(prefix="rollwatch-scoring-")
        try:
            # rollwatch:uids: as root, a run of uids no other process on the host holds.
            if privileged():
                s = self.settings
                self._uids = await anyio.to_thread.run_sync(take_uids, s.uid_base, s.uid_count, self.workers)
                self.settings = replace(s, uid_base=self._uids.start)
            s = self.settings
            first = await self._first_sandbox()
            self.sandboxes = [first] + [SANDBOXES[self.isolation](s, slot) for slot in range(1, self.workers)]
            async with anyio.create_task_group() as tg:
                for sb in self.sandboxes[1:]:
                    tg.start_soon(sb.start)
        except BaseException:
            await self._close()
            raise
        self._free_tx, self._free_rx = anyio.create_memory_object_stream[ZygoteSandbox](self.workers)
        for sb in self.sandboxes:
            self._free_tx.send_nowait(sb)
        self._scorers = {kind: cls(s, self._helper_dir) for kind, cls in SCORERS.items()}
        log.info(
            "scoring_pool_started",
            isolation=self.isolation,
            workers=self.workers,
            uids=[sb.uid for sb in self.sandboxes] if self.sandboxes[0].uid is not None else "own",
            memory_mb=s.memory_mb,
        )
        return self

    async def _first_sandbox(self) -> ZygoteSandbox:
        s = self.settings
        failures: list[str] = []
        for name in isolation_candidates(s):
            if name == "none" and s.require_isolation:
                break
            sb = SANDBOXES[name](s, 0)
            try:
                await sb.start()
            except SandboxError as e:
                failures.append(f"{name}: {e}")
                log.warning("sandbox_unusable", isolation=name, error=str(e))
                continue
            self.isolation = name
            return sb
        if s.isolation == "none":  # written out, but the interlock is still on
            raise IsolationUnavailable(
                'scoring.isolation = "none" asks for no isolation, but scoring.require_isolation is true '
                "(the default): set it to false as well to score without isolation"
            )
        why = "; ".join(failures) or missing_isolation()
        if s.isolation == "auto" or s.require_isolation:
            raise IsolationUnavailable(
                f"scoring refuses to run without isolation (scoring.require_isolation, scoring.isolation = "
                f'"{s.isolation}"): no namespace sandbox works ({why}); install bubblewrap '
                "(apt-get install bubblewrap) or run as root for unshare; to score without any isolation, "
                'write scoring.isolation = "none" and scoring.require_isolation = false'
            )
        raise SandboxError(f"no sandbox could start: {why}")

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for sb in self.sandboxes:
                    tg.start_soon(sb.aclose)
            if self._helper_dir:
                shutil.rmtree(self._helper_dir, ignore_errors=True)
            if self._uids is not None:  # after the sandboxes are gone: then the uids are free
                self._uids.release()
            if self.settings.cgroups:
                await anyio.to_thread.run_sync(cgroups().tidy)
            for stream in (self._free_tx, self._free_rx):
                if stream is not None:
                    stream.close()

    @asynccontextmanager
    async def _lease(self) -> AsyncIterator[ZygoteSandbox]:
        if self._free_rx is None or self._free_tx is None:
            raise SandboxError("the scoring pool is not open: use it as `async with ScoringPool(...)`")
        sb = await self._free_rx.receive()
        try:
            yield sb
        finally:
            self._free_tx.send_nowait(sb)

    # -- scoring ----------------------------------------------------------------------------

    async def score(self, problem: Problem, answer: str) -> Score:
        """Extract the code from ``answer`` (a model's whole text) and judge it."""
        started = time.perf_counter()
        limit = await self.time_limit(problem)
        answer = as_stored(answer)
        if len(answer) <= EXTRACT_INLINE:
            ex = extract_code(answer, problem.entry_point)
        else:
            # Off the event loop: a few MB of degenerate text take seconds (ast.parse, the one
            # step that would hold the GIL throughout, reads at most WHOLE_TEXT_MAX of it). One
            # at a time: threads share the GIL anyway, and each holds a copy or two of its answer.
            ex = await anyio.to_thread.run_sync(
                extract_code, answer, problem.entry_point, limiter=self._extracting
            )
        if ex.code is None:
            reason = "no code found"
            if len(answer) > EXTRACT_MAX:
                reason += (
                    f" (the answer has {len(answer)} characters: extraction reads at most {EXTRACT_MAX})"
                )
            outcome = Outcome(passed=False, score=0.0, reason=reason)
        else:
            outcome = await self._judge(replace(problem, timeout=limit.seconds), ex.code)
        return self._score(problem, outcome, ex, started, limit)

    async def score_code(self, problem: Problem, code: str) -> Score:
        """Judge ``code`` as it is (no extraction)."""
        started = time.perf_counter()
        limit = await self.time_limit(problem)
        outcome = await self._judge(replace(problem, timeout=limit.seconds), code)
        return self._score(problem, outcome, Extraction(code, "whole-text", 0), started, limit)

    def known_limits(self) -> dict[str, TimeLimit]:
        """The time limits settled so far in this process, by problem version (content
        hash): what the operator's console shows as each problem's reference runtime."""
        return dict(self._limits)

    async def time_limit(self, problem: Problem) -> TimeLimit:
        """The time limit ``problem``'s samples get on this machine.

        Its own ``timeout`` when it sets one. Otherwise, as EvalPlus does, a multiple
        (``time_limit_factor``) of its reference solution's runtime measured here in the
        sandbox, at least ``time_limit_floor``: tests that a fast machine runs in 0.1 s
        and a slow one in 2 s get limits to match, so a verdict on a slow machine is not
        a timeout a fast one would not have had. The reference runs once per problem
        version and pool; one that does not pass (or no reference) leaves the
        ``scoring.timeout`` default.
        """
        if problem.timeout:
            return TimeLimit(seconds=problem.timeout, source="problem")
        if problem.reference_solution is None:
            return TimeLimit(seconds=self.settings.timeout, source="default")
        key = problem.content_hash
        known = self._limits.get(key)
        if known is not None:
            return known
        lock = self._calibrating.setdefault(key, anyio.Lock())
        async with lock:
            known = self._limits.get(key)
            if known is None:
                known = self._limits[key] = await self._calibrate(problem, problem.reference_solution)
        return known

    async def _calibrate(self, problem: Problem, reference: str) -> TimeLimit:
        s = self.settings
        probe = replace(problem, timeout=s.timeout)
        scorer = self._scorers.get(problem.scorer)
        if scorer is None:
            raise SandboxError(f"the scoring pool is not open, or {problem.scorer!r} is not a scorer kind")
        ex = extract_code(f"```python\n{reference.rstrip()}\n```\n", problem.entry_point)
        async with self._lease() as sandbox:
            # Timed inside the lease: waiting for a free sandbox is not the reference's time.
            started = time.perf_counter()
            outcome = await scorer.score(probe, ex.code or reference, sandbox)
            runtime = time.perf_counter() - started
        if not outcome.passed:
            log.warning(
                "time_limit_uncalibrated",
                problem_id=problem.id,
                reason=f"the reference solution did not pass: {outcome.reason}",
                time_limit_s=s.timeout,
            )
            return TimeLimit(seconds=s.timeout, source="default")
        seconds = round(max(s.time_limit_floor, s.time_limit_factor * runtime), 3)
        log.info(
            "time_limit_calibrated",
            problem_id=problem.id,
            reference_ms=round(runtime * 1000, 3),
            time_limit_s=seconds,
        )
        return TimeLimit(seconds=seconds, source="calibrated", reference_ms=round(runtime * 1000, 3))

    async def _judge(self, problem: Problem, code: str) -> Outcome:
        scorer = self._scorers.get(problem.scorer)
        if scorer is None:
            raise SandboxError(f"the scoring pool is not open, or {problem.scorer!r} is not a scorer kind")
        shown = self._shown(problem)
        if shown is not None:
            # Its tests, expected outputs and checker would be there for every answer to read.
            where = f"folder {problem.folder}" if problem.folder is not None else f"file {problem.file}"
            return Outcome(
                passed=False,
                score=0.0,
                reason=f"scorer error: the problem's {where} is in the sandbox's "
                f"read-only view of the host ({shown}): every answer could read its tests; move it elsewhere",
            )
        for wait in STARVED_RETRIES:
            async with self._lease() as sandbox:
                outcome = await scorer.score(problem, code, sandbox)
            if not outcome.starved:
                return outcome
            # The host kept the sample's CPU busy with other work until its time ran out:
            # judged again once the load may have passed (the slot is free meanwhile), not
            # left as a sandbox error (ours) that only a `rescore` would judge again.
            log.info("scoring_starved", problem_id=problem.id, reason=outcome.reason, retry_in_s=wait)
            await anyio.sleep(wait)
        async with self._lease() as sandbox:
            return await scorer.score(problem, code, sandbox)  # starved again: its error stands

    def _shown(self, problem: Problem) -> str | None:
        """The folder of the sandbox's view that shows ``problem``'s folder (a HumanEval
        problem's file) to samples, if any (under ``isolation = "none"`` samples see the whole
        host anyway)."""
        path = problem.folder if problem.folder is not None else problem.file
        if path is None or self.isolation not in ("bwrap", "unshare"):
            return None
        key = str(path)
        if key not in self._shown_folders:
            self._shown_folders[key] = shown_to_samples(path, fs_plan(self.settings))
        return self._shown_folders[key]

    def _score(
        self, problem: Problem, outcome: Outcome, ex: Extraction, started: float, limit: TimeLimit
    ) -> Score:
        duration = round((time.perf_counter() - started) * 1000, 3)
        detail = plain_detail({"extraction_blocks": ex.blocks, **outcome.detail})
        if ex.code is not None and isinstance(detail, dict):
            # The code's hash names the exact part of the answer that ran, whatever the
            # problem's configuration becomes (the console finds it by this hash). First,
            # so that neither a checker's output of the same name nor the cut of a long
            # detail at 100 keys can take its place.
            detail.pop("code_sha256", None)
            detail = {"code_sha256": code_sha256(ex.code), **detail}
        score = Score(
            passed=outcome.passed,
            score=outcome.score,
            scorer=problem.scorer,
            reason=plain_text(outcome.reason, 2000),
            detail=detail if isinstance(detail, dict) else {},
            duration_ms=duration,
            extraction=ex.method,
            isolation=self.isolation,
            problem_hash=problem.content_hash,
            time_limit_s=limit.seconds,
        )
        log.debug(
            "scored",
            problem_id=problem.id,
            passed=score.passed,
            reason=score.reason,
            extraction=ex.method,
            duration_ms=duration,
        )
        return score
