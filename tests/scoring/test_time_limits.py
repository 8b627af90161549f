"""Time limits calibrated to the machine (issue 17): a problem without a timeout of its
own gets a multiple of its reference solution's runtime measured in the sandbox here,
with a floor, and every verdict records the limit it ran under."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator

import pytest

from rollwatch.problems import Problem
from rollwatch.scoring import ScoringPool
from tests.scoring.conftest import BACKENDS, fenced, settings

pytestmark = pytest.mark.anyio

TESTS = """
def check(candidate):
    assert candidate(3) == 3
"""


def problem(reference: str | None, *, timeout: float | None = None, name: str = "slow") -> Problem:
    return Problem(
        id=name,
        title=name,
        prompt="def f(x): ...",
        scorer="python-function",
        content_hash=f"sha256:{name}",
        entry_point="f",
        tests=textwrap.dedent(TESTS),
        timeout=timeout,
        reference_solution=textwrap.dedent(reference) if reference is not None else None,
    )


SLOW_REFERENCE = """
import time
def f(x):
    time.sleep(0.2)
    return x
"""


@pytest.fixture(scope="module", params=BACKENDS)
async def pool(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """A pool whose default timeout (30 s) is far above any calibrated limit here."""
    async with ScoringPool(
        settings(request.param, timeout=30.0, time_limit_factor=4.0, time_limit_floor=1.0)
    ) as p:
        yield p


class TestCalibratedLimits:
    async def test_the_limit_is_a_multiple_of_the_references_runtime(self, pool: ScoringPool) -> None:
        """A reference that takes 0.2 s: the limit is at least 4 x its measured runtime
        (and the floor); a like answer passes and records that limit."""
        p = problem(SLOW_REFERENCE)
        limit = await pool.time_limit(p)
        assert limit.source == "calibrated"
        assert limit.reference_ms is not None
        assert limit.reference_ms >= 200
        assert limit.seconds == max(1.0, round(4 * limit.reference_ms / 1000, 3))
        assert await pool.time_limit(p) == limit, "measured once per problem version"
        score = await pool.score(p, fenced(SLOW_REFERENCE))
        assert score.passed, score.reason
        assert score.time_limit_s == limit.seconds

    async def test_an_answer_slower_than_the_calibrated_limit_times_out(self, pool: ScoringPool) -> None:
        """An answer taking 25 s passes the 30 s default but not the calibrated limit:
        it fails as a timeout, recorded with the limit it ran under."""
        p = problem(SLOW_REFERENCE, name="slow-2")
        slow = "import time\ndef f(x):\n    time.sleep(25)\n    return x\n"
        score = await pool.score(p, fenced(slow))
        limit = await pool.time_limit(p)
        assert not score.passed
        assert "timeout" in score.reason
        assert score.time_limit_s == limit.seconds < 25

    async def test_the_floor_holds_for_a_fast_reference(self, pool: ScoringPool) -> None:
        """An instant reference gets the floor (1 s), not 4 x a few milliseconds."""
        limit = await pool.time_limit(problem("def f(x):\n    return x\n", name="fast"))
        assert (limit.source, limit.seconds) == ("calibrated", 1.0)

    async def test_a_problems_own_timeout_and_a_failing_reference(self, pool: ScoringPool) -> None:
        """A problem's own timeout wins; a reference that fails its tests (or none)
        leaves the configured default, never a limit measured on a wrong program."""
        own = await pool.time_limit(problem(SLOW_REFERENCE, timeout=7.0, name="own"))
        assert (own.source, own.seconds) == ("problem", 7.0)
        wrong = await pool.time_limit(problem("def f(x):\n    return -1\n", name="wrong"))
        assert (wrong.source, wrong.seconds) == ("default", 30.0)
        none = await pool.time_limit(problem(None, name="none"))
        assert (none.source, none.seconds) == ("default", 30.0)
