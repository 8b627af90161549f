"""Several daemons sharing one run: does a second node make a run faster?

One run of ``--problems`` problems x ``--rollouts`` samples against a loopback
provider that answers after ``--latency`` seconds; each node may have
``--concurrency`` requests in flight (its provider limit), so a node alone is bound
by ``concurrency / latency`` rollouts a second and a second node should nearly
double that. Measured from the run's ``RunStarted`` to its ``RunFinished`` (the
events' own times), for:

* one ``rollwatch serve`` on SQLite (the baseline: no work board, no PostgreSQL),
* one on PostgreSQL (the cost of claiming chunks there),
* two on one PostgreSQL database (the point of it).

Real processes throughout: the fake provider of the tests and ``rollwatch serve``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import anyio
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("ROLLWATCH_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def config(d: Path, name: str, url: str, base_url: str, args: argparse.Namespace) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "rollwatch.toml"
    cfg.write_text(f"""
node = "{name}"
[cluster]
lease = "10s"
chunk = {args.chunk}
[integrity]
key_file = "{d.parent / "checkpoint.key"}"
[store]
url = "{url}"
projections = "{d / "projections.db"}"
[server]
listen = "127.0.0.1:0"
[scoring]
workers = 1
[[problem_sets]]
name = "favorites"
path = "{ROOT / "config" / "problems"}"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = {args.concurrency}
[[schedules]]
name = "bench"
provider = "fake"
models = ["m1"]
problem_set = "favorites"
rollouts = {args.rollouts}
every = "30d"
""")
    return cfg


def run_times_sqlite(path: Path) -> tuple[str, str] | None:
    con = sqlite3.connect(path)
    try:
        rows = dict(con.execute("SELECT type, at FROM events WHERE type IN ('RunStarted', 'RunFinished')"))
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return (rows["RunStarted"], rows["RunFinished"]) if len(rows) == 2 else None


async def run_times_pg(url: str) -> tuple[str, str] | None:
    conn = await asyncpg.connect(url)
    try:
        rows = dict(
            await conn.fetch("SELECT type, at FROM events WHERE type IN ('RunStarted', 'RunFinished')")
        )
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return (rows["RunStarted"], rows["RunFinished"]) if len(rows) == 2 else None


async def node_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT data::json->>'node' AS node, count(*) FROM events WHERE type = 'RolloutRequested' GROUP BY 1"
        )
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


async def measure(
    tmp: Path, label: str, nodes: int, pg: bool, base_url: str, args: argparse.Namespace
) -> float:
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    admin = await asyncpg.connect(ADMIN_URL) if pg else None
    db = f"rw_bench_{secrets.token_hex(4)}"
    url = f"{ADMIN_URL.rpartition('/')[0]}/{db}" if pg else f"sqlite:{tmp / label / 'events.db'}"
    if admin is not None:
        await admin.execute(f'CREATE DATABASE "{db}"')
    procs = []
    try:
        for i in range(nodes):
            cfg = config(tmp / label / f"node-{i}", f"node-{i}", url, base_url, args)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "1"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with anyio.fail_after(600):
            while True:
                times = await run_times_pg(url) if pg else run_times_sqlite(tmp / label / "events.db")
                if times:
                    break
                await anyio.sleep(0.2)
        took = (datetime.fromisoformat(times[1]) - datetime.fromisoformat(times[0])).total_seconds()
        share = await node_counts(url) if pg else {"node-0": args.problems * args.rollouts}
        total = args.problems * args.rollouts
        print(
            f"  {label:<28} {took:6.2f} s  {total / took:7.1f} rollouts/s  requests by node {share}",
            file=sys.stderr,
            flush=True,
        )
        return took
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if admin is not None:
            await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            await admin.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port_file, served = tmp / "port", tmp / "served.jsonl"
        provider = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "fake_provider.py"),
                str(port_file),
                str(served),
                str(args.latency),
            ]
        )
        try:
            with anyio.fail_after(20):
                while not (port_file.exists() and port_file.read_text()):
                    await anyio.sleep(0.05)
            base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
            total = args.problems * args.rollouts
            print(
                f"one run of {total} rollouts, provider latency {args.latency * 1000:.0f} ms, "
                f"{args.concurrency} in flight per node, chunks of {args.chunk}:",
                file=sys.stderr,
            )
            t_sqlite = await measure(tmp, "1 node, SQLite", 1, False, base_url, args)
            t_pg1 = await measure(tmp, "1 node, PostgreSQL", 1, True, base_url, args)
            t_pg2 = await measure(tmp, "2 nodes, one PostgreSQL", 2, True, base_url, args)
        finally:
            provider.kill()
            provider.wait()
    bound = args.concurrency / args.latency
    print(
        f"cluster: 1 node SQLite {total / t_sqlite:.1f} rollouts/s, 1 node PostgreSQL {total / t_pg1:.1f} "
        f"({t_sqlite / t_pg1:.2f}x SQLite), 2 nodes PostgreSQL {total / t_pg2:.1f} rollouts/s: "
        f"{t_pg1 / t_pg2:.2f}x one node (ideal 2x; one node's provider bound {bound:.0f}/s)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=10, help="the sample set has 10")
    ap.add_argument("--rollouts", type=int, default=20)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=2)
    args = ap.parse_args()
    args.problems = min(args.problems, 10)
    t0 = time.perf_counter()
    anyio.run(main, args)
    print(f"  (bench took {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
