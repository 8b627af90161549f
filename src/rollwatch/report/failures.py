"""Why rollouts did not pass: the model's failures told apart from ours (issue 17).

A *model failure* is a verdict on the model's answer: ``wrong_answer`` (the tests
failed, the code raised or did not compile), ``timeout``, ``limit`` (memory, output or
file size) or ``no_code`` (no code in the answer). An *infra failure* says nothing
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Side = Literal["model", "infra"]

VERDICT_CAUSES: tuple[tuple[str, Side, str], ...] = (
    ("scorer error", "infra", "scorer_error"),
    ("sandbox error", "infra", "sandbox_error"),
    ("sandbox lost", "infra", "sandbox_error"),
    ("checker could not start", "infra", "checker_error"),
    ("checker timeout", "infra", "checker_error"),
    ("checker: ", "infra", "checker_error"),
    ("checker said passed", "infra", "checker_error"),
    ("no code found", "model", "no_code"),
    ("timeout", "model", "timeout"),
    ("output limit", "model", "limit"),
    ("memory", "model", "limit"),
    ("file size limit", "model", "limit"),
)
"""A failed verdict's cause by the start of its reason (the scorers' wording); any
other failed verdict is the model's ``wrong_answer``."""

INFRA_VERDICTS = frozenset(cause for _, side, cause in VERDICT_CAUSES if side == "infra")
"""Causes of failed verdicts that judged nothing of the model (re-scored by ``rescore``)."""


def verdict_cause(reason: str | None) -> tuple[Side, str]:
    """(side, cause) of a failed verdict with this ``reason``."""
    text = reason or ""
    for prefix, side, cause in VERDICT_CAUSES:
        if text.startswith(prefix):
            return side, cause
    return "model", "wrong_answer"


def _cause_sql(column: str) -> tuple[str, list[str]]:
    """A SQL ``CASE`` giving ``side:cause`` of a failed verdict's reason in ``column``."""
    whens, params = [], []
    for prefix, side, cause in VERDICT_CAUSES:
        whens.append(f"WHEN substr({column}, 1, {len(prefix)}) = ? THEN ?")
        params += [prefix, f"{side}:{cause}"]
    return f"CASE {' '.join(whens)} ELSE 'model:wrong_answer' END", params


def rollout_cause(state: str | None, fail_kind: str | None, reason: str | None) -> tuple[Side, str] | None:
    """(side, cause) of one rollout of a finished run that did not pass; None if it passed."""
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

# The served model of a rollout without an answer is the one most of its run's answers
# of that model came from (ties: the first by name), as the report's rows are split.
_MAJOR = """
major AS (
    SELECT provider, model, run_id, served_model FROM (
        SELECT provider, model, run_id, served_model, ROW_NUMBER() OVER (
            PARTITION BY provider, model, run_id ORDER BY count(*) DESC, served_model
        ) AS k
        FROM rollouts WHERE served_model IS NOT NULL GROUP BY provider, model, run_id, served_model
    ) WHERE k = 1
)"""


async def failures_by_key(pdb: Fetcher, by: str, run_id: str | None = None) -> dict[Key, Failures]:
    """Failures of finished runs per report row (``by`` model, problem or run), or of
    the one run ``run_id``. Rollouts never requested count on ``model`` and ``run``
    rows only (which problems they were for is not recorded)."""
    case, params = _cause_sql("o.reason")
    where = "u.finished_at IS NOT NULL AND (o.state != 'scored' OR coalesce(o.passed, 0) = 0)"
    args: list[Any] = list(params)
    if run_id is not None:
        where += " AND o.run_id = ?"
        args.append(run_id)
    rows = await pdb.fetchall(
        f"WITH {_MAJOR} SELECT o.provider, o.model, coalesce(o.served_model, m.served_model),"
        " o.problem_id, o.run_id, o.state, o.fail_kind,"
        f" CASE WHEN o.state = 'scored' THEN {case} END, count(*)"
        " FROM rollouts o JOIN runs u ON u.run_id = o.run_id"
        " LEFT JOIN major m ON m.provider = o.provider AND m.model = o.model AND m.run_id = o.run_id"
        f" WHERE {where} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8",
        args,
    )
    out: dict[Key, Failures] = defaultdict(Failures)
    for provider, model, served, problem, run, state, kind, verdict, n in rows:
        if verdict is not None:
            side, _, cause = str(verdict).partition(":")
            found: tuple[Side, str] | None = ("infra" if side == "infra" else "model", cause)
        else:
            found = rollout_cause(state, kind, None)
        if found is not None:
            out[_key(by, provider, model, served, problem, run)].add(*found, int(n))
    if by != "problem":
        for key, cause, n in await _never_requested(pdb, by, run_id):
            out[key].add("infra", cause, n)
    return {k: v.sorted() for k, v in out.items()}


async def _never_requested(pdb: Fetcher, by: str, run_id: str | None) -> Iterable[tuple[Key, str, int]]:
    """Per finished run and model: the planned rollouts it never asked for, and why."""
    where = "u.finished_at IS NOT NULL AND u.summary IS NOT NULL"
    args: list[Any] = []
    if run_id is not None:
        where += " AND u.run_id = ?"
        args.append(run_id)
    runs = await pdb.fetchall(
        f"SELECT u.run_id, u.provider, u.models, u.summary FROM runs u WHERE {where}", args
    )
    if not runs:
        return []
    asked = {
        (str(r), str(m)): (int(n), s)
        for r, m, n, s in await pdb.fetchall(
            f"WITH {_MAJOR} SELECT o.run_id, o.model, count(*), max(m.served_model)"
            " FROM rollouts o LEFT JOIN major m ON m.provider = o.provider AND m.model = o.model"
            " AND m.run_id = o.run_id"
            + (" WHERE o.run_id = ?" if run_id is not None else "")
            + " GROUP BY o.run_id, o.model",
            args,
        )
    }
    out = []
    for run, provider, models_json, summary_json in runs:
        models = json.loads(models_json or "[]")
        summary = json.loads(summary_json)
        planned = summary.get("planned")
        if not models or not planned:
            continue
        failures = summary.get("failures") or {}
        closed = str(summary.get("message") or "").partition(": ")[0]
        cause = closed if closed in failures else "not_requested"
        for model in models:
            n, served = asked.get((str(run), str(model)), (0, None))
            never = planned // len(models) - n
            if never > 0:
                out.append((_key(by, provider, model, served, None, run), cause, never))
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
