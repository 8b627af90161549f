"""Session 28's attacks by an outsider on the HTTP port (helper s28-leak), on real loopback servers
over real SQLite files: what the read models' build tells anyone of the log's live length. Each
test here failed before its fix."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.metrics import Metrics
from rollwatch.projections import CatchUpProgress, ProjectionDB
from rollwatch.publication.routes import PublicationAPI
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer
from tests.publication.helpers import add_rollout, all_projections, make_config, new_run_id, start_run

pytestmark = pytest.mark.anyio

REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # the daemon believes a loopback proxy
APPLIED, HEAD = 48_213, 91_737
"""The seq applied and the log's head the build reports: numbers no answer has otherwise."""


@asynccontextmanager
async def building(tmp_path: Path) -> AsyncIterator[tuple[str, ProjectionDB]]:
    """The publication routes and ``/healthz`` as the daemon wires them (``/healthz`` carrying the
    build's figures), on a free loopback port, over a log with an embargoed pass; the read models
    then reported as catching up from ``APPLIED`` to ``HEAD`` (a restart on a big log, or a node
    catching up on a shared one)."""
    config = make_config(publication={"embargo": "90d", "embargo_counts": False})
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
    ):
        run = new_run_id()
        await start_run(store, run)
        await add_rollout(store, run, passed=True, embargo_s=90 * 86400)
        await pdb.catch_up(store)
        api = PublicationAPI(store, pdb, config)

        def status() -> dict[str, object]:  # as Daemon.projection_status
            prog = pdb.progress
            if pdb.ready or prog is None:
                return {"projections": {"state": "current"}}
            return {"projections": {"state": "building", **prog.figures()}}

        http = HTTPServer(build_app(Metrics(), api.routes(), status=status), "127.0.0.1", 0)
        async with anyio.create_task_group() as tg:
            await tg.start(http.run)
            was = pdb.ready
            pdb.ready = False
            pdb.progress = CatchUpProgress(first=0, target=HEAD, done=APPLIED, started=time.monotonic() - 2.0)
            try:
                yield f"http://127.0.0.1:{http.port}", pdb
            finally:
                pdb.progress = None
                pdb.ready = was
                http.stop()


def _numbers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\d+", text)}


class TestTheBuildTellsNoLiveLength:
    """While the read models were built, ``/healthz`` (to anyone) and every 503 of the public,
    subscriber and console routes (to anyone, before a key is read) said ``seq N of M`` and the
    rate: the log's live head, so how many events had been appended under embargo since the latest
    checkpoint (left as it was in session 13). An outsider now reads how far in percent; the
    operator's ``/healthz`` keeps every figure."""

    async def test_an_outsider_reads_a_percentage_only(self, tmp_path: Path) -> None:
        async with building(tmp_path) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
            operator = await c.get("/healthz")
            figures = operator.json()["projections"]
            assert (figures["seq"], figures["head"]) == (APPLIED, HEAD), figures  # the control
            outside = await c.get("/healthz", headers=REMOTE)
            shown = outside.json()["projections"]
            assert shown["state"] == "building", shown
            assert shown["phase"] == "catching up", shown
            assert set(shown) <= {"state", "phase", "percent", "eta_s"}, shown
            answers = [outside]
            for path in ("/public/", "/public/feed.json", "/public/results.jsonl", "/v1/feed", "/v1/report"):
                r = await c.get(path, headers=REMOTE)
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert "being built" in r.json()["message"], r.text
                assert "%" in r.json()["message"], r.text
                answers.append(r)
            for r in answers:
                assert not {APPLIED, HEAD} & _numbers(r.text), (str(r.url), r.text)
                assert not {APPLIED, HEAD} & _numbers(" ".join(r.headers.values())), (str(r.url), r.headers)


class TestFailuresByKind:
    """What fails now (the log refusing appends, the database out of reach, the clock) was on
    ``/healthz`` word for word to anyone: the store's URL (user, host, database), its file and
    errors. The daemon hands each as (its kind, its words): anyone reads the kind."""

    async def test_an_outsider_reads_the_kind_the_operator_the_words(self) -> None:
        url_words = "the database at postgresql://rollwatch@db.internal:5432/evals is out of reach: timeout"
        failing = [
            ("the database is out of reach", url_words),
            (
                "clock_jumped: releases held",
                "clock_jumped: the wall clock moved +7201 s from the steady clock",
            ),
        ]
        http = HTTPServer(build_app(Metrics(), failing=lambda: failing), "127.0.0.1", 0)
        async with anyio.create_task_group() as tg:
            await tg.start(http.run)
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}") as c:
                    operator = await c.get("/healthz")
                    outside = await c.get("/healthz", headers=REMOTE)
            finally:
                http.stop()
        assert operator.status_code == outside.status_code == 503
        assert operator.json()["reasons"] == [words for _, words in failing]  # the control
        assert outside.json() == {"status": "degraded", "reasons": [kind for kind, _ in failing]}
        for secret in ("db.internal", "rollwatch@", "evals", "7201"):
            assert secret not in outside.text, outside.text
