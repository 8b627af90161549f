"""Released items carry inclusion proofs: ``rollwatch audit --item`` against the real publication routes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest

from rollwatch.config import Config, PublicationConfig
from rollwatch.events import RolloutRescored, rollout_stream
from rollwatch.integrity.bundle import check_bundle, derive_rollout_id
from rollwatch.integrity.checkpoint import NoteVerifier, unb64
from rollwatch.integrity.merkle import leaf_hash, verify_inclusion
from rollwatch.integrity.service import Integrity, open_integrity
from rollwatch.metrics import Metrics
from rollwatch.projections import ProjectionDB
from rollwatch.publication import export_public, release_due
from rollwatch.publication.policy import decide
from rollwatch.publication.proofs import ProofBundles
from rollwatch.publication.routes import publication_routes
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer
from tests.publication.helpers import (
    add_rollout,
    all_projections,
    finish_run,
    make_config,
    new_run_id,
    serving,
    start_run,
)

pytestmark = pytest.mark.anyio


async def release_positive(store: SQLiteEventStore, pdb: ProjectionDB) -> str:
    """Record a run with one passing rollout (no embargo) and release it; return its id."""
    run_id = new_run_id()
    await start_run(store, run_id)
    # Its id derived as the pipeline derives it, which the proof bundle's check recomputes.
    rid = await add_rollout(
        store, run_id, passed=True, embargo_s=0.0, rid=derive_rollout_id(run_id, "gpt-x", "p1", 0)
    )
    await finish_run(store, run_id, rollouts=1, passed=1)
    assert await release_due(store, pdb) == 1
    return rid


def passing_rescore(rid: str, *, previous_passed: bool) -> RolloutRescored:
    """A re-score of ``rid`` that passes under a new problem version ``h2``."""
    return RolloutRescored(
        rollout_id=rid,
        problem_id="p1",
        passed=True,
        score=1.0,
        scorer="python-function",
        problem_hash="h2",
        scorer_version="v2",
        rescore_id="rs-1",
        previous_passed=previous_passed,
        previous_problem_hash="h",
    )


@dataclass
class Site:
    """A daemon's worth of publication and integrity, served on loopback."""

    store: SQLiteEventStore
    pdb: ProjectionDB
    integrity: Integrity
    url: str
    client: httpx.AsyncClient

    async def release_positive(self) -> str:
        return await release_positive(self.store, self.pdb)

    async def scored_seq(self, rid: str) -> int:
        [ev] = [e async for e in self.store.read(stream=f"rollout-{rid}", types={"RolloutScored"})]
        return ev.seq

    async def item(self, rid: str) -> dict[str, Any]:
        """The ``_rollwatch`` object of ``rid``'s item in ``/public/feed.json``."""
        r = await self.client.get("/public/feed.json")
        assert r.status_code == 200
        [meta] = [i["_rollwatch"] for i in r.json()["items"] if i["_rollwatch"]["rollout_id"] == rid]
        return meta  # type: ignore[no-any-return]


def integrity_config(tmp_path: Path) -> Config:
    # Checkpoints only when the test signs them: at start, and by final_checkpoint().
    return make_config(
        store={"url": f"sqlite:{tmp_path / 'events.db'}"},
        integrity={"origin": "rollwatch.test/log", "checkpoint_every": 10**9, "checkpoint_interval": "1h"},
    )


@asynccontextmanager
async def site(tmp_path: Path, config: Config, *, before: int = 0) -> AsyncIterator[Site]:
    """The log, the integrity service started as the daemon starts it, and the routes on a free port.

    ``before`` positives are released before the integrity service starts (so its
    first checkpoint covers them).
    """
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(config.store.projections_path, all_projections()) as pdb,
    ):
        for _ in range(before):
            await release_positive(store, pdb)
        async with open_integrity(config.integrity, config.store, store) as integrity:
            services = SimpleNamespace(store=store, projections=pdb, config=config)
            app = build_app(Metrics(), [*publication_routes(services, None, integrity), *integrity.routes()])
            server = HTTPServer(app, "127.0.0.1", 0)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                await tg.start(integrity.run, stop)
                await tg.start(server.run)
                url = f"http://127.0.0.1:{server.port}"
                try:
                    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                        yield Site(store, pdb, integrity, url, client)
                finally:
                    server.stop()
                    stop.set()


async def rollwatch_audit(*args: str) -> tuple[int, str, str]:
    """``python -m rollwatch audit ARGS`` as a real command, in a worker thread (the server keeps serving)."""
    p = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "rollwatch", "audit", *args], capture_output=True, text=True, timeout=60
        )
    )
    return p.returncode, p.stdout, p.stderr


class TestFeedInclusion:
    async def test_audit_checks_a_released_item(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each feed item carries its RolloutScored event, leaf index and a proof for the signed checkpoint;
        ``rollwatch audit --item`` passes for it and exits 1 naming an unknown id."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        keep = tmp_path / "kept.json"
        async with site(tmp_path, integrity_config(tmp_path), before=2) as s:
            rid = await s.release_positive()  # after the first checkpoint
            await s.integrity.final_checkpoint()
            cp = await s.integrity.tree.latest_checkpoint()
            assert cp is not None

            meta = await s.item(rid)
            seq = await s.scored_seq(rid)
            assert (meta["seq"], meta["leaf_index"]) == (seq, seq - 1)
            assert meta["inclusion"]["size"] == cp.size
            leaf = leaf_hash(meta["canonical"].encode())
            path = [unb64(h, "path") for h in meta["inclusion"]["path"]]
            assert verify_inclusion(seq - 1, cp.size, leaf, path, unb64(cp.root, "root"))

            code, out, err = await rollwatch_audit("--url", s.url, "--keep", str(keep), "--item", rid)
            assert code == 0, err
            assert f"inclusion: item {rid} (event {seq})" in out
            assert f"bundle: item {rid}: 6 events (request, answer, score, decision, release)" in out

            code, out, err = await rollwatch_audit(
                "--url", s.url, "--keep", str(keep), "--item", "no-such-rollout"
            )
            assert code == 1
            assert "FAILED inclusion" in err
            assert "no-such-rollout" in err

    async def test_audit_checks_a_released_item_rescored_with_a_none_decision(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A released pass judged again, passing again (a new problem version, the same
        verdict), gets a "none" decision with its ``RolloutRescored`` (as every verdict
        gets one more decision, pass or fail): ``rollwatch audit --item`` still passes, the
        claim made of the public decision alone. The public bundle stops at the release, so
        it leaves the re-score and its decision out (listed, they told the log's size when
        they were appended); the operator's bundle holds them."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        async with site(tmp_path, integrity_config(tmp_path), before=1) as s:
            rid = await s.release_positive()
            again = passing_rescore(rid, previous_passed=True)
            decisions = decide(
                PublicationConfig(embargo=0), again, datetime.now(UTC), {"subscribers", "public"}
            )
            assert [d.audience for d in decisions] == ["none"]
            await s.store.append(rollout_stream(rid), [again, *decisions])
            await s.integrity.final_checkpoint()
            proof = (await s.client.get(f"/public/rollouts/{rid}.json")).json()["proof"]
            decided = [
                json.loads(e["canonical"])["data"]["audience"]
                for e in proof["events"]
                if e["type"] == "PublicationDecided"
            ]
            assert decided == ["subscribers", "public"]
            full = await ProofBundles(s.store, s.integrity.tree).bundle(rid)
            assert full is not None
            assert [json.loads(e["canonical"])["type"] for e in full["events"]][-2:] == [
                "RolloutRescored",
                "PublicationDecided",
            ]
            code, out, err = await rollwatch_audit("--url", s.url, "--item", rid)
            assert code == 0, err
            assert f"bundle: item {rid}: 6 events (request, answer, score, decision, release)" in out

    async def test_audit_checks_a_result_a_rescore_flipped_to_pass(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A rollout the run scored failing and a re-score flipped to pass is released like any
        pass: ``rollwatch audit --item`` checks the verdict its release stands for (the
        re-score's), not the run's first one; a release standing for a failing verdict
        still fails the check."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        async with site(tmp_path, integrity_config(tmp_path), before=1) as s:
            run_id = new_run_id()
            await start_run(s.store, run_id)
            rid = await add_rollout(
                s.store, run_id, passed=False, rid=derive_rollout_id(run_id, "gpt-x", "p1", 0)
            )
            await finish_run(s.store, run_id, rollouts=1, passed=0)
            flip = passing_rescore(rid, previous_passed=False)
            decisions = decide(PublicationConfig(embargo=0), flip, datetime.now(UTC), {"subscribers"})
            assert [d.audience for d in decisions] == ["public"]
            await s.store.append(rollout_stream(rid), [flip, *decisions])
            assert await release_due(s.store, s.pdb) == 1
            await s.integrity.final_checkpoint()
            code, out, err = await rollwatch_audit("--url", s.url, "--item", rid)
            assert code == 0, err
            assert f"bundle: item {rid}:" in out
            # The same bundle with the flip left out stands for the run's failing verdict.
            record = (await s.client.get(f"/public/rollouts/{rid}.json")).json()
            bundle = record["proof"]
            bundle["events"] = [e for e in bundle["events"] if e.get("type") != "RolloutRescored"]
            verifier = NoteVerifier.from_vkey(s.integrity.signer.vkey)
            with pytest.raises(ValueError, match="the verdict its release stands for is not a pass"):
                check_bundle(bundle, rid, verifier)

    async def test_item_after_the_checkpoint_is_proved_once_signed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An item released after the latest checkpoint fails the audit (audit again later); once a
        checkpoint covers it, every item's proof moves to that checkpoint and the audit passes,
        consistent with the checkpoint kept from before."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        keep = tmp_path / "kept.json"
        async with site(tmp_path, integrity_config(tmp_path), before=1) as s:
            first = await s.integrity.tree.latest_checkpoint()
            assert first is not None
            [old] = [
                i["_rollwatch"]["rollout_id"]
                for i in (await s.client.get("/public/feed.json")).json()["items"]
            ]
            assert (await s.item(old))["inclusion"]["size"] == first.size
            code, _, err = await rollwatch_audit("--url", s.url, "--keep", str(keep), "--item", old)
            assert code == 0, err

            new = await s.release_positive()
            meta = await s.item(new)
            assert meta["leaf_index"] == await s.scored_seq(new) - 1
            assert meta.get("inclusion", {"size": first.size + 1})["size"] > first.size
            code, _, err = await rollwatch_audit("--url", s.url, "--keep", str(keep), "--item", new)
            assert code == 1
            assert "after the checkpoint" in err

            second = await s.integrity.final_checkpoint()
            assert second is not None
            for rid in (new, old):
                assert (await s.item(rid))["inclusion"]["size"] == second.size
            code, out, err = await rollwatch_audit("--url", s.url, "--keep", str(keep), "--item", new)
            assert code == 0, err
            assert f"consistency: kept size {first.size} -> size {second.size}: ok" in out
            code, _, err = await rollwatch_audit("--url", s.url, "--keep", str(keep), "--item", old)
            assert code == 0, err


class TestExport:
    async def test_export_carries_proofs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Given the tree, the export's feed.json items and results.jsonl lines carry the proofs the
        routes serve; the per-rollout records stay as they were."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        out = tmp_path / "export"
        async with site(tmp_path, integrity_config(tmp_path), before=2) as s:
            await export_public(
                s.store, s.pdb, out, base_url=s.url + "/public/", embargo_s=0.0, tree=s.integrity.tree
            )
            served = (await s.client.get("/public/feed.json")).json()
        assert json.loads((out / "feed.json").read_text()) == served
        lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        assert len(lines) == 2
        for line in lines:
            assert line["_rollwatch"]["leaf_index"] == line["_rollwatch"]["seq"] - 1
            assert line["_rollwatch"]["inclusion"]["path"]
            record = json.loads((out / "rollouts" / f"{line['rollout_id']}.json").read_text())
            assert "_rollwatch" not in record


class TestWithoutIntegrity:
    async def test_items_have_no_proofs(self, tmp_path: Path) -> None:
        """Without the integrity services the feed's items are as before: no leaf index, no proof."""
        async with serving(tmp_path) as env:
            run_id = new_run_id()
            await start_run(env.store, run_id)
            rid = await add_rollout(env.store, run_id, passed=True, embargo_s=0.0)
            assert await release_due(env.store, env.pdb) == 1
            [item] = (await env.client.get("/public/feed.json")).json()["items"]
            assert item["_rollwatch"]["rollout_id"] == rid
            assert not {"seq", "leaf_index", "canonical", "inclusion"} & set(item["_rollwatch"])
