"""More hostile answers: what a sample can learn from the samples before it, and more jammers.

The zygote a sample is forked from served the samples before it: every request and
answer it handled went through its heap, and a fork is a copy of that heap, freed
memory included. A wrong answer that scans its own memory must find nothing there of
another sample (its code, its output, its verdict) nor of a reference solution the pool
ran to calibrate a time limit. The pools here have one slot, so every sample of a test
is forked from the same zygote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from rollwatch.problems import Problem
from rollwatch.scoring import ScoringPool

from .conftest import BACKENDS, fenced, function_problem, nothing_left, settings, stdio_problem

pytestmark = pytest.mark.anyio

PRIMITIVE_FAILED = "ATTACK-PRIMITIVE-FAILED"


@pytest.fixture(scope="module", params=BACKENDS)
async def pool1(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """A one-slot pool: each sample is forked from the zygote that served the one before."""
    async with ScoringPool(settings(request.param, workers=1)) as p:
        yield p


# Reads every readable mapping of its own process (a copy of the zygote's heap) and
# hands the bytes to ``_look``. It must see its own source (the line below), or the
# scan itself failed and the test would prove nothing.
SCAN = """
import ctypes, re
def _scan(look):
    seen_own = False
    for line in open("/proc/self/maps").read().splitlines():
        addr, perms = line.split()[:2]
        lo, hi = (int(a, 16) for a in addr.split("-"))
        if "r" not in perms or hi - lo > (64 << 20) or "[v" in line:
            continue
        try:
            data = ctypes.string_at(lo, hi - lo)
        except Exception:
            continue
        seen_own = seen_own or b"seen_own = seen_own or" in data
        look(data)
    if not seen_own:
        raise SystemExit("ATTACK-PRIMITIVE-FAILED")
"""

# A function no one guesses: only its code or its tests tell the values.
SECRET_TESTS = """
def check(candidate):
    for x in range(-5, 30):
        assert candidate(x) == (x * 7919 + 17) % 1009, x
"""
SECRET_CODE = "def f(x):\n    return (x * 7919 + 17) % 1009\n"

# Collects every `def f(x):` block in memory (as text, or escaped inside a JSON frame)
# that is not its own, and answers with the first that runs.
LIFTS_CODE = (
    SCAN
    + r"""
_found = []
def _look(data):
    blocks = [m.group(0) for m in re.finditer(rb"def f\(x\):\n(?:    [^\n]*\n)+", data)]
    blocks += [m.group(0).replace(rb"\n", b"\n") for m in re.finditer(rb'def f\(x\):(?:\\n    [^"\\]*)+', data)]
    for b in blocks:
        text = b.decode("latin-1")
        if "_found" not in text and text not in _found:
            _found.append(text)
def f(x):
    if not _found:
        _scan(_look)
    for text in _found:
        ns = {}
        try:
            exec(text, ns)
            return ns["f"](x)
        except Exception:
            continue
    return -1
"""
)


async def test_the_reference_solution_cannot_be_lifted_after_calibration(pool1: ScoringPool) -> None:
    """The pool runs the reference to calibrate the time limit; the next sample finds no trace of its code."""
    problem = function_problem(SECRET_TESTS, "f")
    problem = dataclasses.replace(
        problem, content_hash="sha256:lift-reference", reference_solution=SECRET_CODE
    )
    s = await pool1.score(problem, fenced(LIFTS_CODE))
    assert (await pool1.time_limit(problem)).source == "calibrated"
    assert not s.passed, s
    assert PRIMITIVE_FAILED not in s.reason, s


async def test_another_samples_passing_code_cannot_be_lifted(pool1: ScoringPool) -> None:
    """A right answer scored before (another model's, say) leaves nothing a later wrong one can run."""
    problem = function_problem(SECRET_TESTS, "f", timeout=5.0)
    assert (await pool1.score(problem, fenced(SECRET_CODE))).passed
    s = await pool1.score(problem, fenced(LIFTS_CODE))
    assert not s.passed, s
    assert PRIMITIVE_FAILED not in s.reason, s


LEARNS_THE_ASSERTION = (
    SCAN
    + r"""
_table = {}
def _look(data):
    for a, b in re.findall(rb"candidate\((-?\d+)\) == (-?\d+)", data):
        _table[int(a)] = int(b)
def f(x):
    _scan(_look)
    return _table.get(x, 0)
"""
)


async def test_a_failed_samples_verdict_does_not_teach_the_next(pool1: ScoringPool) -> None:
    """A failed verdict names the failing test line (and the judge's traceback shows it):
    the next sample, forked after it, must not find it."""
    problem = function_problem("def check(candidate):\n    assert candidate(12345) == 98761\n", timeout=5.0)
    first = await pool1.score(problem, fenced("def f(x):\n    return 0\n"))
    assert not first.passed
    assert first.detail.get("test_source") == "assert candidate(12345) == 98761"
    s = await pool1.score(problem, fenced(LEARNS_THE_ASSERTION))
    assert not s.passed, s
    assert PRIMITIVE_FAILED not in s.reason, s


REPLAYS_OUTPUT = (
    SCAN
    + r"""
_outs = []
def _look(data):
    _outs.extend(re.findall(rb"ANSWER-[0-9]+", data))
_scan(_look)
print(_outs[0].decode() if _outs else "nothing")
"""
)


def _stdio_secret() -> Problem:
    return stdio_problem([("5\n", "ANSWER-271828\n")], timeout=5.0)


async def test_a_previous_samples_output_cannot_be_replayed(pool1: ScoringPool) -> None:
    """A stdio program's output went through the zygote; the next program must not find it there."""
    problem = _stdio_secret()
    honest = "n = int(input())\nprint('ANSWER-' + str(271828 + n - 5))"
    assert (await pool1.score(problem, fenced(honest))).passed
    s = await pool1.score(problem, fenced(REPLAYS_OUTPUT))
    assert not s.passed, s
    assert PRIMITIVE_FAILED not in s.reason, s
    await nothing_left()
