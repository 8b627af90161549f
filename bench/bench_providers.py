"""Provider path throughput: 5,000 rollouts at concurrency 500 against a 100 ms server.

The server is a raw asyncio HTTP/1.1 server in a separate process (so its CPU is not
ours) that answers every POST with an OpenAI Chat Completions body after 100 ms.
Two clients, in the same run, against the same server:

* bare — an ``httpx.AsyncClient`` loop: POST the same JSON body, decode the JSON
  answer. Nothing else.
* ours — ``ProviderClient`` (kind ``openai``): adapter, limits, retry bookkeeping,
  cost, and an AttemptLog that appends ``RolloutRequested`` and ``RolloutResponded``
  to a real ``SQLiteEventStore`` in a temp dir (WAL, synchronous=FULL).

Both hold as many connections as the concurrency (httpx's default pool is 100): the
bare loop in one pool of 500, as the brief for this benchmark has it; ours in pools
of four (see ``_Pools`` in ``providers/client.py``: httpcore 1.0 walks the whole pool
on every request, encode/httpcore#1035, which dominates the bare loop's CPU). Each
is measured once after a warm-up; a third run, a bare loop on the same small pools,
shows what our layer itself costs on top of httpx. CPU is this process's (``time.process_time``: the
event loop plus the SQLite writer thread). Floor: ours ≥ 0.8× bare throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rollwatch.config import ProviderConfig
from rollwatch.errors import ProviderError
from rollwatch.events import RolloutFailed, RolloutRequested, RolloutResponded
from rollwatch.providers import Answer, Prompt, ProviderClient
from rollwatch.providers.client import CONNECTIONS_PER_POOL
from rollwatch.store.sqlite import SQLiteEventStore

KEY_ENV = "ROLLWATCH_BENCH_KEY"
MODEL = "gpt-bench"
PROMPT = Prompt(
    "Write a Python function two_sum(nums, target) that returns the indices of the two "
    "numbers that add up to target.",
    system="Answer with Python code only.",
)

# --- the server (runs in its own process) ---------------------------------------------

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1741569952,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "```python\ndef two_sum(nums, target):\n"
                    "    seen = {}\n    for i, x in enumerate(nums):\n"
                    "        if target - x in seen:\n            return [seen[target - x], i]\n"
                    "        seen[x] = i\n```",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 40,
            "completion_tokens": 60,
            "total_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_bench\r\n"
    b"content-length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
)


class _Http(asyncio.Protocol):
    """Keep-alive HTTP/1.1: every complete request is answered after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            loop.call_later(self.delay, self._reply)

    def _reply(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


async def _serve(delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(delay), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


# --- the clients ----------------------------------------------------------------------


@dataclass
class Result:
    name: str
    n: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.n / self.wall

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.n * 1000


async def _workers(n: int, concurrency: int, one: Any) -> None:
    """``n`` calls of ``one(i)`` from ``concurrency`` tasks."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await one(i)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


async def bare(url: str, n: int, concurrency: int, per_pool: int | None = None) -> Result:
    """The floor's reference: a plain httpx loop with the same body and as many
    connections; in one pool, or (``per_pool``) spread as ProviderClient spreads them."""
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": PROMPT.system},
                {"role": "user", "content": PROMPT.text},
            ],
            "temperature": 1.0,
        }
    ).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer bench-key"}
    per = per_pool or concurrency
    clients = [
        httpx.AsyncClient(limits=httpx.Limits(max_connections=per, max_keepalive_connections=per), timeout=60)
        for _ in range(0, concurrency, per)
    ]
    free = [i for i in range(len(clients)) for _ in range(per)]

    async def one(i: int) -> None:
        lease = free.pop()
        try:
            r = await clients[lease].post(url + "/chat/completions", content=body, headers=headers)
        finally:
            free.append(lease)
        r.raise_for_status()
        json.loads(r.content)

    try:
        t, c = time.perf_counter(), time.process_time()
        await _workers(n, concurrency, one)
        name = f"bare httpx, pools of {per}" if per_pool else "bare httpx"
        return Result(name, n, time.perf_counter() - t, time.process_time() - c)
    finally:
        for client in clients:
            await client.aclose()


class StoreLog:
    """An AttemptLog that appends every attempt to the event store, as a run does."""

    def __init__(self, store: SQLiteEventStore, i: int) -> None:
        self.store = store
        self.rid = f"bench-{i}"
        self.stream = f"rollout-{self.rid}"
        self.sample = i

    async def requested(self, attempt: int, request: dict[str, Any]) -> None:
        await self.store.append(
            self.stream,
            [
                RolloutRequested(
                    rollout_id=self.rid,
                    run_id="bench",
                    provider="bench",
                    model=MODEL,
                    problem_id="two-sum",
                    problem_hash="0" * 64,
                    sample=self.sample,
                    attempt=attempt,
                    request=request,
                    node="bench",
                )
            ],
        )

    async def failed(self, attempt: int, error: ProviderError, final: bool) -> None:
        await self.store.append(
            self.stream,
            [
                RolloutFailed(
                    rollout_id=self.rid,
                    attempt=attempt,
                    kind=error.kind,
                    status=error.status,
                    retryable=error.retryable,
                    message=error.message,
                    final=final,
                )
            ],
        )

    async def responded(self, attempt: int, answer: Answer, cost_usd: float | None) -> None:
        await self.store.append(
            self.stream,
            [
                RolloutResponded(
                    rollout_id=self.rid,
                    attempt=attempt,
                    text=answer.text,
                    reasoning=answer.reasoning,
                    finish_reason=answer.finish_reason,
                    usage=answer.usage.to_dict(),
                    cost_usd=cost_usd,
                    latency_ms=round(answer.latency_ms, 3),
                    request_id=answer.request_id,
                )
            ],
        )


async def ours(url: str, n: int, concurrency: int, db: Path) -> Result:
    """The whole provider path, with every attempt appended to a real event store."""
    config = ProviderConfig(
        name="bench",
        kind="openai",
        base_url=url,
        api_key_env=KEY_ENV,
        max_concurrency=concurrency,
        timeout=60.0,
        prices={MODEL: {"input": 1.0, "output": 4.0}},
    )
    failed = 0
    async with SQLiteEventStore(db) as store, ProviderClient(config) as client:

        async def one(i: int) -> None:
            nonlocal failed
            answer = await client.rollout(MODEL, PROMPT, {"temperature": 1.0}, StoreLog(store, i))
            failed += answer is None

        t, c = time.perf_counter(), time.process_time()
        await _workers(n, concurrency, one)
        result = Result("rollwatch", n, time.perf_counter() - t, time.process_time() - c)
        events = await store.head()
    if failed or events < 2 * n:
        raise SystemExit(f"bench failed: {failed} rollouts failed, {events} events for {n}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--delay", type=float, default=0.1, help="server answer time, seconds")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.delay))
        return
    os.environ[KEY_ENV] = "bench-key"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--delay", str(args.delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        n, conc = args.rollouts, args.concurrency
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
            print(
                f"{n} rollouts at concurrency {conc}, server answers in {args.delay * 1000:.0f} ms "
                f"(ideal {conc / args.delay:,.0f}/s)...",
                file=sys.stderr,
            )
            anyio.run(bare, url, conc, conc)  # warm-up: connections, imports, caches
            anyio.run(ours, url, conc, conc, Path(d) / "warm.db")
            b = anyio.run(bare, url, n, conc)
            o = anyio.run(ours, url, n, conc, Path(d) / "events.db")
            s = anyio.run(bare, url, n, conc, CONNECTIONS_PER_POOL)
        for r in (b, o, s):
            print(
                f"  {r.name:<24} {r.rate:8,.0f} rollouts/s  {r.cpu_ms:6.3f} CPU ms/rollout",
                file=sys.stderr,
            )
        print(
            f"providers: {o.rate:,.0f} rollouts/s, {o.cpu_ms:.3f} CPU ms/rollout "
            f"(adapter + limits + 2 event appends each); bare httpx loop {b.rate:,.0f} rollouts/s, "
            f"{b.cpu_ms:.3f} CPU ms/request; throughput ratio {o.rate / b.rate:.2f}x (floor 0.8x), "
            f"CPU ratio {o.cpu_ms / b.cpu_ms:.2f}x"
        )
        print(
            f"providers vs a bare loop on the same small pools ({s.rate:,.0f} rollouts/s, "
            f"{s.cpu_ms:.3f} CPU ms/request): throughput {o.rate / s.rate:.2f}x, "
            f"our own cost {o.cpu_ms - s.cpu_ms:.3f} CPU ms/rollout"
        )
        if o.rate < 0.8 * b.rate:
            sys.exit(1)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
