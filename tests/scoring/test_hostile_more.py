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
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from rollwatch.problems import Problem
from rollwatch.report.failures import verdict_cause
from rollwatch.scoring import ScoringPool
from rollwatch.scoring.extract import extract_code

from .conftest import BACKENDS, SQUARE, fenced, function_problem, nothing_left, settings, stdio_problem
from .helpers import ECHO, PRIMITIVE_FAILED, fails_as_the_models, honest_still_passes, storable

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def pool1(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """A one-slot pool of its own for one test: each sample is forked from the zygote that
    served the one before (and no resident judge of it outlives the test)."""
    async with ScoringPool(settings(request.param, workers=1)) as p:
        yield p
    await nothing_left()


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


async def test_a_large_output_arrives_whole_and_leaves_nothing(pool1: ScoringPool) -> None:
    """An output of many times the zygote's first buffer arrives byte for byte; none of the
    copies the buffer went through as it grew is left for the next sample."""
    filler = "".join(f"{i:07d}\n" for i in range(60000))  # 480 KB
    problem = stdio_problem([("5\n", filler + "ANSWER-271828\n")], timeout=5.0)
    honest = "import sys\nn = int(input())\nsys.stdout.write(''.join(f'{i:07d}\\n' for i in range(60000)))\n"
    honest += "print('ANSWER-' + str(271828 + n - 5))"
    assert (await pool1.score(problem, fenced(honest))).passed
    s = await pool1.score(problem, fenced(REPLAYS_OUTPUT))
    assert not s.passed, s
    assert PRIMITIVE_FAILED not in s.reason, s
    assert "nothing" in str(s.detail), s


# -- more forgers and jammers, on the shared pools of every backend ------------------------
#
# name -> (problem, wrong answer): each must end as a failed verdict with a reason the
# event log can store, leave nothing running, and the pool must still pass honest answers.

FORGERS_MORE: dict[str, tuple[Problem, str]] = {
    "int-subclass-equal-to-everything": (
        SQUARE,
        "class Yes(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
        "def f(x):\n    return Yes(0)",
    ),
    "str-list-dict-subclasses-equal-to-everything": (
        function_problem(
            "def check(candidate):\n    assert candidate(1) == [1]\n    assert candidate(2) == {2: 2}\n"
        ),
        "class L(list):\n    def __eq__(self, o):\n        return True\n"
        "class D(dict):\n    def __eq__(self, o):\n        return True\n"
        "def f(x):\n    return L() if x == 1 else D()",
    ),
    "lies-about-its-class": (
        SQUARE,
        "class Liar:\n    __class__ = property(lambda self: int)\n    def __eq__(self, o):\n        return True\n"
        "def f(x):\n    return Liar()",
    ),
    "object-whose-del-and-repr-raise": (
        SQUARE,
        "class Bad:\n    def __del__(self):\n        raise SystemExit(0)\n    def __repr__(self):\n"
        "        raise KeyboardInterrupt\n"
        "def f(x):\n    return Bad()",
    ),
    "nan-and-huge-int": (
        function_problem(
            "def check(candidate):\n    assert abs(candidate(1.5) - 2.25) < 1e-9\n    assert candidate(3) == 9\n"
        ),
        "def f(x):\n    return float('nan') if isinstance(x, float) else 10 ** 5000",
    ),
    "raises-keyboardinterrupt": (SQUARE, "def f(x):\n    raise KeyboardInterrupt"),
    "raises-generatorexit": (SQUARE, "def f(x):\n    raise GeneratorExit"),
    "raises-systemexit-zero": (SQUARE, "def f(x):\n    raise SystemExit(0)"),
    "raises-its-own-class-named-assertionerror": (
        function_problem(
            "class Done(Exception):\n    pass\n"
            "def check(candidate):\n    try:\n        assert candidate(2) == 4\n    except Done:\n        raise\n",
        ),
        "class AssertionError(Exception):\n    pass\ndef f(x):\n    raise AssertionError('fine')",
    ),
    "os-exit-zero-in-the-call": (SQUARE, "import os\ndef f(x):\n    os._exit(0)"),
    "sigkill-self-in-the-call": (
        SQUARE,
        "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)",
    ),
    "thread-spams-answers-after-returning": (
        SQUARE,
        """
import os, struct, threading, json
def _spam():
    body = json.dumps(["return", 4, None]).encode()
    while True:
        try:
            os.write(4, struct.pack(">I", len(body)) + body)
        except OSError:
            return
def f(x):
    threading.Thread(target=_spam, daemon=True).start()
    return 4
""",
    ),
    "atexit-and-signal-handlers-write-tags": (
        SQUARE,
        """
import atexit, os, signal
def _forge(*_):
    for fd in range(0, 64):
        try:
            os.write(fd, b'0' * 32 + b' {"ok":true}\\n')
        except OSError:
            pass
atexit.register(_forge)
for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
    signal.signal(s, _forge)
signal.alarm(1)
def f(x):
    _forge()
    return 0
""",
    ),
    "dup2-over-every-fd-then-wrong": (
        SQUARE,
        "import os\nr, w = os.pipe()\nfor fd in range(0, 64):\n    if fd not in (r, w, 3, 4):\n"
        "        try:\n            os.dup2(w, fd)\n        except OSError:\n            pass\n"
        "def f(x):\n    return x + 1",
    ),
    "patches-sys-modules-and-import": (
        SQUARE,
        """
import builtins, sys, types
fake = types.ModuleType("json")
fake.dumps = lambda *a, **k: '{"ok": true}'
sys.modules["json"] = fake
sys.modules["traceback"] = fake
_real_import = builtins.__import__
builtins.__import__ = lambda name, *a, **k: fake if name in ("json", "traceback") else _real_import(name, *a, **k)
def f(x):
    return -1
""",
    ),
    "fd-exhaustion-before-the-answer": (
        SQUARE,
        "import os\n_keep = []\ndef f(x):\n    while True:\n        try:\n            _keep.append(os.open('/dev/null', 0))\n"
        "        except OSError:\n            break\n    return x + 1",
    ),
    "sleeps-to-the-limit-then-wrong": (
        function_problem(SQUARE.tests, timeout=1.0),
        "import time\ndef f(x):\n    time.sleep(0.95)\n    return x + 1",
    ),
    "reads-tmp-cwd-env-for-expected-values": (
        SQUARE,
        """
import os, re
def f(x):
    found = {}
    for top in ("/tmp", "/var/tmp", "/dev/shm", os.getcwd(), "/proc/self/cwd"):
        for root, _, files in os.walk(top):
            for n in files:
                try:
                    text = open(os.path.join(root, n), errors="replace").read()
                except OSError:
                    continue
                for a, b in re.findall(r"candidate\\((-?\\d+)\\) == (-?\\d+)", text):
                    found[int(a)] = int(b)
    for v in os.environ.values():
        for a, b in re.findall(r"candidate\\((-?\\d+)\\) == (-?\\d+)", v):
            found[int(a)] = int(b)
    return found.get(x, 0)
""",
    ),
}

STDIO_MORE: dict[str, str] = {
    "prints-the-answer-then-crashes": "print(input())\nraise RuntimeError('boom')",
    "prints-the-answer-then-sigkills-itself": "import os, signal, sys\nprint(input())\nsys.stdout.flush()\n"
    "os.kill(os.getpid(), signal.SIGKILL)",
    "child-prints-the-answer-after-main-exits-wrong": "import os, sys, time\ns = input()\nif os.fork() == 0:\n"
    "    time.sleep(0.3)\n    print(s)\n    sys.stdout.flush()\n    os._exit(0)\nos._exit(0)",
    "nul-bytes-and-partial-utf8": "import sys\ns = input()\nsys.stdout.buffer.write(s.encode() + b'\\x00\\xe2\\x82\\n')",
    "one-enormous-line": "import sys\nsys.stdout.write('hello' + 'x' * (8 << 20))",
    "closes-stdout-then-exits-zero": "import os\nos.close(1)\nos._exit(0)",
    "forges-on-fd3-and-exits-zero-wrong": "import os\nos.write(3, b'0' * 32 + b' {\"kind\":\"exited\"}\\n')\nprint('hellO')",
    "fills-tmp-and-inodes": "import os\ni = 0\ntry:\n    while True:\n        open(f'/tmp/{i}', 'w').close()\n"
    "        i += 1\nexcept OSError:\n    pass\ntry:\n    open('/tmp/big', 'wb').write(b'x' * (300 << 20))\n"
    "except OSError:\n    pass\nprint('nope')",
}


@pytest.mark.parametrize("name", sorted(FORGERS_MORE))
async def test_another_forging_answer_fails(pool: ScoringPool, name: str) -> None:
    """A wrong answer that bends the channel, the judge's view or its own process is scored failed."""
    problem, code = FORGERS_MORE[name]
    await fails_as_the_models(pool, problem, code)


@pytest.mark.parametrize("name", sorted(STDIO_MORE))
async def test_another_stdio_trick_fails(pool: ScoringPool, name: str) -> None:
    """A program that prints the answer and dies, leaves a child to print it, writes bytes that
    do not decode, or fills its folders, is scored failed, and the pool goes on."""
    with anyio.fail_after(30):
        s = await pool.score(ECHO, fenced(STDIO_MORE[name]))
    assert not s.passed, s
    storable(s)
    await honest_still_passes(pool)


# Answers without a fence whose text nests deeper than Python's parser goes (~3000 levels):
# extraction parses the whole text on the host to see whether it is a program.
TOO_DEEP_TO_PARSE = {
    "unary-minus-chain": "-" * 5000 + "1",
    "attribute-chain": "a" + ".b" * 5000,
    "sum-chain": "x = " + "1 + " * 5000 + "1",
    "call-chain": "f" + "()" * 5000,
}


@pytest.mark.parametrize("name", sorted(TOO_DEEP_TO_PARSE))
async def test_an_answer_too_deep_to_parse_is_the_models_failure(pool: ScoringPool, name: str) -> None:
    """Not a scorer error (ours, re-scored, logged with a traceback): no code found."""
    s = await pool.score(SQUARE, TOO_DEEP_TO_PARSE[name])
    assert not s.passed, s
    assert s.reason == "no code found", s
    assert verdict_cause(s.reason)[0] == "model", s


# A line that starts like a fence and goes on in spaces (a degenerate model's output):
# extraction runs on the daemon's event loop, so its time is everyone's.
FENCE_LIKE_LINES = {
    "backticks-spaces-backtick": "```" + " " * 60000 + "`",
    "many-such-lines": ("````" + " \t" * 1000 + "`\n") * 60,
    "tagged-then-spaces": "```python" + " " * 60000 + "`",
}


@pytest.mark.parametrize("name", sorted(FENCE_LIKE_LINES))
def test_extraction_takes_linear_time_on_fence_like_lines(name: str) -> None:
    """60 KB of such a line takes milliseconds to extract from, not seconds (it took ~15 s
    when the fence pattern's spaces could be split two ways at every step)."""
    text = FENCE_LIKE_LINES[name]
    started = time.perf_counter()
    extract_code(text, "f")
    assert time.perf_counter() - started < 1.0


async def test_the_tests_own_exception_classes_cannot_be_raised_by_name(pool: ScoringPool) -> None:
    """The candidate's exception crosses by class name; it may name a built-in class or one
    the prompt defines (which it can see), never one only the tests define: raising that
    name is a guess, and tests that catch such a class as their success signal would pass it."""
    problem = function_problem(
        """
        class _Solved(Exception):
            pass
        def check(candidate):
            try:
                if candidate(2) == 4 and candidate(5) == 25:
                    raise _Solved
                raise AssertionError("wrong")
            except _Solved:
                pass
        """
    )
    assert (await pool.score(problem, fenced("def f(x):\n    return x * x"))).passed
    s = await pool.score(
        problem, fenced("class _Solved(Exception):\n    pass\ndef f(x):\n    raise _Solved()")
    )
    assert not s.passed, s
