"""The ``python-function`` scorer: HumanEval semantics, judged from outside.

The sandbox's harness runs the problem's prelude (HumanEval: the prompt), the
candidate's code, then the tests in a namespace of their own, and calls
``check(entry_point)``. The sample passes only when the harness's nonce-tagged
verdict says the tests returned, and the process then exited 0 by itself.
"""

from __future__ import annotations

from typing import ClassVar

from rollwatch.problems import Problem
from rollwatch.scoring.base import Outcome, Sandbox, Scorer


class FunctionScorer(Scorer):
    """HumanEval semantics: prompt, candidate, tests, ``check(entry_point)``."""

    kind: ClassVar[str] = "python-function"

    async def score(self, problem: Problem, code: str, sandbox: Sandbox) -> Outcome:
        """Run the tests on ``code``; see the module docstring for what passes."""
        request = self.request(
            problem,
            "function",
            code,
            tests=problem.tests,
            prelude=problem.prelude,
            entry_point=problem.entry_point or "",
        )
        res = await sandbox.run(request)
        detail = res.detail()
        verdict = res.verdict
        if verdict is not None:
            for key in ("stage", "test_line", "test_source"):
                if key in verdict:
                    detail[key] = verdict[key]
        if res.outcome == "exited" and verdict is not None and verdict.get("ok") is True:
            if res.exit_code == 0:
                return Outcome(passed=True, score=1.0, reason="passed", detail=detail)
            return Outcome(
                passed=False,
                score=0.0,
                reason=f"exit status {res.exit_code} after the tests passed",
                detail=detail,
            )
        reason = res.abnormal()
        if reason is None:
            if verdict is not None and verdict.get("ok") is False:
                reason = str(verdict.get("reason") or "the tests failed")
            else:
                reason = f"exited before the tests finished (exit status {res.exit_code})"
        return Outcome(passed=False, score=0.0, reason=reason, detail=detail)
