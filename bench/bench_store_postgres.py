"""PostgreSQL event log throughput, against raw asyncpg doing the same work in the same run.

* Append: 200,000 events of about 1 KB, 100 per append call, from 50 concurrent
  tasks (group commit), and again from one task (every call its own transaction,
  as in the baseline: this ratio is the store's own overhead).
  Baseline: raw asyncpg COPY of the same rows into the same table shape, 100 rows
  per transaction from one connection (COPY is the fastest raw insert here; plain
  executemany is slower), with the same durability (synchronous_commit on).
* Read: every event through ``read_batches`` (1,000 per page) against raw asyncpg
  keyset pages of the same size over the same rows, best of three.
* Four processes appending at once (separate stores, one database), events/s in
  total, then the whole chain verified.

Each part runs in its own scratch database on ``$ROLLWATCH_BENCH_PG`` (default: the
local server, database ``test``), dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.events import SchedulePaused
from rollwatch.log import configure_logging
from rollwatch.store.postgres import COLUMNS, SCHEMA, PostgresEventStore

ADMIN_URL = os.environ.get("ROLLWATCH_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
NOTE = "x" * 900
SELECT = f"SELECT {', '.join(COLUMNS)} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"


@asynccontextmanager
async def scratch() -> AsyncIterator[str]:
    admin = await asyncpg.connect(ADMIN_URL)
    name = f"rw_bench_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rpartition('/')[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def our_append(url: str, total: int, tasks: int, batch: int) -> float:
    async with PostgresEventStore(url) as store:
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


async def raw_append(url: str, rows: list[tuple[object, ...]], batch: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        t = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.copy_records_to_table("events", records=rows[i : i + batch], columns=COLUMNS)
        return time.perf_counter() - t
    finally:
        await conn.close()


async def our_read(url: str) -> tuple[float, int, int]:
    async with PostgresEventStore(url) as store:
        t = time.perf_counter()
        n = 0
        async for page in store.read_batches(batch=1000):
            for _ev in page:
                n += 1
        took = time.perf_counter() - t
        # Memory in a second pass: tracemalloc slows allocation, so it is not timed.
        tracemalloc.start()
        async for _page in store.read_batches(batch=1000):
            pass
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return took, n, peak


async def raw_read(url: str) -> tuple[float, int]:
    conn = await asyncpg.connect(url)
    try:
        t = time.perf_counter()
        n, cursor = 0, 0
        while True:
            rows = await conn.fetch(SELECT, cursor, 1000)
            for _row in rows:
                n += 1
            if len(rows) < 1000:
                return time.perf_counter() - t, n
            cursor = rows[-1][0]
    finally:
        await conn.close()


async def all_rows(url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY seq")]
    finally:
        await conn.close()


async def child(url: str, name: str, total: int, tasks: int, batch: int) -> None:
    """One of the processes appending at once: ready, wait for go, append, done."""
    async with PostgresEventStore(url) as store:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        per = total // tasks // batch

        async def writer(i: int) -> None:
            for j in range(per):
                events = [SchedulePaused(schedule=f"{name}-{i}", note=NOTE) for _ in range(batch)]
                await store.append(f"{name}-{i}-{j % 50}", events)

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(writer, i)
    print("done", flush=True)


def expect(p: subprocess.Popen[str], word: str) -> None:
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != word:
        raise SystemExit(f"an appending process said {line!r}, not {word!r} (exit code {p.poll()})")


def processes(url: str, n: int, total: int, tasks: int, batch: int) -> float:
    """Wall time from "go" until every one of ``n`` appending processes is done."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, f"p{i}", str(total // n), str(tasks), str(batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for p in procs:
        expect(p, "ready")
    t = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        expect(p, "done")
    took = time.perf_counter() - t
    for p in procs:
        assert p.wait() == 0
    return took


async def verify(url: str) -> int:
    async with PostgresEventStore(url) as store:
        return (await store.verify()).events


async def bench(args: argparse.Namespace) -> None:
    n = args.events
    print(f"appending {n} events of ~1 KB from {args.tasks} tasks, {args.batch} per call...", file=sys.stderr)
    async with scratch() as ours, scratch() as single, scratch() as raw:
        t_ours = await our_append(ours, n, args.tasks, args.batch)
        t_single = await our_append(single, n, 1, args.batch)
        rows = await all_rows(ours)
        size = sum(len(str(r[7])) for r in rows) / len(rows)
        print(f"raw asyncpg COPY of the same rows, {args.batch} per transaction...", file=sys.stderr)
        t_raw = await raw_append(raw, rows, args.batch)
        del rows
        print("reading back...", file=sys.stderr)
        r_raw, n_raw = min([await raw_read(raw) for _ in range(3)])
        r_ours, n_ours, peak = min([await our_read(ours) for _ in range(3)])
        assert n_raw == n_ours == n, (n_raw, n_ours, n)
    a_ours, a_single, a_raw = n / t_ours, n / t_single, n / t_raw
    rd_ours, rd_raw = n / r_ours, n / r_raw
    print(
        f"pg append: {a_ours:,.0f} events/s ({args.tasks} tasks, {args.batch} per call, event data {size:.0f} B), "
        f"raw asyncpg {a_raw:,.0f} events/s ({args.batch} rows per transaction), ratio {a_ours / a_raw:.2f}x (floor 0.5x)",
        flush=True,
    )
    print(
        f"pg append, one task (every call its own transaction, like raw): {a_single:,.0f} events/s, "
        f"raw asyncpg {a_raw:,.0f} events/s, ratio {a_single / a_raw:.2f}x (floor 0.5x)",
        flush=True,
    )
    print(
        f"pg read:   {rd_ours:,.0f} events/s, raw asyncpg {rd_raw:,.0f} events/s (pages of 1,000), "
        f"ratio {rd_ours / rd_raw:.2f}x (floor 0.5x); peak memory {peak / 1e6:.1f} MB for {n:,} events",
        flush=True,
    )
    print(
        f"4 processes appending at once ({args.proc_events} events, {args.proc_tasks} tasks each)...",
        file=sys.stderr,
    )
    async with scratch() as url:
        took = await anyio.to_thread.run_sync(
            processes, url, 4, args.proc_events, args.proc_tasks, args.batch
        )
        verified = await verify(url)
    assert verified == args.proc_events, (verified, args.proc_events)
    print(
        f"pg append from 4 processes at once: {args.proc_events / took:,.0f} events/s in total, "
        f"chain verified ({verified:,} events, seq gap-free)",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, name, total, tasks, batch = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
        configure_logging(stream=sys.stderr)  # stdout carries "ready" and "done"
        anyio.run(child, url, name, total, tasks, batch)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100, help="events per append call (a run flushes a batch)")
    ap.add_argument("--proc-events", type=int, default=100_000, help="events in total over the 4 processes")
    ap.add_argument("--proc-tasks", type=int, default=10, help="appending tasks in each process")
    args = ap.parse_args()
    anyio.run(bench, args)


if __name__ == "__main__":
    main()
