"""Brief h80's hostile answers: what the zygote's output buffers keep for the next sample,
and a HumanEval file the sandbox shows.

The zygote reads a sample's stderr into a buffer that keeps its tail: past twice
``STDERR_KEEP`` bytes the last ``STDERR_KEEP`` move to the front. The wipe after the
sample zeroed only that kept tail, so what had scrolled out stayed in the zygote's heap,
and every later sample is a fork of it. In a python-function sample the judge's traceback
goes down the same pipe: the failing test's line, with its expected value.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rollwatch.problems import load_humaneval
from rollwatch.scoring import ScoringPool

from .conftest import BACKENDS, fenced, function_problem, nothing_left, settings, stdio_problem
from .test_hostile_more import PRIMITIVE_FAILED, SCAN

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def pool1(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """One slot: every sample of a test is forked from the zygote that served the one before."""
    async with ScoringPool(settings(request.param, workers=1)) as p:
        yield p
    await nothing_left()


# A marker amid 17 KB of stderr: past the 16 KiB at which the zygote's stderr buffer
# moves its tail to the front, and far enough in that what follows it cannot reach back.
WRITES_STDERR = """
import os
os.write(2, b"." * 12000 + b"MARKER-" + b"7" * 40 + b"." * 5000)
print("done")
"""
FINDS_THE_MARKER = (
    SCAN
    + r"""
_found = []
_scan(lambda data: _found.extend(re.findall(rb"MARKER-7{40}", data)))
print(_found[0].decode() if _found else "nothing")
"""
)


async def test_stderr_that_scrolled_out_is_not_left_for_the_next_sample(pool1: ScoringPool) -> None:
    """Found the marker in the next sample's memory before the zygote wiped what scrolled
    out of its stderr buffer (the wipe after a sample reached the kept tail only)."""
    assert (await pool1.score(stdio_problem([("", "done\n")]), fenced(WRITES_STDERR))).passed
    s = await pool1.score(stdio_problem([("", "MARKER-" + "7" * 40 + "\n")]), fenced(FINDS_THE_MARKER))
    assert not s.passed, s
    assert PRIMITIVE_FAILED not in s.reason, s
    assert "nothing" in str(s.detail), s


HIDDEN = function_problem("def check(candidate):\n    assert candidate(5) == 8051\n", timeout=5.0)
# A wrong answer that floods stderr as the judge fails it: the judge's traceback ("assert
# candidate(5) == 8051") lands amid the flood, often where the buffer's tail no longer is.
FLOODS_AS_IT_FAILS = """
import os, threading, time
def f(x):
    def flood():
        while True:
            os.write(2, b"." * 512)
    threading.Thread(target=flood, daemon=True).start()
    time.sleep(0.001)
    return -1
"""
# The next rollout: the expected value of the last failed assertion, if the zygote kept it.
READS_THE_LAST_FAILURE = (
    SCAN
    + r"""
_seen = {}
def _look(data):
    for a, b in re.findall(rb"candidate\((\d+)\) == (\d+)", data):
        _seen[int(a)] = int(b)
def f(x):
    _scan(_look)
    return _seen.get(x, -1)
"""
)


async def test_a_wrong_answer_cannot_read_the_last_failed_tests_expected_value(pool1: ScoringPool) -> None:
    """A chain of rollouts: one floods stderr as it fails, the next reads the judge's traceback
    from its copy of the zygote's heap and answers 8051. Before the fix, 7 of 20 such pairs
    passed (runs of them in a row: the bytes stayed until overwritten); the pairs here all
    but always found one."""
    for _ in range(12):
        leak = await pool1.score(HIDDEN, fenced(FLOODS_AS_IT_FAILS))
        assert not leak.passed, leak
        s = await pool1.score(HIDDEN, fenced(READS_THE_LAST_FAILURE))
        assert not s.passed, s
        assert PRIMITIVE_FAILED not in s.reason, s


@pytest.fixture
def humaneval_under_usr() -> Iterator[Path]:
    """A HumanEval file where an operator might install one: under /usr/local/share, which
    the sandbox shows (read-only) like the rest of /usr."""
    top = Path("/usr/local/share")
    if not os.access(top, os.W_OK):
        pytest.skip("/usr/local/share is not writable here")
    folder = Path(tempfile.mkdtemp(prefix="rollwatch-humaneval-", dir=top))
    try:
        row = {
            "task_id": "Secret/0",
            "prompt": 'def f(x):\n    """A function no one guesses."""\n',
            "canonical_solution": "    return (x * 7919 + 17) % 1009\n",
            "test": "def check(candidate):\n    for x in range(-5, 30):\n"
            "        assert candidate(x) == (x * 7919 + 17) % 1009, x\n",
            "entry_point": "f",
        }
        path = folder / "secret.jsonl"
        path.write_text(json.dumps(row) + "\n")
        folder.chmod(0o755)
        path.chmod(0o644)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Finds the HumanEval file in what the sandbox shows and answers with its canonical solution.
READS_THE_CANONICAL_SOLUTION = r"""
import json, os
_solution = None
for root, _, files in os.walk("/usr/local/share"):
    for name in files:
        if name.endswith(".jsonl") and root.split("/")[-1].startswith("rollwatch-humaneval-"):
            for line in open(os.path.join(root, name)):
                row = json.loads(line)
                if row["entry_point"] == "f":
                    _solution = row["prompt"] + row["canonical_solution"]
_ns = {}
exec(_solution or "def f(x):\n    return 0\n", _ns)
def f(x):
    return _ns["f"](x)
"""


async def test_a_humaneval_file_the_sandbox_shows_is_refused(
    pool1: ScoringPool, humaneval_under_usr: Path
) -> None:
    """A problem folder the sandbox shows was refused; a HumanEval file was not looked at (its
    problems have no folder): an answer read the file's canonical solution and passed. Its
    problems are now a scorer error naming the file, as a folder's are."""
    (problem,) = load_humaneval(humaneval_under_usr).problems
    s = await pool1.score(problem, fenced(READS_THE_CANONICAL_SOLUTION))
    assert not s.passed, s
    assert s.reason.startswith("scorer error: the problem's file"), s
    assert str(humaneval_under_usr) in s.reason, s
