"""The operator's console on a big log: every ``/ops/`` page's answer time against baselines.

Builds a log through the store API with ``bench_scale``'s builder (the event shapes a
real run makes, 6 events and about 7.0 KB per rollout; 1,000 rollouts a run, 50
problems, 10 models) of ``BENCH_CONSOLE_EVENTS`` events (default 200,000, as ``make
bench`` runs every bench; ``BENCH_CONSOLE_EVENTS=1000000`` for the issue's million, about
15 minutes to build on two busy cores), starts a real ``rollwatch serve`` on it
(projections built before the clock starts), then times each console page over
loopback HTTP, best and median of ``BENCH_CONSOLE_REPEAT`` (7) requests, against two
baselines measured in the same run:

* ``GET /healthz`` on the same server (an HTTP round trip that reads nothing), and
* a bare ``sqlite3`` ``SELECT`` in this process on the projections file (the rows the
  runs page shows: the newest 200 runs).

A page that scans the log (or a whole projection) grows with the log; one that reads
projections by key stays a few times the /healthz round trip whatever the size.
``BENCH_CONSOLE_DIR=DIR`` keeps the log there and reuses it on the next run (building
a million events takes minutes); ``BENCH_TMP`` picks where the temporary one goes.

    python bench/bench_console.py
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import (  # noqa: E402
    EVENTS_PER_ROLLOUT,
    PROBLEMS,
    ROLLOUTS_PER_RUN,
    Served,
    cli,
    free_port,
    grow,
    write_config,
)
from rollwatch.publication.keys import new_key  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best, median) seconds of ``fn`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    size = int(os.environ.get("BENCH_CONSOLE_EVENTS", "200000"))
    repeat = int(os.environ.get("BENCH_CONSOLE_REPEAT", "7"))
    from rollwatch.log import configure_logging

    configure_logging("warning", stream=sys.stderr)
    with ExitStack() as stack:
        keep = os.environ.get("BENCH_CONSOLE_DIR")
        if keep:
            d = Path(keep)
            d.mkdir(parents=True, exist_ok=True)
        else:
            d = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP"))))
        db = d / "events.db"
        port = free_port()
        cfg = write_config(d, db, port, configured=True)
        rollouts = size // EVENTS_PER_ROLLOUT
        built = d / "built"
        if not (built.exists() and built.read_text() == str(rollouts)):
            for p in d.glob("*.db*"):
                p.unlink()
            t = time.perf_counter()
            head = anyio.run(grow, db, 0, rollouts, new_key())
            built.write_text(str(rollouts))
            print(f"built {head:,} events in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        rebuild = cli(cfg, "rebuild")
        print(f"projections rebuilt in {rebuild:.0f} s", file=sys.stderr, flush=True)

        runs = rollouts // ROLLOUTS_PER_RUN
        run_id = f"run-{runs // 2:05d}"
        rollout_id = f"{run_id}-{(runs // 2) * ROLLOUTS_PER_RUN + 7:08d}"
        pages = [
            "/ops/",
            f"/ops/runs/{run_id}",
            f"/ops/rollouts/{rollout_id}",
            f"/ops/rollouts/{rollout_id}/proof",
            "/ops/schedules",
            "/ops/subscribers",
            "/ops/problems",
            f"/ops/problems/{PROBLEMS[7]}",
            "/ops/progress",
        ]
        served = Served(cfg, port, d / "serve.log")
        try:
            served.poll_health(True)
            with httpx.Client(base_url=served.base, timeout=600) as c:
                # the proof bundle needs a signed checkpoint (the first is signed once the
                # Merkle tree has caught up with the log)
                deadline = time.monotonic() + 3600
                while c.get("/public/checkpoint").status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError("no signed checkpoint within the hour")
                    time.sleep(0.2)
                head = int(c.get("/ops/progress").json()["head"])

                def get(path: str) -> Callable[[], object]:
                    def go() -> object:
                        r = c.get(path)
                        r.raise_for_status()
                        return r

                    return go

                conn = sqlite3.connect(f"file:{d / 'projections.db'}?mode=ro", uri=True)

                def bare() -> object:
                    return conn.execute(
                        "SELECT run_id, status, passed, cost_usd FROM runs ORDER BY started_seq DESC LIMIT 200"
                    ).fetchall()

                hz = timed(get("/healthz"), repeat)
                sq = timed(bare, repeat)
                print(f"console pages on a log of {head:,} events ({runs} runs, {rollouts:,} rollouts);")
                print(f"best and median of {repeat}; x = best / best of the baseline")
                print(f"{'baseline GET /healthz':<44} {hz[0] * 1000:8.1f} ms {hz[1] * 1000:8.1f} ms")
                print(
                    f"{'baseline bare SELECT (newest 200 runs)':<44} {sq[0] * 1000:8.1f} ms {sq[1] * 1000:8.1f} ms"
                )
                worst = 0.0
                for path in pages:
                    first = timed(get(path), 1)[0]
                    best, med = timed(get(path), repeat)
                    worst = max(worst, med)
                    print(
                        f"{path[:44]:<44} {best * 1000:8.1f} ms {med * 1000:8.1f} ms"
                        f"  first {first * 1000:7.1f} ms  {best / hz[0]:6.1f}x /healthz"
                    )
                conn.close()
                print(f"slowest page (median): {worst * 1000:.0f} ms (target: well under 1000 ms)")
        finally:
            served.stop()


if __name__ == "__main__":
    main()
