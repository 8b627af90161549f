"""A stdio sample's cases after its first failure (session 30).

The per-case time limit applies to each case, and a wrong answer did not stop the cases
left (only a timeout, a syntax error or a sandbox failure did): a wrong answer that waited
just under the limit in every case held its scoring slot for cases x limit, and a run's
other samples waited behind it. Once a case has failed the verdict is decided; the cases
left now share one more limit. A right answer, however slow within the limit in each case,
is judged as before, and a wrong answer that fails fast still gets its partial score.
"""

from __future__ import annotations

import anyio
import pytest

from rollwatch.scoring import ScoringPool

from .conftest import fenced, stdio_problem
from .helpers import fails_as_the_models

pytestmark = pytest.mark.anyio

CASES = [(f"{i}\n", f"{i}\n") for i in range(1, 9)]

# Wrong on case 1, right on every other, each after `WAIT` seconds.
SLOW = """
import sys, time
x = sys.stdin.read().strip()
time.sleep({wait})
print("wrong" if x == "{wrong}" else x)
"""


async def test_a_slow_wrong_answer_holds_its_slot_for_one_more_limit_not_one_a_case(
    pool: ScoringPool,
) -> None:
    """Each case takes 1.2 s of a 2 s limit: before, cases 2 to 8 ran one after another
    (right, 7 of 8 passed, 9.6 s held); now they share one more limit: case 2 at most."""
    problem = stdio_problem(CASES, timeout=2.0)
    s = await fails_as_the_models(pool, problem, SLOW.format(wait=1.2, wrong="1"), within=60)
    assert s.reason.startswith("wrong answer on case 1"), s
    assert s.detail["cases"] == 8
    assert s.detail["cases_passed"] <= 1, s.detail
    assert s.score <= 1 / 8


async def test_a_fast_wrong_answer_keeps_its_partial_score(pool: ScoringPool) -> None:
    problem = stdio_problem(CASES, timeout=1.0)
    s = await fails_as_the_models(pool, problem, SLOW.format(wait=0, wrong="1"), within=60)
    assert s.reason.startswith("wrong answer on case 1"), s
    assert s.detail["cases_passed"] == 7, s.detail
    assert s.score == 7 / 8


async def test_a_right_answer_slow_in_every_case_still_passes(pool: ScoringPool) -> None:
    """0.3 s in each of 8 cases (2.4 s in all) under a 1 s limit a case: no failure, no
    shared budget."""
    problem = stdio_problem(CASES, timeout=1.0)
    with anyio.fail_after(60):
        s = await pool.score(problem, fenced(SLOW.format(wait=0.3, wrong="none")))
    assert s.passed, s
    assert s.detail["cases_passed"] == 8


async def test_the_first_failure_is_named_when_a_later_case_is_cut_short(pool: ScoringPool) -> None:
    """The reason names case 1's wrong answer, not case 3's cut-short run (0.8 s of the
    shared 2 s left after case 2's 1.2 s)."""
    problem = stdio_problem(CASES, timeout=2.0)
    s = await fails_as_the_models(pool, problem, SLOW.format(wait=1.2, wrong="1"), within=60)
    assert s.reason.startswith("wrong answer on case 1 (01)"), s
    assert "difference" in s.detail["first_failure"], s.detail
