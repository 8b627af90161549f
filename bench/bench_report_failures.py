"""What counting failures by cause adds to the report (issue 17's honest runs).

Fills the runs read model (``runs``, ``rollouts``) of a projections file directly with
N rollouts shaped like a year of runs (20 finished runs of 2 models over 200
problems; 30% pass; the failures: wrong answers, timeouts, answers without code,
scorer errors, final provider errors, and a budget cut), then times, in this process
and in the same run:

* baseline: the report by model as it was (``build_report`` without the failures:
  the cells' ``GROUP BY`` and the estimators);
* with: ``build_report`` as it is now (the failures by cause added to each row).

Prints the best of 5 of each and the ratio with/baseline, per size
(``BENCH_REPORT_SIZES``, default ``50000,200000``).

    python bench/bench_report_failures.py
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.report import views

RUNS, MODELS, PROBLEMS = 20, ("m1", "m2"), 200
REASONS = (
    ("passed", 30),
    ("AssertionError: assert 41 == 42", 50),
    ("timeout", 8),
    ("no code found", 8),
    ("scorer error: KeyError: 'x'", 1),
)


def fill(path: Path, n: int) -> None:
    """``n`` rollouts in the runs read model of the projections file ``path``."""
    rng = random.Random(17)
    per_run = n // RUNS
    samples = max(1, per_run // (len(MODELS) * PROBLEMS))
    planned = samples * len(MODELS) * PROBLEMS
    reasons = [r for r, w in REASONS for _ in range(w)]
    con = sqlite3.connect(path)
    with con:
        for r in range(RUNS):
            run_id = f"run-{r:03d}"
            budget_cut = r % 5 == 4  # one run in five ends by its budget, 5% never asked
            asked = planned - (planned // 20 if budget_cut else 0)
            failures = {"server_error": 0}
            rows = []
            for i in range(asked):
                model = MODELS[i % len(MODELS)]
                problem = f"p{(i // len(MODELS)) % PROBLEMS}"
                if rng.random() < 0.01:
                    state, reason, passed, kind = "failed", None, None, "server_error"
                    failures["server_error"] += 1
                else:
                    state, reason, kind = "scored", rng.choice(reasons), None
                    passed = int(reason == "passed")
                rows.append(
                    (
                        f"{run_id}-{i}",
                        run_id,
                        "fake",
                        model,
                        problem,
                        "sha256:x",
                        i,
                        1,
                        state,
                        "t",
                        "t",
                        i,
                        0.001,
                        kind,
                        passed,
                        float(passed or 0),
                        "t",
                        i,
                        reason,
                        "sha256:x",
                        model,
                    )
                )
            con.executemany(f"INSERT INTO rollouts VALUES ({','.join('?' * 21)})", rows)
            if budget_cut:
                failures["budget_exhausted"] = planned - asked
            summary = {
                "planned": planned,
                "failures": failures,
                "message": "budget_exhausted: budget $1.00 reached" if budget_cut else "",
            }
            con.execute(
                "INSERT INTO runs (run_id, schedule, provider, models, problem_set, started_seq, started_at,"
                " finished_at, status, passed, cost_usd, summary) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    "s",
                    "fake",
                    json.dumps(MODELS),
                    "set",
                    r,
                    f"2026-01-{r + 1:02d}",
                    "t",
                    "partial",
                    0,
                    0.0,
                    json.dumps(summary),
                ),
            )
    con.close()


async def best(fn, rounds: int = 5) -> float:  # type: ignore[no-untyped-def]
    out = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn()
        out = min(out, time.perf_counter() - t0)
    return out


async def measure(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "projections.db"
        async with ProjectionDB(path, default_projections()):
            pass
        fill(path, n)
        async with ProjectionDB(path, default_projections()) as pdb:
            real = views._with_failures

            async def without(_pdb, rows, _by, _cells):  # type: ignore[no-untyped-def]
                return list(rows)

            async def baseline() -> None:
                views._with_failures = without  # type: ignore[assignment]
                try:
                    await views.build_report(pdb)
                finally:
                    views._with_failures = real  # type: ignore[assignment]

            async def with_failures() -> None:
                await views.build_report(pdb)

            row = (await views.build_report(pdb)).rows[0]
            base = await best(baseline)
            now = await best(with_failures)
            print(
                f"{n:>8,} rollouts: report by model {base * 1000:.0f} ms before, {now * 1000:.0f} ms with"
                f" failures by cause: {now / base:.2f}x  ({row.model}: model {row.model_failures}, infra {row.infra_failures})"
            )


def main() -> None:
    sizes = [int(x) for x in os.environ.get("BENCH_REPORT_SIZES", "50000,200000").split(",")]
    for n in sizes:
        anyio.run(measure, n)


if __name__ == "__main__":
    main()
