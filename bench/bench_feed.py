"""Subscriber feed throughput: 50 concurrent subscribers paging a 1,000,000-event log.

Each subscriber pages with limit=500 from a random cursor, 20 pages. Baseline in the
same run, from the same server process: 50 clients fetching a static file with the
bytes of one such page (Starlette's FileResponse), the same number of times. The
server runs in its own process so that the clients do not share its CPU time.

    python bench/bench_feed.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.events import PublicationDecided, RolloutRequested, RolloutScored, SubscriberAdded
from rollwatch.publication.keys import hash_key, key_prefix, new_key
from rollwatch.store.sqlite import SQLiteEventStore

SUBSCRIBERS = 50
PAGES = 20
LIMIT = 500


async def build(db: Path, events: int) -> list[str]:
    keys = [new_key() for _ in range(SUBSCRIBERS)]
    async with SQLiteEventStore(db) as store:
        for i, k in enumerate(keys):
            await store.append(
                f"subscriber-s{i}",
                [
                    SubscriberAdded(
                        name=f"s{i}",
                        key_hash=hash_key(k),
                        key_prefix=key_prefix(k),
                        scopes=["feed", "rollouts", "report"],
                    )
                ],
            )
        rollouts = events // 3
        done = 0

        async def writer(w: int) -> None:
            nonlocal done
            for r in range(w, rollouts, 50):
                rid = f"r{r:08d}"
                await store.append(
                    f"rollout-{rid}",
                    [
                        RolloutRequested(
                            rollout_id=rid,
                            run_id="run-1",
                            provider="p",
                            model=f"m{r % 4}",
                            problem_id=f"p{r % 10}",
                            problem_hash="h",
                            sample=r,
                            attempt=1,
                            request={"messages": [{"role": "user", "content": "x" * 200}]},
                            node="n",
                        ),
                        RolloutScored(
                            rollout_id=rid,
                            passed=r % 7 == 0,
                            score=1.0 if r % 7 == 0 else 0.0,
                            scorer="python-function",
                            reason="ok",
                        ),
                        PublicationDecided(
                            rollout_id=rid, audience="subscribers", not_before="2026-01-01T00:00:00.000000Z"
                        ),
                    ],
                )
                done += 1
                if done % 20000 == 0:
                    print(f"  built {done * 3:,} events", file=sys.stderr)

        async with anyio.create_task_group() as tg:
            for w in range(50):
                tg.start_soon(writer, w)
    return keys


def serve(config: Path, static: Path) -> None:
    """The server process: catch up, then serve the publication routes plus /bench/static."""
    from starlette.responses import FileResponse
    from starlette.routing import Route

    from rollwatch.config import load_config
    from rollwatch.metrics import Metrics
    from rollwatch.projections import ProjectionDB
    from rollwatch.publication.routes import publication_routes
    from rollwatch.readmodels import default_projections
    from rollwatch.runs import RunServices
    from rollwatch.web.app import build_app
    from rollwatch.web.server import HTTPServer

    async def main() -> None:
        cfg = load_config(config)
        async with (
            SQLiteEventStore(cfg.store.sqlite_path) as store,
            ProjectionDB(cfg.store.projections_path, default_projections()) as pdb,
        ):  # type: ignore[arg-type]
            t = time.perf_counter()
            await pdb.catch_up(store)
            print(f"  projections caught up in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
            svc = RunServices(
                config=cfg,
                store=store,
                projections=pdb,
                providers={},
                problem_sets={},
                scorer=None,
                node="bench",
                locks_dir=config.parent,
            )  # type: ignore[arg-type]

            async def static_route(_: object) -> FileResponse:
                return FileResponse(static, media_type="application/json")

            app = build_app(Metrics(), [*publication_routes(svc), Route("/bench/static", static_route)])
            server = HTTPServer(app, "127.0.0.1", 0)
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                print(f"ready {server.port}", flush=True)
                await anyio.sleep_forever()

    from rollwatch.log import configure_logging

    configure_logging("warning", stream=sys.stderr)  # no access log lines in the measurement
    anyio.run(main)


async def load(base: str, keys: list[str], head: int, static: bool) -> tuple[float, list[float], int]:
    lat: list[float] = []
    items = 0
    limits = httpx.Limits(max_connections=SUBSCRIBERS, max_keepalive_connections=SUBSCRIBERS)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def subscriber(i: int) -> None:
            nonlocal items
            rng = random.Random(i)
            after = rng.randint(0, max(0, head - PAGES * LIMIT * 2))
            headers = {"authorization": f"Bearer {keys[i]}"}
            for _ in range(PAGES):
                t = time.perf_counter()
                if static:
                    r = await client.get("/bench/static")
                    r.raise_for_status()
                    items += LIMIT
                else:
                    r = await client.get("/v1/feed", params={"after": after, "limit": LIMIT}, headers=headers)
                    r.raise_for_status()
                    body = r.json()
                    items += len(body["items"])
                    after = body["next"]
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(SUBSCRIBERS):
                tg.start_soon(subscriber, i)
        return time.perf_counter() - t0, lat, items


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--serve", nargs=2, metavar=("CONFIG", "STATIC"))
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        db = tmp / "events.db"
        print(f"building a log of {args.events:,} events...", file=sys.stderr)
        keys = anyio.run(build, db, args.events)
        cfg = tmp / "rollwatch.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:{db}"\n[server]\nfeed_rate_per_minute = 100000000\n')
        static = tmp / "page.json"
        static.write_text("{}")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(cfg), str(static)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            port = int(line.split()[1])
            base = f"http://127.0.0.1:{port}"
            head = args.events + SUBSCRIBERS
            page = httpx.get(
                f"{base}/v1/feed",
                params={"after": head // 2, "limit": LIMIT},
                headers={"authorization": f"Bearer {keys[0]}"},
                timeout=60,
            )
            page.raise_for_status()
            static.write_bytes(page.content)
            print(
                f"page of {LIMIT} items = {len(page.content):,} bytes; {SUBSCRIBERS} subscribers x {PAGES} pages",
                file=sys.stderr,
            )
            # Warm both paths once, then measure.
            anyio.run(load, base, keys, head, True)
            t_static, lat_s, _ = anyio.run(load, base, keys, head, True)
            t_feed, lat_f, items = anyio.run(load, base, keys, head, False)
        finally:
            proc.kill()
            proc.wait()
        req = SUBSCRIBERS * PAGES
        print(
            f"feed: {items / t_feed:,.0f} items/s, {req / t_feed:,.0f} pages/s, latency p50 {pct(lat_f, 0.5):.1f} ms p99 {pct(lat_f, 0.99):.1f} ms"
        )
        print(
            f"static file of the same bytes: {req / t_static:,.0f} pages/s, latency p50 {pct(lat_s, 0.5):.1f} ms p99 {pct(lat_s, 0.99):.1f} ms"
        )
        print(
            f"feed / static: {t_static / t_feed:.2f}x the throughput; p50 {statistics.median(lat_f) / statistics.median(lat_s):.2f}x the latency"
        )


if __name__ == "__main__":
    main()
