"""Checks the hostile-answer tests share: what every wrong answer must end as, and that the
pool it was scored on still passes honest answers after it."""

from __future__ import annotations

import json

import anyio

from rollwatch.problems import Problem
from rollwatch.report.failures import verdict_cause
from rollwatch.scoring import Score, ScoringPool
from rollwatch.scoring.sandbox import JUDGE_UID_OFFSET

from .conftest import SQUARE, UID_BASE, fenced, nothing_left, sandbox_processes, stdio_problem

HONEST_SQUARE = "def f(x):\n    return x * x"
ECHO = stdio_problem([("hello\n", "hello\n")])
HONEST_ECHO = "print(input())"

# What an attack that scans its own memory raises when the scan itself failed (it saw not
# even its own source): a test whose answer says this proved nothing.
PRIMITIVE_FAILED = "ATTACK-PRIMITIVE-FAILED"


def storable(s: Score) -> None:
    """The score encodes as the event log stores it (UTF-8 JSON), whatever the sample wrote."""
    json.dumps(s.to_dict(), ensure_ascii=False).encode("utf-8")


def judges() -> list[tuple[int, int, str]]:
    """The processes running as a judge uid: at most the resident judge of each slot."""
    return sandbox_processes(range(UID_BASE + JUDGE_UID_OFFSET, UID_BASE + JUDGE_UID_OFFSET + 8))


async def honest_still_passes(pool: ScoringPool) -> None:
    await nothing_left(within=5.0)  # 1 s was missed once at load 16 (a fork bomb reaped)
    assert len(judges()) <= pool.workers, judges()
    for p, code in ((SQUARE, HONEST_SQUARE), (ECHO, HONEST_ECHO)):
        with anyio.fail_after(15):
            ok = await pool.score(p, fenced(code))
        assert ok.passed, ok
    await nothing_left(within=5.0)  # 1 s was missed once at load 16 (a fork bomb reaped)


async def fails_as_the_models(pool: ScoringPool, problem: Problem, code: str, *, within: float = 30) -> Score:
    """Score ``code`` (fenced) within ``within`` seconds: it fails, as the model's failure, with
    a score the event log can store; then the pool still passes honest answers."""
    with anyio.fail_after(within):
        s = await pool.score(problem, fenced(code))
    assert not s.passed, s
    assert verdict_cause(s.reason)[0] == "model", s
    storable(s)
    await honest_still_passes(pool)
    return s


async def passes_on_a_fresh_and_a_resident_judge(pool: ScoringPool, problem: Problem, code: str) -> None:
    """A right answer ``code`` (unfenced) passes ``problem`` twice: the resident judge serves the second."""
    for _ in range(2):
        with anyio.fail_after(30):
            s = await pool.score(problem, fenced(code))
        assert s.passed, s
