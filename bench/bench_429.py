"""Random 429s: 984 rollouts at 64 in flight against a 200 ms server, without and with faults.

Issue 16: with 10% random 429s carrying ``Retry-After: 1`` a run took 8–10× as long
as without, because every 429 paused the whole provider and halved its window. Here,
in one run, against one server process (its CPU is not ours):

* fault-free — every request is answered after 200 ms;
* faulty — each request is, with probability 0.1 (a seeded draw at the server),
  answered at once with 429 ``Retry-After: 1`` and no rate-limit headers, i.e. no
  evidence that the provider's budget is used up; the rest as above.

Both go through ``ProviderClient`` (kind ``openai``, ``max_concurrency = 64``) with every
attempt appended to a real SQLite event store, driven as a run drives them: at most
twice ``max_concurrency`` rollouts admitted at once (the run's window in
``runs/pipeline.py``), so a rollout waiting out its Retry-After keeps its place in the
run but not its provider slot. The server counts, per rollout, any request that
arrives before the Retry-After it last sent that rollout has passed (``early``): that
must be 0. Target: faulty wall time ≤ 2× fault-free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_providers import ANSWER, KEY_ENV, MODEL, StoreLog
from rollwatch.config import ProviderConfig
from rollwatch.providers import Prompt, ProviderClient
from rollwatch.store.sqlite import SQLiteEventStore

OK = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
)
_LIMITED_BODY = json.dumps(
    {"error": {"message": "Please slow down.", "type": "requests", "code": "rate_limit_exceeded"}}
).encode()
LIMITED = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"content-length: " + str(len(_LIMITED_BODY)).encode() + b"\r\n\r\n" + _LIMITED_BODY
)


# --- the server (runs in its own process) ---------------------------------------------


class _Stats:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.requests = 0
        self.limited = 0
        self.early = 0
        self.not_before: dict[str, float] = {}


class _Http(asyncio.Protocol):
    """Keep-alive HTTP/1.1. ``POST /faulty/...`` draws its 429s; ``POST /clean/...``
    never fails; ``GET /stats`` returns the counters and resets them."""

    def __init__(self, delay: float, rate: float, stats: _Stats) -> None:
        self.delay = delay
        self.rate = rate
        self.stats = stats
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            i = head.lower().find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self._request(head.split(b" ", 2)[1].decode(), body)

    def _request(self, target: str, body: bytes) -> None:
        assert self.transport is not None
        s = self.stats
        if target == "/stats":
            out = json.dumps({"requests": s.requests, "limited": s.limited, "early": s.early}).encode()
            s.requests = s.limited = s.early = 0
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out))
            return
        now = time.monotonic()
        key = json.loads(body)["messages"][-1]["content"]
        s.requests += 1
        if now < s.not_before.get(key, 0.0):
            s.early += 1
        if target.startswith("/faulty/") and s.rng.random() < self.rate:
            s.limited += 1
            s.not_before[key] = time.monotonic() + 1.0
            self.transport.write(LIMITED)
            return
        asyncio.get_running_loop().call_later(self.delay, self._reply)

    def _reply(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(OK)


async def _serve(delay: float, rate: float) -> None:
    loop = asyncio.get_running_loop()
    stats = _Stats(seed=16)
    server = await loop.create_server(lambda: _Http(delay, rate, stats), "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# --- the client -----------------------------------------------------------------------


async def run(url: str, label: str, n: int, concurrency: int, db: Path) -> tuple[float, int, dict[str, int]]:
    """``n`` rollouts as a run drives them; (wall seconds, failed rollouts, server stats
    with the client's window cuts as ``cuts``)."""
    config = ProviderConfig(
        name="bench",
        kind="openai",
        base_url=f"{url}/{label}",
        api_key_env=KEY_ENV,
        max_concurrency=concurrency,
        timeout=60.0,
        max_attempts=10,
        prices={MODEL: {"input": 1.0, "output": 4.0}},
    )
    failed = 0
    admitted = anyio.Semaphore(2 * concurrency)  # the run's window (runs/pipeline.py)
    async with SQLiteEventStore(db) as store, ProviderClient(config) as client:

        async def one(i: int) -> None:
            nonlocal failed
            try:
                prompt = Prompt(f"{label} rollout {i}: write two_sum.", system="Python only.")
                answer = await client.rollout(MODEL, prompt, {}, StoreLog(store, i))
                failed += answer is None
            finally:
                admitted.release()

        t = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                await admitted.acquire()
                tg.start_soon(one, i)
        wall = time.perf_counter() - t
        cuts = client.stats.slowdowns
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{url}/stats")).json()
    stats["cuts"] = cuts
    return wall, failed, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=984)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--delay", type=float, default=0.2, help="server answer time, seconds")
    ap.add_argument("--rate", type=float, default=0.1, help="share of requests answered 429")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.delay, args.rate))
        return
    os.environ[KEY_ENV] = "bench-key"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--delay", str(args.delay), "--rate", str(args.rate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        n, conc = args.rollouts, args.concurrency
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
            anyio.run(run, url, "clean", conc, conc, Path(d) / "warm.db")  # warm-up
            clean, clean_failed, _ = anyio.run(run, url, "clean", n, conc, Path(d) / "clean.db")
            faulty, faulty_failed, stats = anyio.run(run, url, "faulty", n, conc, Path(d) / "faulty.db")
        ideal = n / conc * args.delay
        ratio = faulty / clean
        print(
            f"429s: {n} rollouts, {conc} in flight, {args.delay * 1000:.0f} ms answers: "
            f"fault-free {clean:.2f} s (ideal {ideal:.2f} s); with {args.rate:.0%} random 429 "
            f"Retry-After 1 s: {faulty:.2f} s ({stats['limited']} 429s in {stats['requests']} "
            f"requests, {stats['cuts']} window cuts); ratio {ratio:.2f}x (target <= 2x); requests before their Retry-After: "
            f"{stats['early']}; failed rollouts: {clean_failed} + {faulty_failed}"
        )
        if ratio > 2.0 or stats["early"] or clean_failed or faulty_failed:
            sys.exit(1)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
