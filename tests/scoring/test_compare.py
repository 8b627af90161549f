"""Output comparison for stdio problems (done outside the sandbox)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from rollwatch.scoring import compare_output


class TestExact:
    def test_trailing_whitespace_and_line_ends_do_not_matter(self) -> None:
        """Trailing spaces, CRLF and trailing blank lines are ignored."""
        assert compare_output(b"1 2  \r\n3\n\n\n", b"1 2\n3") is None

    def test_content_and_leading_whitespace_do(self) -> None:
        """A different token, a leading space or a missing line is a difference, located."""
        assert compare_output(b"1 3\n", b"1 2\n") == "line 1: expected '1 2', got '1 3'"
        assert compare_output(b" 1\n", b"1\n") == "line 1: expected '1', got ' 1'"
        assert compare_output(b"1\n", b"1\n2\n") == "1 lines of output, expected 2"

    @given(st.lists(st.text(alphabet="ab \t", max_size=5), max_size=5))
    def test_reflexive(self, lines: list[str]) -> None:
        """Output always matches itself."""
        data = "\n".join(lines).encode()
        assert compare_output(data, data) is None


class TestTolerance:
    def test_numbers_within_the_tolerance(self) -> None:
        """Absolute near zero, relative for large numbers; non-numbers exactly."""
        assert compare_output(b"1.0000001 yes", b"1 yes", 1e-6) is None
        assert compare_output(b"1000001", b"1000000", 1e-6) is None
        assert compare_output(b"1.001", b"1", 1e-6) == "token 1: expected 1, got 1.001 (tolerance 1e-06)"
        assert compare_output(b"1 no", b"1 yes", 1e-6) == "token 2: expected 'yes', got 'no'"
        assert compare_output(b"abc", b"1.5", 1e-6) == "token 1: expected the number '1.5', got 'abc'"
        assert compare_output(b"1 2", b"1", 1e-6) == "2 tokens of output, expected 1"

    def test_nan_and_infinity(self) -> None:
        """nan matches only nan; an infinity only the same infinity."""
        assert compare_output(b"nan inf", b"nan inf", 1e-6) is None
        assert compare_output(b"1", b"nan", 1e-6) is not None
        assert compare_output(b"-inf", b"inf", 1e-6) is not None

    @given(st.floats(allow_nan=False, allow_infinity=False, width=32), st.floats(0, 0.9))
    def test_within_is_accepted(self, x: float, frac: float) -> None:
        """Any number within the tolerance of the expected one is accepted."""
        tol = 1e-6
        got = x + frac * tol * max(1.0, abs(x))
        if math.isfinite(got):
            assert compare_output(repr(got).encode(), repr(x).encode(), tol) is None
