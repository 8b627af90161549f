"""Session 15's attacks on verdicts: answers and outputs that bend what the host reads.

Each attack is an answer a model that games its tests could give, scored through the
real pool (real sandboxes of each backend). Those that found a hole failed before the fix
named in their docstring; the others hold and cover ground no earlier test did.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import anyio
import anyio.abc
import pytest

from rollwatch.events import stored_json
from rollwatch.problems import Case
from rollwatch.report.failures import verdict_cause
from rollwatch.scoring import ScoringPool
from rollwatch.scoring.extract import EXTRACT_MAX, candidates, code_sha256, extract_code

from .conftest import SQUARE, fenced, function_problem, stdio_problem
from .helpers import honest_still_passes, storable
from .test_hostile_2026 import ECHOING_CHECKER
from .test_scorers import command_problem

pytestmark = pytest.mark.anyio


# -- extraction: the daemon's event loop is everyone's ------------------------------------


def test_a_long_fence_over_many_lines_is_extracted_in_linear_time() -> None:
    """A fence of 512 K backticks over 512 K empty lines (1 MB): the closing fence was looked
    for by building a string as long as the fence for every line of the body, 7 s of the
    event loop for this answer and 142 s for one of 4 MB (every run and request stalled)."""
    half = 512 * 1024
    text = "`" * half + "\n" + "\n" * half
    started = time.perf_counter()
    ex = extract_code(text, "f")
    found = candidates(text)
    assert time.perf_counter() - started < 1.0
    assert (ex.method, ex.code) == ("fenced-last", "\n")
    assert [c.whole_text for c in found] == [False, True]


async def test_a_degenerate_answer_does_not_stall_the_event_loop(pool: ScoringPool) -> None:
    """2 MB of empty fenced blocks ("```" on every line) take a second or more to extract
    from, however it is done; that work held the event loop (and every other rollout, the
    feed, the console) for all of it. It runs in a thread now: a task ticking beside it
    never waits for more than a fraction of the score's time."""
    text = "```\n" * (512 * 1024)
    gaps: list[float] = []
    done = anyio.Event()

    async def tick(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        last = time.perf_counter()
        task_status.started()
        while not done.is_set():
            await anyio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        await tg.start(tick)
        started = time.perf_counter()
        s = await pool.score(SQUARE, text)
        took = time.perf_counter() - started
        done.set()
    assert not s.passed, s
    assert s.extraction == "fenced-last", s
    assert verdict_cause(s.reason)[0] == "model", s
    assert max(gaps) < 0.5 * took, (max(gaps), took)


async def test_an_answer_longer_than_extraction_reads_has_no_code(pool: ScoringPool) -> None:
    """Past EXTRACT_MAX characters an answer is not read at all (a degenerate output of tens
    of MB took 20-30 s to extract from): the model's "no code found", saying why."""
    text = " " * EXTRACT_MAX + fenced("def f(x):\n    return x * x")
    s = await pool.score(SQUARE, text)
    assert not s.passed, s
    assert s.reason.startswith("no code found (the answer has"), s
    assert verdict_cause(s.reason) == ("model", "no_code"), s
    assert s.extraction == "none"


# -- answers judged as they are archived ----------------------------------------------------


async def test_a_lone_surrogate_in_a_command_answer_is_the_models_failure(
    pool: ScoringPool, tmp_path: Path
) -> None:
    """A provider's JSON can carry a lone surrogate ("\\ud800"). Judged raw, an answer to a
    `command` problem holding one could not be written out for the checker: the scorer
    raised, a scorer error (ours, re-scored) for a wrong answer."""
    problem = command_problem(tmp_path, ECHOING_CHECKER)
    s = await pool.score(problem, fenced("print(5)  # \ud800"))
    assert not s.passed, s
    assert verdict_cause(s.reason) == ("model", "wrong_answer"), s
    assert (await pool.score(problem, fenced("print(int(input()) ** 2)  # \ud800"))).passed


async def test_the_code_a_verdict_names_is_in_the_answer_as_archived(pool: ScoringPool) -> None:
    """The log stores a lone surrogate as U+FFFD; the verdict hashed (and ran) the raw code,
    so its ``code_sha256`` named no part of the answer as recorded (the console said "the
    code the verdict ran is not in this answer") and `rescore` judged another text."""
    answer = fenced("def f(x):\n    return x * x  # \ud800 \udfff")
    s = await pool.score(SQUARE, answer)
    assert s.passed, s
    archived = json.loads(stored_json({"text": answer}))["text"]
    assert s.detail["code_sha256"] in {code_sha256(c.code) for c in candidates(archived)}


# -- what the host compares -----------------------------------------------------------------

LATIN1 = dataclasses.replace(stdio_problem([]), cases=(Case("01", b"", b"caf\xe9\n"),))


async def test_output_that_is_not_utf8_is_compared_byte_for_byte(pool: ScoringPool) -> None:
    """An expected output that is not UTF-8 (Latin-1 "café"): both sides were decoded with
    U+FFFD for each bad byte, so any bad byte in its place (or a literal U+FFFD) matched,
    and a wrong answer passed."""
    for wrong in ("sys.stdout.buffer.write(b'caf\\xff\\n')", "print('caf\\ufffd')"):
        s = await pool.score(LATIN1, fenced("import sys\n" + wrong))
        assert not s.passed, s
        assert s.reason.startswith("wrong answer"), s
        storable(s)
    right = await pool.score(LATIN1, fenced("import sys\nsys.stdout.buffer.write(b'caf\\xe9\\n')"))
    assert right.passed, right
    tolerant = dataclasses.replace(LATIN1, float_tolerance=1e-6)
    s = await pool.score(tolerant, fenced("import sys\nsys.stdout.buffer.write(b'caf\\xfe\\n')"))
    assert not s.passed, s


BIG = "1" * 400
NUMBERS_TOLERATED = stdio_problem([("", f"{BIG}\n9007199254740993\n")], tolerance=0.0)


@pytest.mark.parametrize(
    "output",
    [f"{'2' * 400}\n9007199254740993", f"{'9' * 399}\n9007199254740993", f"{BIG}\n9007199254740992"],
)
async def test_numbers_beyond_a_float_are_not_equal_to_all_their_like(pool: ScoringPool, output: str) -> None:
    """Under ``float_tolerance`` tokens were read as floats: every number past 1.8e308 read as
    inf, so any one matched any other (a wrong 400-digit answer passed), and integers past 2**53
    lost their last digits (9007199254740992 matched 9007199254740993, tolerance 0)."""
    s = await pool.score(NUMBERS_TOLERATED, fenced(f"print({output!r})"))
    assert not s.passed, s
    assert len(s.detail["first_failure"]["difference"]) <= 250, s  # cut at 80 a token
    right = await pool.score(NUMBERS_TOLERATED, fenced(f"print({BIG!r})\nprint(9007199254740993)"))
    assert right.passed, right


# -- command checkers that echo the program -------------------------------------------------


@pytest.mark.parametrize(
    "line", ["score is not a number", "score is not a number: sandbox lost", "checker timeout (60s)"]
)
async def test_a_program_cannot_word_its_failure_as_the_checkers_fault(
    pool: ScoringPool, tmp_path: Path, line: str
) -> None:
    """A checker failing the answer by its exit status, with the program's output as its
    last line: "checker: <that line>". A program printing "score is not a number" made it
    "checker: score is not a number", our checker's fault (infra, judged again by `rescore`)."""
    problem = command_problem(tmp_path, ECHOING_CHECKER)
    s = await pool.score(problem, fenced(f"print({line!r})"))
    assert not s.passed, s
    assert verdict_cause(s.reason) == ("model", "wrong_answer"), s
    await honest_still_passes(pool)


# -- the judge's output ----------------------------------------------------------------------

PRINTS_EXPECTED = function_problem(
    """
    import sys
    def check(candidate):
        for x in range(-5, 30):
            want = (x * 7919 + 17) % 1009
            print("case", x, "expects", want, file=sys.stderr)
            print("case", x, "expects", want, flush=True)
            assert candidate(x) == want
    """,
    timeout=5.0,
)
# Opens its own stdout and stderr pipes for reading (through /proc/self/fd: a pipe reopened
# there gives whichever end is asked for), which the judge writes to as well.
READS_THE_JUDGES_OUTPUT = r"""
import os, re, time
def _peek(fd):
    r = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    data, deadline = b"", time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            data += os.read(r, 65536)
        except BlockingIOError:
            if data:
                break
            time.sleep(0.001)
    os.close(r)
    return data
def f(x):
    found = {}
    for fd in (1, 2):
        try:
            data = _peek(fd)
        except OSError as e:
            raise RuntimeError(f"fd {fd}: {e}") from None
        found.update((int(a), int(b)) for a, b in re.findall(rb"case (-?\d+) expects (\d+)", data))
    return found.get(x, -1)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: without root the pipes are the sample's uid's")
async def test_a_candidate_cannot_read_what_the_tests_print(pool: ScoringPool) -> None:
    """Tests that print their expected values (to stderr, or flushed to stdout) write them on
    the pipes the candidate writes its own output to. Reopened for reading through /proc, the
    pipes are root's and refused to the candidate's uid: it learns nothing, and fails."""
    s = await pool.score(PRINTS_EXPECTED, fenced(READS_THE_JUDGES_OUTPUT))
    assert not s.passed, s
    assert "Permission denied" in s.reason, s
