"""Event log throughput: 200,000 events of about 1 KB from 50 concurrent tasks, read back.

Baseline, in the same run: raw ``sqlite3`` ``executemany`` of the same rows into the
same schema with the same durability settings (WAL, synchronous=FULL), committed in
transactions of 1,000 rows, and a raw cursor read of every row. Memory while reading
is the peak of Python allocations (tracemalloc) at two log sizes: flat means reads
are batched.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.events import SchedulePaused  # noqa: E402
from rollwatch.store.sqlite import PRAGMAS, SCHEMA, SQLiteEventStore  # noqa: E402

NOTE = "x" * 900


def raw_append(path: Path, rows: list[tuple[object, ...]]) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    for p in PRAGMAS:
        con.execute(p)
    con.executescript(SCHEMA)
    t = time.perf_counter()
    for i in range(0, len(rows), 1000):
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", rows[i : i + 1000])
        con.execute("COMMIT")
    took = time.perf_counter() - t
    con.close()
    return took


def raw_read(path: Path) -> tuple[float, int]:
    con = sqlite3.connect(path)
    t = time.perf_counter()
    n = 0
    for _row in con.execute("SELECT seq, id, stream, version, type, schema, at, data, hash FROM events ORDER BY seq"):
        n += 1
    took = time.perf_counter() - t
    con.close()
    return took, n


async def our_append(path: Path, total: int, tasks: int) -> float:
    async with SQLiteEventStore(path) as store:
        per = total // tasks
        t = time.perf_counter()

        async def writer(i: int) -> None:
            for j in range(per):
                await store.append(f"rollout-{i}-{j % 50}", [SchedulePaused(schedule=f"s{i}", note=NOTE)])

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(writer, i)
        return time.perf_counter() - t


async def our_read(path: Path, limit: int | None = None) -> tuple[float, int, int]:
    async with SQLiteEventStore(path) as store:
        tracemalloc.start()
        t = time.perf_counter()
        n = 0
        async for ev in store.read(until=limit, batch=1000):
            n += 1
            _ = ev.data_json
        took = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return took, n, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--tasks", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        ours = Path(d) / "ours.db"
        print(f"appending {args.events} events of ~1 KB from {args.tasks} tasks...", file=sys.stderr)
        t_ours = anyio.run(our_append, ours, args.events, args.tasks)
        con = sqlite3.connect(ours)
        rows = con.execute("SELECT * FROM events ORDER BY seq").fetchall()
        con.close()
        size = sum(len(r[7]) for r in rows) / len(rows)
        print("raw sqlite3 executemany of the same rows...", file=sys.stderr)
        t_raw = raw_append(Path(d) / "raw.db", rows)
        del rows
        print("reading back...", file=sys.stderr)
        r_raw, n_raw = raw_read(Path(d) / "raw.db")
        r_ours, n_ours, peak_full = anyio.run(our_read, ours)
        _, n_tenth, peak_tenth = anyio.run(our_read, ours, args.events // 10)
        assert n_raw == n_ours == args.events
        a_ours, a_raw = args.events / t_ours, args.events / t_raw
        rd_ours, rd_raw = args.events / r_ours, args.events / r_raw
        print(f"store append: {a_ours:,.0f} events/s (event data {size:.0f} B), raw executemany {a_raw:,.0f} events/s, ratio {a_ours / a_raw:.2f}x (floor 0.5x)")
        print(f"store read:   {rd_ours:,.0f} events/s, raw cursor {rd_raw:,.0f} events/s, ratio {rd_ours / rd_raw:.2f}x (floor 0.5x)")
        print(f"store read peak memory: {peak_tenth / 1e6:.1f} MB for {n_tenth:,} events, {peak_full / 1e6:.1f} MB for {n_ours:,} events (ratio {peak_full / max(peak_tenth, 1):.2f}x for 10x the log)")


if __name__ == "__main__":
    main()
