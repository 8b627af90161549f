"""The log as static tiles vs. our JSON proof route, and the cost of checking every released result.

1. Serving (a tree of 10⁶ leaves, made from synthetic leaf hashes in a few seconds;
   tiles and proofs only ever read hashes): ``write_tiles`` writes the export's
   tiles; ``python -m http.server`` serves them and a subprocess serves the JSON
   route ``/public/proof/inclusion`` (uvicorn, as the daemon does). One client
   process, one keep-alive connection, sequential requests:
   * requests per second: random full level-0 tiles from the file server vs random
     inclusion proofs from the route;
   * bytes per verified result: a client proving random leaves from tiles (fetching
     the tiles each proof needs, each once, caching them as tlog clients do), cold
     (one result) and auditing 2,000 results, vs the JSON route's bytes per proof.
     Every proof is verified against the root.
2. Auditing (a real log of about 10⁵ events: 16,500 released rollouts of 6 events):
   ``publish export`` (everything: pages, bundles, tiles) and then checking every
   released result's whole proof bundle from ``results.jsonl`` offline
   (:func:`rollwatch.integrity.bundle.check_bundle`: signature, each event's
   inclusion path, the claim).

Ratios are of numbers measured in the same run. ``--leaves`` and ``--rollouts`` make
it smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.integrity import merkle
from rollwatch.integrity.tiles import WIDTH, Tile, encode_index
from rollwatch.integrity.tree import MerkleTree

HERE = Path(__file__).resolve()


# --- a tile client (what a tlog client does: fetch tiles, hash up, verify) ---------------------


class TileClient:
    """Proves leaves of a tree of ``size`` from tiles under ``prefix``, caching the tiles it fetched."""

    def __init__(self, client: httpx.Client, prefix: str, size: int) -> None:
        self.client, self.prefix, self.size = client, prefix, size
        self.cache: dict[str, bytes] = {}
        self.requests = 0
        self.bytes = 0

    def _tile(self, level: int, index: int) -> bytes:
        nodes = self.size >> (8 * level)
        width = WIDTH if index < nodes // WIDTH else nodes % WIDTH
        path = Tile(level, index, width).path()
        if path not in self.cache:
            r = self.client.get(self.prefix + path)
            r.raise_for_status()
            self.requests += 1
            self.bytes += len(r.content)
            self.cache[path] = r.content
        return self.cache[path]

    def node(self, height: int, index: int) -> bytes:
        level, rest = divmod(height, 8)
        first = index << rest
        tile = self._tile(level, first // WIDTH)
        off = first % WIDTH
        hs = [tile[32 * i : 32 * i + 32] for i in range(off, off + (1 << rest))]
        while len(hs) > 1:
            hs = [merkle.node_hash(hs[i], hs[i + 1]) for i in range(0, len(hs), 2)]
        return hs[0]

    def prove(self, leaf: int, root: bytes) -> None:
        ranges = merkle.inclusion_ranges(leaf, self.size)
        nodes = {n: self.node(*n) for n in merkle.nodes_for(ranges)}
        path = merkle.assemble(ranges, nodes)
        if not merkle.verify_inclusion(leaf, self.size, self.node(0, leaf), path, root):
            raise SystemExit(f"leaf {leaf}: the proof from tiles does not verify")


# --- servers ---------------------------------------------------------------------------------------


def serve_proofs(tree_path: str) -> None:
    """The JSON proof route over ``tree_path`` on a free port (prints it), until killed."""
    from rollwatch.integrity.routes import integrity_routes
    from rollwatch.log import configure_logging

    configure_logging("warning")  # no access log on the pipe nobody reads
    from rollwatch.metrics import Metrics
    from rollwatch.web.app import build_app
    from rollwatch.web.server import HTTPServer

    async def main() -> None:
        async with MerkleTree(tree_path, read_only=True) as tree:
            server = HTTPServer(
                build_app(Metrics(), integrity_routes(tree, "x+00000000+AA==")), "127.0.0.1", 0
            )
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                print(f"port {server.port}", flush=True)

    anyio.run(main)


def start(cmd: list[str], pattern: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    m = re.search(pattern, proc.stdout.readline())
    if not m:
        proc.kill()
        raise SystemExit(f"{cmd[:4]} did not start")
    return proc, int(m.group(1))


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


# --- 1. serving ------------------------------------------------------------------------------------


async def build_tree(path: Path, leaves: int) -> bytes:
    rng = random.Random(1)
    async with MerkleTree(path) as tree:
        step = 100_000
        for i in range(0, leaves, step):
            await tree.append_leaf_hashes([rng.randbytes(32) for _ in range(min(step, leaves - i))])
        return await tree.root()


async def write_all_tiles(tree_path: Path, out: Path, size: int) -> float:
    from rollwatch.publication.export import write_tiles

    async with MerkleTree(tree_path, read_only=True) as tree:
        t0 = time.perf_counter()
        await write_tiles(tree, out, size)
        return time.perf_counter() - t0


def serving(d: Path, leaves: int, requests: int, audit_n: int) -> None:
    tree_path = d / "merkle.db"
    t0 = time.perf_counter()
    root = anyio.run(build_tree, tree_path, leaves)
    print(f"tree of {leaves} leaves built in {time.perf_counter() - t0:.1f} s")
    out = d / "site"
    seconds = anyio.run(write_all_tiles, tree_path, out, leaves)
    files = sum(1 for p in (out / "tile").rglob("*") if p.is_file())
    size_mb = sum(p.stat().st_size for p in (out / "tile").rglob("*") if p.is_file()) / 1e6
    print(f"export: {files} tile files, {size_mb:.1f} MB, written in {seconds:.1f} s")
    again = anyio.run(write_all_tiles, tree_path, out, leaves)
    print(f"export again (full tiles unchanged, compared not rewritten): {again:.1f} s")

    static, sport = start(
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(out), "0"],
        r"port (\d+)",
    )
    dynamic, dport = start([sys.executable, str(HERE), "--serve-proofs", str(tree_path)], r"port (\d+)")
    rng = random.Random(2)
    try:
        with httpx.Client(timeout=30) as c:
            full = leaves // WIDTH
            t0 = time.perf_counter()
            for _ in range(requests):
                r = c.get(f"http://127.0.0.1:{sport}/tile/0/{encode_index(rng.randrange(full))}")
                r.raise_for_status()
            tile_rps = requests / (time.perf_counter() - t0)

            proof_bytes = 0
            t0 = time.perf_counter()
            for _ in range(requests):
                seq = rng.randrange(1, leaves + 1)
                r = c.get(f"http://127.0.0.1:{dport}/public/proof/inclusion?seq={seq}&size={leaves}")
                r.raise_for_status()
                proof_bytes += len(r.content)
                body = r.json()
                path = [merkle_b64(h) for h in body["path"]]
                if not merkle.verify_inclusion(seq - 1, leaves, merkle_b64(body["leaf_hash"]), path, root):
                    raise SystemExit("a JSON proof does not verify")
            route_rps = requests / (time.perf_counter() - t0)
            per_proof = proof_bytes / requests

            prefix = f"http://127.0.0.1:{sport}/"
            cold = TileClient(c, prefix, leaves)
            cold.prove(rng.randrange(leaves), root)
            warm = TileClient(c, prefix, leaves)
            for _ in range(audit_n):
                warm.prove(rng.randrange(leaves), root)
    finally:
        stop(static)
        stop(dynamic)
    print(
        f"requests/s: static tile {tile_rps:.0f}, JSON proof route {route_rps:.0f} (ratio {tile_rps / route_rps:.2f}x)"
    )
    print(
        f"bytes per verified result: JSON route {per_proof:.0f}; tiles cold {cold.bytes} "
        f"({cold.requests} tiles, {cold.bytes / per_proof:.1f}x); tiles over {audit_n} results "
        f"{warm.bytes / audit_n:.0f} ({warm.requests} tiles, {warm.bytes / audit_n / per_proof:.2f}x)"
    )


def merkle_b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


# --- 2. auditing every released result -------------------------------------------------------


async def build_log(d: Path, rollouts: int) -> tuple[Any, int]:
    from rollwatch.config import parse_config
    from rollwatch.integrity.bundle import derive_rollout_id
    from rollwatch.integrity.service import open_integrity
    from rollwatch.projections import ProjectionDB
    from rollwatch.publication import release_due
    from rollwatch.store.sqlite import SQLiteEventStore

    sys.path.insert(0, str(HERE.parents[1]))
    from tests.publication.helpers import all_projections, finish_run, rollout_events, start_run

    config = parse_config(
        {"store": {"url": f"sqlite:{d / 'events.db'}"}, "integrity": {"origin": "bench.test/log"}}
    )
    async with (
        SQLiteEventStore(d / "events.db") as store,
        ProjectionDB(config.store.projections_path, all_projections()) as pdb,
    ):
        per_run = 100
        runs = [f"run-{i:05d}" for i in range(rollouts // per_run)]

        async def one_run(run_id: str) -> None:
            await start_run(store, run_id)
            for k in range(per_run):
                rid = derive_rollout_id(run_id, "gpt-x", f"p{k}", 0)
                await store.append(
                    f"rollout-{rid}",
                    rollout_events(rid, run_id, passed=True, problem_id=f"p{k}", embargo_s=0.0),
                )
            await finish_run(store, run_id, rollouts=per_run, passed=per_run)

        t0 = time.perf_counter()
        limit = anyio.CapacityLimiter(32)

        async def limited(run_id: str) -> None:
            async with limit:
                await one_run(run_id)

        async with anyio.create_task_group() as tg:
            for run_id in runs:
                tg.start_soon(limited, run_id)
        released = await release_due(store, pdb)
        head = await store.head()
        print(f"log of {head} events, {released} released results, built in {time.perf_counter() - t0:.0f} s")
        async with open_integrity(config.integrity, config.store, store) as integrity:
            stop_ev = anyio.Event()
            async with anyio.create_task_group() as tg:
                await tg.start(integrity.run, stop_ev)
                await integrity.final_checkpoint()
                stop_ev.set()
    return config, released


def auditing(d: Path, rollouts: int) -> None:
    from rollwatch.integrity.bundle import check_bundle
    from rollwatch.integrity.checkpoint import NoteVerifier

    anyio.run(build_log, d, rollouts)
    cfg = d / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{d / "events.db"}"\n[integrity]\norigin = "bench.test/log"\n')
    out = d / "export"
    env = {**os.environ, "STATE_DIRECTORY": ""}
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    export_s = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(p.stderr)
    print(f"publish export: {export_s:.1f} s ({p.stdout.strip()})")
    verifier = NoteVerifier.from_vkey((out / "key").read_text())
    t0 = time.perf_counter()
    n = events = 0
    with (out / "results.jsonl").open() as f:
        for line in f:
            rec = json.loads(line)
            _, k = check_bundle(rec["proof"], rec["rollout_id"], verifier)
            n += 1
            events += k
    check_s = time.perf_counter() - t0
    size = (out / "results.jsonl").stat().st_size
    print(
        f"checking every released result offline: {n} results ({events} events) in {check_s:.1f} s, "
        f"{check_s / n * 1e6:.0f} µs per result; results.jsonl {size / 1e6:.1f} MB ({size / n:.0f} bytes per result)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve-proofs", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--audit", type=int, default=2000)
    ap.add_argument("--rollouts", type=int, default=16_500)
    ap.add_argument("--part", choices=("serve", "audit", "both"), default="both")
    args = ap.parse_args()
    if args.serve_proofs:
        serve_proofs(args.serve_proofs)
        return
    if args.part in ("serve", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            print("== serving tiles vs the JSON proof route")
            serving(Path(tmp), args.leaves, args.requests, args.audit)
    if args.part in ("audit", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            print("== checking every released result")
            auditing(Path(tmp), args.rollouts)


if __name__ == "__main__":
    main()
