"""What a problem's tests may and may not do through the judge/candidate channel.

The tests run in the judge; every call of ``candidate`` crosses to the candidate's
process as plain data, and the return value (or the exception) comes back as plain
data, built afresh in the judge.
"""

from __future__ import annotations

import pytest

from rollwatch.scoring import ScoringPool

from .conftest import fenced, function_problem

pytestmark = pytest.mark.anyio


async def test_plain_values_cross_with_their_types(pool: ScoringPool) -> None:
    """Tuples stay tuples, sets sets, bytes bytes; None, True and False keep their identity."""
    p = function_problem(
        """
        import math
        def check(candidate):
            out = candidate(0)
            assert out[0] == (1, 2) and type(out[0]) is tuple
            assert out[1] == [1, 2] and type(out[1]) is list
            assert out[2] == {1, 2} and type(out[2]) is set
            assert out[3] == frozenset({3}) and type(out[3]) is frozenset
            assert out[4] == {(1, "a"): [None]}
            assert out[5] == b"\\x00\\xff" and out[6] == 1 + 2j
            assert out[7] is None and out[8] is True and out[9] is False
            assert math.isnan(out[10]) and out[11] == float("inf") and out[12] == 10 ** 300
            assert out[13] == "\\ud800 é" and type(out[14]) is float and out[14] == 1.0
            assert candidate(1, k="w") == ((1,), {"k": "w"})
        """
    )
    code = """
        def f(x, **kw):
            if x == 1:
                return ((x,), kw)
            return ((1, 2), [1, 2], {1, 2}, frozenset({3}), {(1, "a"): [None]}, b"\\x00\\xff", 1 + 2j,
                    None, True, False, float("nan"), float("inf"), 10 ** 300, "\\ud800 é", 1.0)
    """
    s = await pool.score(p, fenced(code))
    assert s.passed, s


async def test_exceptions_cross_by_class_name_and_message(pool: ScoringPool) -> None:
    """A built-in exception, one the prompt defines, and one the candidate makes up, as the tests see them."""
    prelude = "class BadInput(Exception):\n    pass\n"
    p = function_problem(
        """
        def check(candidate):
            try:
                candidate(-1)
                assert False, "no exception"
            except ValueError as e:
                assert str(e) == "negative: -1"
            try:
                candidate(0)
                assert False, "no exception"
            except BadInput as e:
                assert str(e) == "zero"
            try:
                candidate(1)
                assert False, "no exception"
            except Exception as e:
                assert type(e).__name__ == "Mine" and str(e) == "one"
        """,
        prelude=prelude,
    )
    code = """
        class Mine(Exception):
            pass
        def f(x):
            if x < 0:
                raise ValueError(f"negative: {x}")
            if x == 0:
                raise BadInput("zero")
            raise Mine("one")
    """
    s = await pool.score(p, fenced(code))
    assert s.passed, s


async def test_rebound_builtins_do_not_bend_the_candidates_side_of_the_channel(pool: ScoringPool) -> None:
    """A candidate that rebinds the built-ins the channel code uses (type, len, isinstance,
    str, ValueError) for itself still gets its answers across, values and exceptions."""
    p = function_problem(
        """
        def check(candidate):
            assert candidate(2) == [2, (2,), {"k": {2}}, b"b", "s"]
            try:
                candidate(-1)
                assert False, "no exception"
            except ValueError as e:
                assert str(e) == "negative"
        """
    )
    code = """
        import builtins
        real_value_error = ValueError
        builtins.type = lambda *a: int
        builtins.len = lambda x: 0
        builtins.isinstance = lambda *a: False
        builtins.str = lambda *a: "?"
        builtins.ValueError = KeyError
        def f(x):
            if x < 0:
                raise real_value_error("negative")
            return [x, (x,), {"k": {x}}, b"b", "s"]
    """
    s = await pool.score(p, fenced(code))
    assert s.passed, s


async def test_arguments_are_copies(pool: ScoringPool) -> None:
    """The candidate gets copies of the arguments: sorting one in place is invisible to the tests."""
    p = function_problem(
        """
        def check(candidate):
            xs = [3, 1, 2]
            assert candidate(xs) is None
            assert xs == [3, 1, 2]
        """
    )
    s = await pool.score(p, fenced("def f(xs):\n    xs.sort()"))
    assert s.passed, s


async def test_a_callable_argument_is_the_tests_error(pool: ScoringPool) -> None:
    """Tests that pass a function to the candidate fail, saying the channel cannot carry it."""
    p = function_problem("def check(candidate):\n    assert candidate(lambda y: y) == 1\n")
    s = await pool.score(p, fenced("def f(g):\n    return g(1)"))
    assert not s.passed
    assert s.reason == "the tests passed the candidate a value the channel cannot carry (function)", s


async def test_integers_of_any_size_cross_both_ways(pool: ScoringPool) -> None:
    """An integer of more than 4,300 digits (Python's limit on turning one into decimal text)
    crosses as itself, as an argument and as a return value: a right answer of 3**10000 was
    "unverifiable" before, a failure counted against the model. A wrong one still fails."""
    p = function_problem(
        """
        def check(candidate):
            assert candidate(10000) == 3**10000
            assert candidate(-(7**9000)) == -(7**9000) * 3
            assert candidate(5) == 243
        """
    )
    right = "def f(n):\n    return 3**n if n >= 0 else n * 3"
    s = await pool.score(p, fenced(right))
    assert s.passed, s
    wrong = "def f(n):\n    return 3**n + 1 if n > 5 else (3**n if n >= 0 else n * 3)"
    s = await pool.score(p, fenced(wrong))
    assert not s.passed
    assert "AssertionError" in s.reason, s


async def test_objects_do_not_cross(pool: ScoringPool) -> None:
    """A generator, a namedtuple or a Fraction is not plain data: the answer is unverifiable."""
    p = function_problem("def check(candidate):\n    assert list(candidate(2)) == [0, 1]\n")
    for code, name in (
        ("def f(n):\n    return (i for i in range(n))", "generator"),
        ("import collections\nP = collections.namedtuple('P', 'a b')\ndef f(n):\n    return P(0, 1)", "P"),
        ("import fractions\ndef f(n):\n    return [fractions.Fraction(0), 1]", "Fraction"),
    ):
        s = await pool.score(p, fenced(code))
        assert not s.passed
        assert s.reason == f"unverifiable return value: {name}", s


async def test_only_the_entry_point_crosses(pool: ScoringPool) -> None:
    """Other names the candidate defines do not exist where the tests run."""
    p = function_problem("def check(candidate):\n    assert helper(2) == 4\n")
    s = await pool.score(p, fenced("def helper(x):\n    return x * x\ndef f(x):\n    return helper(x)"))
    assert not s.passed
    assert "NameError" in s.reason, s


async def test_a_swallowed_channel_failure_still_fails(pool: ScoringPool) -> None:
    """Tests with a bare ``except:`` around a call cannot turn an unverifiable answer into a pass."""
    p = function_problem(
        """
        def check(candidate):
            for x in (2, 5):
                try:
                    r = candidate(x)
                except:
                    r = None
                assert r is None or r == x * x
        """
    )
    code = (
        "class Anything:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Anything()"
    )
    s = await pool.score(p, fenced(code))
    assert not s.passed
    assert s.reason == "unverifiable return value: Anything", s
    assert (await pool.score(p, fenced("def f(x):\n    raise ValueError(x)"))).passed


async def test_the_judge_never_runs_another_problems_tests(pool: ScoringPool) -> None:
    """The resident judge keeps compiled tests per problem text: tests that differ in one value are never mixed up."""
    answer = fenced("def f(x):\n    return x * x")
    right = function_problem("def check(candidate):\n    assert candidate(2) == 4\n")
    wrong = function_problem("def check(candidate):\n    assert candidate(2) == 5\n")
    # Alternately, several times over, so that every slot's judge has both compiled.
    for _ in range(2 * pool.workers):
        r, w = await pool.score(right, answer), await pool.score(wrong, answer)
        assert r.passed, r.reason
        assert not w.passed
        assert w.detail.get("test_source") == "assert candidate(2) == 5", w.detail
