"""Session 10's leak attacks from outside, on real loopback servers: what a shared cache
keeps of the operator's answers, what the public feed tells of the live log, and more
(see each class). Each attack that worked failed here before its fix."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.metrics import Metrics
from rollwatch.web.app import build_app
from tests.integrity.conftest import append_n
from tests.integrity.test_tlog_tiles import Live, add_released, live_log
from tests.publication.helpers import add_rollout, new_run_id, start_run
from tests.web.test_http import server

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _no_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


async def _absorbed(live: Live) -> int:
    """The log's head, once the Merkle tree's worker has taken every event in."""
    head = await live.store.head()
    with anyio.fail_after(10):
        while await live.integrity.tree.current_size() < head:
            await anyio.sleep(0.02)
    return head


class TestSharedCaches:
    """A CDN or caching proxy in front of the daemon stores what ``Cache-Control`` lets it
    store, and hands it to the next client asking for the same URL."""

    async def test_the_operators_entry_bundles_are_not_for_shared_caches(self, tmp_path: Path) -> None:
        """Entry bundles hold every event, answers and verdicts under embargo included, and go
        to the operator only; they were sent ``public, max-age=31536000, immutable``, so a
        shared cache that saw the operator fetch one served it to anyone for a year. They
        must be ``private`` (and vary by who asks)."""
        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            await append_n(live.store, 300, per_call=100)  # a full first bundle
            run = new_run_id()
            await start_run(live.store, run)
            hidden = await add_rollout(live.store, run, passed=True, embargo_s=3600)
            await live.integrity.final_checkpoint()
            partial = f"/tile/entries/001.p/{await _absorbed(live) - 256}"
            for path in ("/tile/entries/000", partial, "/public/tile/entries/000"):
                r = await c.get(path)  # loopback: the operator
                assert r.status_code == 200, (path, r.status_code)
                cache = [d.strip() for d in r.headers["cache-control"].split(",")]
                assert "public" not in cache, (path, cache)
                assert "private" in cache or "no-store" in cache, (path, cache)
                assert "authorization" in r.headers.get("vary", "").lower(), path
            assert hidden.encode() in (await c.get(partial)).content  # what is at stake

    async def test_the_operators_metrics_are_not_for_shared_caches(self) -> None:
        """``/metrics`` shows the operator (here: loopback) the pass counts, and went out with
        no ``Cache-Control`` at all: a shared cache may then keep a 200 for a heuristic time
        (Varnish: 2 min by default) and hand the operator's counts to the next client, whose
        address ``Vary`` cannot name. The operator's copy must be ``private`` or ``no-store``."""
        metrics = Metrics()
        metrics.rollouts.update({"answered": 4, "passed": 3})
        async with server(build_app(metrics)) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/metrics")
        assert 'outcome="passed"' in r.text  # the operator's figures
        cache = [d.strip() for d in r.headers.get("cache-control", "").split(",")]
        assert "no-store" in cache or "private" in cache, cache


class TestLiveSizeInTheFeed:
    async def test_feed_json_is_the_same_bytes_while_the_log_grows_under_embargo(
        self, tmp_path: Path
    ) -> None:
        """A result released after the latest checkpoint was proven in ``/public/feed.json``
        against the tree as it stands, so its ``inclusion.size`` was the log's live size,
        read by anyone at each request: the size the proof routes refuse to tell, whose
        steps time each verdict under embargo. Between two checkpoints, the feed must not
        change while only embargoed results are appended."""
        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            await append_n(live.store, 10)
            await live.integrity.final_checkpoint()
            rid = await add_released(live.store, live.pdb)  # released after the checkpoint
            await _absorbed(live)
            before = await c.get("/public/feed.json")
            assert before.status_code == 200
            assert rid in before.text
            run = new_run_id()
            await start_run(live.store, run)
            for sample in range(3):
                await add_rollout(live.store, run, passed=sample != 1, sample=sample, embargo_s=3600)
            head = await _absorbed(live)
            after = await c.get("/public/feed.json")
            assert after.text == before.text
            assert after.headers["etag"] == before.headers["etag"]
            assert f'"size":{head}' not in after.text.replace(" ", "")
