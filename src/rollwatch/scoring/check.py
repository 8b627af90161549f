"""``rollwatch problems check``: every reference solution must pass its own scorer."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import anyio

from rollwatch.problems import Problem, ProblemSet
from rollwatch.scoring.base import Score
from rollwatch.scoring.pool import ScoringPool


class CheckFailure(NamedTuple):
    """A problem whose reference does not pass, and why (unpacks as ``(problem_id, reason)``)."""

    problem_id: str
    reason: str


async def check_references(
    problem_set: ProblemSet,
    pool: ScoringPool,
    *,
    require_reference: bool = True,
    on_checked: Callable[[], None] | None = None,
) -> list[CheckFailure]:
    """Score every reference solution of ``problem_set`` in parallel; the failures, in set order.

    The reference goes through extraction exactly as the ``reference`` provider sends
    it (in a ``python`` fence), so a reference that extraction would mangle fails too.
    A problem without a reference is a failure unless ``require_reference`` is False.
    ``on_checked`` is called as each problem's check ends (a progress line).
    """
    results: dict[str, Score | str] = {}

    async def one(problem: Problem) -> None:
        if problem.reference_solution is None:
            if require_reference:
                results[problem.id] = "no reference solution to check"
        else:
            text = f"```python\n{problem.reference_solution.rstrip()}\n```\n"
            results[problem.id] = await pool.score(problem, text)
        if on_checked is not None:
            on_checked()

    async with anyio.create_task_group() as tg:
        for p in problem_set.problems:
            tg.start_soon(one, p)
    failures = []
    for p in problem_set.problems:
        r = results.get(p.id)
        if isinstance(r, str):
            failures.append(CheckFailure(p.id, r))
        elif r is not None and not r.passed:
            failures.append(CheckFailure(p.id, r.reason))
    return failures
