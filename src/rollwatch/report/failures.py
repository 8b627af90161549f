"""Why rollouts did not pass: the model's failures told apart from ours (issue 17).

A *model failure* is a verdict on the model's answer: ``wrong_answer`` (the tests
failed, the code raised or did not compile), ``timeout``, ``limit`` (memory, output or
file size), ``no_code`` (no code in the answer) or ``tampered`` (the code attacked the
harness: garbage on the sandbox's channel, a forged verdict, a patched standard library). An *infra failure* says nothing
about the model: the provider gave up (its error kind: ``server_error``,
``rate_limited``, ``auth``, ...), the run ended before asking (``budget_exhausted``,
``provider_failed``, ``not_requested``), an answer was never had or never judged once
its run ended (``unanswered``, ``unscored``), or the judging itself broke
(``scorer_error``, ``sandbox_error``, ``checker_error``: a verdict was recorded, failed,
and ``rollwatch rescore`` judges it again).

Causes come from what the read models already hold (a rollout's state, its final
failure's kind, its newest verdict's reason, its run's ``RunFinished`` summary), so
they need no event of their own and apply to every log already written. Rollouts of
a run still going are neither: they may yet pass.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Side = Literal["model", "infra"]

VERDICT_CAUSES: tuple[tuple[str, Side, str], ...] = (
    # The candidate's own attacks on the harness come back as "sandbox error: ..." too:
    # they are the model's, and must not hide among ours (tests/scoring/test_hostile.py).
    ("sandbox error: the candidate", "model", "tampered"),
    ("sandbox error: something other than", "model", "tampered"),
    ("tampered with", "model", "tampered"),
    ("scorer error", "infra", "scorer_error"),
    ("sandbox error", "infra", "sandbox_error"),
    ("sandbox lost", "infra", "sandbox_error"),
    ("checker could not start", "infra", "checker_error"),
    ("checker timeout", "infra", "checker_error"),
    # "checker: <its last line>" is a checker that failed the answer by its exit status (as
    # the command protocol has it), and "checker said passed but exited N" most likely the
    # program's own JSON echoed last: the model's wrong answers. Only the checker's own
    # faults are ours: a score that is not a number, a death by a signal.
    ("checker: score is not a number", "infra", "checker_error"),
    ("checker killed by signal", "infra", "checker_error"),
    ("no code found", "model", "no_code"),
    ("timeout", "model", "timeout"),
    ("output limit", "model", "limit"),
    ("memory", "model", "limit"),
    ("file size limit", "model", "limit"),
)
"""A failed verdict's cause by the start of its reason (the scorers' wording); any
other failed verdict is the model's ``wrong_answer``."""

PREFIX = max(len(prefix) for prefix, _, _ in VERDICT_CAUSES)
"""How much of a reason decides its cause (the SQL groups by that much of it)."""

_PREFIXES = tuple(prefix for prefix, _, _ in VERDICT_CAUSES)

INFRA_VERDICTS = frozenset(cause for _, side, cause in VERDICT_CAUSES if side == "infra")
"""Causes of failed verdicts that judged nothing of the model (re-scored by ``rescore``)."""


def verdict_cause(reason: str | None) -> tuple[Side, str]:
    """(side, cause) of a failed verdict with this ``reason``."""
    text = reason or ""
    if not text.startswith(_PREFIXES):  # most failed verdicts: one C-level test
        return "model", "wrong_answer"
    for prefix, side, cause in VERDICT_CAUSES:
        if text.startswith(prefix):
            return side, cause
    return "model", "wrong_answer"


def rollout_cause(state: str | None, fail_kind: str | None, reason: str | None) -> tuple[Side, str]:
    """(side, cause) of one rollout of a finished run that did not pass (``reason``: its
    failed verdict's, when it has one)."""
    if state == "scored":
        return verdict_cause(reason)
    if state == "failed":
        return "infra", str(fail_kind or "failed")
    if state == "answered":
        return "infra", "unscored"
    return "infra", "unanswered"


@dataclass(slots=True)
class Failures:
    """Rollouts that did not pass, by side and cause."""

    model: dict[str, int] = field(default_factory=dict)
    infra: dict[str, int] = field(default_factory=dict)

    def add(self, side: Side, cause: str, n: int = 1) -> None:
        """Count ``n`` more rollouts under ``cause``."""
        into = self.model if side == "model" else self.infra
        into[cause] = into.get(cause, 0) + n

    @staticmethod
    def total(parts: Iterable[Failures]) -> Failures:
        """The counts of ``parts`` added up, most frequent cause first."""
        out = Failures()
        for p in parts:
            for cause, n in p.model.items():
                out.add("model", cause, n)
            for cause, n in p.infra.items():
                out.add("infra", cause, n)
        return out.sorted()

    def sorted(self) -> Failures:
        """The same counts, most frequent cause first."""

        def order(d: dict[str, int]) -> dict[str, int]:
            return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))

        return Failures(order(self.model), order(self.infra))


class Fetcher(Protocol):
    """What this module needs of :class:`rollwatch.projections.ProjectionDB`."""

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


Key = tuple[str, str, str | None, str | None, str | None]
"""(provider, model, served model, problem, run) of a report row; None where the row
does not split by it."""


Answers = dict[tuple[str, str, str], dict[str | None, int]]
"""(provider, model, run) -> its rollouts by the model that served them (None: no answer)."""


async def _answers(pdb: Fetcher, run_id: str | None) -> Answers:
    """Every run's (or run ``run_id``'s) rollouts by provider, model and served model."""
    rows = await pdb.fetchall(
        "SELECT provider, model, run_id, served_model, count(*) FROM rollouts"
        + (" WHERE run_id = ?" if run_id is not None else "")
        + " GROUP BY provider, model, run_id, served_model",
        [run_id] if run_id is not None else [],
    )
    out: Answers = defaultdict(dict)
    for provider, model, run, served, n in rows:
        out[(str(provider), str(model), str(run))][served] = int(n)
    return out


UNSERVED = "\x00"
"""``served_model`` of a rollout without an answer in the aggregates (a key cannot hold NULL)."""


async def has_aggregates(pdb: Fetcher) -> bool:
    """Whether the projections include the report's maintained aggregates
    (:mod:`rollwatch.report.aggregates`, the failures' counts among them); else the report
    groups the rollouts at each call, as it did before it had them."""
    rows = await pdb.fetchall("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", ("agg_cells",))
    return bool(rows)


def _major(counts: dict[str | None, int]) -> str | None:
    """The model most of these answers came from (ties: the first by name), as the
    report's rows place a rollout without an answer."""
    named = {k: n for k, n in counts.items() if k is not None}
    return max(sorted(named), key=lambda s: named[s]) if named else None


async def failures_by_key(
    pdb: Fetcher, by: str, run_id: str | None = None, answers: Answers | None = None
) -> dict[Key, Failures]:
    """Failures of finished runs per report row (``by`` model, problem or run), or of
    the one run ``run_id``. Rollouts never requested count on ``model`` and ``run``
    rows only (which problems they were for is not recorded). ``answers``, when the
    caller has them (the report's cells do), saves reading them again."""
    found = await _failure_rows(pdb, by, None if run_id is None else [run_id])
    if answers is None:
        answers = await _answers(pdb, run_id)
    out: dict[Key, Failures] = defaultdict(Failures)
    for _, key, side, cause, n in _placed(found, by, answers):
        out[key].add(side, cause, n)
    if by != "problem":
        for key, cause, n in await _never_requested(pdb, by, run_id, answers):
            out[key].add("infra", cause, n)
    return {k: v.sorted() for k, v in out.items()}


async def failures_by_run(
    pdb: Fetcher, by: str, runs: Sequence[str] | None, answers: Answers
) -> dict[str, dict[Key, Failures]]:
    """As :func:`failures_by_key` (without the never requested), kept apart per finished
    run (of ``runs``, or every one): what a report keeps per run and adds up."""
    out: dict[str, dict[Key, Failures]] = defaultdict(lambda: defaultdict(Failures))
    for run, key, side, cause, n in _placed(await _failure_rows(pdb, by, runs), by, answers):
        out[str(run)][key].add(side, cause, n)
    return out


_Found = tuple[Any, Any, Any, Any, Any, tuple["Side", str], Any]
"""(provider, model, served model or None, problem or None, run, (side, cause), n)."""


async def _failure_rows(pdb: Fetcher, by: str, runs: Sequence[str] | None) -> list[_Found]:
    """The failures of finished runs (of ``runs``, or every one), by row and cause."""
    finished = "run_id IN (SELECT run_id FROM runs WHERE finished_at IS NOT NULL)"
    args: list[Any] = []
    if runs is not None:
        finished += f" AND run_id IN ({', '.join('?' * len(runs))})"
        args.extend(runs)
    problem = "problem_id" if by == "problem" else "NULL"
    found: list[_Found] = []
    if await has_aggregates(pdb):
        # The maintained counts (rollwatch.report.aggregates): a row per run, served
        # model and cause (and problem, for --by problem), not one per rollout.
        table = "agg_failures" if by == "problem" else "agg_run_failures"
        for provider, model, served, prob, run, side, cause, n in await pdb.fetchall(
            f"SELECT provider, model, served_model, {problem}, run_id, side, cause, n FROM {table}"
            f" WHERE n > 0 AND {finished}",
            args,
        ):
            found.append(
                (provider, model, None if served == UNSERVED else served, prob, run, (side, cause), n)
            )
    else:
        # Grouped by as much of the reason as decides the cause, not by the whole reason
        # (it carries details: an exception's message, a case's name).
        for provider, model, served, prob, run, state, kind, reason, n in await pdb.fetchall(
            f"SELECT provider, model, served_model, {problem}, run_id, state, fail_kind,"
            f" CASE WHEN state = 'scored' THEN substr(coalesce(reason, ''), 1, {PREFIX}) END, count(*)"
            f" FROM rollouts WHERE {finished} AND (state != 'scored' OR coalesce(passed, 0) = 0)"
            " GROUP BY 1, 2, 3, 4, 5, 6, 7, 8",
            args,
        ):
            found.append((provider, model, served, prob, run, rollout_cause(state, kind, reason), n))
    return found


def _placed(found: Iterable[_Found], by: str, answers: Answers) -> Iterator[tuple[Any, Key, Side, str, int]]:
    """Each failure's (run, report row, side, cause, count); one without an answer goes to
    the model most of its run's answers came from, as the report's rows place it."""
    for provider, model, served, prob, run, (side, cause), n in found:
        if served is None:
            served = _major(answers.get((str(provider), str(model), str(run)), {}))
        yield run, _key(by, provider, model, served, prob, run), side, cause, int(n)


async def _never_requested(
    pdb: Fetcher, by: str, run_id: str | None, answers: Answers
) -> Iterable[tuple[Key, str, int]]:
    """Per finished run and model: the planned rollouts it never asked for, and why."""
    where = "finished_at IS NOT NULL AND summary IS NOT NULL"
    args: list[Any] = []
    if run_id is not None:
        where += " AND run_id = ?"
        args.append(run_id)
    out = []
    for run, provider, models_json, summary_json in await pdb.fetchall(
        f"SELECT run_id, provider, models, summary FROM runs WHERE {where}", args
    ):
        models = json.loads(models_json or "[]")
        summary = json.loads(summary_json)
        planned = summary.get("planned")
        if not models or not planned:
            continue
        failures = summary.get("failures") or {}
        closed = str(summary.get("message") or "").partition(": ")[0]
        cause = closed if closed in failures else "not_requested"
        for model in models:
            counts = answers.get((str(provider), str(model), str(run)), {})
            never = planned // len(models) - sum(counts.values())
            if never > 0:
                out.append((_key(by, provider, model, _major(counts), None, run), cause, never))
    return out


def _key(by: str, provider: str, model: str, served: str | None, problem: str | None, run: str | None) -> Key:
    return (
        str(provider),
        str(model),
        served,
        problem if by == "problem" else None,
        run if by == "run" else None,
    )


def describe(counts: dict[str, int]) -> str:
    """``server_error 3, budget_exhausted 2``, or ``-`` for none."""
    return ", ".join(f"{cause} {n:,}" for cause, n in counts.items()) or "-"
