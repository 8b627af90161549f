"""Session 32's attacks on verdicts: outputs a comparison read as right, values and hooks that
bend what crosses from the candidate's process.

Each attack is a wrong answer scored through the real pool (real sandboxes of each backend);
each test asserts the safe outcome. Those that found a hole failed before the fix named in
their docstring; the others hold.
"""

from __future__ import annotations

import anyio
import pytest

from rollwatch.scoring import ScoringPool

from .conftest import SQUARE, fenced, stdio_problem

pytestmark = pytest.mark.anyio

SUM = stdio_problem([("3 7\n", "10\n"), ("600 400\n", "1000\n")], tolerance=1e-6)
"""Print the sum of two integers; tolerance mode (the numbers are compared as numbers)."""
WORD = stdio_problem([("yes\n", "YES\n"), ("no\n", "NO\n")])
"""Print the word in capitals; exact mode."""


async def _fails(pool: ScoringPool, problem, code: str) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(60):
        s = await pool.score(problem, fenced(code))
    assert not s.passed, s


# -- stdio: what the comparison reads as a number, or as whitespace -------------------------


@pytest.mark.parametrize(
    "fmt",
    [
        "'{:_}'.format(n)",  # 1_000: float() reads digit-group underscores
        "str(n).translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩'))",  # Arabic-Indic digits
        "str(n).translate(str.maketrans('0123456789', '０１２３４５６７８９'))",  # fullwidth digits
    ],
    ids=["underscores", "arabic-indic", "fullwidth"],
)
async def test_a_number_python_reads_but_no_judge_prints_is_not_the_number(
    pool: ScoringPool, fmt: str
) -> None:
    """An output token that only Python's float() reads as the number (``1_000``, ``١٠``,
    ``１０``) was within tolerance of the expected one: the output is not the number."""
    code = f"a, b = map(int, input().split())\nn = a + b\nprint({fmt})"
    await _fails(pool, SUM, code)


@pytest.mark.parametrize(
    "tail",
    ["\\x1c", "\\x1f", "\\u3000", "\\xa0", "\\u2028", "\\x85", "\\n\\x1c\\n\\u3000"],
    ids=["file-sep", "unit-sep", "ideographic-space", "nbsp", "line-sep", "nel", "blank-lines"],
)
async def test_trailing_characters_that_are_not_ascii_whitespace_are_output(
    pool: ScoringPool, tail: str
) -> None:
    """str.rstrip() and str.split() strip far more than the spaces, tabs and line ends a judge
    ignores (U+001C..U+001F, NBSP, U+3000, U+2028, U+0085): a line with any of them after the
    answer matched it, and a line of them only was a trailing empty line."""
    await _fails(pool, WORD, f"print(input().upper() + '{tail}')")


async def test_tokens_joined_by_a_non_ascii_space_are_one_token(pool: ScoringPool) -> None:
    """Tolerance mode split tokens with str.split(): NBSP separated two numbers."""
    two = stdio_problem([("3 7\n", "3 7\n")], tolerance=1e-6)
    await _fails(pool, two, "a, b = input().split()\nprint(a + '\\xa0' + b)")


async def test_ascii_whitespace_is_still_ignored(pool: ScoringPool) -> None:
    """What the comparison documents it ignores still passes: trailing spaces/tabs, CRLF, extra
    blank lines; in tolerance mode, any ASCII whitespace between tokens, and 1e3 for 1000."""
    with anyio.fail_after(60):
        s = await pool.score(WORD, fenced("print(input().upper() + ' \\t\\r')\nprint()\nprint('  ')"))
        assert s.passed, s
        s = await pool.score(
            SUM, fenced("a, b = map(int, input().split())\nprint('\\t', float(a + b), '\\n')")
        )
        assert s.passed, s


# -- python-function: values and hooks in the candidate's process ---------------------------


@pytest.mark.parametrize(
    "code",
    [
        # an int subclass equal to everything
        "class A(int):\n    def __eq__(s, o): return True\n    __hash__ = int.__hash__\ndef f(x):\n    return A(0)",
        # a float subclass, NaN
        "class F(float):\n    def __eq__(s, o): return True\n    __hash__ = float.__hash__\ndef f(x):\n    return F('nan')",
        # a list subclass whose items change when read
        "class L(list):\n    def __iter__(s): return iter([x*x for x in s])\ndef f(x):\n    return x",
        # a str subclass
        "class S(str):\n    def __eq__(s, o): return True\n    __hash__ = str.__hash__\ndef f(x):\n    return S('')",
        # json's encoder patched to write the expected value
        "import json, json.encoder\njson.encoder.c_make_encoder = None\n"
        "json.dumps = lambda *a, **k: '[\"return\",4,null]'\ndef f(x):\n    return 0",
        # os.write patched to rewrite every answer
        "import os, struct\n_w = os.write\ndef w(fd, b):\n    if fd == 4:\n"
        "        body = b'[\"return\",[\"d\"],null]'\n        b = struct.pack('>I', len(body)) + body\n"
        "    return _w(fd, b)\nos.write = w\ndef f(x):\n    return 0",
        # a thread that sends extra answers after every call
        "import os, struct, threading, time\ndef spam():\n    body = b'[\"return\",0,null]'\n"
        "    while True:\n        try: os.write(4, struct.pack('>I', len(body)) + body)\n"
        "        except OSError: return\n        time.sleep(0.001)\n"
        "threading.Thread(target=spam, daemon=True).start()\ndef f(x):\n    return 0",
        # an atexit hook and os._exit(0) after one wrong answer
        "import atexit, os\natexit.register(lambda: os.write(1, b'ok'))\ndef f(x):\n    os._exit(0)",
        # -0.0 and inf
        "def f(x):\n    return float('inf') if x < 0 else -0.0",
    ],
    ids=["int-eq", "float-nan", "list-iter", "str-eq", "json", "os-write", "thread-spam", "exit", "inf"],
)
async def test_a_value_or_hook_from_the_candidate_cannot_pass_square(pool: ScoringPool, code: str) -> None:
    """Subclasses of built-ins with their own __eq__, patched json/os.write, a thread writing
    answers on the channel, os._exit: none of them makes a wrong square pass."""
    await _fails(pool, SQUARE, code)


async def test_a_return_value_whose_keys_all_collide_costs_one_timeout(pool: ScoringPool) -> None:
    """A set of 300,000 ints that all hash to 0 (multiples of 2**61 - 1): the judge rebuilding
    it spends quadratic time. It is the model's timeout, not ours (no retry), within one limit."""
    from rollwatch.report.failures import verdict_cause

    code = "def f(x):\n    m = (1 << 61) - 1\n    return {i * m for i in range(300000)}"
    problem = SQUARE.__class__(**{**SQUARE.__dict__, "timeout": 2.0})
    with anyio.fail_after(30):
        s = await pool.score(problem, fenced(code))
    assert not s.passed, s
    assert verdict_cause(s.reason)[0] == "model", s
    assert not s.starved if hasattr(s, "starved") else True, s


async def test_a_colliding_set_sent_raw_costs_the_judge_one_timeout(pool: ScoringPool) -> None:
    """The same set written on the channel by hand (cheap for the candidate, quadratic for the
    judge that rebuilds it): the model's failure within one limit, and the pool goes on."""
    from rollwatch.report.failures import verdict_cause

    from .helpers import honest_still_passes

    code = (
        "import os, struct, time\n"
        "def f(x):\n"
        "    m = (1 << 61) - 1\n"
        "    body = ('[\"return\",[\"s\",' + ','.join(str(i * m) for i in range(400000)) + '],null]').encode()\n"
        "    os.write(4, struct.pack('>I', len(body)) + body)\n"
        "    time.sleep(100)\n"
    )
    problem = SQUARE.__class__(**{**SQUARE.__dict__, "timeout": 2.0})
    with anyio.fail_after(30):
        s = await pool.score(problem, fenced(code))
    print(s.reason, s.detail)
    assert not s.passed, s
    assert verdict_cause(s.reason)[0] == "model", s
    await honest_still_passes(pool)
