"""The Merkle tree's cost: append throughput with the tree kept current, and proof cost by log size.

1. Appends: the store benchmark's workload (events of about 1 KB from 50 concurrent
   tasks, 100 per call, SQLite with WAL and synchronous=FULL) into a fresh log, with
   nothing else running; with the tree kept current as the daemon keeps it
   (``MerkleTree.follow_in_worker``: the hashing in a worker process, woken on every
   commit); and, for comparison, with the follower in the appending process itself
   (``MerkleTree.follow``). Same run; rounds alternate (plain, worker, in-process,
   plain, ...) and the best round of each counts, so that disk and CPU noise hit all
   alike. Throughput is events over the time until the last append returned; the
   tree's lag after that (until it holds every event) is printed too. Floor: with the
   tree (worker) ≥ 0.9× without.
2. Proofs: one real log of 10⁶ small events (appended through the store, about 20 s),
   and three trees caught up from it to 10⁴, 10⁵ and 10⁶ events. For random inclusion
   and consistency proofs: node hashes read plus node hashes computed per proof (the
   proof's own length beside it), µs per proof through the async API (a thread hop
   and a read transaction each), and µs for the lookups and hashing alone (the same
   SQL on a plain connection, no thread hop). Flat cost across sizes is the O(log n)
   claim. (``--synthetic`` builds the trees from made-up leaf hashes instead, in a
   few seconds.)
3. Memory: the peak of Python allocations while catching up 10⁴, 10⁵ and 10⁶ events.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.events import SchedulePaused
from rollwatch.integrity import merkle
from rollwatch.integrity.tree import MerkleTree, _get_nodes
from rollwatch.store.sqlite import SQLiteEventStore

NOTE = "x" * 900


async def append_round(
    d: Path, name: str, total: int, tasks: int, batch: int, mode: str
) -> tuple[float, float]:
    """(seconds until the last append returned, seconds more until the tree held every event)."""
    async with SQLiteEventStore(d / f"{name}.db") as store, MerkleTree(d / f"{name}.merkle.db") as tree:
        per = total // tasks // batch

        async def writer(i: int) -> None:
            for j in range(per):
                await store.append(
                    f"run-{i}-{j % 50}", [SchedulePaused(schedule=f"s{i}", note=NOTE) for _ in range(batch)]
                )

        async with anyio.create_task_group() as outer:
            if mode == "worker":
                await outer.start(tree.follow_in_worker, store)
            elif mode == "in-process":
                await outer.start(tree.follow, store)
            t = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(writer, i)
            appended = time.perf_counter() - t
            lag = 0.0
            if mode != "plain":
                head = await store.head()
                while await tree.current_size() < head:
                    await anyio.sleep(0.001)  # polling the size of our own follower; not a test
                lag = time.perf_counter() - t - appended
                assert await tree.root() == await _reference_root(store)
            outer.cancel_scope.cancel()
        return appended, lag


async def _reference_root(store: SQLiteEventStore) -> bytes:
    cr = merkle.CompactRange()
    async for page in store.read_batches(batch=5000):
        for ev in page:
            cr.append(merkle.leaf_hash(ev.canonical()))
    return cr.root()


async def build_log(d: Path, n: int) -> SQLiteEventStore:
    """A real log of ``n`` small events, appended by 4 tasks, 1,000 per call."""
    store = SQLiteEventStore(d / "big.db")
    await store.__aenter__()
    per = n // 4

    async def writer(k: int) -> None:
        for i in range(0, per, 1000):
            await store.append(
                f"s{k}-{i % 20}", [SchedulePaused(schedule="p", note="n") for _ in range(1000)]
            )

    async with anyio.create_task_group() as tg:
        for k in range(4):
            tg.start_soon(writer, k)
    return store


async def build_real(d: Path, store: SQLiteEventStore, n: int) -> tuple[MerkleTree, float, int]:
    """A tree caught up to event ``n`` of ``store``; (tree, catch-up seconds, peak bytes of a second catch-up)."""
    tree = MerkleTree(d / f"tree{n}.db")
    await tree.__aenter__()
    t = time.perf_counter()
    await tree.catch_up(store, until=n)
    took = time.perf_counter() - t
    # Memory in a second catch-up into a scratch tree: tracemalloc slows allocation, so it is not timed.
    async with MerkleTree(d / f"scratch{n}.db") as scratch:
        tracemalloc.start()
        await scratch.catch_up(store, until=n)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    (d / f"scratch{n}.db").unlink()
    return tree, took, peak


async def build_synthetic(d: Path, n: int) -> tuple[MerkleTree, float]:
    tree = MerkleTree(d / f"synthetic{n}.db")
    await tree.__aenter__()
    t = time.perf_counter()
    step = 50_000
    for i in range(0, n, step):
        await tree.append_leaf_hashes(
            [hashlib.sha256(b"\x00" + j.to_bytes(8, "big")).digest() for j in range(i, min(n, i + step))]
        )
    return tree, time.perf_counter() - t


def sync_proof_us(path: Path, n: int, kind: str, args: list[int]) -> float:
    """µs per proof for the lookups and hashing alone, on a plain connection in this thread."""
    db = sqlite3.connect(path)
    t = time.perf_counter()
    for a in args:
        ranges = merkle.inclusion_ranges(a, n) if kind == "inclusion" else merkle.consistency_ranges(a, n)
        merkle.assemble(ranges, _get_nodes(db, merkle.nodes_for(ranges)))
    took = time.perf_counter() - t
    db.close()
    return took / len(args) * 1e6


async def proof_costs(
    tree: MerkleTree, n: int, samples: int
) -> dict[str, tuple[float, int, float, float, float]]:
    """Per kind: (mean hashes per proof, max, mean proof length, µs per proof, µs without the thread hop)."""
    rnd = random.Random(n)
    root = await tree.root(n)
    for i in range(0, n, max(1, n // 50)):  # warm the page cache and the thread pool
        await tree.inclusion_proof(i, n)
    out = {}
    inc = [rnd.randrange(n) for _ in range(samples)]
    costs = [sum(merkle.proof_cost(merkle.inclusion_ranges(i, n))) for i in inc]
    lengths = []
    t = time.perf_counter()
    for i in inc:
        lengths.append(len(await tree.inclusion_proof(i, n)))
    us = (time.perf_counter() - t) / samples * 1e6
    # Spot-check that what was timed is right.
    for i in inc[:20]:
        [leaf] = await tree.leaf_hashes(i, i + 1)
        assert merkle.verify_inclusion(i, n, leaf, await tree.inclusion_proof(i, n), root)
    bare = sync_proof_us(tree.path, n, "inclusion", inc)
    out["inclusion"] = (statistics.mean(costs), max(costs), statistics.mean(lengths), us, bare)
    con = [rnd.randrange(1, n) for _ in range(samples)]
    costs = [sum(merkle.proof_cost(merkle.consistency_ranges(m, n))) for m in con]
    lengths = []
    t = time.perf_counter()
    for m in con:
        lengths.append(len(await tree.consistency_proof(m, n)))
    us = (time.perf_counter() - t) / samples * 1e6
    for m in con[:20]:
        assert merkle.verify_consistency(m, n, await tree.root(m), root, await tree.consistency_proof(m, n))
    bare = sync_proof_us(tree.path, n, "consistency", con)
    out["consistency"] = (statistics.mean(costs), max(costs), statistics.mean(lengths), us, bare)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000, help="events per append round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternating")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1000, help="proofs of each kind per size")
    ap.add_argument("--synthetic", action="store_true", help="build the proof trees from made-up leaves")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        d = Path(tmp)
        print(
            f"appending {args.events} events of ~1 KB from {args.tasks} tasks, {args.batch} per call, "
            f"{args.rounds} rounds each, alternating...",
            file=sys.stderr,
        )
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "worker": [], "in-process": []}
        for r in range(args.rounds):
            for mode, results in runs.items():
                results.append(await append_round(d, f"{mode}{r}", args.events, args.tasks, args.batch, mode))
        best = {mode: min(results) for mode, results in runs.items()}
        rate = {mode: args.events / t for mode, (t, _) in best.items()}
        print(
            f"append without tree: {rate['plain']:,.0f} events/s; with the tree (worker process): "
            f"{rate['worker']:,.0f} events/s, ratio {rate['worker'] / rate['plain']:.2f}x (floor 0.90x), "
            f"tree caught up {best['worker'][1] * 1000:.0f} ms after the last append"
        )
        print(
            f"  for comparison, the follower in the appending process: {rate['in-process']:,.0f} events/s, "
            f"ratio {rate['in-process'] / rate['plain']:.2f}x, caught up {best['in-process'][1] * 1000:.0f} ms after"
        )
        print(
            "  rounds (s): "
            + "; ".join(
                f"{mode} " + ", ".join(f"{t:.2f}" for t, _ in results) for mode, results in runs.items()
            )
        )

        sizes = (10_000, 100_000, 1_000_000)
        trees: list[tuple[int, MerkleTree, str]] = []
        peaks = []
        if args.synthetic:
            for n in sizes:
                tree, took = await build_synthetic(d, n)
                trees.append((n, tree, f"synthetic leaves, built in {took:.2f}s"))
        else:
            print(f"appending a log of {sizes[-1]:,} small events...", file=sys.stderr)
            t = time.perf_counter()
            store = await build_log(d, sizes[-1])
            print(f"  appended in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            for n in sizes:
                tree, took, peak = await build_real(d, store, n)
                peaks.append((n, peak))
                trees.append((n, tree, f"caught up from the log in {took:.2f}s, {n / took:,.0f} events/s"))
            await store.__aexit__(None, None, None)
        print(
            "proofs (random leaf / random old size; hashes = stored node hashes read + node hashes computed):"
        )
        for n, tree, how in trees:
            costs = await proof_costs(tree, n, args.samples)
            size_mb = (Path(tree.path).stat().st_size + _wal(tree.path)) / 1e6
            for kind, (mean, worst, length, us, bare) in costs.items():
                print(
                    f"  n={n:>9,} {kind:<11}: {mean:5.1f} hashes per proof (max {worst}, log2 n = {n.bit_length()}), "
                    f"proof length {length:4.1f}, {us:6.1f} µs per proof ({bare:5.1f} µs without the thread hop)  "
                    f"[{how}; merkle.db {size_mb:.0f} MB]"
                )
            await tree.__aexit__()
        if peaks:
            print(
                "catch-up peak memory: "
                + ", ".join(f"{p / 1e6:.1f} MB for {n:,} events" for n, p in peaks)
                + f" (ratio {peaks[-1][1] / max(peaks[0][1], 1):.2f}x for 100x the log)"
            )


def _wal(path: Path) -> int:
    wal = Path(str(path) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


if __name__ == "__main__":
    anyio.run(main)
