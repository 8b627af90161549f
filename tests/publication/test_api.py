"""The subscriber API on a real loopback server: auth, paging, long polls, ETags, limits."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from rollwatch.publication.projections import FEED_ITEM_KEYS, FEED_TYPES
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import (
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


class SignallingStore(SQLiteEventStore):
    """A store that says when someone starts waiting for new events (the long poll)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.waiting = anyio.Event()

    async def wait_for_new(self, after: int, timeout: float) -> int:
        self.waiting.set()
        return await super().wait_for_new(after, timeout)


def assert_no_data(r: httpx.Response) -> None:
    body = r.json()
    assert set(body) == {"error", "message"}
    assert "items" not in r.text


class TestAuth:
    async def test_missing_wrong_expired_revoked_get_401(self, tmp_path: Path) -> None:
        """Every subscriber route answers 401 with only an error for each kind of bad key."""
        async with serving(tmp_path) as env:
            good = await add_subscriber(env.store, "good")
            expired = await add_subscriber(
                env.store, "late", expires=datetime.now(UTC) + timedelta(seconds=0.2)
            )
            revoked = await add_subscriber(env.store, "gone")
            await revoke(env.store, "gone")
            rid = new_run_id()
            await start_run(env.store, rid)
            roll = await add_rollout(env.store, rid, passed=True)
            # The key expires while the server runs: poll until wall time passes its expiry.
            with anyio.fail_after(5):
                while (await env.client.get("/v1/feed", headers=bearer(expired))).status_code != 401:
                    await anyio.sleep(0.05)
            cases = {
                "missing": {},
                "not bearer": {"Authorization": f"Basic {good}"},
                "malformed": bearer("hunter2"),
                "unknown": bearer("rw_" + "x" * 43),
                "expired": bearer(expired),
                "revoked": bearer(revoked),
            }
            for path in ("/v1/feed", f"/v1/rollouts/{roll}", "/v1/report"):
                assert (await env.client.get(path, headers=bearer(good))).status_code == 200, path
                for what, headers in cases.items():
                    r = await env.client.get(path, headers=headers)
                    assert r.status_code == 401, (path, what)
                    assert r.headers["www-authenticate"].startswith("Bearer")
                    assert_no_data(r)
                    assert roll not in r.text
            r = await env.client.get("/v1/feed", headers=bearer(expired))
            assert "expired" in r.json()["message"]
            r = await env.client.get("/v1/feed", headers=bearer(revoked))
            assert "revoked" in r.json()["message"]

    async def test_revocation_takes_effect_within_a_second(self, tmp_path: Path) -> None:
        """A revocation appended by another process while the server runs locks the key out in < 1 s."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            assert (await env.client.get("/v1/feed", headers=bearer(key))).status_code == 200
            # Another process (the CLI) appends to the same file through its own store.
            async with SQLiteEventStore(tmp_path / "events.db") as other:
                await revoke(other, "alice")
            revoked_at = time.monotonic()
            with anyio.fail_after(5):
                while (r := await env.client.get("/v1/feed", headers=bearer(key))).status_code == 200:
                    await anyio.sleep(0.02)
            assert r.status_code == 401
            assert time.monotonic() - revoked_at < 1.0

    async def test_scopes_limit_routes(self, tmp_path: Path) -> None:
        """A key without a route's scope gets 403 (and no data) there, 200 elsewhere."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "feeder", scopes=["feed"])
            assert (await env.client.get("/v1/feed", headers=bearer(key))).status_code == 200
            r = await env.client.get("/v1/report", headers=bearer(key))
            assert r.status_code == 403
            assert_no_data(r)


class TestFeed:
    async def test_paging_through_thousands_loses_and_repeats_nothing(self, tmp_path: Path) -> None:
        """Paging while events keep arriving yields every visible event once, in seq order."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "pager")
            rid = new_run_id()
            await start_run(env.store, rid)
            limiter = anyio.CapacityLimiter(100)

            async def one(i: int) -> None:
                async with limiter:
                    await add_rollout(
                        env.store,
                        rid,
                        passed=i % 3 == 0,
                        problem_id=f"p{i % 7}",
                        sample=i,
                        failed_first=i % 11 == 0,
                    )

            async with anyio.create_task_group() as tg:
                for i in range(1500):
                    tg.start_soon(one, i)
            writer_done = anyio.Event()

            async def more() -> None:
                # More rollouts while the client pages: the cursor must not skip any.
                for i in range(300):
                    await add_rollout(env.store, rid, passed=i % 2 == 0, sample=10_000 + i)
                await finish_run(env.store, rid)
                writer_done.set()

            seen: list[int] = []
            after = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(more)
                with anyio.fail_after(120):
                    while True:
                        r = await env.client.get(
                            "/v1/feed", params={"after": after, "limit": 997}, headers=bearer(key)
                        )
                        assert r.status_code == 200
                        page = r.json()
                        seen.extend(item["seq"] for item in page["items"])
                        assert page["next"] >= after
                        after = page["next"]
                        if writer_done.is_set() and not page["items"] and after == await env.store.head():
                            break
            expected = [
                ev.seq
                async for ev in env.store.read(types=FEED_TYPES)
                if (ev.type != "RolloutFailed" or ev.data.get("final"))
                and (ev.type != "PublicationDecided" or ev.data["audience"] != "none")
            ]
            assert len(expected) > 3000
            assert seen == expected

    async def test_item_shape_and_visibility(self, tmp_path: Path) -> None:
        """Items have one stable shape with the rollout's context; subscriber events never appear."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            await add_subscriber(env.store, "bob")
            rid = new_run_id()
            await start_run(env.store, rid, provider="anthropic", models=("claude-x",))
            roll = await add_rollout(
                env.store,
                rid,
                passed=True,
                provider="anthropic",
                model="claude-x",
                problem_id="two-sum",
                sample=3,
                embargo_s=3600,
            )
            await finish_run(env.store, rid, rollouts=1, passed=1)
            await revoke(env.store, "bob")
            r = await env.client.get("/v1/feed", headers=bearer(key))
            items = r.json()["items"]
            assert [i["type"] for i in items] == [
                "RunStarted",
                "RolloutScored",
                "PublicationDecided",
                "PublicationDecided",
                "RunFinished",
            ]
            for item in items:
                assert tuple(item) == FEED_ITEM_KEYS
            scored = items[1]
            assert scored["rollout_id"] == roll
            assert (
                scored["run_id"],
                scored["provider"],
                scored["model"],
                scored["problem_id"],
                scored["sample"],
            ) == (rid, "anthropic", "claude-x", "two-sum", 3)
            assert scored["passed"] is True
            assert scored["score"] == 1.0
            assert scored["cost_usd"] == 0.001
            assert {i["audience"] for i in items[2:4]} == {"subscribers", "public"}
            assert "Subscriber" not in r.text
            assert "key_hash" not in r.text
            assert r.json()["next"] == await env.store.head()

    async def test_a_page_holds_100_items_unless_limit_says_otherwise(self, tmp_path: Path) -> None:
        """The README's ``limit`` default (100) and bound (1000): a page without ``limit``
        stops at 100 items and its ``next`` is the last one's seq; ``limit=1000`` takes the rest."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            rid = new_run_id()
            await start_run(env.store, rid)
            for i in range(40):
                await add_rollout(env.store, rid, passed=i % 2 == 0, sample=i)
            first = (await env.client.get("/v1/feed", headers=bearer(key))).json()
            assert len(first["items"]) == 100
            assert first["next"] == first["items"][-1]["seq"]
            rest = (
                await env.client.get(
                    "/v1/feed", params={"after": first["next"], "limit": 1000}, headers=bearer(key)
                )
            ).json()
            assert 0 < len(rest["items"]) < 1000
            assert rest["next"] == await env.store.head()

    async def test_long_poll_returns_promptly_when_an_event_arrives(self, tmp_path: Path) -> None:
        """A long poll waiting for 30 s answers as soon as a visible event is appended."""
        store = SignallingStore(tmp_path / "events.db")
        async with serving(tmp_path, store=store) as env:
            key = await add_subscriber(env.store, "alice")
            head = await env.store.head()
            result: dict[str, object] = {}

            async def poll() -> None:
                t0 = time.monotonic()
                r = await env.client.get("/v1/feed", params={"after": head, "wait": 30}, headers=bearer(key))
                result["elapsed"] = time.monotonic() - t0
                result["done_at"] = time.monotonic()
                result["response"] = r

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                with anyio.fail_after(10):
                    await store.waiting.wait()
                rid = new_run_id()
                appended_at = time.monotonic()
                await start_run(env.store, rid)
            r = result["response"]
            assert isinstance(r, httpx.Response)
            assert r.status_code == 200
            assert [i["type"] for i in r.json()["items"]] == ["RunStarted"]
            assert result["done_at"] > appended_at  # type: ignore[operator]
            assert result["elapsed"] < 5  # type: ignore[operator]

    async def test_long_poll_ends_when_the_client_hangs_up(self, tmp_path: Path) -> None:
        """A long poll whose client disconnects ends on the server within a couple of seconds,
        not at the end of its ``wait``."""
        store = SignallingStore(tmp_path / "events.db")
        finished = anyio.Event()
        statuses: list[int] = []

        def observe(app: Any) -> Any:
            async def wrapped(scope: Any, receive: Any, send: Any) -> None:
                async def spy(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        statuses.append(message["status"])
                    await send(message)

                await app(scope, receive, spy)
                if scope["type"] == "http" and scope["path"] == "/v1/feed":
                    finished.set()

            return wrapped

        async with serving(tmp_path, store=store, wrap=observe) as env:
            key = await add_subscriber(env.store, "alice")
            head = await env.store.head()
            async with anyio.create_task_group() as tg:

                async def poll() -> None:
                    async with httpx.AsyncClient(base_url=env.base) as own:
                        await own.get("/v1/feed", params={"after": head, "wait": 60}, headers=bearer(key))

                tg.start_soon(poll)
                with anyio.fail_after(10):
                    await store.waiting.wait()
                hung_up = time.monotonic()
                tg.cancel_scope.cancel()
            with anyio.fail_after(5):
                await finished.wait()
            assert time.monotonic() - hung_up < 3
            assert statuses == [499]

    async def test_long_poll_times_out_empty(self, tmp_path: Path) -> None:
        """With nothing new, a long poll answers after ``wait`` with no items and the same cursor."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            head = await env.store.head()
            t0 = time.monotonic()
            r = await env.client.get("/v1/feed", params={"after": head, "wait": 0.3}, headers=bearer(key))
            assert time.monotonic() - t0 >= 0.3
            assert r.json() == {"items": [], "next": head}

    async def test_etag_and_304(self, tmp_path: Path) -> None:
        """The same page has the same ETag and If-None-Match gets 304; new items change it."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            rid = new_run_id()
            await start_run(env.store, rid)
            r1 = await env.client.get("/v1/feed", headers=bearer(key))
            etag = r1.headers["etag"]
            r2 = await env.client.get("/v1/feed", headers={**bearer(key), "If-None-Match": etag})
            assert r2.status_code == 304
            assert r2.content == b""
            assert r2.headers["etag"] == etag
            r3 = await env.client.get("/v1/feed", headers={**bearer(key), "If-None-Match": f'W/{etag}, "x"'})
            assert r3.status_code == 304
            await add_rollout(env.store, rid, passed=False)
            r4 = await env.client.get("/v1/feed", headers={**bearer(key), "If-None-Match": etag})
            assert r4.status_code == 200
            assert r4.headers["etag"] != etag
            # ETags on the other routes too.
            for path in ("/v1/report", "/openapi.json", "/public/feed.json", "/public/feed.atom", "/public/"):
                r = await env.client.get(path, headers=bearer(key))
                again = await env.client.get(
                    path, headers={**bearer(key), "If-None-Match": r.headers["etag"]}
                )
                assert again.status_code == 304, path

    @pytest.mark.parametrize(
        ("query", "names"),
        [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("after=-1", "after"),
            ("after=1.5", "after"),
            ("wait=61", "wait"),
            ("wait=nan", "wait"),
            ("wait=-1", "wait"),
            ("cursor=5", "cursor"),
            ("limit=1&limit=2", "limit"),
        ],
    )
    async def test_bad_parameters_get_400_naming_them(self, tmp_path: Path, query: str, names: str) -> None:
        """Each invalid query parameter gets 400 with a message that names it."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            r = await env.client.get(f"/v1/feed?{query}", headers=bearer(key))
            assert r.status_code == 400
            assert r.json()["error"] == "bad_request"
            assert names in r.json()["message"]

    async def test_rate_limit_429_with_retry_after(self, tmp_path: Path) -> None:
        """Past ``feed_rate_per_minute`` a key gets 429 and Retry-After; other keys are unaffected."""
        async with serving(tmp_path, make_config(server={"feed_rate_per_minute": 3})) as env:
            a = await add_subscriber(env.store, "a")
            b = await add_subscriber(env.store, "b")
            for _ in range(3):
                assert (await env.client.get("/v1/feed", headers=bearer(a))).status_code == 200
            r = await env.client.get("/v1/feed", headers=bearer(a))
            assert r.status_code == 429
            assert 1 <= int(r.headers["retry-after"]) <= 20
            assert_no_data(r)
            assert (await env.client.get("/v1/feed", headers=bearer(b))).status_code == 200


class TestRecordAndReport:
    async def test_rollout_record_is_the_whole_archive(self, tmp_path: Path) -> None:
        """The record holds the run, every attempt's request, the failure, answer, reasoning, score
        and publication state, with each event's seq and hash."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            rid = new_run_id()
            await start_run(env.store, rid)
            roll = await add_rollout(
                env.store,
                rid,
                passed=True,
                failed_first=True,
                embargo_s=3600,
                answer="def f():\n    return 'ünïcode'\n",
            )
            r = await env.client.get(f"/v1/rollouts/{roll}", headers=bearer(key))
            assert r.status_code == 200
            rec = r.json()
            assert rec["run"]["schedule"] == "daily"
            assert rec["run_id"] == rid
            assert [a["outcome"] for a in rec["attempts"]] == ["failed", "responded"]
            assert rec["attempts"][0]["request"] == {"prompt": "solve", "try": 1}
            assert rec["attempts"][0]["failure"]["kind"] == "rate_limited"
            assert rec["answer"]["text"] == "def f():\n    return 'ünïcode'\n"
            assert rec["answer"]["reasoning"] == "think first"
            assert rec["score"]["passed"] is True
            assert rec["publication"]["state"] == "embargoed"
            assert rec["publication"]["public"]["embargo_s"] == 3600
            stream = [ev async for ev in env.store.read(stream=f"rollout-{roll}")]
            assert [(e["seq"], e["hash"]) for e in rec["events"]] == [(e.seq, e.hash) for e in stream]
            assert (await env.client.get("/v1/rollouts/nope-0", headers=bearer(key))).status_code == 404
            assert (await env.client.get("/v1/rollouts/%2e%2e%20x", headers=bearer(key))).status_code in (
                400,
                404,
            )

    async def test_report_json_and_503_without_module(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``/v1/report`` is the report's JSON rows; 400 for a bad ``by``; 503 when the module is absent."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            rid = new_run_id()
            await start_run(env.store, rid)
            await add_rollout(env.store, rid, passed=True)
            await add_rollout(env.store, rid, passed=False)
            await finish_run(env.store, rid)
            r = await env.client.get("/v1/report", headers=bearer(key))
            rows = r.json()
            assert r.status_code == 200
            assert rows[0]["rollouts"] == 2
            assert rows[0]["passed"] == 1
            r = await env.client.get("/v1/report?by=problem", headers=bearer(key))
            assert r.status_code == 200
            r = await env.client.get("/v1/report?by=colour", headers=bearer(key))
            assert r.status_code == 400
            assert "by" in r.json()["message"]
            monkeypatch.setitem(sys.modules, "rollwatch.report", None)
            r = await env.client.get("/v1/report", headers=bearer(key))
            assert r.status_code == 503
            assert r.json()["error"] == "unavailable"

    async def test_report_etag_is_the_log_position_and_moves_with_it(self, tmp_path: Path) -> None:
        """``/v1/report``'s ETag names the log position: 304 while the log stands still,
        a new tag and the new figures once it moves; the key is checked every time."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            other = await add_subscriber(env.store, "bob")
            rid = new_run_id()
            await start_run(env.store, rid)
            await add_rollout(env.store, rid, passed=True)
            r1 = await env.client.get("/v1/report", headers=bearer(key))
            assert r1.status_code == 200
            tag = r1.headers["etag"]
            assert str(await env.store.head()) in tag
            assert r1.json()[0]["rollouts"] == 1
            again = await env.client.get("/v1/report", headers={**bearer(key), "if-none-match": tag})
            assert again.status_code == 304
            assert again.headers["etag"] == tag
            assert (await env.client.get("/v1/report", headers=bearer(key))).content == r1.content
            # Another view of the same position has its own tag and body.
            by_problem = await env.client.get(
                "/v1/report?by=problem", headers={**bearer(key), "if-none-match": tag}
            )
            assert by_problem.status_code == 200
            assert by_problem.headers["etag"] != tag
            # A revoked key gets nothing from the cache (test_leak_attacks checks it is
            # refused at once; this only checks the cached answer is not handed out).
            await revoke(env.store, "bob")
            with anyio.fail_after(10):
                while True:
                    r = await env.client.get("/v1/report", headers={**bearer(other), "if-none-match": tag})
                    if r.status_code not in (200, 304):
                        break
                    await anyio.sleep(0.05)
            assert r.status_code == 401
            # The log moves: the old tag no longer matches, the figures are new.
            await add_rollout(env.store, rid, passed=False)
            r2 = await env.client.get("/v1/report", headers={**bearer(key), "if-none-match": tag})
            assert r2.status_code == 200
            assert r2.headers["etag"] != tag
            assert r2.json()[0]["rollouts"] == 2
            assert r2.json()[0]["passed"] == 1

    async def test_each_problem_version_is_its_own_report(self, tmp_path: Path) -> None:
        """Two problem versions asked for at the same log position get their own rows and
        tags: the cache names the version asked for, not only that one was."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            rid = new_run_id()
            await start_run(env.store, rid)
            one, two = "sha256:" + "a" * 64, "sha256:" + "b" * 64
            await add_rollout(env.store, rid, passed=True, problem_id="p1", problem_hash=one)
            await add_rollout(env.store, rid, passed=False, problem_id="p2", problem_hash=two)
            got = {}
            for h in (one, two, one):
                r = await env.client.get(
                    f"/v1/report?by=problem&problem_version={h[:20]}", headers=bearer(key)
                )
                assert r.status_code == 200
                rows = r.json()
                got.setdefault(h, set()).add(r.headers["etag"])
                assert [(x["problem_id"], x["passed"]) for x in rows] == [
                    ("p1", 1) if h == one else ("p2", 0)
                ]
            assert len(got[one]) == 1
            assert got[one].isdisjoint(got[two])
            # Every prefix of a version is a view of its own: the bodies kept stay few
            # however many a key holder asks for.
            for n in range(12, 60):
                r = await env.client.get(f"/v1/report?problem_version={one[:n]}", headers=bearer(key))
                assert r.status_code == 200
                assert len(env.api._reports) <= 16

    async def test_openapi_describes_the_routes(self, tmp_path: Path) -> None:
        """``/openapi.json`` is an OpenAPI 3.1 document naming every route and the item shape."""
        async with serving(tmp_path) as env:
            doc = json.loads((await env.client.get("/openapi.json")).content)
            assert doc["openapi"].startswith("3.1")
            for path in (
                "/v1/feed",
                "/v1/rollouts/{rollout_id}",
                "/v1/report",
                "/public/feed.json",
                "/public/feed.atom",
                "/public/",
            ):
                assert path in doc["paths"]
            assert doc["components"]["schemas"]["FeedItem"]["required"] == list(FEED_ITEM_KEYS)
