"""Re-scoring: archived answers judged again against the problems' current versions.

A problem's version is its content hash (prompt, tests, settings, reference). When an
operator strengthens a problem's tests, every answer already in the log can be judged
again, in the sandbox, without asking any provider: each new verdict is a
``RolloutRescored`` naming the problem version and the scorer version it used, and
the earlier verdicts stay in the log. Readers take each rollout's newest verdict
(``rollouts.passed``); ``verdicts`` keeps them all, for ``report --problem-version``.

Each verdict goes on its rollout's stream (so the release job, deciding from that
stream, never releases a result that no longer passes); the summary
(``RescoreFinished``) on the re-score's own stream. Every verdict carries, in the same
append, its publication decisions (:func:`rollwatch.publication.policy.decide`): one
whatever the verdict says (the log's size, public in every checkpoint, must not tell a
flip to pass from any other re-score). A flip to pass gets the public one, with an
embargo counted from the re-score, so the release job releases it like any other
positive result; every other verdict gets "none".

``record_versions`` first writes a ``ProblemVersioned`` for every problem whose
current content differs from the newest version the log knows, so that the log (not
the files on one machine) says which version is the newest.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from rollwatch.errors import ConcurrencyConflict, UsageError
from rollwatch.events import (
    ProblemVersioned,
    PublicationDecided,
    PublicDate,
    RescoreFinished,
    RolloutRescored,
    RolloutResponded,
    canonical_json_fast,
    problem_stream,
    rescore_stream,
    rollout_stream,
)
from rollwatch.log import get_logger
from rollwatch.problems import Problem
from rollwatch.publication.policy import Embargo, PublicationPolicy, decide
from rollwatch.report.failures import verdict_cause
from rollwatch.runs.pipeline import run_embargo
from rollwatch.runs.rollout import scorer_error
from rollwatch.runs.services import RunServices
from rollwatch.scoring.base import recorded_detail, scorer_version

log = get_logger(__name__)


@dataclass(slots=True)
class ProblemFlips:
    """What one re-score did to one problem's verdicts."""

    problem_id: str
    problem_hash: str
    rescored: int = 0
    to_pass: int = 0
    """Verdicts that failed before and pass under this version."""
    to_fail: int = 0
    """Verdicts that passed before and fail under this version."""
    unchanged: int = 0

    def to_data(self) -> dict[str, object]:
        """The entry of ``RescoreFinished.problems`` for this problem."""
        return {
            "problem_hash": self.problem_hash,
            "rescored": self.rescored,
            "to_pass": self.to_pass,
            "to_fail": self.to_fail,
            "unchanged": self.unchanged,
        }


@dataclass(slots=True)
class RescoreSummary:
    """The outcome of :func:`rescore`."""

    rescore_id: str
    problems: dict[str, ProblemFlips] = field(default_factory=dict)
    versions: list[ProblemVersioned] = field(default_factory=list)
    """The new problem versions recorded first."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Rollouts not re-scored, by why (their problem is no longer configured, say)."""

    @property
    def rescored(self) -> int:
        """Verdicts recorded by this re-score."""
        return sum(p.rescored for p in self.problems.values())


async def record_versions(services: RunServices, sets: Sequence[str] | None = None) -> list[ProblemVersioned]:
    """Record a ``ProblemVersioned`` for each problem (of ``sets``, default all) whose
    content hash is not the newest version the log knows of it; return them.

    A problem the log has never seen gets none: it has no verdict to revise.
    """
    pdb = services.projections
    await pdb.catch_up(services.store)
    rows = await pdb.fetchall(
        "SELECT problem_id, problem_hash FROM problem_versions p WHERE seq ="
        " (SELECT max(seq) FROM problem_versions q WHERE q.problem_id = p.problem_id)"
    )
    newest = {str(pid): str(h) for pid, h in rows}
    recorded: list[ProblemVersioned] = []
    for name, pset in sorted(services.problem_sets.items()):
        if sets is not None and name not in sets:
            continue
        for problem in pset.problems:
            known = newest.get(problem.id)
            if known is None or known == problem.content_hash:
                continue
            ev = ProblemVersioned(
                problem_set=name,
                problem_id=problem.id,
                problem_hash=problem.content_hash,
                previous_hash=known,
                node=services.node,
            )
            await services.store.append(problem_stream(name, problem.id), [ev])
            newest[problem.id] = problem.content_hash
            recorded.append(ev)
            log.info(
                "problem_versioned",
                problem_set=name,
                problem_id=problem.id,
                problem_hash=problem.content_hash,
                previous_hash=known,
            )
    return recorded


@dataclass(frozen=True, slots=True)
class _Candidate:
    rollout_id: str
    problem: Problem
    answer_seq: int
    passed: bool
    verdict_hash: str | None
    run_id: str


async def rescore(
    services: RunServices,
    *,
    problem_set: str | None = None,
    problem: str | None = None,
    run: str | None = None,
    parallel: int | None = None,
    rescore_id: str | None = None,
    infra: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> RescoreSummary:
    """Judge again every scored rollout (of ``problem_set``, ``problem``, ``run`` when
    given) whose newest verdict is not under its problem's current version, or (with
    ``infra``, as ``rollwatch rescore`` asks) is an infra failure (a scorer or sandbox
    error: it judged nothing of the model). The daemon's automatic re-score leaves
    those to the operator: a scorer that keeps failing would otherwise be run again,
    and its verdicts appended again, at every start and SIGHUP.

    Never calls a provider: the answers come from the log. ``parallel`` bounds the
    samples in the scorer at once (default: all the scorer takes; the daemon's
    background re-score uses 1, so runs keep the pool). ``UsageError`` for a set,
    problem or run that does not exist. ``progress(done, total)`` is called as each
    answer's new verdict is in (a progress line on a terminal).
    """
    svc = services
    if problem_set is not None and problem_set not in svc.problem_sets:
        known = ", ".join(sorted(svc.problem_sets)) or "none"
        raise UsageError(f"rescore: no problem set {problem_set!r} (configured: {known})")
    if problem is not None and not any(
        any(p.id == problem for p in ps.problems)
        for name, ps in svc.problem_sets.items()
        if problem_set is None or name == problem_set
    ):
        raise UsageError(f"rescore: no problem {problem!r} in {problem_set or 'any configured problem set'}")
    pdb = svc.projections
    await pdb.catch_up(svc.store)
    if run is not None and await pdb.fetchone("SELECT 1 FROM runs WHERE run_id = ?", (run,)) is None:
        raise UsageError(f"rescore: no run {run!r} in the log")
    summary = RescoreSummary(rescore_id=rescore_id or uuid.uuid4().hex)
    summary.versions = await record_versions(svc, None if problem_set is None else [problem_set])

    where, params = ["o.state = 'scored'", "o.answer_seq IS NOT NULL"], []
    if problem_set is not None:
        where.append("u.problem_set = ?")
        params.append(problem_set)
    if problem is not None:
        where.append("o.problem_id = ?")
        params.append(problem)
    if run is not None:
        where.append("o.run_id = ?")
        params.append(run)
    rows = await pdb.fetchall(
        "SELECT o.rollout_id, u.problem_set, o.problem_id, o.answer_seq, o.passed, o.verdict_hash, o.reason,"
        " o.run_id"
        " FROM rollouts o JOIN runs u ON u.run_id = o.run_id"
        f" WHERE {' AND '.join(where)} ORDER BY o.answer_seq",
        tuple(params),
    )
    todo: list[_Candidate] = []
    for rid, set_name, pid, answer_seq, passed, vhash, reason, run_id in rows:
        pset = svc.problem_sets.get(str(set_name))
        try:
            current = pset.get(str(pid)) if pset is not None else None
        except KeyError:
            current = None
        if current is None:
            summary.skipped["problem_not_configured"] = summary.skipped.get("problem_not_configured", 0) + 1
            continue
        if vhash == current.content_hash and (passed or not infra or verdict_cause(reason)[0] != "infra"):
            # Already judged under the current version; a verdict that judged nothing
            # of the model (our scorer or sandbox broke) is judged again.
            continue
        todo.append(_Candidate(str(rid), current, int(answer_seq), bool(passed), vhash, str(run_id)))
    for c in todo:
        summary.problems.setdefault(c.problem.id, ProblemFlips(c.problem.id, c.problem.content_hash))

    version = scorer_version()
    limiter = anyio.CapacityLimiter(parallel or max(1, len(todo)))
    stream = rescore_stream(summary.rescore_id)

    # A re-score here releases nothing sooner than the run's own verdicts would be.
    embargoes: dict[str, Embargo] = {}

    async def embargo_of(run_id: str) -> Embargo:
        if run_id not in embargoes:
            embargoes[run_id] = await run_embargo(svc, run_id)
        return embargoes[run_id]

    judged = 0
    if progress is not None:
        progress(0, len(todo))

    async def one(c: _Candidate) -> None:
        nonlocal judged
        try:
            await judge(c)
        finally:
            judged += 1
            if progress is not None:
                progress(judged, len(todo))

    async def judge(c: _Candidate) -> None:
        async with limiter:
            answered = [ev.event() async for ev in svc.store.read(after=c.answer_seq - 1, until=c.answer_seq)]
            answer = answered[0] if answered else None
            if not isinstance(answer, RolloutResponded):
                summary.skipped["answer_missing"] = summary.skipped.get("answer_missing", 0) + 1
                log.error("rescore_answer_missing", rollout_id=c.rollout_id, answer_seq=c.answer_seq)
                return
            ev = await _verdict(svc, c, answer.text, version, summary.rescore_id)
        # On the rollout's own stream: a release reading the stream to decide sees it,
        # and one that read it before conflicts on its append and reads again.
        await _append_with_decisions(svc, ev, await embargo_of(c.run_id))
        flips = summary.problems[c.problem.id]
        flips.rescored += 1
        if ev.passed and not c.passed:
            flips.to_pass += 1
        elif c.passed and not ev.passed:
            flips.to_fail += 1
        else:
            flips.unchanged += 1

    async with anyio.create_task_group() as tg:
        for c in todo:
            tg.start_soon(one, c)
    if summary.rescored or summary.versions:
        await svc.store.append(
            stream,
            [
                RescoreFinished(
                    rescore_id=summary.rescore_id,
                    scorer_version=version,
                    rescored=summary.rescored,
                    problems={pid: f.to_data() for pid, f in sorted(summary.problems.items())},
                    node=svc.node,
                )
            ],
        )
    log.info(
        "rescore_finished",
        rescore_id=summary.rescore_id,
        rescored=summary.rescored,
        to_pass=sum(f.to_pass for f in summary.problems.values()),
        to_fail=sum(f.to_fail for f in summary.problems.values()),
        skipped=summary.skipped,
    )
    return summary


_ATTEMPTS = 5


async def _append_with_decisions(svc: RunServices, ev: RolloutRescored, policy: PublicationPolicy) -> None:
    """Append ``ev`` with its publication decisions: "public" if it passes and its rollout
    has none yet, or had one a re-score withdrew before its release (dated from now), else
    "none" (and "subscribers" if its rollout somehow lacks it).

    Read and appended at the stream's version, so two re-scores of one rollout at once
    (the command and the daemon's) cannot both decide it public.
    """
    stream = rollout_stream(ev.rollout_id)
    decisions: list[PublicationDecided] = []
    for _ in range(_ATTEMPTS):
        version = 0
        date = PublicDate()
        async for rec in svc.store.read(stream=stream):
            version = rec.version
            date.apply(rec)
        decisions = decide(policy, ev, svc.decision_time(), date.decided, withdrawn=date.withdrawn)
        try:
            await svc.store.append(stream, [ev, *decisions], expected_version=version)
        except ConcurrencyConflict:
            continue  # the release job or another re-score appended: read again
        if any(d.audience != "none" for d in decisions):
            log.info("rescore_decided", rollout_id=ev.rollout_id, audiences=[d.audience for d in decisions])
        return
    # Contended all along (five appends to one rollout while this one decided): append
    # without the fence. A second public decision is harmless: the first one stands.
    log.warning("rescore_decision_contended", rollout_id=ev.rollout_id, attempts=_ATTEMPTS)
    await svc.store.append(stream, [ev, *decisions])


async def _verdict(
    svc: RunServices, c: _Candidate, text: str, version: str, rescore_id: str
) -> RolloutRescored:
    """The new verdict on ``text``; a fault of our scorer is a scorer-error verdict, as in a run."""

    def verdict(
        passed: bool,
        score: float,
        scorer: str,
        reason: str,
        detail: dict[str, Any],
        extraction: str = "",
        duration_ms: float = 0.0,
        time_limit_s: float | None = None,
    ) -> RolloutRescored:
        return RolloutRescored(
            rollout_id=c.rollout_id,
            problem_id=c.problem.id,
            passed=passed,
            score=score,
            scorer=scorer,
            problem_hash=c.problem.content_hash,
            scorer_version=version,
            rescore_id=rescore_id,
            previous_passed=c.passed,
            previous_problem_hash=c.verdict_hash,
            time_limit_s=time_limit_s,
            reason=reason,
            extraction=extraction,
            duration_ms=duration_ms,
            detail=detail,
        )

    try:
        r = await svc.scorer.score(c.problem, text)
        ev = verdict(
            bool(r.passed),
            float(r.score),
            r.scorer,
            r.reason,
            recorded_detail(bool(r.passed), r.detail),
            r.extraction,
            r.duration_ms,
            r.time_limit_s,
        )
        # What the append would do first: a verdict the log cannot hold fails here.
        canonical_json_fast(ev.to_data())
    except Exception as e:
        log.error("scorer_error", rollout_id=c.rollout_id, problem_id=c.problem.id, exc_info=True)
        failed = scorer_error(c.rollout_id, c.problem, e)
        return verdict(False, 0.0, failed.scorer, failed.reason, failed.detail)
    return ev
