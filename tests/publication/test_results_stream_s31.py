"""``/public/results.jsonl`` streamed (an archive too large to keep in memory) to one client
at a time: the slot is given back however the stream ends.

The slot was an anyio ``CapacityLimiter`` taken in the request's task and released from the
body's generator, which Starlette runs in a task of its own: the release raised, the body
ended without its last chunk (the client read a cut-off answer: ``IncompleteRead`` after
137 MB at a 200k-event log) and the slot was never given back, so one anonymous GET made the
route answer 503 to everyone until the daemon restarted. Real log, real tree and checkpoint,
the real routes under uvicorn on loopback; the size over which the archive is streamed is
lowered so that a few results are "too large"."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from rollwatch.publication import routes
from tests.integrity.test_tlog_tiles import Live, add_released, live_log, verify_bundle

pytestmark = pytest.mark.anyio

RESULTS = 12


async def _released(live: Live, n: int) -> list[str]:
    ids = [await add_released(live.store, live.pdb) for _ in range(n)]
    await live.integrity.final_checkpoint()
    return ids


async def _whole(c: httpx.AsyncClient) -> httpx.Response:
    return await c.get("public/results.jsonl")


async def _served(c: httpx.AsyncClient, method: str = "GET") -> httpx.Response:
    """The archive, asked again while the stream before still holds the slot: the server
    gives it back once that stream's last chunk is sent, a moment after its client has it
    (a 503 for a moment is fair; a 503 for good is the bug)."""
    with anyio.fail_after(20):
        while (r := await c.request(method, "public/results.jsonl")).status_code == 503:
            assert r.headers.get("retry-after") == "30"
            await anyio.sleep(0.05)
    return r


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every archive of more than 20 KB is streamed (a result with its proof is ~8-15 KB)."""
    monkeypatch.setattr(routes, "_RESULTS_KEPT", 20_000)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


async def test_a_streamed_archive_arrives_whole_and_the_next_request_is_served(
    tmp_path: Path, streamed: None
) -> None:
    async with live_log(tmp_path) as live:
        ids = await _released(live, RESULTS)
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            vkey = (await c.get("public/key")).text
            head = await _served(c, "HEAD")  # a HEAD holds and gives back the slot too
            assert head.status_code == 200, head.status_code
            assert head.content == b""
            for attempt in range(3):
                r = await _served(c)  # httpx raises on a body cut short (no last chunk)
                assert r.status_code == 200, (attempt, r.status_code, r.text[:200])
                assert r.headers.get("transfer-encoding") == "chunked", "not the streamed path"
                lines = [json.loads(x) for x in r.text.splitlines()]
                assert sorted(x["rollout_id"] for x in lines) == sorted(ids)
                for line in lines:
                    verify_bundle(line, vkey)


async def test_a_client_gone_mid_stream_gives_the_slot_back(tmp_path: Path, streamed: None) -> None:
    async with live_log(tmp_path) as live:
        ids = await _released(live, RESULTS)
        u = urlsplit(live.url)
        for _ in range(3):
            # A raw client: asks, reads the head and a first piece of the body, and hangs up.
            # (The one before may still hold the slot: the server learns of a hang-up when it
            # next writes, so a 503 is asked again.)
            assert u.hostname is not None
            assert u.port is not None
            with anyio.fail_after(20):
                while True:
                    async with await anyio.connect_tcp(u.hostname, u.port) as s:
                        await s.send(
                            f"GET /public/results.jsonl HTTP/1.1\r\nHost: {u.netloc}\r\n\r\n".encode()
                        )
                        got = await s.receive(4096)
                    if not got.startswith(b"HTTP/1.1 503"):
                        break
                    await anyio.sleep(0.05)
                assert got.startswith(b"HTTP/1.1 200"), got[:200]
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            # The server learns of a hang-up when it next writes.
            r = await _served(c)
            assert r.status_code == 200, r.text[:200]
            assert len(r.text.splitlines()) == len(ids)


async def test_one_stream_at_a_time_others_are_told_to_retry(tmp_path: Path, streamed: None) -> None:
    """A second request while a stream is being sent gets 503 with Retry-After (each stream
    makes every result's proof afresh), and is served once the first is done."""
    async with live_log(tmp_path) as live:
        await _released(live, RESULTS)
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=30) as a,
            httpx.AsyncClient(base_url=live.url, timeout=30) as b,
        ):
            async with a.stream("GET", "public/results.jsonl") as first:
                assert first.status_code == 200
                it = first.aiter_bytes()
                await it.__anext__()  # the stream is under way, not finished
                second = await _whole(b)
                if second.status_code == 200:
                    pytest.skip("the first stream ended before the second request came")
                assert second.status_code == 503
                assert second.headers.get("retry-after") == "30"
                async for _ in it:
                    pass
            assert (await _served(b)).status_code == 200
