"""``/public/results.jsonl`` under a flood: every released result with its proof bundle
(milliseconds each) was made again for every request, so a few clients in a loop kept a
daemon's CPU busy. Now it is made once for what it shows and served to every request
(an ETag, 304). Real daemon, real files, real HTTP on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx

from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.served import Site, _poll, _stop, serving
from tests.publication.helpers import add_rollout, finish_run, new_run_id, start_run
from tests.test_daemon import free_port

RESULTS = 60
CLIENTS = 30


def _site(tmp_path: Path) -> Site:
    db = tmp_path / "events.db"

    async def fill() -> None:
        async with SQLiteEventStore(db) as store:
            run = new_run_id()
            await start_run(store, run)
            for i in range(RESULTS):
                await add_rollout(store, run, passed=True, problem_id=f"p{i % 7}", sample=i)
            await finish_run(store, run, rollouts=RESULTS, passed=RESULTS)

    anyio.run(fill)
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\nprojections = "{tmp_path / "events.projections.db"}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n[scoring]\nworkers = 1\n'
        '[publication]\nembargo = "0s"\nrelease_check = "200ms"\n'
        '[integrity]\ncheckpoint_every = 5\ncheckpoint_interval = "1s"\n'
    )
    return Site(tmp_path, cfg, f"http://127.0.0.1:{port}")


def _lines(url: str) -> list[dict[str, object]]:
    r = httpx.get(url + "/public/results.jsonl", timeout=30)
    return [json.loads(x) for x in r.text.splitlines()] if r.status_code == 200 else []


def test_a_flood_of_archive_requests_makes_it_once(tmp_path: Path) -> None:
    site = _site(tmp_path)
    with serving(site) as proc:
        # Every result released, and a checkpoint over the whole log (its proofs complete).
        _poll(lambda: len(_lines(site.url)) == RESULTS, 60, "every result to be released")
        _poll(
            lambda: site.checkpoints() and site.checkpoints()[-1][1] == site.head() - 1,
            60,
            "a checkpoint of the log",
        )
        cp_seq = site.checkpoints()[-1][0]

        async def flood() -> tuple[list[httpx.Response], list[int]]:
            got: list[httpx.Response] = []
            health: list[int] = []
            async with httpx.AsyncClient(timeout=60) as http:

                async def one() -> None:
                    got.append(await http.get(site.url + "/public/results.jsonl"))

                async with anyio.create_task_group() as tg:
                    for _ in range(CLIENTS):
                        tg.start_soon(one)
                    health.append((await http.get(site.url + "/healthz")).status_code)
            return got, health

        answers, health = anyio.run(flood)
        assert site.checkpoints()[-1][0] == cp_seq, "a checkpoint was signed during the flood"
        assert [r.status_code for r in answers] == [200] * CLIENTS
        assert len({r.content for r in answers}) == 1
        body = answers[0].content
        lines = [json.loads(x) for x in body.splitlines()]
        assert len(lines) == RESULTS
        assert all(line["proof"]["complete"] for line in lines)  # type: ignore[index]
        assert health == [200]
        etag = answers[0].headers["etag"]
        again = httpx.get(site.url + "/public/results.jsonl", headers={"If-None-Match": etag}, timeout=30)
        assert again.status_code == 304
        err = _stop(proc)
    # The archive the flood was served: every result, proofs against cp_seq. The polls above
    # may have made others (fewer results released, an older checkpoint), as they should: the
    # archive is made again when what it shows changes. This one was made once (CLIENTS
    # times before), by the flood or by the last poll if it already saw the same state.
    made = [
        line
        for line in (json.loads(x) for x in err.splitlines() if '"public_results_made"' in x)
        if line["checkpoint"] == cp_seq and line["results"] == RESULTS
    ]
    assert len(made) == 1, made
