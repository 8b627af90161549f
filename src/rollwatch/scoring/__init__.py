"""Scoring: extract the code from an answer and judge it in the sandbox.

* ``python-function`` (HumanEval semantics): the prompt's imports, the candidate, the
  tests, ``check(entry_point)``. The verdict is the nonce the harness writes only
  after ``check`` returned (``os._exit(0)`` before the tests scores as failed), and
  every value the candidate returns must be of an exact built-in type (an object
  whose ``__eq__`` always says True scores as failed). Builtins are restored after
  the candidate's code ran, so it cannot replace ``abs`` or ``isinstance`` for the tests.
* ``stdio``: each case's input on stdin; the output is compared here, outside the
  sandbox: exactly (modulo trailing whitespace), or token by token with a float
  tolerance.
* ``command``: the operator's Python checker runs in the sandbox with the solution
  file's path as its argument; exit status 0 passes, or a last stdout line of JSON
  ``{"passed": bool, "score": float}`` decides.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rollwatch.config import ScoringConfig
from rollwatch.extract import extract_code
from rollwatch.problems import Problem, ProblemSet
from rollwatch.scoring.sandbox import Limits, SandboxPool, detect_isolation

__all__ = ["Score", "ScoringPool", "ScoringSettings", "check_references", "detect_isolation", "settings_from_config"]


@dataclass(frozen=True)
class ScoringSettings:
    """How scoring runs: parallel workers, isolation policy, per-sample memory."""

    workers: int | None = None
    require_isolation: bool = False
    memory_mb: int = 1024
    timeout: float = 10.0


def settings_from_config(cfg: ScoringConfig) -> ScoringSettings:
    """The ``[scoring]`` table as settings."""
    return ScoringSettings(cfg.workers, cfg.require_isolation, cfg.memory_mb, cfg.timeout)


@dataclass(frozen=True)
class Score:
    """The verdict on one answer."""

    passed: bool
    score: float
    scorer: str
    reason: str
    extraction: str = ""
    duration_ms: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "score": self.score, "scorer": self.scorer, "reason": self.reason,
            "extraction": self.extraction, "duration_ms": self.duration_ms, "detail": self.detail,
        }


_GUARD = '''
def {g}(f, _type=type, _ok=(int, float, str, bool, type(None), bytes, complex), _seq=(list, tuple, set, frozenset), _id=id):
    def check(v, depth=0):
        t = _type(v)
        if t in _ok:
            return
        if depth > 50:
            raise TypeError("rollwatch: return value nested too deeply")
        if t in _seq:
            for x in v:
                check(x, depth + 1)
            return
        if t is dict:
            for k, x in v.items():
                check(k, depth + 1)
                check(x, depth + 1)
            return
        raise TypeError("rollwatch: the candidate returned a " + t.__name__ + ", not a built-in value")
    def guarded(*a, **k):
        r = f(*a, **k)
        check(r)
        return r
    return guarded
import builtins as {b}
{snap} = dict({b}.__dict__)
'''


def _prompt_imports(prompt: str) -> str:
    return "\n".join(ln for ln in prompt.splitlines() if ln.startswith(("import ", "from ")))


def _python_function_program(problem: Problem, code: str) -> str:
    tag = secrets.token_hex(6)
    g, b, snap = f"_rw_guard_{tag}", f"_rw_builtins_{tag}", f"_rw_snapshot_{tag}"
    return "\n".join([
        _GUARD.format(g=g, b=b, snap=snap),
        _prompt_imports(problem.prompt),
        code,
        # Undo whatever the candidate did to the builtins before the tests use them.
        f"{b}.__dict__.clear(); {b}.__dict__.update({snap})",
        problem.tests,
        f"check({g}({problem.entry_point}))",
        "",
    ])


def _norm_lines(text: str) -> list[str]:
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _same_output(got: str, want: str, tol: float | None) -> bool:
    if tol is None:
        return _norm_lines(got) == _norm_lines(want)
    a, b = got.split(), want.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not (math.isfinite(fx) and math.isfinite(fy)):
            return False
        if abs(fx - fy) > tol * max(1.0, abs(fy)):
            return False
    return True


def _failure_reason(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"sandbox error: {r['error']}"
    if r.get("timed_out"):
        return "timeout"
    sig = r.get("signal")
    if sig is not None:
        if sig == 24:
            return "cpu time limit"
        if sig == 9:
            return "killed (cpu time or memory limit)"
        return f"killed by signal {sig}"
    err = (r.get("stderr") or "").strip()
    last = err.splitlines()[-1] if err else ""
    if "MemoryError" in last:
        return "memory limit"
    if "File too large" in err or r.get("stdout_truncated"):
        return "output limit"
    if "RecursionError" in last:
        return "recursion limit"
    if r.get("exit") == 0 and not r.get("completed"):
        return "exited before the tests finished"
    if last:
        return f"exception: {last[:300]}"
    return f"exit status {r.get('exit')}"


class ScoringPool:
    """Scores answers on a pool of sandboxed zygotes; use with ``async with``."""

    def __init__(self, settings: ScoringSettings | None = None, *, isolation: str | None = None) -> None:
        self.settings = settings or ScoringSettings()
        self.workers = self.settings.workers or os.cpu_count() or 2
        self._pool = SandboxPool(self.workers, require_isolation=self.settings.require_isolation, isolation=isolation)
        self.isolation = self._pool.isolation

    async def __aenter__(self) -> ScoringPool:
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.__aexit__(*exc)

    def _limits(self, problem: Problem, out_cap: int = 1 << 16) -> Limits:
        timeout = problem.timeout or self.settings.timeout
        return Limits(timeout=timeout, cpu_s=max(1, math.ceil(timeout)), memory_bytes=self.settings.memory_mb << 20, out_cap=out_cap)

    async def score(self, problem: Problem, text: str) -> Score:
        """Judge ``text`` (a model's whole answer) against ``problem``."""
        start = time.perf_counter()
        ex = extract_code(text, problem.entry_point)
        if not ex.code.strip():
            return Score(False, 0.0, problem.scorer, "no code found in the answer", ex.method)
        if problem.scorer == "python-function":
            r = await self._pool.run(_python_function_program(problem, ex.code), "", self._limits(problem))
            ok = bool(r.get("completed")) and r.get("exit") == 0
            reason = "passed" if ok else _failure_reason(r)
            detail = {k: r.get(k) for k in ("wall_ms", "cpu_s", "exit", "signal") if r.get(k) is not None}
            return Score(ok, 1.0 if ok else 0.0, problem.scorer, reason, ex.method,
                         round((time.perf_counter() - start) * 1000, 3), detail)
        if problem.scorer == "stdio":
            passed = 0
            first_fail = ""
            for i, case in enumerate(problem.cases, start=1):
                r = await self._pool.run(ex.code, case.input, self._limits(problem, out_cap=max(1 << 16, 4 * len(case.output))))
                if r.get("exit") == 0 and not r.get("timed_out") and not r.get("stdout_truncated") and _same_output(
                    r.get("stdout", ""), case.output, problem.float_tolerance
                ):
                    passed += 1
                elif not first_fail:
                    first_fail = f"wrong answer on case {i} ({case.name})" if r.get("exit") == 0 and not r.get("timed_out") else f"case {i} ({case.name}): {_failure_reason(r)}"
                    # Further cases cannot change a failed verdict; skip their cost.
                    break
            n = len(problem.cases)
            ok = passed == n
            return Score(ok, passed / n if n else 0.0, problem.scorer, "passed" if ok else first_fail, ex.method,
                         round((time.perf_counter() - start) * 1000, 3), {"cases": n, "cases_passed": passed})
        return await self._command(problem, ex.code, ex.method, start)

    async def _command(self, problem: Problem, code: str, method: str, start: float) -> Score:
        checker_path = next((c for c in problem.command if c.endswith(".py")), None)
        if checker_path is None:
            return Score(False, 0.0, "command", "the command scorer needs a Python checker (command = [\"python3\", \"check.py\"])", method)
        with open(checker_path, encoding="utf-8") as f:
            checker = f.read()
        program = (
            "import sys, os\n"
            f"open('solution.py', 'w').write({code!r})\n"
            f"sys.argv = [{os.path.basename(checker_path)!r}, os.path.abspath('solution.py')]\n"
            f"exec(compile({checker!r}, {os.path.basename(checker_path)!r}, 'exec'), {{'__name__': '__main__'}})\n"
        )
        r = await self._pool.run(program, "", self._limits(problem))
        out_lines = [ln for ln in (r.get("stdout") or "").splitlines() if ln.strip()]
        verdict: dict[str, Any] | None = None
        if out_lines:
            import json

            try:
                v = json.loads(out_lines[-1])
                verdict = v if isinstance(v, dict) else None
            except ValueError:
                verdict = None
        ms = round((time.perf_counter() - start) * 1000, 3)
        if r.get("timed_out") or r.get("signal") is not None:
            return Score(False, 0.0, "command", _failure_reason(r), method, ms)
        if verdict is not None and "passed" in verdict:
            ok = bool(verdict["passed"]) and r.get("exit") == 0
            sc = float(verdict.get("score", 1.0 if ok else 0.0))
            return Score(ok, sc, "command", "passed" if ok else str(verdict.get("reason", "the checker said no")), method, ms, {"checker": verdict})
        ok = r.get("exit") == 0 and bool(r.get("completed"))
        return Score(ok, 1.0 if ok else 0.0, "command", "passed" if ok else _failure_reason(r), method, ms)


async def check_references(problem_set: ProblemSet, pool: ScoringPool) -> list[tuple[str, str]]:
    """Every problem whose reference solution does not pass its own scorer: (id, why)."""
    import anyio

    failures: list[tuple[str, str]] = []

    async def one(p: Problem) -> None:
        if not p.reference_solution:
            failures.append((p.id, "no reference solution"))
            return
        text = f"```python\n{p.reference_solution}\n```"
        s = await pool.score(p, text)
        if not s.passed:
            failures.append((p.id, s.reason))

    async with anyio.create_task_group() as tg:
        for p in problem_set.problems:
            tg.start_soon(one, p)
    return sorted(failures)
