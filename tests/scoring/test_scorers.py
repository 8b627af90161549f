"""The three scorers on real sandboxes: references pass, wrong answers fail and say why."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rollwatch.problems import Problem, load_folder_set, load_problem
from rollwatch.scoring import ScoringPool, check_references

from .conftest import PROBLEMS, SQUARE, fenced, function_problem, stdio_problem, timed_out

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def favorites():  # type: ignore[no-untyped-def]
    return load_folder_set(PROBLEMS, name="favorites")


def command_problem(
    tmp_path: Path, checker: str, *, timeout: str = "5s", checker_timeout: str | None = None
) -> Problem:
    folder = tmp_path / "cmd"
    folder.mkdir(exist_ok=True)
    (folder / "check.py").write_text(textwrap.dedent(checker))
    extra = f'checker_timeout = "{checker_timeout}"\n' if checker_timeout else ""
    (folder / "problem.toml").write_text(
        'prompt = "p"\n[scorer]\nkind = "command"\ncommand = ["python3", "check.py"]\n'
        f'timeout = "{timeout}"\n{extra}'
    )
    return load_problem(folder)


class TestReferences:
    async def test_every_bundled_reference_passes(self, pool: ScoringPool, favorites) -> None:  # type: ignore[no-untyped-def]
        """`rollwatch problems check` semantics: each sample problem's reference passes its own scorer."""
        assert len(favorites.problems) >= 8
        assert {p.scorer for p in favorites.problems} == {"python-function", "stdio", "command"}
        assert await check_references(favorites, pool) == []

    async def test_a_broken_reference_is_named(self, pool: ScoringPool, favorites) -> None:  # type: ignore[no-untyped-def]
        """check_references names each problem whose reference fails, with the reason."""
        from dataclasses import replace

        from rollwatch.problems import ProblemSet

        p = favorites.get("merge-intervals")
        broken = ProblemSet(
            name="broken",
            path=PROBLEMS,
            format="folder",
            problems=[
                replace(p, reference_solution="def merge_intervals(xs):\n    return xs\n"),
                replace(p, id="no-ref", reference_solution=None),
                favorites.get("lis-length"),
            ],
        )
        failures = await check_references(broken, pool)
        assert [f.problem_id for f in failures] == ["merge-intervals", "no-ref"]
        pid, why = failures[0]
        assert pid == "merge-intervals"
        assert why.startswith("exception: AssertionError")
        assert failures[1].reason == "no reference solution to check"


class TestPythonFunction:
    async def test_wrong_answer_names_the_failing_test_line(self, pool: ScoringPool) -> None:
        """A failing assert is reported with the test's line."""
        s = await pool.score(SQUARE, fenced("def f(x):\n    return x * x if x > 0 else -x"))
        assert not s.passed
        assert s.reason == "exception: AssertionError"
        assert s.detail["test_source"] == "assert candidate(-3) == 9"
        assert s.detail["stage"] == "tests"

    async def test_exception_in_the_candidate(self, pool: ScoringPool) -> None:
        """An exception raised by the candidate names its type and message."""
        s = await pool.score(SQUARE, fenced("def f(x):\n    return 1 / 0"))
        assert s.reason == "exception: ZeroDivisionError: division by zero"

    async def test_syntax_error_and_missing_entry_point(self, pool: ScoringPool) -> None:
        """Code that does not compile, or lacks the entry point, fails before any test."""
        s = await pool.score_code(SQUARE, "def f(x) return x")
        assert s.reason.startswith("syntax error:")
        s = await pool.score(SQUARE, fenced("def g(x):\n    return x * x"))
        assert s.reason == "entry point 'f' is not defined"

    async def test_no_code_found(self, pool: ScoringPool) -> None:
        """An answer without code fails with 'no code found' and runs nothing."""
        s = await pool.score(SQUARE, "I am not able to help with that.")
        assert (s.passed, s.reason, s.extraction) == (False, "no code found", "none")

    async def test_humaneval_prelude_is_shared_with_candidate_and_tests(self, pool: ScoringPool) -> None:
        """As in HumanEval, helpers of the prompt are visible to the candidate and to the tests."""
        prompt = 'import math\n\ndef helper(x):\n    return x + 1\n\ndef f(x):\n    """helper(x) squared"""\n'
        p = function_problem(
            "def check(candidate):\n    assert candidate(2) == helper(2) ** 2\n", prelude=prompt
        )
        s = await pool.score(p, fenced("def f(x):\n    return int(math.pow(helper(x), 2))"))
        assert s.passed, s

    async def test_score_is_json_ready(self, pool: ScoringPool) -> None:
        """to_dict() round-trips through JSON with every field the log records."""
        s = await pool.score(SQUARE, fenced("def f(x):\n    return x * x"))
        d = json.loads(json.dumps(s.to_dict()))
        assert d["passed"] is True
        assert d["score"] == 1.0
        assert d["reason"] == "passed"
        assert d["scorer"] == "python-function"
        assert d["extraction"] == "fenced-entry-point"
        assert d["isolation"] == pool.isolation
        assert d["problem_hash"] == "sha256:test"
        assert d["duration_ms"] > 0
        assert d["detail"]["wall_ms"] > 0


class TestStdio:
    async def test_exact_comparison_ignores_trailing_whitespace(self, pool: ScoringPool) -> None:
        """Trailing spaces, CRLF and a missing final newline do not matter; content does."""
        p = stdio_problem([("2 3\n", "5\n"), ("10 -4\n", "6\n")])
        ok = await pool.score(p, fenced("a, b = map(int, input().split())\nprint(a + b, end='  \\r\\n\\n')"))
        assert ok.passed, ok
        bad = await pool.score(p, fenced("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"))
        assert not bad.passed
        assert bad.reason == "wrong answer on case 2 (02)"
        assert bad.score == 0.5
        assert bad.detail["first_failure"]["difference"] == "line 1: expected '6', got '0'"

    async def test_float_tolerance(self, pool: ScoringPool, favorites) -> None:  # type: ignore[no-untyped-def]
        """With float_tolerance a nearby number passes and a far one fails (closest-pair, case 1)."""
        from dataclasses import replace

        p = favorites.get("closest-pair")
        one = replace(p, cases=p.cases[:1])
        assert (await pool.score(one, fenced("print(1.4142135)"))).passed
        far = await pool.score(one, fenced("print(1.42)"))
        assert not far.passed
        assert far.reason == "wrong answer on case 1 (01-example)"

    async def test_crash_and_timeout_name_the_case(self, pool: ScoringPool) -> None:
        """A crash reports the exception; a timeout stops the remaining cases."""
        p = stdio_problem([("1\n", "1\n"), ("0\n", "0\n"), ("2\n", "2\n")], timeout=0.5)
        s = await pool.score(p, fenced("x = int(input())\nprint(1 // x)"))
        assert s.reason == "exception: ZeroDivisionError: integer division or modulo by zero on case 2 (02)"
        s = await pool.score(p, fenced("x = int(input())\nwhile x == 0:\n    pass\nprint(x)"))
        assert timed_out(s.reason, " on case 2 (02)"), s
        assert s.detail["cases_passed"] == 1

    async def test_exit_status_counts(self, pool: ScoringPool) -> None:
        """A program that prints the right answer but exits non-zero fails."""
        p = stdio_problem([("1\n", "1\n")])
        s = await pool.score(p, fenced("print(1)\nraise SystemExit(3)"))
        assert s.reason == "exit status 3 on case 1 (01)"

    async def test_wrong_answer_on_a_bundled_problem(self, pool: ScoringPool, favorites) -> None:  # type: ignore[no-untyped-def]
        """Dijkstra with a wrong program fails on the first case."""
        s = await pool.score(favorites.get("dijkstra"), fenced("print('0 1 2 3')"))
        assert not s.passed
        assert s.reason.startswith("wrong answer on case 1")


class TestCommand:
    async def test_json_verdict_and_partial_score(self, pool: ScoringPool, favorites) -> None:  # type: ignore[no-untyped-def]
        """n-queens' checker returns a JSON score; a solution right only for N=4 scores low."""
        s = await pool.score(
            favorites.get("n-queens"), fenced("input()\nfor _ in range(14):\n    print('1 3 0 2')")
        )
        assert not s.passed
        assert s.reason.startswith("N=5: ")
        assert 0 < s.score < 0.2

    async def test_exit_status_verdict(self, pool: ScoringPool, favorites) -> None:  # type: ignore[no-untyped-def]
        """topo-order's checker decides by exit status and names the failure."""
        s = await pool.score(favorites.get("topo-order"), fenced("print('IMPOSSIBLE')"))
        assert not s.passed
        assert (
            s.reason == "checker: n=1: the prerequisites have a cycle, expected IMPOSSIBLE"
            or s.reason.startswith("checker: n=1:")
        )

    async def test_candidate_runs_sandboxed_even_through_the_checker(
        self, pool: ScoringPool, tmp_path: Path
    ) -> None:
        """The candidate run through $ROLLWATCH_RUN is sandboxed: no network, no secrets, a timeout."""
        p = command_problem(
            tmp_path,
            """
            import json, os, subprocess, sys
            r = subprocess.run([os.environ["ROLLWATCH_RUN"], sys.argv[1]], input=b"", capture_output=True)
            print(json.dumps({"passed": False, "score": 0.0,
                              "reason": f"exit {r.returncode}: {r.stdout.decode()} / {r.stderr.decode()[-200:]}"}))
            """,
            timeout="1s",
        )
        code = """
            import os, socket, time
            print(sorted(os.environ))
            print([n for _, n in socket.if_nameindex()])
            print(os.path.exists("/etc/shadow"), flush=True)
            while True:
                pass
        """
        s = await pool.score(p, fenced(code))
        assert not s.passed
        assert s.reason.startswith("exit 124: ")
        assert "ROLLWATCH_TEST_SECRET" not in s.reason
        assert "ROLLWATCH_RUN" not in s.reason
        assert "['lo']" in s.reason
        assert "False" in s.reason
        assert "rollwatch: timeout" in s.reason

    async def test_checker_timeout_kills_the_checker(self, pool: ScoringPool, tmp_path: Path) -> None:
        """A checker that outlives checker_timeout is killed and the sample fails."""
        p = command_problem(tmp_path, "import time\ntime.sleep(60)\n", checker_timeout="500ms")
        s = await pool.score(p, fenced("print(1)"))
        assert (s.passed, s.reason) == (False, "checker timeout (0.5s)")

    async def test_checker_exit_status_without_json(self, pool: ScoringPool, tmp_path: Path) -> None:
        """Exit status 0 passes; anything else fails with the checker's last line."""
        p = command_problem(tmp_path, "import sys\nprint('looks fine')\nsys.exit(0)\n")
        assert (await pool.score(p, fenced("print(1)"))).passed
        p = command_problem(
            tmp_path, "import sys\nprint('first')\nprint('bad output on case 7')\nsys.exit(2)\n"
        )
        s = await pool.score(p, fenced("print(1)"))
        assert (s.passed, s.reason) == (False, "checker: bad output on case 7")
