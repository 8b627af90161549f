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
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rollwatch.problems import load_humaneval
from rollwatch.scoring import ScoringPool

from .conftest import BACKENDS, fenced, function_problem, nothing_left, settings, stdio_problem
from .helpers import PRIMITIVE_FAILED
from .test_hostile_more import SCAN

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


# A sample that gives its CPU away: its processes at the lowest priority, then a loop.
# Where the scheduler shares the CPU by process (the sandbox in a cpu cgroup of the service,
# or autogroups off), any other busy process on the slot's CPU then runs nearly all the
# time, and the host read the sample's own timeout as its starvation: "sandbox error: the
# host ran other work ..." (ours: judged twice more by the pool, then again by `rescore`).
GIVES_ITS_CPU_AWAY = """
import os
for lower in (lambda: os.nice(19), lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))):
    try:
        lower()
    except OSError:
        pass
while True:
    pass
"""
# The same without a change of priority: a loop that yields the CPU, and stays ready to run.
YIELDS_ITS_CPU = """
import os
while True:
    os.sched_yield()
"""
LOWERS_ITS_PRIORITY = """
import os
out = []
for name, call in (
    ("nice", lambda: os.nice(19)),
    ("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 19)),
    ("sched_setscheduler", lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))),
):
    try:
        call()
        out.append(name + ":changed")
    except PermissionError:
        out.append(name + ":EPERM")
os.sched_yield()  # still succeeds (without yielding)
print(" ".join(out))
"""


async def test_a_sample_cannot_lower_its_own_priority(pool1: ScoringPool) -> None:
    """nice, setpriority and SCHED_IDLE each succeeded (a sample may always lower its own
    priority); now each fails with EPERM, as the seccomp filter's other denied calls do."""
    want = "nice:EPERM setpriority:EPERM sched_setscheduler:EPERM\n"
    s = await pool1.score(stdio_problem([("", want)]), fenced(LOWERS_ITS_PRIORITY))
    assert s.passed, s


CPU_V1 = Path("/sys/fs/cgroup/cpu")
STARVED_RUN = """
import json, os, subprocess, sys
import anyio
sys.path[:0] = [os.getcwd()]
from tests.scoring.conftest import settings, stdio_problem, fenced
import rollwatch.scoring.pool as pool_module
from rollwatch.scoring import ScoringPool

pool_module.STARVED_RETRIES = ()  # the verdict as it stands after the retries, at once
with open(sys.argv[1] + "/cgroup.procs", "w") as f:  # the pool, its sandbox and the hog: one cpu group
    f.write(str(os.getpid()))

async def main():
    async with ScoringPool(settings(sys.argv[2], workers=1, timeout=2.0)) as pool:
        cpu = pool.sandboxes[0].zygote_config()["cpu"]
        hog = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while True: pass"])
        try:
            problem = stdio_problem([("", "x\\n")], timeout=2.0)
            scores = [await pool.score(problem, fenced(code)) for code in sys.argv[3:]]
        finally:
            hog.kill()
            hog.wait()
    print(json.dumps([[s.reason, s.detail["first_failure"].get("cpu_ms", 0.0)] for s in scores]))

anyio.run(main)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_cannot_pass_as_the_hosts_starvation(backend: str, tmp_path: Path) -> None:
    """In a cpu cgroup shared with one busy process on the slot's CPU (no autogroups there),
    an endless loop at nice 19 or SCHED_IDLE ran 1% of its time and was scored "sandbox error:
    the host ran other work on the sample's CPU" (infra) where the same loop at the default
    priority, with half the CPU, was the model's timeout; so was a loop of sched_yield (1% of
    the CPU, ready to run all the time). Now a sample cannot lower its priority, and
    sched_yield does not yield: both fare as that loop."""
    from rollwatch.report.failures import verdict_cause
    from rollwatch.scoring.cgroup import cgroups

    if os.geteuid() != 0 or not (CPU_V1 / "cpu.shares").exists() or shutil.which("taskset") is None:
        pytest.skip("needs root, a cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu and taskset")
    root = cgroups().root
    if root is None or not (root.parent / "cpu.pressure").exists() or (os.cpu_count() or 1) == 1:
        pytest.skip("needs slot cgroups with pressure stall information, and more than one CPU")
    group = Path(tempfile.mkdtemp(prefix="rollwatch-h80-", dir=CPU_V1))
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                STARVED_RUN,
                str(group),
                backend,
                "while True:\n    pass\n",
                GIVES_ITS_CPU_AWAY,
                YIELDS_ITS_CPU,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert r.returncode == 0, r.stderr[-3000:]
        (control, control_cpu), *others = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        for _ in range(100):
            try:
                group.rmdir()
                break
            except OSError:  # its processes are still on their way out
                time.sleep(0.05)
    # It fares as a loop at the default priority beside the same hog: about as much CPU as
    # that loop (1% of its time before), and so the same verdict, the model's timeout on a
    # machine not otherwise loaded. (The verdicts themselves are not compared: on a loaded
    # machine either run's share may fall on either side of the starvation line. Nor is the
    # share held to half the control's: the suite's other workers moved it to 0.497 once;
    # a fifth still tells it from the 1% it was.)
    for reason, cpu in others:
        assert cpu >= 0.2 * control_cpu, (reason, cpu, control, control_cpu)
        assert verdict_cause(reason)[1] in ("timeout", "sandbox_error"), reason
    assert verdict_cause(control)[1] in ("timeout", "sandbox_error"), control
