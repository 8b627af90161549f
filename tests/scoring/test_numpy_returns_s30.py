"""A right answer that returns numpy's numbers (session 30).

A return value crosses from the candidate's process to the judge's as plain built-in data
only, types checked exactly: a right answer computed with numpy (``numpy.float64``,
``numpy.int64``) was "unverifiable return value", the model's failure. Numpy's integer,
floating and complex scalars now cross as Python's own numbers, converted on the
candidate's side (the judge still reads plain data only); ``numpy.bool_`` and arrays still
do not, and an object dressed up as numpy's gets nothing for it.
"""

from __future__ import annotations

import subprocess

import anyio
import pytest

from rollwatch.scoring import ScoringPool
from rollwatch.scoring.sandbox import sandbox_python

from .conftest import fenced, function_problem

pytestmark = pytest.mark.anyio


def _sandbox_imports(module: str) -> bool:
    probe = [sandbox_python(), "-I", "-c", f"import {module}"]
    return subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0


needs_numpy = pytest.mark.skipif(
    not _sandbox_imports("numpy"), reason="the sandbox's interpreter has no numpy"
)

SQUARE = function_problem(
    """
    def check(candidate):
        assert candidate(2) == 4
        assert candidate(-3) == 9
    """
)

PAIRS = function_problem(
    """
    def check(candidate):
        assert candidate(3) == {"n": 3, "squares": [0, 1, 4], "mean": 5 / 3}
    """
)


@needs_numpy
@pytest.mark.parametrize("kind", ["float64", "int64", "float32", "int8", "complex128"])
async def test_a_right_answer_returning_a_numpy_number_passes(pool: ScoringPool, kind: str) -> None:
    code = f"import numpy as np\ndef f(x):\n    return np.{kind}(x * x)"
    with anyio.fail_after(60):
        s = await pool.score(SQUARE, fenced(code))
    assert s.passed, s


@needs_numpy
async def test_numpy_numbers_inside_containers_cross(pool: ScoringPool) -> None:
    code = (
        "import numpy as np\n"
        "def f(n):\n"
        "    a = np.arange(n)\n"
        '    return {"n": np.int64(n), "squares": [v for v in a * a], "mean": np.float64((a * a).mean() * n / n)}'
    )
    with anyio.fail_after(60):
        s = await pool.score(PAIRS, fenced(code))
    assert s.passed, s


@needs_numpy
async def test_a_wrong_numpy_answer_still_fails(pool: ScoringPool) -> None:
    code = "import numpy as np\ndef f(x):\n    return np.float64(x * x + 0.5)"
    with anyio.fail_after(60):
        s = await pool.score(SQUARE, fenced(code))
    assert not s.passed
    assert s.reason.startswith("exception: AssertionError"), s


@needs_numpy
@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("import numpy as np\ndef f(x):\n    return np.bool_(True)", "unverifiable return value: bool"),
        ("import numpy as np\ndef f(x):\n    return np.array(x * x)", "unverifiable return value: ndarray"),
    ],
    ids=["bool_", "array"],
)
async def test_numpy_booleans_and_arrays_still_do_not_cross(pool: ScoringPool, code: str, why: str) -> None:
    with anyio.fail_after(60):
        s = await pool.score(SQUARE, fenced(code))
    assert not s.passed
    assert s.reason.startswith(why), s


async def test_an_object_dressed_as_numpys_gets_nothing_for_it(pool: ScoringPool) -> None:
    """A class claiming numpy's module, a fake ``numpy`` in ``sys.modules`` whose ``integer``
    is the class, and an ``item`` that returns itself: no pass, no crash, the model's failure."""
    code = (
        "import sys, types\n"
        "class int64:\n"
        "    __module__ = 'numpy'\n"
        "    def item(self):\n"
        "        return self\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "fake = types.ModuleType('numpy')\n"
        "fake.integer = fake.floating = fake.complexfloating = int64\n"
        "sys.modules['numpy'] = fake\n"
        "def f(x):\n"
        "    return int64()"
    )
    with anyio.fail_after(60):
        s = await pool.score(SQUARE, fenced(code))
    assert not s.passed, s
    assert s.reason.startswith("unverifiable return value"), s
