"""Session 10's leak attacks from outside, on real loopback servers: what a shared cache
keeps of the operator's answers, what the public feed tells of the live log, and more
(see each class). Each attack that worked failed here before its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.abc import EventStore
from rollwatch.events import PublicationDecided, RolloutScored
from rollwatch.metrics import Metrics
from rollwatch.publication import feeds
from rollwatch.publication.policy import decide
from rollwatch.publication.public import public_view
from rollwatch.web.app import build_app
from tests.integrity.conftest import append_n
from tests.integrity.test_tlog_tiles import Live, add_released, live_log
from tests.publication.helpers import (
    add_rollout,
    finish_run,
    make_config,
    new_run_id,
    rollout_events,
    serving,
    start_run,
)
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


DAY = 86400.0


async def add_decided(store: EventStore, run: str, rid: str, *, passed: bool, embargo: str) -> None:
    """One rollout whose decisions are those ``publication.policy.decide`` makes under
    ``[publication] embargo = EMBARGO`` (the daemon's own, not the helper's)."""
    evs = [e for e in rollout_events(rid, run, passed=passed) if not isinstance(e, PublicationDecided)]
    scored = next(e for e in evs if isinstance(e, RolloutScored))
    policy = make_config(publication={"embargo": embargo}).publication
    await store.append(f"rollout-{rid}", [*evs, *decide(policy, scored, datetime.now(UTC))])


class TestRunsDisclosedByTheirVerdicts:
    async def test_when_a_run_is_disclosed_does_not_tell_whether_it_passed(self, tmp_path: Path) -> None:
        """A run's pass rate is disclosed an embargo after its last score. That embargo was
        the largest one its public decisions carried, else (no pass: no public decision)
        the one configured now. Once the operator shortened the embargo (90 days, then 30),
        a run with a pass decided under 90 days stayed off the chart while a run of
        failures scored the same day went on it at day 30: from day 30 to 90 anyone could
        tell the runs with passes under embargo from those without, counts of the
        embargoed switched off or not. Two logs differing in one verdict under embargo
        must give the same public page, feeds and chart on every day."""
        runs = {"a": new_run_id(), "b": new_run_id(), "c": new_run_id()}
        now_config = make_config(publication={"embargo": "30d", "embargo_counts": False})

        async def answers(folder: Path, a_passed: bool) -> dict[int, tuple[bytes, str, list[object]]]:
            folder.mkdir()
            async with serving(folder, now_config) as env:
                for run in runs.values():
                    await start_run(env.store, run)
                # Decided while the embargo was 90 days. a: the verdict that differs;
                # b: a failure in both logs; c: a pass in both logs.
                verdicts = {"a": a_passed, "b": False, "c": True}
                for name, run in runs.items():
                    await add_decided(env.store, run, f"rid-{name}", passed=verdicts[name], embargo="90d")
                    await finish_run(env.store, run, rollouts=1, passed=int(verdicts[name]))
                await env.api.current()
                out = {}
                start = datetime.now(UTC)
                for day in (1, 31, 60, 89, 91):
                    view = await public_view(
                        env.store,
                        env.pdb,
                        now=start + timedelta(days=day),
                        embargo_default=30 * DAY,
                        embargo_counts=False,
                    )
                    chart = [(s.label, p.run_id, p.passed, p.rollouts) for s in view.series for p in s.points]
                    page = feeds.html_page(view, embargo_s=30 * DAY)
                    out[day] = (feeds.json_feed_bytes(view, "http://feed.test/"), page, chart)
                return out

        passed = await answers(tmp_path / "passed", True)
        failed = await answers(tmp_path / "failed", False)
        for day in (1, 31, 60, 89):
            assert passed[day][2] == failed[day][2], (day, passed[day][2], failed[day][2])
            assert passed[day][:2] == failed[day][:2], day
        # The control: once 90 days are over, the runs are shown, and differ by that verdict.
        assert (runs["b"], 0, 1) in [c[1:] for c in failed[91][2]]
        assert passed[91][2] != failed[91][2]
