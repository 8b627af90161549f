"""The scrub's cost: how long a full pass takes, and what it costs the appends.

1. Pass time: a real log of 10⁵ and 10⁶ small events (appended through the store)
   with its Merkle tree; one pass of the scrub as the daemon runs it
   (``rollwatch.integrity.scrub.scrub_pass``: a worker process at nice 19 that reads
   the log and the tree read-only and checks every chain hash, every leaf and every
   checkpoint), best of ``--passes``.
2. Appends: bench_integrity's workload (events of about 1 KB from 50 concurrent
   tasks, 100 per call, the tree kept current by its worker process) with nothing
   else running, and with scrub passes over the 10⁶-event log running back to back
   the whole time (the worst case: a daemon scrubs once per ``scrub_interval``).
   Rounds alternate, the best of each counts. Floor: with the scrub ≥ 0.9× without.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_integrity import append_round, build_log
from rollwatch.integrity.scrub import ScrubTarget, scrub_pass
from rollwatch.integrity.tree import MerkleTree


async def pass_time(target: ScrubTarget, passes: int) -> tuple[int, float]:
    best = float("inf")
    events = 0
    for _ in range(passes):
        events, took = await scrub_pass(target)
        best = min(best, took)
    return events, best


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000, help="events per append round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--big", type=int, default=1_000_000, help="events in the scrubbed log")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        d = Path(tmp)
        print(f"appending a log of {args.big:,} small events and its tree...", file=sys.stderr)
        store = await build_log(d, args.big)
        await store.__aexit__(None, None, None)
        for n in sorted({args.big // 10, args.big}):
            tree_file = d / f"tree{n}.db"
            async with MerkleTree(tree_file) as tree:
                from rollwatch.store.sqlite import SQLiteEventStore

                async with SQLiteEventStore(d / "big.db", read_only=True) as ro:
                    await tree.catch_up(ro, until=n)
            if n == args.big:
                target = ScrubTarget(f"sqlite:{d / 'big.db'}", tree_file, None, None)
                events, took = await pass_time(target, args.passes)
                print(
                    f"scrub pass: {events:,} events in {took:.2f} s ({events / took:,.0f} events/s), "
                    f"best of {args.passes}"
                )

        async def scrub_loop(stop: anyio.Event) -> None:
            while not stop.is_set():
                await scrub_pass(target)

        runs: dict[str, list[float]] = {"alone": [], "scrubbing": []}
        for r in range(args.rounds):
            for mode, results in runs.items():
                stop = anyio.Event()
                async with anyio.create_task_group() as tg:
                    if mode == "scrubbing":
                        tg.start_soon(scrub_loop, stop)
                        await anyio.sleep(0.5)  # the pass's process is up and reading
                    t, _ = await append_round(d, f"{mode}{r}", args.events, 50, 100, "worker")
                    results.append(t)
                    stop.set()
        rate = {mode: args.events / min(ts) for mode, ts in runs.items()}
        print(
            f"append with the tree (worker): {rate['alone']:,.0f} events/s alone; "
            f"{rate['scrubbing']:,.0f} events/s while scrubbing {args.big:,} events back to back, "
            f"ratio {rate['scrubbing'] / rate['alone']:.2f}x (floor 0.90x)"
        )
        print(
            "  rounds (s): "
            + "; ".join(f"{mode} " + ", ".join(f"{t:.2f}" for t in ts) for mode, ts in runs.items())
        )


if __name__ == "__main__":
    anyio.run(main)
