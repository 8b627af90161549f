"""The embargo and the public release: the release job, the public routes, the export."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import feedparser
import pytest

from rollwatch.abc import EventStore
from rollwatch.events import PublicReleased
from rollwatch.projections import ProjectionDB
from rollwatch.publication import export_public, release_due, release_job, release_one
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import (
    Env,
    add_rollout,
    all_projections,
    finish_run,
    make_config,
    new_run_id,
    serving,
    start_run,
)

pytestmark = pytest.mark.anyio

PUBLIC = ("/public/", "/public/feed.json", "/public/feed.atom", "/public/results.jsonl")


async def public_bodies(env: Env, *rollouts: str) -> dict[str, str]:
    """Every public route's body (and each rollout's public record), by path."""
    out = {}
    for path in (*PUBLIC, *(f"/public/rollouts/{r}.json" for r in rollouts)):
        r = await env.client.get(path)
        assert r.status_code in (200, 404), path
        out[path] = r.text
    return out


async def released_ids(store: EventStore) -> list[str]:
    return [ev.data["rollout_id"] async for ev in store.read(types={"PublicReleased"})]


class TestEmbargo:
    async def test_positive_absent_before_embargo_present_after_negative_never(self, tmp_path: Path) -> None:
        """With embargo 2s a positive is on no public route (nor in an export) until released after
        not_before; a negative never appears anywhere."""
        config = make_config(publication={"embargo": "2s"})
        async with serving(tmp_path, config) as env:
            rid = new_run_id()
            await start_run(env.store, rid)
            pos = await add_rollout(env.store, rid, passed=True, embargo_s=2.0, problem_id="two-sum")
            neg = await add_rollout(env.store, rid, passed=False, problem_id="two-sum")
            await finish_run(env.store, rid, rollouts=2, passed=1)
            decided = datetime.now(UTC)

            assert await release_due(env.store, env.pdb) == 0
            for path, body in (await public_bodies(env, pos, neg)).items():
                assert pos not in body, path
                assert neg not in body, path
            assert (await env.client.get(f"/public/rollouts/{pos}.json")).status_code == 404
            await export_public(
                env.store, env.pdb, tmp_path / "before", base_url="http://x/public/", embargo_s=2
            )
            for f in (tmp_path / "before").rglob("*"):
                if f.is_file():
                    assert pos not in f.read_text(), f
                    assert neg not in f.read_text(), f

            # The release job's pass, repeated until wall time passes not_before.
            with anyio.fail_after(10):
                while await release_due(env.store, env.pdb) == 0:
                    await anyio.sleep(0.05)
            assert datetime.now(UTC) >= decided + timedelta(seconds=1.9)
            bodies = await public_bodies(env, pos, neg)
            for path in PUBLIC:
                assert pos in bodies[path] or path == "/public/", path
                assert neg not in bodies[path], path
            assert f"rollout-{pos}" in bodies["/public/"]
            assert json.loads(bodies[f"/public/rollouts/{pos}.json"])["answer"].startswith("def solve()")
            assert (await env.client.get(f"/public/rollouts/{neg}.json")).status_code == 404
            await export_public(
                env.store, env.pdb, tmp_path / "after", base_url="http://x/public/", embargo_s=2
            )
            assert pos in (tmp_path / "after" / "results.jsonl").read_text()
            for f in (tmp_path / "after").rglob("*"):
                if f.is_file():
                    assert neg not in f.read_text(), f

    async def test_release_event_alone_does_not_publish_early(self, tmp_path: Path) -> None:
        """A PublicReleased appended before not_before (a bug, a forgery, a clock ahead elsewhere)
        does not make the result public: both the event and the date are checked."""
        async with serving(tmp_path) as env:
            rid = new_run_id()
            await start_run(env.store, rid)
            pos = await add_rollout(env.store, rid, passed=True, embargo_s=3600)
            await env.store.append(f"rollout-{pos}", [PublicReleased(rollout_id=pos)])
            for path, body in (await public_bodies(env, pos)).items():
                assert pos not in body, path

    async def test_decisions_in_the_log_stand_when_the_embargo_changes(self, tmp_path: Path) -> None:
        """The release job and the public routes read not_before from the decision: a shorter
        embargo now does not release an older decision early, a longer one does not hold back a due one."""
        async with serving(tmp_path, make_config(publication={"embargo": "0s"})) as env:
            rid = new_run_id()
            await start_run(env.store, rid)
            held = await add_rollout(env.store, rid, passed=True, embargo_s=90 * 86400)
            due = await add_rollout(
                env.store, rid, passed=True, embargo_s=0, not_before=datetime.now(UTC) - timedelta(seconds=1)
            )
            assert await release_due(env.store, env.pdb) == 1
            assert await released_ids(env.store) == [due]
            bodies = await public_bodies(env, held, due)
            assert held not in bodies["/public/feed.json"]
            assert due in bodies["/public/feed.json"]


class TestReleaseJob:
    async def test_catches_up_after_downtime_once_per_rollout(self, tmp_path: Path) -> None:
        """Decisions that fell due while the daemon was down are released by the job's first pass,
        and later passes release nothing again."""
        async with (
            SQLiteEventStore(tmp_path / "e.db") as store,
            ProjectionDB(tmp_path / "p.db", all_projections()) as pdb,
        ):
            rid = new_run_id()
            await start_run(store, rid)
            past = datetime.now(UTC) - timedelta(days=1)
            due = {await add_rollout(store, rid, passed=True, sample=i, not_before=past) for i in range(40)}
            await add_rollout(store, rid, passed=True, embargo_s=3600)
            await add_rollout(store, rid, passed=False)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                await tg.start(
                    lambda task_status: release_job(
                        store, pdb, interval=0.05, stop_event=stop, task_status=task_status
                    )
                )
                with anyio.fail_after(10):
                    while len(await released_ids(store)) < len(due):
                        await store.wait_for_new(await store.head(), 0.2)
                # A few more passes of the job: nothing more is released.
                for _ in range(3):
                    await store.wait_for_new(await store.head(), 0.1)
                stop.set()
            assert sorted(await released_ids(store)) == sorted(due)
            assert await release_due(store, pdb) == 0

    async def test_two_processes_release_each_rollout_once(self, tmp_path: Path) -> None:
        """Two release passes racing from two processes (two stores, two projection files) append
        exactly one PublicReleased per rollout: the stream version guards the append."""
        path = tmp_path / "e.db"
        async with (
            SQLiteEventStore(path) as a,
            SQLiteEventStore(path) as b,
            ProjectionDB(tmp_path / "pa.db", all_projections()) as pa,
            ProjectionDB(tmp_path / "pb.db", all_projections()) as pb,
        ):
            rid = new_run_id()
            await start_run(a, rid)
            past = datetime.now(UTC) - timedelta(seconds=5)
            due = [await add_rollout(a, rid, passed=True, sample=i, not_before=past) for i in range(60)]
            counts: list[int] = []

            async def run(store: EventStore, pdb: ProjectionDB) -> None:
                counts.append(await release_due(store, pdb))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, a, pa)
                tg.start_soon(run, b, pb)
            assert sum(counts) == len(due)
            ids = await released_ids(a)
            assert sorted(ids) == sorted(due)
            assert len(ids) == len(set(ids))
            # The same rollout from both stores at once: one wins, the other finds it released.
            rid2 = await add_rollout(a, rid, passed=True, not_before=past)
            results = []

            async def one(store: EventStore) -> None:
                results.append(await release_one(store, rid2))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, a)
                tg.start_soon(one, b)
            assert sorted(results) == [False, True]
            assert (await released_ids(a)).count(rid2) == 1

    async def test_never_releases_negatives_or_undecided(self, tmp_path: Path) -> None:
        """``release_one`` refuses a negative, an undecided rollout, and one not yet due."""
        async with SQLiteEventStore(tmp_path / "e.db") as store:
            rid = new_run_id()
            neg = await add_rollout(store, rid, passed=False)
            later = await add_rollout(store, rid, passed=True, embargo_s=60)
            assert not await release_one(store, neg)
            assert not await release_one(store, later)
            assert not await release_one(store, "no-such-rollout")
            assert await released_ids(store) == []


class TestFeedsAndPage:
    async def _released(self, env: Env, n: int = 3) -> list[str]:
        rid = new_run_id()
        await start_run(env.store, rid)
        past = datetime.now(UTC) - timedelta(seconds=1)
        ids = [
            await add_rollout(
                env.store,
                rid,
                passed=True,
                problem_id=f"p{i}",
                sample=i,
                not_before=past,
                answer=f"print('<b>{i}</b> & \x01')",
            )
            for i in range(n)
        ]
        await add_rollout(env.store, rid, passed=False)
        await finish_run(env.store, rid)
        await release_due(env.store, env.pdb)
        return ids

    async def test_atom_parses_without_bozo(self, tmp_path: Path) -> None:
        """The Atom feed is well-formed Atom 1.0 that feedparser reads without complaint."""
        async with serving(tmp_path) as env:
            empty = feedparser.parse((await env.client.get("/public/feed.atom")).content)
            assert not empty.bozo, empty.get("bozo_exception")
            ids = await self._released(env)
            r = await env.client.get("/public/feed.atom")
            assert r.headers["content-type"].startswith("application/atom+xml")
            feed = feedparser.parse(r.content)
            assert not feed.bozo, feed.get("bozo_exception")
            assert feed.version == "atom10"
            assert feed.feed.title
            assert feed.feed.id
            assert feed.feed.updated
            assert {e.id for e in feed.entries} == {f"urn:uuid:{i}" for i in ids}
            for e in feed.entries:
                assert e.title
                assert e.updated
                assert e.link.startswith(env.base + "/public/rollouts/")
                assert "<b>" in e.content[0].value  # text content, escaped on the wire

    async def test_json_feed_has_required_fields(self, tmp_path: Path) -> None:
        """The JSON Feed has version 1.1, title, home_page_url, feed_url and items with id, url,
        title, content_text and date_published (RFC 3339)."""
        async with serving(tmp_path) as env:
            ids = await self._released(env)
            r = await env.client.get("/public/feed.json")
            assert r.headers["content-type"].startswith("application/feed+json")
            doc = r.json()
            assert doc["version"] == "https://jsonfeed.org/version/1.1"
            assert doc["title"]
            assert doc["home_page_url"] == env.base + "/public/"
            assert doc["feed_url"] == env.base + "/public/feed.json"
            assert {i["id"] for i in doc["items"]} == {f"urn:uuid:{i}" for i in ids}
            for item in doc["items"]:
                assert item["title"]
                assert item["content_text"]
                assert item["url"].startswith("http")
                datetime.fromisoformat(item["date_published"].replace("Z", "+00:00"))
                assert (await env.client.get(item["url"].removeprefix(env.base))).status_code == 200

    async def test_html_page_has_results_and_an_inline_chart(self, tmp_path: Path) -> None:
        """The page explains what is measured, lists results by model and problem, and draws the
        pass rate of disclosed runs as inline SVG with no external assets."""
        async with serving(tmp_path) as env:
            await self._released(env)
            r = await env.client.get("/public/")
            html = r.text
            assert r.headers["content-type"].startswith("text/html")
            assert "What is measured" in html
            assert "By model and problem" in html
            assert "<svg" in html
            assert "<circle" in html
            assert "75.0%" in html
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
            assert "<b>0</b>" not in html
            assert "&lt;b&gt;0&lt;/b&gt;" in html

    async def test_export_writes_the_same_release(self, tmp_path: Path) -> None:
        """``export_public`` writes index.html, feed.json, feed.atom and results.jsonl with exactly
        the released results, the feeds byte-identical to the routes for the same base URL."""
        async with serving(tmp_path) as env:
            ids = await self._released(env)
            out = tmp_path / "site"
            summary = await export_public(
                env.store,
                env.pdb,
                out,
                base_url=env.base + "/public/",
                embargo_s=env.config.publication.embargo,
            )
            assert summary.released == len(ids)
            for name in ("index.html", "feed.json", "feed.atom", "results.jsonl"):
                assert (out / name).is_file()
            lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
            assert sorted(x["rollout_id"] for x in lines) == sorted(ids)
            assert all(x["passed"] for x in lines)
            assert (out / "feed.json").read_bytes() == (await env.client.get("/public/feed.json")).content
            assert (out / "feed.atom").read_bytes() == (await env.client.get("/public/feed.atom")).content
            assert (out / "results.jsonl").read_bytes() == (
                await env.client.get("/public/results.jsonl")
            ).content
            for i in ids:
                assert (out / "rollouts" / f"{i}.json").is_file()
