"""The ``command`` scorer: the operator's checker judges the solution.

Design (the checker is trusted, the candidate is not): the checker runs on the host,
outside the sandbox, with the path of the solution file as its last argument, the
problem's folder as its working folder, a small environment (no API keys) and
``checker_timeout`` for its whole run, after which its process group is killed.
It never executes the solution itself: it runs it through ``$ROLLWATCH_RUN
SOLUTION`` (see ``inside/oneshot.py``), which starts a fresh sandbox of the pool's kind
and slot uid for every run, with the problem's ``timeout``. So the candidate cannot
touch the checker, its files or its verdict.

The verdict: when the checker's stdout (or its last non-empty line) is a JSON object
with ``score`` and/or ``passed``, that object decides (``passed`` defaults to
``score >= 1``; an optional ``reason`` explains a failure). Otherwise the exit
status decides: 0 passes; anything else fails with the checker's last line of
output as the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import anyio
from anyio.abc import ByteReceiveStream

from rollwatch.problems import Problem
from rollwatch.scoring.base import Outcome, Sandbox, Scorer
from rollwatch.scoring.sandbox import ONESHOT, SANDBOX_ENV, sandbox_python

_CHECKER_OUTPUT = 1024 * 1024
_OUR_WORDS = ("scorer error", "sandbox", "checker")
"""How rollwatch's own failures start (report/failures.py): never the opening of a checker's reason."""
_CHECKER_FAULTS = ("score is not a number",)
"""What follows "checker: " in a reason of ours (report/failures.py: the checker's fault, not the
model's): never what follows it in the reason quoting a checker's last line."""


async def _read_capped(stream: ByteReceiveStream | None, sink: bytearray) -> None:
    """Read ``stream`` to its end, keeping at most ``_CHECKER_OUTPUT`` bytes."""
    if stream is None:
        return
    try:
        async for chunk in stream:
            room = _CHECKER_OUTPUT - len(sink)
            if room > 0:
                sink.extend(chunk[:room])
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


def _verdict(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    candidates = [text]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines:
        candidates.append(lines[-1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except (ValueError, RecursionError):  # the checker may echo the candidate's output
            continue
        if isinstance(obj, dict) and ("score" in obj or "passed" in obj):
            return obj
    return None


def _run_seconds(path: str) -> float:
    """The seconds the program's finished runs took, as ``$ROLLWATCH_RUN`` logged them."""
    try:
        with open(path, encoding="ascii") as f:
            return sum(float(line) for line in f if line.strip())
    except (OSError, ValueError):
        return 0.0


class CommandScorer(Scorer):
    """Runs the problem's checker on the solution file."""

    kind: ClassVar[str] = "command"

    def helper(self, sandbox: Sandbox) -> str:
        """The ``$ROLLWATCH_RUN`` executable for ``sandbox``'s slot, written once."""
        slot = getattr(sandbox, "slot", 0)
        path = Path(self.helper_dir) / f"run-slot{slot}"
        if not path.exists():
            spec = {
                "argv": sandbox.oneshot_argv(),
                "env": SANDBOX_ENV,
                "limits": self.settings.limits(self.settings.timeout),
                "output_limit": self.settings.output_limit_kb * 1024,
                "timeout": self.settings.timeout,
            }
            spec_path = path.with_suffix(".json")
            spec_path.write_text(json.dumps(spec))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(f'#!/bin/sh\nexec {sandbox_python()} -I -B {ONESHOT} {spec_path} "$@"\n')
            tmp.chmod(0o755)
            tmp.rename(path)
        return str(path)

    def checker_timeout(self, problem: Problem) -> float:
        return problem.checker_timeout or max(60.0, 10 * self.timeout(problem))

    async def score(self, problem: Problem, code: str, sandbox: Sandbox) -> Outcome:
        """Write the solution, run the checker, read its verdict."""
        work = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="rollwatch-check-"))
        try:
            solution = Path(work) / "solution.py"
            await anyio.Path(solution).write_text(code, encoding="utf-8")
            helper = await anyio.to_thread.run_sync(self.helper, sandbox)
            return await self._check(problem, str(solution), work, helper)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))

    async def _check(self, problem: Problem, solution: str, work: str, helper: str) -> Outcome:
        env = {
            **SANDBOX_ENV,
            # The checker is trusted and may use the daemon's own interpreter ("python3").
            "PATH": os.path.dirname(sys.executable) + ":" + SANDBOX_ENV["PATH"],
            "HOME": work,
            "TMPDIR": work,
            "ROLLWATCH_SOLUTION": solution,
            "ROLLWATCH_RUN": helper,
            "ROLLWATCH_TIMEOUT": str(self.timeout(problem)),
            "ROLLWATCH_PROBLEM_DIR": str(problem.folder or ""),
            "ROLLWATCH_RUN_TIMES": os.path.join(work, "run-times"),
        }
        argv = [*problem.command, solution]
        stdout, stderr = bytearray(), bytearray()
        budget = self.checker_timeout(problem)
        try:
            proc = await anyio.open_process(
                argv, stdin=subprocess.DEVNULL, cwd=problem.folder, env=env, start_new_session=True
            )
        except OSError as e:
            return Outcome(
                passed=False, score=0.0, reason=f"checker could not start: {e}", detail={"argv": argv}
            )
        timed_out = False
        try:
            with anyio.move_on_after(budget) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_read_capped, proc.stdout, stdout)
                    tg.start_soon(_read_capped, proc.stderr, stderr)
                    await proc.wait()
            timed_out = scope.cancelled_caught
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the checker's helpers and their sandboxes
                await proc.aclose()
        out = stdout.decode("utf-8", "replace")
        err = stderr.decode("utf-8", "replace")
        detail: dict[str, Any] = {"checker_exit": proc.returncode}
        if err.strip():
            detail["checker_stderr_tail"] = err[-2000:]
        if out.strip():
            detail["checker_stdout_tail"] = out[-2000:]
        if timed_out:
            ran = await anyio.to_thread.run_sync(_run_seconds, os.path.join(work, "run-times"))
            detail["program_runs_s"] = round(ran, 3)
            if ran >= budget / 2:
                # The program's runs (each within its own limit) ate the checker's time: a slow
                # answer, the model's, not a checker that hung (ours).
                reason = f"timeout: the program's runs took {ran:.1f}s of the checker's {budget:g}s"
                return Outcome(passed=False, score=0.0, reason=reason, detail=detail)
            return Outcome(passed=False, score=0.0, reason=f"checker timeout ({budget:g}s)", detail=detail)
        verdict = _verdict(out)
        code = proc.returncode
        if verdict is not None:
            try:
                score = min(1.0, max(0.0, float(verdict.get("score", 1.0 if verdict.get("passed") else 0.0))))
            except (TypeError, ValueError, OverflowError):
                return Outcome(
                    passed=False, score=0.0, reason="checker: score is not a number", detail=detail
                )
            passed = bool(verdict["passed"]) if "passed" in verdict else score >= 1.0
            detail["checker"] = verdict
            if passed and code != 0:
                # Likely the program's own JSON, echoed as the checker's last line: no credit.
                return Outcome(
                    passed=False, score=0.0, reason=f"checker said passed but exited {code}", detail=detail
                )
            why = verdict.get("reason")
            # Only text or a number: the checker may echo the candidate's output, nested at will.
            why = str(why)[:1000] if isinstance(why, str | int | float) and why != "" else None
            if why is not None and why.startswith(_OUR_WORDS):
                # Echoed, a program's "sandbox lost" would count its failure as ours.
                why = "the checker's verdict: " + why
            reason = "passed" if passed else why or "the checker's verdict: not passed"
            return Outcome(passed=passed, score=score, reason=reason, detail=detail)
        if code == 0:
            return Outcome(passed=True, score=1.0, reason="passed", detail=detail)
        last = next((ln.strip() for ln in reversed((out + "\n" + err).splitlines()) if ln.strip()), "")
        if code is not None and code < 0:
            reason = f"checker killed by signal {signal.Signals(-code).name}"
        else:
            if last.startswith(_CHECKER_FAULTS):
                # The checker's last line may be the program's output: "checker: score is not a
                # number" would count a wrong answer as our checker's fault (re-scored, not the model's).
                last = "the checker's last line: " + last
            reason = f"checker: {last[:300]}" if last else f"checker exit status {code}"
        return Outcome(passed=False, score=0.0, reason=reason, detail=detail)
