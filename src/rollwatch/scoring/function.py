"""The ``python-function`` scorer: HumanEval semantics, judged where the candidate cannot reach.

The sandbox runs the problem's prelude (HumanEval: the prompt) and the candidate's
code in one process, and the prelude and the tests in another, the *judge*, which
calls ``check(candidate)`` with a proxy: every call crosses to the candidate's
process as plain data and its return value (or exception) comes back as plain data
(see ``inside/zygote.py``). The sample passes only when the judge's nonce-tagged
verdict says the tests returned, the judge then exited 0 by itself, and nothing else
wrote on the verdict channel.
"""

from __future__ import annotations

from typing import ClassVar

from rollwatch.problems import Problem
from rollwatch.scoring.base import Outcome, SampleResult, Sandbox, Scorer


def _gone(res: SampleResult) -> str:
    """Why the candidate's process stopped answering, as far as the sandbox saw it."""
    why = str((res.verdict or {}).get("reason") or "")
    if why.startswith("the candidate sent"):
        return f"sandbox error: {why}"
    if res.exit_code is not None:
        return f"exited before the tests finished (exit status {res.exit_code})"
    return "exited before the tests finished (the candidate's process stopped answering)"


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
        if res.verdict_forged:
            return Outcome(
                passed=False,
                score=0.0,
                reason="sandbox error: something other than the judge wrote on the verdict channel",
                detail=detail,
            )
        if res.outcome == "exited" and verdict is not None and verdict.get("ok") is True:
            if res.judge_exit == 0:
                return Outcome(passed=True, score=1.0, reason="passed", detail=detail)
            return Outcome(
                passed=False,
                score=0.0,
                reason=f"sandbox error: the judge exited with status {res.judge_exit} after the tests passed",
                detail=detail,
            )
        reason = res.abnormal()
        if reason is None:
            if verdict is not None and verdict.get("kind") == "gone":
                reason = _gone(res)
            elif verdict is not None and verdict.get("ok") is False:
                reason = str(verdict.get("reason") or "the tests failed")
            else:
                reason = f"sandbox error: the judge ended without a verdict (status {res.judge_exit})"
        return Outcome(passed=False, score=0.0, reason=reason, detail=detail, starved=res.starved_timeout())
