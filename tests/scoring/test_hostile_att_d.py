"""Brief att-d: values whose plain-data form could be ambiguous, exceptions that bend the
tests' control flow, raw frames on the channel, and processes that leave or stop.

Each wrong answer must fail as the model's failure; each right answer must pass (the
channel must not change what the tests see). Real pools, real sandboxes.
"""

from __future__ import annotations

import pytest

from rollwatch.problems import Problem
from rollwatch.scoring import ScoringPool

from .conftest import SQUARE, function_problem
from .helpers import fails_as_the_models, passes_on_a_fresh_and_a_resident_judge

pytestmark = pytest.mark.anyio

# A candidate writing its own frames on its answer pipe (fd 4) to the judge.
_SEND = (
    "import json, os, struct\n"
    "def _send(body):\n"
    "    b = body if isinstance(body, bytes) else json.dumps(body).encode()\n"
    "    os.write(4, struct.pack('>I', len(b)) + b)\n"
)

IN_ALL_MAP = function_problem(
    """
    def check(candidate):
        assert all(map(lambda x: candidate(x) == x * x, [2, 3, 4]))
    """
)
# Tests that take any exception out of the call for the right answer.
UNDER_A_BARE_EXCEPT = function_problem(
    "def check(candidate):\n    try:\n        r = candidate(2)\n    except BaseException:\n        r = 4\n"
    "    assert r == 4\n"
)
SQUARE_WITHIN_1S = function_problem(SQUARE.tests, timeout=1.0)

# name -> (problem, wrong answer): each must fail, as the model's failure.
WRONG: dict[str, tuple[Problem, str]] = {
    "negative-zero-for-zero": (
        function_problem(
            """
            import math
            def check(candidate):
                r = candidate(0)
                assert r == 0.0 and math.copysign(1.0, r) == 1.0
            """
        ),
        "def f(x):\n    return -0.0",
    ),
    "one-for-true": (
        function_problem("def check(candidate):\n    assert candidate(1) is True\n"),
        "def f(x):\n    return 1",
    ),
    "float-for-int": (
        function_problem(
            "def check(candidate):\n    r = candidate(3)\n    assert r == 9 and type(r) is int\n"
        ),
        "def f(x):\n    return 9.0",
    ),
    "list-for-tuple": (
        function_problem(
            "def check(candidate):\n    r = candidate(1)\n    assert r == (1, 2) and type(r) is tuple\n"
        ),
        "class T(tuple):\n    pass\ndef f(x):\n    return T((1, 2))",
    ),
    "str-for-bytes": (
        function_problem("def check(candidate):\n    assert candidate(1) == b'ab'\n"),
        "def f(x):\n    return 'ab'",
    ),
    "huge-int-off-by-one": (
        function_problem(
            "def check(candidate):\n    assert candidate(20000) == 2 ** 20000\n"
            "    assert candidate(-20000) == -(2 ** 20000)\n"
        ),
        "def f(x):\n    return (2 ** abs(x) + 1) * (1 if x > 0 else -1)",
    ),
    "dict-in-the-wrong-order": (
        function_problem("def check(candidate):\n    assert list(candidate(1)) == ['b', 'a']\n"),
        "def f(x):\n    return {'a': 1, 'b': 2}",
    ),
    "own-class-named-stopiteration": (
        IN_ALL_MAP,
        "StopIteration = type('StopIteration', (Exception,), {})\ndef f(x):\n    raise StopIteration('done')",
    ),
    "renamed-class-named-stopasynciteration": (
        IN_ALL_MAP,
        "class E(Exception):\n    pass\nE.__name__ = 'StopAsyncIteration'\ndef f(x):\n    raise E()",
    ),
    "exception-named-as-the-judges-own-classes": (
        SQUARE,
        "class LoadFailed(Exception):\n    pass\n"
        "def f(x):\n    raise LoadFailed('syntax', 'sandbox error: ours')",
    ),
    "systemexit-under-a-bare-except": (UNDER_A_BARE_EXCEPT, "def f(x):\n    raise SystemExit(0)"),
    "memoryerror-under-a-bare-except": (UNDER_A_BARE_EXCEPT, "def f(x):\n    raise MemoryError"),
    "answers-sent-at-import-time": (
        SQUARE,
        _SEND + "for v in (4, 25, 9):\n    _send(['return', v + 1, None])\ndef f(x):\n    return x * x",
    ),
    "end-message-as-an-answer": (SQUARE, _SEND + "def f(x):\n    _send(['end', None])\n    return x * x"),
    "load-message-after-loading": (
        SQUARE,
        _SEND + "def f(x):\n    _send(['load', 'syntax', 'x'])\n    return x * x",
    ),
    "hex-int-with-two-minus-signs": (
        SQUARE,
        _SEND + "def f(x):\n    _send(['return', ['i', '--0x' + 'f' * 4000], None])\n    import time\n"
        "    time.sleep(0.2)\n    return x * x",
    ),
    "decimal-int-past-python-s-limit": (
        SQUARE,
        _SEND + "def f(x):\n    _send(b'[\"return\",' + b'9' * 5000 + b',null]')\n    import time\n"
        "    time.sleep(0.2)\n    return x * x",
    ),
    "unhashable-key-and-bool-complex": (
        SQUARE,
        _SEND
        + "def f(x):\n    _send(['return', ['d', [['l', 1], 4]], None])\n    _send(['return', ['c', True, 1], None])\n"
        "    import time\n    time.sleep(0.2)\n    return x * x",
    ),
    "fork-at-import-parent-exits-child-answers": (
        SQUARE,
        "import os\nif os.fork() != 0:\n    os._exit(0)\ndef f(x):\n    return x * x + 1",
    ),
    "closes-its-call-pipe-at-import": (SQUARE, "import os\nos.close(3)\ndef f(x):\n    return x * x"),
    "stops-itself-in-the-call": (
        SQUARE_WITHIN_1S,
        "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGSTOP)\n    return x * x",
    ),
    "recursion-limit-too-low-for-the-harness": (
        SQUARE,
        "import sys\ndef f(x):\n    sys.setrecursionlimit(20)\n    return [[[[[[[[[[[x + 1]]]]]]]]]]]",
    ),
    "hash-colliding-set-for-the-judge-to-build": (
        SQUARE_WITHIN_1S,
        _SEND
        + "def f(x):\n    m = 2 ** 61 - 1\n    _send(['return', ['s', *[i * m for i in range(60000)]], None])\n"
        "    import time\n    time.sleep(30)",
    ),
    # JSON reads an escaped surrogate pair as one astral character: two lone surrogates
    # must not arrive as the character they would encode in UTF-16.
    "surrogate-pair-for-an-astral-character": (
        function_problem("def check(candidate):\n    assert candidate(0x1F600) == '\\U0001F600'\n"),
        "def f(x):\n    return '\\ud83d\\ude00'",
    ),
    "surrogate-pair-as-a-set-member-and-key": (
        function_problem(
            "def check(candidate):\n    assert candidate(1) == [{'\\U0001F600'}, {'\\U0001F600': 1}]\n"
        ),
        "def f(x):\n    s = '\\ud83d' + '\\ude00'\n    return [{s}, {s: 1}]",
    ),
    "surrogate-pair-in-an-exception-message": (
        function_problem(
            "def check(candidate):\n    try:\n        candidate(1)\n    except ValueError as e:\n"
            "        assert str(e) == '\\U0001F600'\n"
        ),
        "def f(x):\n    raise ValueError('\\ud83d\\ude00')",
    ),
    # A 16 MiB frame of empty lists: JSON and the judge's copy of it pass its memory limit.
    "memory-squeeze-of-the-judge": (
        SQUARE,
        _SEND + "def f(x):\n    _send(b'[\"return\",[\"l\"' + b',[\"l\"]' * 2790000 + b'],null]')\n"
        "    import time\n    time.sleep(5)",
    ),
    "verdict-lines-on-every-fd-with-the-right-length": (
        SQUARE,
        "import os\n"
        "line = b'0' * 32 + b' {\"ok\":true}\\n'\n"
        "def f(x):\n"
        "    for fd in range(0, 11):\n"
        "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n"
        "    return x * x + 1",
    ),
}


@pytest.mark.parametrize("name", sorted(WRONG))
async def test_a_wrong_answer_fails_as_the_models_failure(pool: ScoringPool, name: str) -> None:
    problem, code = WRONG[name]
    await fails_as_the_models(pool, problem, code)


# name -> (problem, right answer): each must pass.
RIGHT: dict[str, tuple[Problem, str]] = {
    "dict-order-is-kept": (
        function_problem("def check(candidate):\n    assert list(candidate(1)) == ['b', 'a', 3, (1,)]\n"),
        "def f(x):\n    return {'b': 1, 'a': 2, 3: 3, (1,): 4}",
    ),
    "mixed-sets-and-keys": (
        function_problem(
            """
            def check(candidate):
                r = candidate(1)
                assert r == {1, "1", (1, "a"), frozenset({2, b"x"}), None, 2.5, b"y", 1j}
                assert candidate(2) == {frozenset(): {(): [set()]}, b"k": -0.0}
            """
        ),
        "def f(x):\n    if x == 1:\n        return {1, '1', (1, 'a'), frozenset({2, b'x'}), None, 2.5, b'y', 1j}\n"
        "    return {frozenset(): {(): [set()]}, b'k': -0.0}",
    ),
    "negative-zero": (
        function_problem(
            "import math\ndef check(candidate):\n    r = candidate(0)\n"
            "    assert math.copysign(1.0, r) == -1.0 and math.copysign(1.0, candidate(1)[0].imag) == -1.0\n"
        ),
        "def f(x):\n    return -0.0 if x == 0 else [complex(1, -0.0)]",
    ),
    "huge-negative-int": (
        function_problem("def check(candidate):\n    assert candidate(2 ** 20000) == -(2 ** 20000) + 1\n"),
        "def f(x):\n    return -x + 1",
    ),
    # A huge int is a scalar: where a small int may sit, so may it.
    "huge-int-in-the-deepest-list-returned": (
        function_problem(
            """
            def check(candidate):
                want = 2 ** 20000
                for _ in range(100):
                    want = [want]
                assert candidate(20000) == want
            """
        ),
        "def f(x):\n    v = 2 ** x\n    for _ in range(100):\n        v = [v]\n    return v",
    ),
    "huge-int-in-the-deepest-list-passed": (
        function_problem(
            """
            def check(candidate):
                v = 2 ** 20000
                for _ in range(99):
                    v = [v]
                assert candidate(v) == 20001
            """
        ),
        "def f(v):\n    while type(v) is list:\n        v = v[0]\n    return v.bit_length()",
    ),
    # Built-in exceptions whose constructor wants more than a message.
    "unicode-decode-error-is-a-value-error": (
        function_problem(
            """
            def check(candidate):
                assert candidate(b"ok") == "ok"
                try:
                    candidate(b"\\xff")
                except ValueError:
                    pass
                else:
                    raise AssertionError("no ValueError")
                try:
                    candidate(b"\\xfe")
                except UnicodeDecodeError as e:
                    assert "can't decode" in str(e), str(e)
            """
        ),
        "def f(b):\n    return b.decode('utf-8')",
    ),
    "unicode-encode-error-is-a-unicode-error": (
        function_problem(
            """
            def check(candidate):
                try:
                    candidate("\\ud800")
                except UnicodeError:
                    pass
                else:
                    raise AssertionError("no UnicodeError")
            """
        ),
        "def f(s):\n    return s.encode('utf-8')",
    ),
    "keyerror-keeps-its-key": (
        function_problem(
            """
            def check(candidate):
                for key in ("k", 3, (1, "a"), None, "it's \\ 'quoted'"):
                    try:
                        candidate(key)
                    except KeyError as e:
                        assert e.args == (key,), e.args
                        assert str(e) == repr(key), str(e)
                    else:
                        raise AssertionError("no KeyError")
                try:
                    candidate("bare")
                except KeyError as e:
                    assert e.args == () and str(e) == "", e.args
            """
        ),
        "def f(k):\n    if k == 'bare':\n        raise KeyError\n    return {}[k]",
    ),
    "exception-message-whole": (
        function_problem(
            """
            def check(candidate):
                for msg in ("line one\\nline two", "  padded  ", "x" * 900, ""):
                    try:
                        candidate(msg)
                    except ValueError as e:
                        assert str(e) == msg, repr(str(e))
                    else:
                        raise AssertionError("no ValueError")
            """
        ),
        "def f(m):\n    raise ValueError(m)",
    ),
    "utf16-code-units-stay-two-both-ways": (
        function_problem(
            """
            def check(candidate):
                assert candidate("\\ud83d\\ude00") == ["\\ud83d\\ude00", 2]
                assert candidate("\\U0001F600") == ["\\U0001F600", 1]
                assert candidate("\\ud800 \\udfff") == ["\\ud800 \\udfff", 3]
            """
        ),
        "def f(s):\n    return [s, len(s)]",
    ),
    "prelude-runs-again-for-each-sample": (
        function_problem(
            "def check(candidate):\n    assert candidate(0) == 1\n    assert COUNT == [1]\n",
            prelude="COUNT = []\nCOUNT.append(1)\n",
        ),
        "def f(x):\n    return len(COUNT)",
    ),
}


@pytest.mark.parametrize("name", sorted(RIGHT))
async def test_a_right_answer_passes(pool: ScoringPool, name: str) -> None:
    await passes_on_a_fresh_and_a_resident_judge(pool, *RIGHT[name])
