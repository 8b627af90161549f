"""Event log throughput: 200,000 events of about 1 KB from 50 concurrent tasks, read back.

Baseline, in the same run: raw ``sqlite3`` ``executemany`` of the same rows into the
same schema with the same durability settings (WAL, synchronous=FULL), committed in
transactions of 1,000 rows, and a raw cursor read of every row (ours: ``read_batches``
with its default page of 1,000 events). Memory while reading is the peak of Python
allocations (tracemalloc) at two log sizes: flat means reads are batched.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.events import SchedulePaused
from rollwatch.store.sqlite import PRAGMAS, SCHEMA, SQLiteEventStore

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


def raw_append_events(path: Path, total: int) -> float:
    """A minimal writer without chain or group commit: it still has to turn each event into
    a row (id, time, JSON data), as any writer of this log would."""
    import json
    import uuid
    from datetime import UTC, datetime

    con = sqlite3.connect(path, isolation_level=None)
    for p in PRAGMAS:
        con.execute(p)
    con.executescript(SCHEMA)
    t = time.perf_counter()
    seq = 0
    for _ in range(0, total, 1000):
        con.execute("BEGIN IMMEDIATE")
        rows = []
        for _k in range(1000):
            seq += 1
            e = SchedulePaused(schedule="s", note=NOTE)
            at = datetime.now(UTC).isoformat()
            rows.append(
                (
                    seq,
                    str(uuid.uuid4()),
                    f"run-{seq % 2500}",
                    seq,
                    e.TYPE,
                    e.SCHEMA,
                    at,
                    json.dumps(e.to_data()),
                    "0" * 64,
                )
            )
        con.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", rows)
        con.execute("COMMIT")
    took = time.perf_counter() - t
    con.close()
    return took


def raw_read(path: Path) -> tuple[float, int]:
    con = sqlite3.connect(path)
    t = time.perf_counter()
    n = 0
    for _row in con.execute(
        "SELECT seq, id, stream, version, type, schema, at, data, hash FROM events ORDER BY seq"
    ):
        n += 1
    took = time.perf_counter() - t
    con.close()
    return took, n


def raw_read_decoded(path: Path) -> tuple[float, int]:
    """The least a typed reader does: a cursor over the rows and json.loads of each data."""
    con = sqlite3.connect(path)
    t = time.perf_counter()
    n = 0
    loads = json.loads
    for row in con.execute(
        "SELECT seq, id, stream, version, type, schema, at, data, hash FROM events ORDER BY seq"
    ):
        loads(row[7])
        n += 1
    took = time.perf_counter() - t
    con.close()
    return took, n


async def our_read_typed(path: Path) -> tuple[float, int]:
    """Every event through the one read path: ``Recorded.event()`` (decoded, upcast, typed)."""
    async with SQLiteEventStore(path) as store:
        t = time.perf_counter()
        n = 0
        async for page in store.read_batches():
            for rec in page:
                rec.event()
                n += 1
        return time.perf_counter() - t, n


async def our_append(path: Path, total: int, tasks: int, batch: int) -> float:
    async with SQLiteEventStore(path) as store:
        per = total // tasks // batch
        t = time.perf_counter()

        async def writer(i: int) -> None:
            for j in range(per):
                events = [SchedulePaused(schedule=f"s{i}", note=NOTE) for _ in range(batch)]
                await store.append(f"run-{i}-{j % 50}", events)

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(writer, i)
        return time.perf_counter() - t


async def our_read(path: Path, limit: int | None = None) -> tuple[float, int, int]:
    async with SQLiteEventStore(path) as store:
        t = time.perf_counter()
        n = 0
        async for page in store.read_batches(until=limit):
            for _ev in page:
                n += 1
        took = time.perf_counter() - t
        # Memory in a second pass: tracemalloc slows allocation, so it is not timed.
        tracemalloc.start()
        async for _page in store.read_batches(until=limit):
            pass
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return took, n, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100, help="events per append call (a run flushes a batch)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        ours = Path(d) / "ours.db"
        print(
            f"appending {args.events} events of ~1 KB from {args.tasks} tasks, {args.batch} per call...",
            file=sys.stderr,
        )
        t_ours = anyio.run(our_append, ours, args.events, args.tasks, args.batch)
        single = Path(d) / "single.db"
        n_single = args.events // 10
        t_single = anyio.run(our_append, single, n_single, args.tasks, 1)
        con = sqlite3.connect(ours)
        rows = con.execute("SELECT * FROM events ORDER BY seq").fetchall()
        con.close()
        size = sum(len(r[7]) for r in rows) / len(rows)
        print("raw sqlite3 executemany of the same rows...", file=sys.stderr)
        t_raw = raw_append(Path(d) / "raw.db", rows)
        del rows
        t_raw_ev = raw_append_events(Path(d) / "raw-events.db", args.events)
        print("reading back...", file=sys.stderr)
        # Best of three for both: the first pass also warms caches.
        r_raw, n_raw = min(raw_read(Path(d) / "raw.db") for _ in range(3))
        r_ours, n_ours, peak_full = min(anyio.run(our_read, ours) for _ in range(3))
        _, n_tenth, peak_tenth = anyio.run(our_read, ours, args.events // 10)
        r_raw_dec, _ = min(raw_read_decoded(Path(d) / "raw.db") for _ in range(3))
        r_typed, n_typed = min(anyio.run(our_read_typed, ours) for _ in range(3))
        assert n_typed == args.events
        assert n_raw == n_ours == args.events
        a_ours, a_raw = args.events / t_ours, args.events / t_raw
        rd_ours, rd_raw = args.events / r_ours, args.events / r_raw
        print(
            f"store append: {a_ours:,.0f} events/s (event data {size:.0f} B), raw executemany (1,000 per transaction) {a_raw:,.0f} events/s, ratio {a_ours / a_raw:.2f}x (floor 0.5x)"
        )
        print(
            f"store append vs a raw writer that also encodes each event (uuid, time, JSON; no chain, no group commit): "
            f"{args.events / t_raw_ev:,.0f} events/s, ratio {a_ours / (args.events / t_raw_ev):.2f}x"
        )
        print(
            f"store append, one event per call from {args.tasks} tasks ({n_single} events): {n_single / t_single:,.0f} events/s, ratio {n_single / t_single / a_raw:.2f}x raw (group commit bounded by {args.tasks} events per fsync)"
        )
        print(
            f"store read:   {rd_ours:,.0f} events/s, raw cursor {rd_raw:,.0f} events/s, ratio {rd_ours / rd_raw:.2f}x (floor 0.5x)"
        )
        print(
            f"store read, typed (Recorded.event() on every event): {args.events / r_typed:,.0f} events/s, "
            f"raw cursor + json.loads {args.events / r_raw_dec:,.0f} events/s, ratio {r_raw_dec / r_typed:.2f}x (floor 0.5x)"
        )
        print(
            f"store read peak memory: {peak_tenth / 1e6:.1f} MB for {n_tenth:,} events, {peak_full / 1e6:.1f} MB for {n_ours:,} events (ratio {peak_full / max(peak_tenth, 1):.2f}x for 10x the log)"
        )


if __name__ == "__main__":
    main()
