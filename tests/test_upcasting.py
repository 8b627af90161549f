"""One read path: an event stored under an old schema reaches every reader upcast.

The scenario a schema change makes real: a log holds ``RolloutScored`` events written
by an older rollwatch whose score event said ``ok`` and ``points``; the current code
reads ``passed`` and ``score``. Registering the next schema with an upcaster must be enough
for every read model, the report, the archive, the release job and a live daemon to
see the old events in the new shape, after ``rebuild`` as on a first catch-up.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch import events as ev_mod
from rollwatch.daemon import Daemon
from rollwatch.events import (
    Event,
    PublicationDecided,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunStarted,
    rfc3339,
    rollout_stream,
    run_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.publication.archive import rollout_record
from rollwatch.publication.projections import feed_page
from rollwatch.publication.release import release_one
from rollwatch.readmodels import default_projections
from rollwatch.report import build_report, to_json
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import add_subscriber, bearer, make_config
from tests.schema_next import OLD, LegacyScored, ScoredV2, register, register_in_children, unregister

pytestmark = pytest.mark.anyio


@pytest.fixture
def schema_2(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the next schema of ``RolloutScored`` and its upcaster, here and in every
    worker process a daemon starts; restore the current after."""
    site = register_in_children(tmp_path_factory.mktemp("schema-next"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (site, os.environ.get("PYTHONPATH")))))
    previous = register()
    try:
        yield
    finally:
        unregister(previous)


async def _legacy_log(store: SQLiteEventStore) -> tuple[str, str]:
    """A run with two rollouts scored under the old shape: one passed, one not."""
    run_id = "run-" + uuid.uuid4().hex[:8]
    await store.append(
        run_stream(run_id),
        [
            RunStarted(
                run_id=run_id,
                schedule="s",
                provider="openai",
                models=["m"],
                problem_set="ps",
                node="n",
                rollouts=1,
                problems=["p1", "p2"],
            )
        ],
    )
    ids = []
    past = rfc3339(datetime.now(UTC) - timedelta(days=1))
    for problem, ok in (("p1", True), ("p2", False)):
        rid = str(uuid.uuid4())
        ids.append(rid)
        evs: list[Event] = [
            RolloutRequested(
                rollout_id=rid,
                run_id=run_id,
                provider="openai",
                model="m",
                problem_id=problem,
                problem_hash="h",
                sample=0,
                attempt=1,
                request={},
                node="n",
            ),
            RolloutResponded(rollout_id=rid, attempt=1, text="def f(): pass", cost_usd=0.5),
            LegacyScored(rollout_id=rid, ok=ok, points=1.0 if ok else 0.0, scorer="python-function"),
        ]
        if ok:
            evs.append(PublicationDecided(rollout_id=rid, audience="public", not_before=past))
        await store.append(rollout_stream(rid), evs)
    return ids[0], ids[1]


async def _check_read_models(store: SQLiteEventStore, pdb: ProjectionDB, passed_id: str) -> None:
    await pdb.catch_up(store)
    rows = await pdb.fetchall("SELECT problem_id, passed, score FROM rollouts ORDER BY problem_id")
    assert rows == [("p1", 1, 1.0), ("p2", 0, 0.0)]
    (run_passed,) = await pdb.fetchone("SELECT passed FROM runs") or (None,)
    assert run_passed == 1
    public = await pdb.fetchall("SELECT problem_id, passed, score FROM public_rollouts ORDER BY problem_id")
    assert public == [("p1", 1, 1.0), ("p2", 0, 0.0)]
    items, _ = await feed_page(store, pdb, after=0, until=await store.head(), limit=1000)
    scored = [i for i in items if '"type":"RolloutScored"' in i]
    assert len(scored) == 2
    assert '"passed":true' in scored[0]
    assert '"passed":false' in scored[1]
    report = to_json(await build_report(pdb))
    assert [(r["rollouts"], r["passed"]) for r in report] == [(2, 1)]


async def test_every_read_model_and_the_report_see_the_upcast_form(tmp_path: Path, schema_2: None) -> None:
    """Projections, the report, the archive record and the release job read old-shape
    score events in the next schema's shape, on first catch-up and again after ``rebuild``."""
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(tmp_path / "projections.db", default_projections()) as pdb,
    ):
        passed_id, _ = await _legacy_log(store)
        stored = [r async for r in store.read(types={"RolloutScored"})]
        assert {r.schema for r in stored} == {OLD}
        assert "ok" in stored[0].data
        assert isinstance(stored[0].event(), RolloutScored)
        assert stored[0].event().passed is True

        await _check_read_models(store, pdb, passed_id)
        await pdb.rebuild()
        await _check_read_models(store, pdb, passed_id)

        record = await rollout_record(store, passed_id)
        assert record is not None
        assert record["score"]["passed"] is True
        assert "ok" not in record["score"]
        assert await release_one(store, passed_id) is True


async def test_without_the_upcaster_a_reader_is_told_not_fooled(tmp_path: Path) -> None:
    """An old event whose upcaster is missing raises ``UnknownEventType`` naming the
    type and schemas, rather than reaching a read model half-decoded."""
    previous = ev_mod.register(ScoredV2)
    try:
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await _legacy_log(store)
            (rec,) = [r async for r in store.read(types={"RolloutScored"}, until=None)][:1]
            with pytest.raises(ev_mod.UnknownEventType, match=f"no upcaster for RolloutScored schema {OLD}"):
                rec.event()
    finally:
        assert previous is not None
        ev_mod.register(previous)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_live_daemon_serves_the_upcast_form(tmp_path: Path, schema_2: None) -> None:
    """A daemon started on a log of old-shape score events reports them through
    ``/v1/report`` and releases the passed one on ``/public/feed.json``."""
    port = _free_port()
    config = make_config(
        store={"url": f"sqlite:///{tmp_path}/events.db"},
        server={"listen": f"127.0.0.1:{port}"},
        publication={"embargo": "0s"},
    )
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        passed_id, _ = await _legacy_log(store)
        key = await add_subscriber(store, "alice")
    daemon = Daemon(config, grace=1.0)
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                with anyio.fail_after(30):
                    while True:
                        r = await client.get("/v1/report", headers=bearer(key))
                        assert r.status_code == 200, r.text
                        if r.json() and r.json()[0]["rollouts"] == 2:
                            break
                        await anyio.sleep(0.05)
                assert (r.json()[0]["rollouts"], r.json()[0]["passed"]) == (2, 1)
                with anyio.fail_after(30):
                    while True:
                        feed = (await client.get("/public/feed.json")).json()
                        if feed["items"]:
                            break
                        await anyio.sleep(0.1)
                assert len(feed["items"]) == 1
                assert passed_id in str(feed["items"][0])
        finally:
            daemon.stopping.set()
