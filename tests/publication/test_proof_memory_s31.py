"""Proof bundles kept in memory stay few, however many are made against one checkpoint.

Every bundle made against the current checkpoint was kept until the next checkpoint:
``publish export`` (which makes one per result) held every result's bundle, 1.2 GB at
a 1M-event log, and one anonymous pull of ``/public/results.jsonl`` streamed by the
daemon did the same to the daemon. Now the ones used last are kept, up to ``keep``.
Real log, real Merkle tree, real signed checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollwatch.publication.proofs import ProofBundles
from tests.integrity.test_tlog_tiles import add_released, live_log

pytestmark = pytest.mark.anyio

RESULTS = 12


async def test_bundles_made_for_every_result_keep_only_the_last_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    async with live_log(tmp_path) as live:
        ids = [await add_released(live.store, live.pdb) for _ in range(RESULTS)]
        await live.integrity.final_checkpoint()
        bundles = ProofBundles(live.store, live.integrity.tree, public=True, keep=4)
        cp = await bundles.checkpoint()
        assert cp is not None
        made = []
        for rid in ids:  # as an export or a streamed results.jsonl makes them
            made.append(await bundles.bundle(rid, cp))
            assert bundles.kept <= 4
        assert bundles.kept == 4
        fresh = ProofBundles(live.store, live.integrity.tree, public=True)
        for rid, b in zip(ids, made, strict=True):
            assert b is not None
            assert b == await fresh.bundle(rid, cp), "a bundle differs from one made afresh"
            assert b["complete"]
            assert len(b["events"]) >= 5
        # The last used are the ones kept: asked again, the same object; an early one is made again.
        assert await bundles.bundle(ids[-1], cp) is made[-1]
        assert await bundles.bundle(ids[0], cp) is not made[0]
        assert bundles.kept == 4
        # A hit counts as a use: the one asked for again outlives those made after it.
        again = await bundles.bundle(ids[-1], cp)
        for rid in ids[1:4]:
            await bundles.bundle(rid, cp)
        assert await bundles.bundle(ids[-1], cp) is again


async def test_keep_zero_keeps_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    async with live_log(tmp_path) as live:
        rid = await add_released(live.store, live.pdb)
        await live.integrity.final_checkpoint()
        bundles = ProofBundles(live.store, live.integrity.tree, public=True, keep=0)
        cp = await bundles.checkpoint()
        first = await bundles.bundle(rid, cp)
        assert first is not None
        assert bundles.kept == 0
        assert await bundles.bundle(rid, cp) == first
