"""The subscriber API and the public release attacked for leaks, on a real loopback server:
keys that should no longer work, embargoed results and their counts through headers,
conditional requests and odd parameters."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.publication import release_due
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import append_n
from tests.integrity.test_tlog_tiles import live_log
from tests.publication.helpers import (
    Env,
    add_rollout,
    add_subscriber,
    bearer,
    finish_run,
    make_config,
    new_run_id,
    revoke,
    serving,
    start_run,
)

pytestmark = pytest.mark.anyio


class TestRevokedAtOnce:
    """A key is refused from the moment its revocation is in the log, on every keyed
    route: the request right after the append, with the server's view of the keys read a
    moment before (by a request of the same key), gets 401 and no data."""

    @pytest.mark.parametrize("path", ["/v1/rollouts/{rid}", "/v1/report", "/v1/feed"])
    async def test_the_request_right_after_the_revocation_is_refused(self, tmp_path: Path, path: str) -> None:
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "eve")
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=3600)
            url = path.format(rid=rid)
            # Another process (the CLI) appends the revocation through its own store.
            async with SQLiteEventStore(tmp_path / "events.db") as other:
                assert (await env.client.get(url, headers=bearer(key))).status_code == 200
                await revoke(other, "eve")
                r = await env.client.get(url, headers=bearer(key))
            assert r.status_code == 401, (url, r.status_code, r.text[:200])
            assert set(r.json()) == {"error", "message"}
            assert rid not in r.text

    async def test_a_key_added_is_seen_at_once(self, tmp_path: Path) -> None:
        """The other way round: a key works from the moment its ``SubscriberAdded`` is in the log."""
        async with serving(tmp_path) as env:
            first = await add_subscriber(env.store, "first")
            assert (await env.client.get("/v1/report", headers=bearer(first))).status_code == 200
            with anyio.fail_after(5):
                key = await add_subscriber(env.store, "second")
                r = await env.client.get("/v1/report", headers=bearer(key))
            assert r.status_code == 200, r.text


PUBLIC_PATHS = (
    "/public/",
    "/public/feed.json",
    "/public/feed.atom",
    "/public/results.jsonl",
    "/openapi.json",
    "/healthz",
)
_VOLATILE = {"date", "server"}


async def public_snapshot(env: Env, *rollouts: str) -> dict[str, tuple[int, str, dict[str, str]]]:
    """Every public route (and each rollout's public record), GET and HEAD: status, body
    and headers (but the date), by method and path."""
    out = {}
    for path in (*PUBLIC_PATHS, *(f"/public/rollouts/{r}.json" for r in rollouts)):
        for method in ("GET", "HEAD"):
            r = await env.client.request(method, path)
            headers = {k: v for k, v in r.headers.items() if k not in _VOLATILE}
            out[f"{method} {path}"] = (r.status_code, r.text, headers)
    return out


class TestNothingOfTheEmbargoed:
    """Results under embargo (passing and failing, of runs finished and not) change no byte
    and no header of any public answer, when the operator hides the counts under embargo."""

    async def test_public_answers_are_the_same_bytes_with_or_without_them(self, tmp_path: Path) -> None:
        config = make_config(
            publication={"embargo": "1h", "embargo_counts": False}, server={"base_url": "http://feed.test"}
        )
        async with serving(tmp_path, config) as env:
            run = new_run_id()
            await start_run(env.store, run)
            public = await add_rollout(env.store, run, passed=True, embargo_s=0)
            await add_rollout(env.store, run, passed=False, sample=1)
            await finish_run(env.store, run, rollouts=2, passed=1)
            with anyio.fail_after(10):
                while await release_due(env.store, env.pdb) == 0:
                    await anyio.sleep(0.05)
            unknown = str(uuid.uuid4())
            before = await public_snapshot(env, public, unknown)
        assert before[f"GET /public/rollouts/{public}.json"][0] == 200
        hidden: list[str] = []
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            # More of the disclosed run's model, and a run of a new model, all under embargo.
            later = new_run_id()
            await start_run(store, later, models=("gpt-x", "gpt-secret"))
            for model in ("gpt-x", "gpt-secret"):
                for sample, passed in enumerate((True, True, False)):
                    hidden.append(
                        await add_rollout(
                            store, later, passed=passed, model=model, sample=sample, embargo_s=3600
                        )
                    )
            await finish_run(store, later, rollouts=6, passed=4)
            failures = new_run_id()  # no positive: disclosed only an embargo after its last score
            await start_run(store, failures, models=("gpt-fails",))
            for sample in range(3):
                hidden.append(
                    await add_rollout(store, failures, passed=False, model="gpt-fails", sample=sample)
                )
            await finish_run(store, failures, rollouts=3, passed=0)
            unfinished = new_run_id()
            await start_run(store, unfinished)
            hidden.append(await add_rollout(store, unfinished, passed=True, embargo_s=3600))
        # A server started now (no cache from before) answers exactly as the one before.
        async with serving(tmp_path, config) as env:
            after = await public_snapshot(env, public, unknown)
            for rid in hidden:  # an embargoed result is as unknown as an id never used
                r = await env.client.get(f"/public/rollouts/{rid}.json")
                assert (r.status_code, r.text) == after[f"GET /public/rollouts/{unknown}.json"][:2]
        for key, (status, body, headers) in after.items():
            assert (status, headers) == before[key][::2], key
            assert body == before[key][1], key
            assert "gpt-secret" not in body, key
            assert "gpt-fails" not in body, key


class TestTreeSizeBeyondTheCheckpoint:
    """The public integrity routes answer for the signed tree only: between two checkpoints
    an outsider must not read the log's live size, which tells each verdict from the next
    (a pass is appended with one more decision than a failure, so the size's steps count the
    passes under embargo as they are scored)."""

    async def test_no_public_route_tells_the_live_size(self, tmp_path: Path) -> None:
        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            await append_n(live.store, 10)
            await live.integrity.final_checkpoint()
            cp = await live.integrity.tree.latest_checkpoint()
            assert cp is not None
            signed = cp.size
            run = new_run_id()
            await start_run(live.store, run)
            await add_rollout(live.store, run, passed=True, embargo_s=3600)  # 6 events
            head = await live.store.head()
            with anyio.fail_after(10):  # the tree's worker takes the new events in
                while await live.integrity.tree.current_size() < head:
                    await anyio.sleep(0.02)
            assert head > signed + 1
            probes = [
                f"/public/proof/inclusion?seq=1&size={head}",
                f"/public/proof/inclusion?seq={head}&size={head}",
                "/public/proof/inclusion?seq=1&size=999999999",
                f"/public/proof/consistency?from={signed}&to={head}",
                "/public/proof/consistency?from=1&to=999999999",
                f"/tile/0/000.p/{head}",
                f"/public/tile/0/000.p/{head}",
                "/tile/0/000",
            ]
            for path in probes:
                r = await c.get(path)
                assert r.status_code in (400, 404), (path, r.status_code)
                assert set(r.json()) == {"error", "message"}, path
                told = set(re.findall(r"\d+", r.json()["message"])) - set(re.findall(r"\d+", path))
                assert str(head) not in told, (path, r.text)
            # What the checkpoint signed is served as before.
            assert (await c.get(f"/public/proof/inclusion?seq=1&size={signed}")).status_code == 200
            assert (await c.get(f"/public/proof/consistency?from=1&to={signed}")).status_code == 200
            assert (await c.get(f"/tile/0/000.p/{signed}")).status_code == 200


class TestCachedAnswersForBadKeys:
    """An answer a key once had is not served again (304 or HEAD) to a key that was revoked,
    expired or lacks the scope: the key is checked before the cache."""

    async def test_no_304_and_no_head_for_a_key_that_no_longer_works(self, tmp_path: Path) -> None:
        async with serving(tmp_path) as env:
            revoked = await add_subscriber(env.store, "gone")
            expiring = await add_subscriber(
                env.store, "late", expires=datetime.now(UTC) + timedelta(seconds=1)
            )
            feed_only = await add_subscriber(env.store, "feeder", scopes=["feed"])
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=3600)
            paths = ("/v1/feed", f"/v1/rollouts/{rid}", "/v1/report")
            etags = {}
            for path in paths:
                r = await env.client.get(path, headers=bearer(expiring))
                assert r.status_code == 200, path
                etags[path] = r.headers["etag"]
            await revoke(env.store, "gone")
            with anyio.fail_after(5):
                while (await env.client.get("/v1/report", headers=bearer(expiring))).status_code == 200:
                    await anyio.sleep(0.05)
            for path in paths:
                for key, allowed in ((revoked, (401,)), (expiring, (401,)), (feed_only, (401, 403))):
                    if key == feed_only and path == "/v1/feed":
                        continue
                    for inm in (etags[path], "*", f"W/{etags[path]}"):
                        for method in ("GET", "HEAD"):
                            r = await env.client.request(
                                method, path, headers={**bearer(key), "If-None-Match": inm}
                            )
                            assert r.status_code in allowed, (path, method, inm, r.status_code)
                            assert "etag" not in r.headers, (path, method)
                            assert rid not in r.text

    async def test_a_long_poll_whose_key_expires_meanwhile_gets_nothing(self, tmp_path: Path) -> None:
        """A ``/v1/feed`` long poll opened a moment before its key expires: the answer, with
        or without new items, is 401 and no items."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "late", expires=datetime.now(UTC) + timedelta(seconds=1))
            head = (await env.client.get("/v1/feed", headers=bearer(key))).json()["next"]
            r = await env.client.get(f"/v1/feed?after={head}&wait=3", headers=bearer(key))
            assert r.status_code == 401, r.text
            assert "expired" in r.json()["message"]
