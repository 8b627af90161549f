"""Hostile answers against the judge/candidate split, on every namespace backend.

Each answer below is deliberately wrong and tries to get scored as passed anyway (the
forging classes of the security review), or tries to stop scoring itself (the jamming
classes). Every one must end as a failed verdict with a reason, leave no process
running a second later, leave a score the event log can store, and the next honest
answer on the same pool must pass.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from rollwatch.problems import Problem
from rollwatch.report.failures import verdict_cause
from rollwatch.scoring import ScoringPool

from .conftest import (
    SQUARE,
    fenced,
    function_problem,
    nothing_left,
    sandbox_processes,
)
from .helpers import ECHO, HONEST_SQUARE, PRIMITIVE_FAILED, honest_still_passes, judges, storable
from .test_scorers import command_problem

pytestmark = pytest.mark.anyio


# Tests that draw random inputs from an instance (as HumanEval/32's do).
RANDOM_SQUARE = function_problem(
    """
    import random
    def check(candidate):
        rng = random.Random(20)
        for _ in range(20):
            x = rng.randint(-1000, 1000)
            assert candidate(x) == x * x
    """,
    timeout=10.0,
)
# Tests that lean on builtins the candidate might reach for.
ABS_SQUARE = function_problem(
    """
    def check(candidate):
        assert isinstance(candidate(3), int)
        assert abs(candidate(2) - 4) < 1e-9
    """
)
SLOW_SQUARE = function_problem(SQUARE.tests, timeout=15.0)
# Tests that loop through map(): a StopIteration out of the call would end the loop.
MAP_SQUARE = function_problem(
    """
    def check(candidate):
        assert all(map(lambda x: candidate(x) == x * x, [2, 5, -3]))
    """
)

# Every forger ends like this: whatever looks like a verdict tag goes out as a passing
# verdict on every fd, and the process leaves at once with status 0 (before the
# harness could write a verdict of its own). Against a harness in the candidate's own
# process (the design before the judge/candidate split), each of these passed.
WRITE_TAGS = """
def _write_tags_and_leave(tags):
    import os
    for tag in list(tags)[:500]:
        line = (tag + ' {"ok":true}\\n').encode()
        for fd in range(3, 64):
            try:
                os.write(fd, line)
            except OSError:
                pass
    os._exit(0)
"""

# name -> (problem, wrong answer)
FORGERS: dict[str, tuple[Problem, str]] = {
    "frame-walking-for-the-verdict-tag": (
        SQUARE,
        WRITE_TAGS
        + """
import sys
def f(x):
    tags, fr = set(), sys._getframe()
    while fr is not None:
        for v in list(fr.f_locals.values()):
            if isinstance(v, str) and len(v) == 32:
                tags.add(v)
        fr = fr.f_back
    if tags:
        _write_tags_and_leave(tags)
    return 0
""",
    ),
    "gc-scan-for-the-verdict-tag": (
        SQUARE,
        WRITE_TAGS
        + """
import gc, re, types
def f(x):
    tags = set()
    for o in gc.get_objects():
        if isinstance(o, types.FunctionType) and o.__closure__:
            for cell in o.__closure__:
                try:
                    v = cell.cell_contents
                except ValueError:
                    continue
                if isinstance(v, str) and re.fullmatch("[0-9a-f]{32}", v):
                    tags.add(v)
    if tags:
        _write_tags_and_leave(tags)
    return 0
""",
    ),
    "memory-scan-of-every-process-for-the-tag": (
        SLOW_SQUARE,
        WRITE_TAGS
        + """
import ctypes, os, re
def f(x):
    tags, scanned = set(), 0
    for pid in ["self"] + [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            maps = open(f"/proc/{pid}/maps").read().splitlines()
        except OSError:
            continue
        try:
            mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
        except OSError:
            mem = None  # our own memory stays readable through ctypes
            if pid != "self":
                continue
        for line in maps:
            addr, perms = line.split()[:2]
            lo, hi = (int(a, 16) for a in addr.split("-"))
            if "r" not in perms or hi - lo > (16 << 20) or scanned > (200 << 20) or "[v" in line:
                continue
            try:
                if mem is None:
                    data = ctypes.string_at(lo, hi - lo)
                else:
                    mem.seek(lo)
                    data = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            scanned += len(data)
            tags.update(m.decode() for m in re.findall(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", data))
    if not scanned:
        raise SystemExit("ATTACK-PRIMITIVE-FAILED: nothing readable")
    _write_tags_and_leave(tags)
""",
    ),
    "rebinds-json-dumps-and-exit-in-the-harness": (
        SQUARE,
        """
import json, os, __main__
real_exit = os._exit
json.dumps = lambda *a, **k: '{"ok": true}'
__main__._exit = lambda code: real_exit(0)
os._exit = lambda code: real_exit(0)
def f(x):
    return 0
""",
    ),
    "edits-the-builtins-snapshot": (
        ABS_SQUARE,
        """
import __main__, builtins
snap = getattr(__main__, "SAFE_BUILTINS", None)
if not isinstance(snap, dict) or "abs" not in snap:
    raise SystemExit("ATTACK-PRIMITIVE-FAILED")
for d in (snap, vars(builtins)):
    d["abs"] = lambda x: 0
    d["isinstance"] = lambda *a: True
def f(x):
    return 4.5
""",
    ),
    "ctypes-makes-int-and-bool-equality-always-true": (
        SQUARE,
        """
import ctypes
flags = ctypes.c_ulong.from_address(id(int) + 168)
flags.value &= ~(1 << 8)  # Py_TPFLAGS_IMMUTABLETYPE
int.__eq__ = lambda a, b: True
flags.value |= 1 << 8
if not (1 == 2 and True == False):
    raise SystemExit("ATTACK-PRIMITIVE-FAILED")
def f(x):
    return 0
""",
    ),
    "trace-function-swaps-the-candidate-in-check": (
        SQUARE,
        """
import ctypes, sys
def tracer(frame, event, arg):
    if frame.f_code.co_name == "check" and "candidate" in frame.f_locals:
        frame.f_locals["candidate"] = lambda x: x * x
        ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
        sys.settrace(None)
        return None
    return tracer
sys.settrace(tracer)
def f(x):
    return 0
""",
    ),
    "stop-iteration-ends-the-tests-map": (
        MAP_SQUARE,
        """
def f(x):
    raise StopIteration
""",
    ),
    "patches-random-to-fix-the-tests-inputs": (
        RANDOM_SQUARE,
        """
import random
random.Random.randint = lambda self, a, b: 3
if random.Random(1).randint(0, 100) != 3:
    raise SystemExit("ATTACK-PRIMITIVE-FAILED")
def f(x):
    return 9
""",
    ),
}

# name -> (problem, answer, what the reason must contain)
JAMMERS: dict[str, tuple[Problem, str, str]] = {
    "3000-deep-folders-in-tmp-and-cwd": (
        SLOW_SQUARE,
        """
import os
for top in ("/tmp", os.getcwd()):
    os.chdir(top)
    for _ in range(3000):
        os.mkdir("d")
        os.chdir("d")
    os.chmod(".", 0)
def f(x):
    return 0
""",
        "AssertionError",
    ),
    "deeply-nested-return-value": (
        SQUARE,
        "def f(x):\n    a = []\n    for _ in range(100000):\n        a = [a]\n    return a",
        "unverifiable return value: nested more than",
    ),
    "huge-return-value": (
        SQUARE,
        "def f(x):\n    return 'x' * (20 << 20)",
        "unverifiable return value: larger than",
    ),
    "lone-surrogates-in-the-exception": (
        SQUARE,
        "def f(x):\n    raise ValueError('\\ud800 \\udfff ' * 100)",
        "exception: ValueError",
    ),
    "lone-surrogate-return-value": (SQUARE, "def f(x):\n    return '\\ud800'", "AssertionError"),
    "garbage-frames-on-every-fd": (
        SQUARE,
        """
import os
def f(x):
    for junk in (b"\\xff\\xff\\xff\\xff", b"\\x00\\x01\\x86\\xa0" + b"[" * 100000, b"\\x00\\x00\\x00\\x0b{\\"ok\\":true}"):
        for fd in range(3, 64):
            try:
                os.write(fd, junk)
            except OSError:
                pass
    return x * x
""",
        "sandbox error: the candidate sent",
    ),
    "deeply-nested-frame-on-the-channel": (
        SQUARE,
        """
import os, struct
def f(x):
    body = b"[" * 200000 + b"]" * 200000
    os.write(4, struct.pack(">I", len(body)) + body)
    return x * x
""",
        "sandbox error: the candidate sent a garbled frame",
    ),
    "non-list-message-on-the-channel": (
        SQUARE,
        """
import os, struct
def f(x):
    body = b'{"ok": true}'
    os.write(4, struct.pack(">I", len(body)) + body)
    os._exit(0)
""",
        "sandbox error: the candidate sent a garbled frame",
    ),
    "kills-everything-it-can-see": (
        SQUARE,
        """
import os, signal
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():
        try:
            os.kill(int(p), signal.SIGKILL)
        except OSError:
            pass
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
def f(x):
    return 0
""",
        "AssertionError",
    ),
    "stops-everything-it-can-see": (
        SQUARE,
        """
import os, signal
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():
        try:
            os.kill(int(p), signal.SIGSTOP)
        except OSError:
            pass
try:
    os.kill(-1, signal.SIGSTOP)
except OSError:
    pass
def f(x):
    return 0
""",
        "AssertionError",
    ),
    "closes-every-fd": (
        "import os\nos.closerange(0, 4096)\ndef f(x):\n    return 0",
        "exited before the tests finished",
    ),
    "fork-bomb-then-wrong": (
        SQUARE,
        """
import os
for _ in range(10000):
    try:
        if os.fork() == 0:
            while True:
                pass
    except OSError:
        break
def f(x):
    return 0
""",
        "",
    ),
}
JAMMERS["closes-every-fd"] = (SQUARE, *JAMMERS["closes-every-fd"])  # type: ignore[assignment]

# Program mode: the harness shares the program's process, so the program can find the
# nonce and write a verdict line of its choosing. Whatever it writes, it cannot pass.
PROGRAM_VERDICTS: dict[str, str] = {
    "deeply-nested-verdict": '"[" * 200000 + "]" * 200000',
    "non-object-verdict": '"[1, 2, 3]"',
    "huge-verdict": '"{" + chr(34) + "kind" + chr(34) + ": " + chr(34) + "x" * 200000 + chr(34) + "}"',
    "lone-surrogate-reason": r"""'{"kind": "exception", "reason": "\\ud800 boom"}'""",
    "a-second-verdict": r"""'{"kind": "exited"}\n' + nonce + ' {"ok": true}'""",
}


class TestForgers:
    @pytest.mark.parametrize("name", sorted(FORGERS))
    async def test_a_forging_answer_fails(self, pool: ScoringPool, name: str) -> None:
        """A wrong answer that attacks the harness (frames, gc, memory, patches, traces) is scored failed."""
        problem, code = FORGERS[name]
        with anyio.fail_after(30):
            s = await pool.score(problem, fenced(code))
        assert not s.passed, s
        assert PRIMITIVE_FAILED not in s.reason, s
        assert verdict_cause(s.reason)[0] == "model", "an attack on the harness passed for our failure"
        storable(s)
        await honest_still_passes(pool)

    async def test_the_random_problem_passes_an_honest_answer(self, pool: ScoringPool) -> None:
        """The random-input problem the forgers attack is passable: the failures above are the attacks'."""
        s = await pool.score(RANDOM_SQUARE, fenced(HONEST_SQUARE))
        assert s.passed, s
        s = await pool.score(ABS_SQUARE, fenced(HONEST_SQUARE))
        assert s.passed, s

    async def test_the_judge_is_out_of_the_candidates_reach(self, pool: ScoringPool) -> None:
        """From the candidate's process no other process can be signalled, nor its memory or fds read."""
        probe = """
            import os
            def f(x):
                me, reached = os.getpid(), []
                for p in os.listdir("/proc"):
                    if not p.isdigit() or int(p) == me:
                        continue
                    try:
                        os.kill(int(p), 0)
                        reached.append(p + ":signal")
                    except OSError:
                        pass
                    for what in ("mem", "environ"):
                        try:
                            with open(f"/proc/{p}/{what}", "rb") as fh:
                                fh.read(1)
                            reached.append(p + ":" + what)
                        except OSError:
                            pass
                    try:
                        os.listdir(f"/proc/{p}/fd")
                        reached.append(p + ":fd")
                    except OSError:
                        pass
                return reached
        """
        p = function_problem("def check(candidate):\n    assert candidate(0) == []\n")
        s = await pool.score(p, fenced(probe))
        assert s.passed, s


class TestJammers:
    @pytest.mark.parametrize("name", sorted(JAMMERS))
    async def test_a_jamming_answer_ends_with_a_verdict(self, pool: ScoringPool, name: str) -> None:
        """An answer that attacks scoring itself fails with a reason; nothing is left; the pool goes on."""
        problem, code, expected = JAMMERS[name]
        with anyio.fail_after(40):
            s = await pool.score(problem, fenced(code))
        assert not s.passed, s
        assert expected in s.reason, s
        assert verdict_cause(s.reason)[0] == "model", "an attack on scoring passed for our failure"
        storable(s)
        await honest_still_passes(pool)

    async def test_the_deep_folders_are_gone_for_the_next_sample(self, pool: ScoringPool) -> None:
        """After a sample left 3000-deep folders, every slot's /tmp and working folder are empty again."""
        problem, code, _ = JAMMERS["3000-deep-folders-in-tmp-and-cwd"]
        look = (
            "import os\nassert os.listdir('/tmp') in ([], ['work']) and os.listdir('.') == []\n"
            + HONEST_SQUARE
        )
        for _ in range(pool.workers):
            await pool.score(problem, fenced(code))
        for _ in range(pool.workers):
            s = await pool.score(SQUARE, fenced(look))
            assert s.passed, s

    @pytest.mark.parametrize("name", sorted(PROGRAM_VERDICTS))
    async def test_a_program_that_forges_its_verdict_line_fails(self, pool: ScoringPool, name: str) -> None:
        """A stdio program with the right output that writes its own verdict line (it has the nonce) fails."""
        code = f"""
            import os, sys
            fr, nonce = sys._getframe(), None
            while fr is not None and nonce is None:
                nonce = fr.f_locals.get("nonce")
                fr = fr.f_back
            if nonce is None:
                raise SystemExit("{PRIMITIVE_FAILED}")
            os.write(3, (nonce + " " + {PROGRAM_VERDICTS[name]} + "\\n").encode("utf-8", "surrogatepass"))
            print(input())
        """
        s = await pool.score(ECHO, fenced(code))
        assert not s.passed, s
        assert PRIMITIVE_FAILED not in s.reason, s
        storable(s)
        await honest_still_passes(pool)

    async def test_a_stray_line_on_the_verdict_channel_fails_a_right_program(self, pool: ScoringPool) -> None:
        """verdict_forged is honoured: right output plus anything else on the verdict channel fails."""
        s = await pool.score(ECHO, fenced("import os\nos.write(3, b'ok\\n')\nprint(input())"))
        assert not s.passed, s
        assert "verdict channel" in s.reason, s
        assert verdict_cause(s.reason) == ("model", "tampered")
        assert sandbox_processes() == []


class TestCommandCheckerEchoes:
    @pytest.mark.parametrize(
        "last_line",
        [
            '"[" * 100000 + "]" * 100000',
            '\'{"passed": false, "reason": ["x", ["y", {"z": 1}]], "score": 0}\'',
            '\'{"passed": false, "reason": "\\\\ud800 \\\\udfff"}\'',
            '\'{"passed": true, "score": 1e400}\'[:0] + \'{"passed": false, "score": \' + "9" * 500 + "}"',
        ],
    )
    async def test_a_checker_echoing_the_candidates_output_cannot_stop_scoring(
        self, pool: ScoringPool, tmp_path: Path, last_line: str
    ) -> None:
        """A checker whose last line is what the candidate printed (nested, surrogates, huge numbers) yields a score."""
        p = command_problem(
            tmp_path,
            """
            import os, subprocess, sys
            r = subprocess.run([os.environ["ROLLWATCH_RUN"], sys.argv[1]], input=b"", capture_output=True)
            sys.stdout.write(r.stdout.decode())
            sys.exit(1)
            """,
        )
        s = await pool.score(p, fenced(f"print({last_line})"))
        assert not s.passed, s
        storable(s)
        await nothing_left(within=1.0)


async def test_the_resident_judge_outlives_only_clean_samples(pool: ScoringPool) -> None:
    """Honest samples keep their slot's judge (one fork per sample); a sample leaving a process behind replaces it."""
    honest = fenced(HONEST_SQUARE)
    for _ in range(2 * pool.workers):
        assert (await pool.score(SQUARE, honest)).passed
    before = {pid for pid, _, _ in judges()}
    assert 1 <= len(before) <= pool.workers
    for _ in range(2 * pool.workers):
        assert (await pool.score(SQUARE, honest)).passed
    assert {pid for pid, _, _ in judges()} == before
    leave = fenced("import os, time\nif os.fork() == 0:\n    time.sleep(60)\n" + HONEST_SQUARE)
    for _ in range(pool.workers):
        assert (await pool.score(SQUARE, leave)).passed
    await nothing_left(within=1.0)
    for _ in range(pool.workers):
        assert (await pool.score(SQUARE, honest)).passed
    assert not before & {pid for pid, _, _ in judges()}


# A wrong answer that reads the problem's tests in its own process and answers from them
# (special-casing the checks). The zygote the candidate is forked from gets each request's
# tests as bytes apart from the JSON frame, hands them to the judge and wipes them before
# the fork: neither the frames nor the process's memory hold them. (Before, the text was
# in both, and both attacks passed.)
READS_THE_TESTS: dict[str, str] = {
    "through-the-frames": """
import re, sys
def f(x):
    fr, tests = sys._getframe(), None
    while fr is not None and tests is None:
        r = fr.f_locals.get("req")
        tests = r.get("tests") if isinstance(r, dict) else None
        fr = fr.f_back
    if isinstance(tests, (bytes, bytearray)):
        tests = bytes(tests).decode("latin-1")
    if tests is None:
        raise SystemExit("ATTACK-PRIMITIVE-FAILED")
    return {int(a): int(b) for a, b in re.findall(r"candidate\\((-?\\d+)\\) == (-?\\d+)", tests)}.get(x, 0)
""",
    "through-its-own-memory": """
import ctypes, re
def f(x):
    table, seen_own_code = {}, False
    for line in open("/proc/self/maps").read().splitlines():
        addr, perms = line.split()[:2]
        lo, hi = (int(a, 16) for a in addr.split("-"))
        if "r" not in perms or hi - lo > (64 << 20) or "[v" in line:
            continue
        try:
            data = ctypes.string_at(lo, hi - lo)
        except Exception:
            continue
        seen_own_code = seen_own_code or b"seen_own_code = seen_own_code" in data
        for a, b in re.findall(rb"candidate\\((-?\\d+)\\) == (-?\\d+)", data):
            table[int(a)] = int(b)
    if not seen_own_code:  # the scan reads this process's memory: its own source is in it
        raise SystemExit("ATTACK-PRIMITIVE-FAILED")
    return table.get(x, 0)
""",
}


@pytest.mark.parametrize("name", sorted(READS_THE_TESTS))
async def test_a_wrong_answer_cannot_read_the_tests(pool: ScoringPool, name: str) -> None:
    """A wrong answer that looks up the expected values in the tests' text finds none and fails."""
    with anyio.fail_after(30):
        s = await pool.score(SLOW_SQUARE, fenced(READS_THE_TESTS[name]))
    assert not s.passed, s
    assert PRIMITIVE_FAILED not in s.reason, s
    await honest_still_passes(pool)
