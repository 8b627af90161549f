"""Embargo attacks of review att-e, on real servers over loopback HTTP: an outsider with no
key, a revoked or expired key, a key lacking the route's scope, or a public export only,
tries to tell an embargoed result from an id never used, and to read any of it through path
and query variants, conditional requests, HEAD, cursors and ETags of another subscriber,
the operator's console, ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from rollwatch.publication import release_due
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
from tests.test_daemon import events
from tests.web.opsd import Daemon, _config, running_daemon, write_problems

pytestmark = pytest.mark.anyio

_VOLATILE = {"date", "server"}
_ID = "<ID>"


def raw(base: str, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """``method path`` sent exactly as written (no client normalizes dots, escapes or slashes)."""
    u = urllib.parse.urlsplit(base)
    con = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        con.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            con.putheader(k, v)
        con.endheaders()
        r = con.getresponse()
        hdrs = {k.lower(): v for k, v in r.getheaders() if k.lower() not in _VOLATILE}
        return r.status, hdrs, r.read().decode("utf-8", "replace")
    finally:
        con.close()


def shape(answer: tuple[int, dict, str], *ids: str) -> tuple[int, dict, str]:
    """An answer with the ids asked about replaced by one placeholder (in any case)."""
    status, hdrs, body = answer
    for i in ids:
        body = re.sub(re.escape(i), _ID, body, flags=re.IGNORECASE)
        hdrs = {k: re.sub(re.escape(i), _ID, v, flags=re.IGNORECASE) for k, v in hdrs.items()}
    return status, hdrs, body


async def _world(env: Env) -> dict[str, str]:
    """A released pass, an embargoed pass, an embargoed failure, keys of every kind."""
    keys = {
        "full": await add_subscriber(env.store, "alice"),
        "feed-only": await add_subscriber(env.store, "bob", scopes=["feed"]),
        "report-only": await add_subscriber(env.store, "carol", scopes=["report"]),
        "ops-only": await add_subscriber(env.store, "dave", scopes=["ops"]),
        "revoked": await add_subscriber(env.store, "eve"),
        "expired": await add_subscriber(env.store, "frank", expires=datetime.now(UTC) - timedelta(seconds=1)),
    }
    await revoke(env.store, "eve")
    run = new_run_id()
    await start_run(env.store, run, models=("gpt-x", "gpt-secret"))
    released = await add_rollout(env.store, run, passed=True, embargo_s=0)
    hidden = await add_rollout(env.store, run, passed=True, model="gpt-secret", sample=1, embargo_s=3600)
    failed = await add_rollout(env.store, run, passed=False, model="gpt-secret", sample=2)
    await finish_run(env.store, run, rollouts=3, passed=2)
    with anyio.fail_after(10):
        while await release_due(env.store, env.pdb) == 0:
            await anyio.sleep(0.05)
    return {"released": released, "hidden": hidden, "failed": failed, "run": run, **keys}


def _key_headers(w: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "garbage": bearer("rw_" + "Z" * 43),
        "revoked": bearer(w["revoked"]),
        "expired": bearer(w["expired"]),
        "feed-only": bearer(w["feed-only"]),
        "report-only": bearer(w["report-only"]),
        "ops-only": bearer(w["ops-only"]),
    }


async def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await anyio.to_thread.run_sync(fn, *args)


class TestEmbargoedIsUnknown:
    """For every variant of the request, an embargoed id (pass or failure) gets exactly the
    answer an id never used gets: status, headers (lengths included) and body."""

    async def test_public_rollout_route_variants(self, tmp_path: Path) -> None:
        config = make_config(publication={"embargo": "1h", "embargo_counts": False})
        async with serving(tmp_path, config) as env:
            w = await _world(env)
            unknown = str(uuid.uuid4())
            variants = [
                "/public/rollouts/{i}.json",
                "/public/rollouts/{I}.json",
                "/public/rollouts/{i}.JSON",
                "/public/rollouts/{i}.json/",
                "/public/rollouts/{i}",
                "/public//rollouts/{i}.json",
                "//public/rollouts/{i}.json",
                "/public/rollouts/./{i}.json",
                "/public/rollouts/{i}%2ejson",
                "/public/rollouts/{i}.json?x=1&x=2&now=2100-01-01T00:00:00Z&embargo=0",
                "/public/rollouts/{i}.json%00",
                "/public/rollouts/%20{i}.json",
                "/public/rollouts/{i}.json;v=1",
                "/public/proof/{i}",
                "/ops/rollouts/{i}",
                "/ops/rollouts/{i}/proof",
                "/v1/rollouts/{i}",
                "/v1/rollouts/{I}",
                "/v1/rollouts/{i}/",
                "/v1/rollouts/{i}?after=1",
            ]
            conditions = [{}, {"If-None-Match": "*"}, {"If-None-Match": 'W/"x", *'}, {"Range": "bytes=0-0"}]
            checked = 0
            for tmpl in variants:
                for method in ("GET", "HEAD"):
                    for who, kh in _key_headers(w).items():
                        for cond in conditions:
                            hdrs = {**kh, **cond}
                            base = None
                            for i in (unknown, w["hidden"], w["failed"]):
                                path = tmpl.format(i=i, I=i.upper())
                                ans = shape(await _in_thread(raw, env.base, method, path, hdrs), i)
                                assert ans[0] not in (200, 206, 304), (method, path, who, cond, ans)
                                assert "gpt-secret" not in ans[2], (path, who)
                                if base is None:
                                    base = ans
                                else:
                                    assert ans == base, (method, tmpl, who, cond, ans, base)
                                checked += 1
            assert checked > 1000
            # The control: the released one is served, on the canonical path.
            r = await env.client.get(f"/public/rollouts/{w['released']}.json")
            assert r.status_code == 200
            assert w["released"] in r.text

    async def test_the_control_a_full_key_reads_the_embargoed_one(self, tmp_path: Path) -> None:
        """The control of the test above: the full key does read the embargoed one from
        ``/v1/rollouts`` (so the equality above is not of two errors by accident)."""
        async with serving(tmp_path) as env:
            w = await _world(env)
            r = await env.client.get(f"/v1/rollouts/{w['hidden']}", headers=bearer(w["full"]))
            assert r.status_code == 200
            assert "gpt-secret" in r.text


class TestQueryAndPathTricksOnPublicRoutes:
    """Any query string, and any spelling of a public path, answers with the public bytes
    (or an error body): never the embargoed result, its model, or a count of it."""

    async def test_public_answers_ignore_tricks(self, tmp_path: Path) -> None:
        config = make_config(
            publication={"embargo": "1h", "embargo_counts": False}, server={"base_url": "http://feed.test"}
        )
        async with serving(tmp_path, config) as env:
            w = await _world(env)
            canon = ["/public/", "/public/feed.json", "/public/feed.atom", "/public/results.jsonl"]
            baseline = {p: (await env.client.get(p)).content for p in canon}
            for body in baseline.values():
                assert w["released"].encode() in body
            queries = [
                "?limit=100000&after=-1",
                "?after=0&limit=%EF%BC%99%EF%BC%99",
                "?now=2100-01-01T00:00:00Z&at=2100-01-01&embargo=0&include=embargoed&all=1",
                "?limit=1&limit=1000000",
                "?since=1970-01-01&until=2100-01-01&model=gpt-secret",
                "?" + "a=1&" * 200,
                "?cursor=" + "9" * 40,
            ]
            tails = {
                "/public/": [
                    "/public",
                    "/public//",
                    "/public/.",
                    "/public/index.html",
                    "/PUBLIC/",
                    "/public/%2e/",
                ],
                "/public/feed.json": [
                    "/public//feed.json",
                    "/public/./feed.json",
                    "/public/%66eed.json",
                    "/public/feed.json/",
                    "/public/FEED.JSON",
                    "/public/feed%2ejson",
                    "/public/x/../feed.json",
                    "/public/feed.json%23x",
                ],
                "/public/feed.atom": ["/public/feed.atom/", "/public//feed.atom", "/public/feed.atom;x"],
                "/public/results.jsonl": [
                    "/public/results.jsonl/",
                    "/public//results.jsonl",
                    "/public/results.JSONL",
                    "/public/results.jsonl%3F",
                ],
            }
            heads = [
                {},
                bearer(w["full"]),
                bearer(w["revoked"]),
                {"X-Forwarded-For": "203.0.113.9"},
                {"Host": "evil.test"},
                {"Accept": "application/json"},
            ]
            for canon_path, spelled in tails.items():
                for path in [canon_path + q for q in queries] + spelled:
                    for h in heads:
                        status, hdrs, body = await _in_thread(raw, env.base, "GET", path, h)
                        for secret in (w["hidden"], w["failed"], "gpt-secret"):
                            assert secret not in body, (path, h, secret)
                            assert all(secret not in v for v in hdrs.values()), (path, h)
                        if status == 200:
                            assert body.encode() == baseline[canon_path], (path, h)
                        else:
                            assert status in (301, 302, 307, 308, 400, 404, 405), (path, status)
                            if status >= 400:
                                assert set(json.loads(body)) == {"error", "message"}, (path, body[:200])
                            else:
                                loc = hdrs.get("location", "")
                                assert "evil.test" not in loc, (path, loc)


class TestOtherSubscribersTokens:
    """A cursor and an ETag a paying key got for embargoed data open nothing for a key that
    lacks the scope, is revoked or expired: no 304 (which would confirm the data), no items."""

    async def test_cursors_and_etags_of_a_full_key(self, tmp_path: Path) -> None:
        async with serving(tmp_path) as env:
            w = await _world(env)
            full = bearer(w["full"])
            feed = await env.client.get("/v1/feed?after=0&limit=1000", headers=full)
            one = await env.client.get(f"/v1/rollouts/{w['hidden']}", headers=full)
            report = await env.client.get("/v1/report", headers=full)
            assert feed.status_code == one.status_code == report.status_code == 200
            assert w["hidden"] in feed.text
            cursor = feed.json()["next"]
            tagged = [
                ("/v1/feed?after=0&limit=1000", feed.headers["etag"]),
                (f"/v1/feed?after={cursor}&limit=1000", feed.headers["etag"]),
                (f"/v1/rollouts/{w['hidden']}", one.headers["etag"]),
                ("/v1/report", report.headers["etag"]),
            ]
            for who in ("none", "garbage", "revoked", "expired", "report-only", "feed-only", "ops-only"):
                h = _key_headers(w)[who]
                for path, etag in tagged:
                    for method in ("GET", "HEAD"):
                        r = await env.client.request(method, path, headers={**h, "If-None-Match": etag})
                        ok_scope = (who == "feed-only" and path.startswith("/v1/feed")) or (
                            who == "report-only" and path == "/v1/report"
                        )
                        if ok_scope:
                            continue
                        assert r.status_code in (401, 403), (who, path, method, r.status_code)
                        assert "etag" not in r.headers, (who, path)
                        assert w["hidden"] not in r.text
                        assert "gpt-secret" not in r.text


# --- against a real `rollwatch serve` with every result under a long embargo ---------------------

REMOTE = {"X-Forwarded-For": "203.0.113.9"}


def _setup_embargoed(tmp: Path, fake_url: str) -> tuple[Path, Path]:
    problems = write_problems(tmp / "problems")
    cfg = _config(tmp, fake_url, problems)
    text = cfg.read_text().replace('embargo = "1s"', 'embargo = "2h"\nembargo_counts = false')
    assert 'embargo = "2h"' in text
    cfg.write_text(text)
    return cfg, problems


@pytest.fixture(scope="module")
def embargoed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("att-e"), setup=_setup_embargoed) as d:
        yield d


def _secrets(d: Daemon) -> set[str]:
    """What is under embargo in the daemon's log: rollout and run ids, answer hashes."""
    out: set[str] = set()
    for _seq, _t, data in events(d.db, "RolloutScored"):
        out.add(data["rollout_id"])
    for _seq, _t, data in events(d.db, "RunStarted"):
        out.add(data["run_id"])
    return out


ANON_PATHS = [
    "/",
    "/public/",
    "/public/feed.json",
    "/public/feed.atom",
    "/public/results.jsonl",
    "/public/checkpoint",
    "/public/key",
    "/public/key/rotations",
    "/checkpoint",
    "/openapi.json",
    "/healthz",
    "/metrics",
    "/ops",
    "/ops/",
    "/ops/progress",
    "/ops/subscribers",
    "/ops/schedules",
    "/ops/problems",
    "/ops/problems/p1",
    "/OPS/",
    "/%6fps/",
    "/ops%2f",
    "/public/../ops/progress",
    "/tile/entries/000.p/1",
    "/public/tile/entries/000.p/1",
    "/log/tile/entries/000.p/1",
]


class TestRealDaemonUnderEmbargo:
    def test_no_anonymous_route_names_an_embargoed_rollout_or_run(self, embargoed: Daemon) -> None:
        """Every result is under a two-hour embargo and the counts are hidden: no route a
        remote peer without an operator's key can read (GET or HEAD, any of the keys that
        are not the operator's) names a rollout or a run, or a model's count."""
        secrets = _secrets(embargoed)
        assert len(secrets) >= 3
        feed_key = bearer(embargoed.feed_key)
        for path in ANON_PATHS:
            for h in (REMOTE, {**REMOTE, **feed_key}):
                for method in ("GET", "HEAD"):
                    status, hdrs, body = raw(embargoed.url, method, path, h)
                    text = body + json.dumps(hdrs)
                    leaked = [s for s in secrets if s in text]
                    assert not leaked, (method, path, status, leaked)
                    if path.startswith(("/ops", "/OPS", "/%6f", "/tile/entries", "/public/tile/entries")):
                        assert status in (301, 307, 308, 400, 401, 403, 404), (path, status)
                    if path == "/metrics" and method == "GET":
                        assert 'outcome="passed"' not in body
                        assert "m1" not in re.findall(r'"([^"]*)"', body), body[:500]

    def test_console_answers_alike_for_embargoed_and_unknown_ids(self, embargoed: Daemon) -> None:
        rids = [data["rollout_id"] for _s, _t, data in events(embargoed.db, "RolloutScored")]
        runs = [data["run_id"] for _s, _t, data in events(embargoed.db, "RunStarted")]
        unknown_rid, unknown_run = str(uuid.uuid4()), runs[0][:-6] + "zzzzzz"
        cases = [
            ("/ops/rollouts/{}", rids[0], unknown_rid),
            ("/ops/rollouts/{}/proof", rids[0], unknown_rid),
            ("/ops/runs/{}", runs[0], unknown_run),
            ("/ops/problems/{}", "p1", "p7"),
            ("/public/rollouts/{}.json", rids[0], unknown_rid),
            ("/v1/rollouts/{}", rids[0], unknown_rid),
        ]
        for h in (REMOTE, {**REMOTE, **bearer(embargoed.feed_key)}, {**REMOTE, "Authorization": "Bearer x"}):
            for tmpl, known, unknown in cases:
                for method in ("GET", "HEAD"):
                    a = shape(raw(embargoed.url, method, tmpl.format(known), h), known)
                    b = shape(raw(embargoed.url, method, tmpl.format(unknown), h), unknown)
                    assert a[0] in (401, 403, 404), (tmpl, a)
                    assert a == b, (tmpl, h, a, b)


class TestFailuresUnderEmbargoWithCountsShown:
    """With ``embargo_counts`` on (the default) the page shows, per model, how many problems
    it solved under embargo: passes only. Failures under embargo (of a model with passes
    under embargo, of a disclosed model, of a model that only failed) change no byte and no
    header of any public answer: neither the attempts nor the new model's name show."""

    async def test_failures_change_nothing_public(self, tmp_path: Path) -> None:
        from tests.publication.test_leak_attacks import public_snapshot

        config = make_config(publication={"embargo": "1h"}, server={"base_url": "http://feed.test"})
        async with serving(tmp_path, config) as env:
            run = new_run_id()
            await start_run(env.store, run, models=("gpt-x", "gpt-y"))
            public = await add_rollout(env.store, run, passed=True, embargo_s=0)
            await add_rollout(env.store, run, passed=True, model="gpt-y", sample=1, embargo_s=3600)
            await finish_run(env.store, run, rollouts=2, passed=2)
            with anyio.fail_after(10):
                while await release_due(env.store, env.pdb) == 0:
                    await anyio.sleep(0.05)
            later = new_run_id()  # unfinished: its counts are not disclosed in any case
            await start_run(env.store, later, models=("gpt-x", "gpt-y"))
            await add_rollout(env.store, later, passed=True, model="gpt-y", sample=0, embargo_s=3600)
            unknown = str(uuid.uuid4())
            before = await public_snapshot(env, public, unknown)
            assert "gpt-y" in before["GET /public/"][1]  # its counts under embargo are shown
        hidden = []
        from rollwatch.store.sqlite import SQLiteEventStore

        async with SQLiteEventStore(tmp_path / "events.db") as store:
            for model in ("gpt-x", "gpt-y", "gpt-fails"):
                for sample in range(1, 4):
                    hidden.append(
                        await add_rollout(
                            store, later, passed=False, model=model, sample=sample, problem_id="p2"
                        )
                    )
        async with serving(tmp_path, config) as env:
            after = await public_snapshot(env, public, unknown)
            for rid in hidden:
                r = await env.client.get(f"/public/rollouts/{rid}.json")
                assert (r.status_code, r.text) == after[f"GET /public/rollouts/{unknown}.json"][:2]
        for key, (status, body, headers) in after.items():
            assert "gpt-fails" not in body, key
            assert (status, body, headers) == before[key], key


class TestExportUnderEmbargo:
    def test_an_export_names_nothing_under_embargo(self, embargoed: Daemon, tmp_path: Path) -> None:
        """``rollwatch publish export DIR`` with every result under embargo (counts hidden):
        no file names a rollout or a run, and the index says no more of the log than the
        signed checkpoint does."""
        out = tmp_path / "site"
        r = embargoed.cli("publish", "export", str(out))
        assert r.returncode == 0, r.stderr
        secrets = _secrets(embargoed)
        files = [p for p in out.rglob("*") if p.is_file()]
        assert files
        for p in files:
            text = p.read_bytes().decode("utf-8", "replace")
            leaked = [s for s in secrets if s in text]
            assert not leaked, (p.relative_to(out), leaked)
        index = json.loads((out / "releases.json").read_text())
        size = index.get("tree_size") or 0
        assert index["exported_seq"] <= size, index
        assert index.get("held_from") is None, index


def _pipelined(base: str, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
    """Several GETs written at once on one keep-alive connection; their answers in order."""
    u = urllib.parse.urlsplit(base)
    con = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    out = []
    try:
        for path, headers in requests:
            con.request("GET", path, headers=headers)
            r = con.getresponse()
            out.append((r.status, r.read().decode("utf-8", "replace")))
    finally:
        con.close()
    return out


class TestOneConnectionManyClients:
    """A keep-alive connection (a proxy's, shared by clients) carries a paying key's request,
    then requests without a key or with a lesser one: each is judged on its own header,
    nothing of the first answer is served again."""

    async def test_a_key_on_a_connection_opens_nothing_for_the_next_request(self, tmp_path: Path) -> None:
        async with serving(tmp_path) as env:
            w = await _world(env)
            full, lesser = bearer(w["full"]), bearer(w["report-only"])
            hidden = f"/v1/rollouts/{w['hidden']}"
            seq = [
                (hidden, full),
                (hidden, {}),
                ("/v1/feed?after=0", full),
                ("/v1/feed?after=0", lesser),
                (hidden, lesser),
                (hidden, bearer(w["revoked"])),
                ("/v1/feed?after=0&limit=1000&limit=1&wait=%D9%A3", {}),
                ("/v1/feed?after=-1&limit=99999999999999999999", bearer(w["expired"])),
                ("/v1/report?by=secret&problem_version=" + "x" * 500, bearer(w["feed-only"])),
            ]
            answers = await anyio.to_thread.run_sync(_pipelined, env.base, seq)
            assert answers[0][0] == answers[2][0] == 200
            assert w["hidden"] in answers[0][1]
            for (path, _h), (status, body) in zip(seq[1:], answers[1:], strict=True):
                if _h is full:
                    continue
                assert status in (401, 403), (path, status, body[:200])
                assert set(json.loads(body)) == {"error", "message"}
                assert w["hidden"] not in body
                assert "gpt-secret" not in body
                assert "secret" not in json.loads(body)["message"], body  # no parameter echoed before the key
