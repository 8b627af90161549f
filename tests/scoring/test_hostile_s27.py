"""Session 27's attacks on verdicts: what a sample shares with its judge, and what a judge
keeps from one sample to the next.

One found a way for right answers to fail as the model's, now fixed: a problem whose tests
import a module the zygote had not (numpy) passed a right answer once per resident judge,
then failed every later one with ``exception: ImportError: cannot load module more than once
per process`` (the judge took the module out of ``sys.modules`` after each sample, and numpy
refuses to be imported again). A second found one rollout's failing test in the next one's
verdict, now fixed: the judge's stdout and stderr share their open file descriptions with the
candidate, which made them non-blocking and kept them full, so the judge's traceback stayed in
its stream buffer and went out with the next sample's output (a judge whose streams do not
flush empty is replaced now; so is one whose tests closed ``sys.stdout``, which before failed
every later printing test). A third found another problem's test line, expected value and
all, in a warning the tests showed (the judge's line cache held the last failed sample's
tests), now fixed. The others held when written, and cover what no earlier test
reached for: the output pipes' open file descriptions the candidate shares with the judge
(made non-blocking and left full), an exception whose ``__class__`` claims ``SystemExit``,
one whose ``__str__`` exits 0 while the harness words it, an answer pipe made non-blocking
under a large answer, and a program that rewrites and grows its stdin.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import anyio
import pytest

from rollwatch.problems import Problem
from rollwatch.scoring import ScoringPool
from rollwatch.scoring.sandbox import sandbox_python

from .conftest import BACKENDS, SQUARE, fenced, function_problem, sandbox_processes, settings
from .helpers import ECHO, HONEST_SQUARE, fails_as_the_models

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def one_slot(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """A pool of one slot: every sample goes to the same resident judge. One per test: the
    module's shared pool counts the judges it sees against its own slots."""
    async with ScoringPool(settings(request.param, workers=1)) as p:
        yield p


def _sandbox_imports(module: str) -> bool:
    """Whether the interpreter samples run on can import ``module``."""
    probe = [sandbox_python(), "-I", "-c", f"import {module}"]
    return subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0


# -- fixed: a module the tests imported, taken out again after each sample -------------------

NUMPY_SQUARE = function_problem(
    """
    import numpy as np
    def check(candidate):
        assert np.isclose(candidate(2), 4)
        assert np.allclose([candidate(x) for x in (3, -5)], [9, 25])
    """
)


@pytest.mark.skipif(not _sandbox_imports("numpy"), reason="the sandbox's interpreter has no numpy")
async def test_a_right_answer_passes_again_where_the_tests_import_numpy(one_slot: ScoringPool) -> None:
    """Tests importing numpy pass a right answer on every sample of a slot, not the first only
    (the second failed: the judge had put numpy out of sys.modules, and numpy loads once per
    process); a wrong answer still fails."""
    for _ in range(3):
        with anyio.fail_after(60):
            s = await one_slot.score(NUMPY_SQUARE, fenced(HONEST_SQUARE))
        assert s.passed, s
    wrong = await one_slot.score(NUMPY_SQUARE, fenced("def f(x):\n    return x * x + (x == 3)"))
    assert not wrong.passed, wrong
    assert wrong.reason.startswith("exception: AssertionError"), wrong


async def test_a_judge_whose_tests_imported_a_module_is_replaced(one_slot: ScoringPool) -> None:
    """A judge that imported a module the zygote had not is not kept for the next sample (it
    cannot be unloaded); one whose tests imported nothing new is."""
    colorsys = function_problem(
        "import colorsys\ndef check(candidate):\n    assert candidate(3) == 9 and colorsys.ONE_THIRD < 1\n"
    )
    ours = range(one_slot.sandboxes[0].judge_uid or 0, (one_slot.sandboxes[0].judge_uid or 0) + 1)
    with anyio.fail_after(30):
        assert (await one_slot.score(SQUARE, fenced(HONEST_SQUARE))).passed
        kept = {pid for pid, _, _ in sandbox_processes(ours)}
        assert (await one_slot.score(SQUARE, fenced(HONEST_SQUARE))).passed
        assert {pid for pid, _, _ in sandbox_processes(ours)} == kept
        assert len(kept) == 1, "an honest sample whose tests import nothing new keeps its judge"
        assert (await one_slot.score(colorsys, fenced(HONEST_SQUARE))).passed
        assert sandbox_processes(ours) == [], "the judge that imported colorsys is kept"
        assert (await one_slot.score(SQUARE, fenced(HONEST_SQUARE))).passed
        assert len(sandbox_processes(ours)) == 1
    assert not kept & {pid for pid, _, _ in sandbox_processes(ours)}


# -- held: what the candidate shares with the judge, and lies in its exceptions -------------

# Tests that print between calls: their output goes down the pipes the candidate writes too.
PRINTS = function_problem(
    """
    def check(candidate):
        print("checking", flush=True)
        assert candidate(2) == 4
        print("x" * 20000, flush=True)
        assert candidate(5) == 25, "five squared is 25 " + "y" * 30000
    """
)

FUNCTION_ATTACKS: dict[str, tuple[Problem, str]] = {
    # O_NONBLOCK and a pipe's size belong to its open file description, which the candidate's
    # fds 1 and 2 share with the judge's: the judge's prints and traceback meet a full pipe
    # that never blocks.
    "output-pipes-made-non-blocking-and-left-full": (
        PRINTS,
        """
import fcntl, os
def f(x):
    for fd in (1, 2):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        try:
            fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ
        except OSError:
            pass
        try:
            while True:
                os.write(fd, b"z" * 4096)
        except OSError:
            pass
    return x * x if x == 2 else 0
""",
    ),
    # isinstance() believes __class__: the harness reads the exception as SystemExit.
    "exception-whose-class-claims-systemexit": (
        SQUARE,
        """
class Claims(Exception):
    @property
    def __class__(self):
        return SystemExit
def f(x):
    raise Claims("done")
""",
    ),
    # The harness calls str() on the exception to word it: the candidate's code runs there.
    "exception-whose-str-exits-zero": (
        SQUARE,
        """
import os
class Leaves(Exception):
    def __str__(self):
        os._exit(0)
def f(x):
    raise Leaves()
""",
    ),
    # The harness's own write of a 9 MB answer meets EAGAIN half-way.
    "answer-pipe-non-blocking-under-a-large-answer": (
        SQUARE,
        "import fcntl, os\nfcntl.fcntl(4, fcntl.F_SETFL, os.O_NONBLOCK)\ndef f(x):\n    return [x] * 3_000_000",
    ),
}


@pytest.mark.parametrize("name", sorted(FUNCTION_ATTACKS))
async def test_a_candidate_bending_what_it_shares_with_the_harness_fails(
    pool: ScoringPool, name: str
) -> None:
    problem, code = FUNCTION_ATTACKS[name]
    await fails_as_the_models(pool, problem, code, within=40)


async def test_the_next_sample_gets_nothing_of_a_full_non_blocking_pipe(one_slot: ScoringPool) -> None:
    """After a candidate left the shared output pipes non-blocking and full (the judge's
    failing traceback half written), the next right answer on the same judge passes, and its
    verdict carries none of the failed sample's output."""
    problem, code = FUNCTION_ATTACKS["output-pipes-made-non-blocking-and-left-full"]
    for _ in range(4):  # where the judge's writes stop depends on the race with the zygote's reads
        with anyio.fail_after(60):
            wrong = await one_slot.score(problem, fenced(code))
            right = await one_slot.score(PRINTS, fenced(HONEST_SQUARE))
        assert not wrong.passed, wrong
        assert right.passed, right
        tail = right.detail.get("stderr_tail", "")
        assert "five squared" not in tail, right
        assert "Traceback" not in tail, right
        assert right.detail["stdout_bytes"] == len("checking\n") + 20001, right


async def test_a_program_that_rewrites_and_grows_its_stdin_fails(pool: ScoringPool) -> None:
    """stdin is a file of the sample's own (fd 0, writable): rewritten, then grown past the
    file size limit, it changes nothing for the next case or sample."""
    code = 'import os\nos.lseek(0, 0, 0)\nos.write(0, b"hellO\\n")\nos.ftruncate(0, 1 << 30)\nprint("hellO")'
    s = await fails_as_the_models(pool, ECHO, code)
    assert s.reason.startswith("file size limit"), s


async def test_tests_that_close_the_judges_stdout_leave_the_next_problem_a_working_print(
    one_slot: ScoringPool,
) -> None:
    """A problem's tests that close ``sys.stdout`` (put back as the same, closed, object) do not
    make the next problem's printing tests fail a right answer: the judge is replaced."""
    closes = function_problem(
        "import sys\ndef check(candidate):\n    assert candidate(2) == 4\n    sys.stdout.close()\n"
    )
    prints = function_problem("def check(candidate):\n    print('checking')\n    assert candidate(3) == 9\n")
    with anyio.fail_after(30):
        assert (await one_slot.score(closes, fenced(HONEST_SQUARE))).passed
        s = await one_slot.score(prints, fenced(HONEST_SQUARE))
    assert s.passed, s


async def test_a_warning_in_the_tests_shows_no_line_of_another_problems_tests(one_slot: ScoringPool) -> None:
    """The lines the tests show while they run (a warning's) are their own: the resident
    judge's line cache held the last failed sample's tests, and a warning on line 3 of one
    problem's tests showed line 3 of the other's, expected value and all, in this rollout's
    output (which a candidate without root can read from its stderr pipe)."""
    secret = function_problem(
        "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(12345) == 152399025\n"
    )
    warns = function_problem(
        "import warnings\ndef check(candidate):\n    warnings.warn('look', UserWarning)\n"
        "    assert candidate(3) == 9\n"
    )
    with anyio.fail_after(30):
        failed = await one_slot.score(secret, fenced("def f(x):\n    return x * x if x < 100 else 0"))
        s = await one_slot.score(warns, fenced(HONEST_SQUARE))
    assert not failed.passed, failed
    assert s.passed, s
    assert "152399025" not in s.detail.get("stderr_tail", ""), s
    assert "warnings.warn('look'" in s.detail.get("stderr_tail", ""), s
