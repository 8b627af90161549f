"""The ``stdio`` scorer: each case's input on stdin, the output compared here.

Every case runs in a fresh child of the zygote with the problem's timeout. The
output is compared outside the sandbox (``compare.py``): exactly, or token by token
within the problem's ``float_tolerance``. The reason names the first failing case;
the score is the share of cases passed. After a timeout the remaining cases are
not run (each would likely cost the whole timeout again) and count as failed.

Once a case has failed, the verdict is decided and the remaining cases only fill in the
score: together they get one more timeout, not one each (a wrong answer that waited just under
the limit in every case held its slot for cases x limit); a case cut short by it, and any
after it, count as failed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from rollwatch.problems import Problem
from rollwatch.scoring.base import Outcome, Sandbox, Scorer
from rollwatch.scoring.compare import compare_output


class StdioScorer(Scorer):
    """Runs the program on every case and compares its output."""

    kind: ClassVar[str] = "stdio"

    async def score(self, problem: Problem, code: str, sandbox: Sandbox) -> Outcome:
        """Judge ``code`` on every case of ``problem``."""
        passed = 0
        first: tuple[str, dict[str, Any]] | None = None
        starved = False
        total_ms = 0.0
        rest_s: float | None = None  # once a case failed: what the cases left may take together
        for i, case in enumerate(problem.cases, 1):
            request = self.request(problem, "program", code, stdin=case.input, keep_stdout=True)
            # Room for the expected output however large, whatever the general limit.
            limit = max(request.output_limit, 2 * len(case.output) + 65536)
            request = dataclasses.replace(request, output_limit=limit)
            if rest_s is not None:
                if rest_s <= 0:
                    break
                if rest_s < request.timeout:
                    request = dataclasses.replace(
                        request, timeout=rest_s, limits=self.settings.limits(rest_s)
                    )
            res = await sandbox.run(request)
            total_ms += res.wall_ms
            if rest_s is not None:
                rest_s -= res.wall_ms / 1000
            why = res.abnormal()
            diff = None
            if why is None and res.verdict_forged:
                why = "sandbox error: something other than the harness wrote on the verdict channel"
            if why is None and res.verdict is not None and res.verdict.get("kind") in ("syntax", "exception"):
                why = str(res.verdict.get("reason"))
            if why is None and res.exit_code != 0:
                why = f"exit status {res.exit_code}"
            if why is None:
                diff = compare_output(res.stdout, case.output, problem.float_tolerance)
                if diff is None:
                    passed += 1
                    continue
                why = "wrong answer"
            if first is None:
                detail = res.detail()
                if diff is not None:
                    detail["difference"] = diff
                first = (f"{why} on case {i} ({case.name})", detail)
                starved = res.starved_timeout()
                rest_s = request.timeout
            if why.startswith(("timeout", "syntax error", "sandbox lost", "sandbox error")):
                break
        n = len(problem.cases)
        summary: dict[str, Any] = {"cases": n, "cases_passed": passed, "run_ms": round(total_ms, 3)}
        if first is None:
            return Outcome(passed=True, score=1.0, reason="passed", detail=summary)
        reason, detail = first
        return Outcome(
            passed=False,
            score=passed / n if n else 0.0,
            reason=reason,
            detail={**summary, "first_failure": detail},
            starved=starved,
        )
