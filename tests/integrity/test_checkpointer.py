"""The checkpointer: when it signs, what it signs, and that it never signs a rewritten log."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import anyio
import pytest
import structlog

from rollwatch.errors import IntegrityError
from rollwatch.events import CheckpointSigned, Recorded
from rollwatch.integrity.checkpoint import NoteSigner, unb64
from rollwatch.integrity.checkpointer import Checkpointer, checkpointer, final_checkpoint
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import ORIGIN, append_n, delete_events, rewrite_event
from tests.integrity.test_merkle import ref_leaf, ref_mth, ref_proof, ref_verify_consistency


async def checkpoints(store: SQLiteEventStore) -> list[Recorded]:
    return [ev async for ev in store.read(types=["CheckpointSigned"])]


async def wait_for_checkpoints(store: SQLiteEventStore, n: int, *, deadline: float = 10.0) -> list[Recorded]:
    """Wait (on the log, with a deadline) until it holds ``n`` checkpoint events."""
    with anyio.fail_after(deadline):
        while True:
            found = await checkpoints(store)
            if len(found) >= n:
                return found
            await store.wait_for_new(await store.head(), timeout=1.0)


class TestSigning:
    @pytest.mark.anyio
    async def test_a_checkpoint_signs_the_log_before_it(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner, tmp_path: Path
    ) -> None:
        """The CheckpointSigned event records size, root and a note verifying with the key; the root is the log's MTH."""
        await append_n(store, 17)
        cp = await Checkpointer(store, tree, signer, witness=tmp_path / "w").checkpoint()
        assert cp is not None
        [ev] = await checkpoints(store)
        assert ev.seq == 18
        assert ev.stream == "checkpoints"
        d = ev.data
        opened = signer.verifier().open_checkpoint(d["note"], origin=ORIGIN)
        assert opened == cp
        assert d["size"] == cp.size == 17
        leaves = [ref_leaf(e.canonical()) async for e in store.read(until=17)]
        assert unb64(d["root"], "root") == cp.root == ref_mth(leaves)
        assert (tmp_path / "w").read_text() == d["note"]

    @pytest.mark.anyio
    async def test_nothing_new_signs_nothing(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """With only checkpoint events since the last checkpoint, no new one is signed (no checkpoint storms)."""
        await append_n(store, 5)
        cpr = Checkpointer(store, tree, signer)
        assert await cpr.checkpoint() is not None
        assert await cpr.checkpoint() is None
        assert await Checkpointer(store, tree, signer).checkpoint() is None
        await append_n(store, 1)
        again = await cpr.checkpoint()
        assert again is not None
        assert again.size == 7
        assert len(await checkpoints(store)) == 2

    @pytest.mark.anyio
    async def test_task_signs_every_n_events_and_at_stop(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """The task signs at start, after every N events, and once more when stopped; each extends the last."""
        await append_n(store, 3)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: checkpointer(
                    store, tree, signer, every_events=10, interval=3600, stop=stop, task_status=task_status
                )
            )
            assert [e.data["size"] for e in await checkpoints(store)] == [3]
            await append_n(store, 12, per_call=1)
            found = await wait_for_checkpoints(store, 2)
            assert found[1].data["size"] >= 13
            await append_n(store, 2)
            stop.set()
        found = await checkpoints(store)
        sizes = [e.data["size"] for e in found]
        assert sizes[-1] == await store.head() - 1
        assert sizes == sorted(sizes)
        leaves = [ref_leaf(e.canonical()) async for e in store.read()]
        roots = [unb64(e.data["root"], "root") for e in found]
        for (m, rm), (n, rn) in pairwise(zip(sizes, roots, strict=True)):
            assert ref_verify_consistency(m, n, rm, rn, ref_proof(m, leaves[:n]))
            assert rn == ref_mth(leaves[:n])

    @pytest.mark.anyio
    async def test_task_signs_after_the_interval(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """With few events, the interval alone brings the next checkpoint."""
        await append_n(store, 2)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: checkpointer(
                    store, tree, signer, every_events=10_000, interval=0.2, stop=stop, task_status=task_status
                )
            )
            await append_n(store, 1)
            found = await wait_for_checkpoints(store, 2)
            assert found[1].data["size"] == 4
            stop.set()

    @pytest.mark.anyio
    async def test_final_checkpoint(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """final_checkpoint signs the log as it stands, and nothing when nothing is new."""
        await append_n(store, 4)
        cp = await final_checkpoint(store, tree, signer)
        assert cp is not None
        assert cp.size == 4
        assert await final_checkpoint(store, tree, signer) is None


class TestRefusal:
    @pytest.mark.anyio
    async def test_a_rewritten_log_gets_no_signature(
        self,
        store: SQLiteEventStore,
        tree: MerkleTree,
        signer: NoteSigner,
        tmp_path: Path,
    ) -> None:
        """An old event rewritten (chain recomputed) and the tree rebuilt: signing raises IntegrityError, loudly, and appends nothing."""
        await append_n(store, 40)
        cpr = Checkpointer(store, tree, signer, witness=tmp_path / "w")
        first = await cpr.checkpoint()
        assert first is not None
        await append_n(store, 5)
        rewrite_event(tmp_path / "events.db", 9, '{"note":"","schedule":"rewritten"}')
        await tree.rebuild()
        head = await store.head()
        with structlog.testing.capture_logs() as logged, pytest.raises(IntegrityError) as e:
            await cpr.checkpoint()
        assert e.value.seq == 40
        assert "not consistent" in e.value.reason
        assert "refusing to sign" in e.value.reason
        assert await store.head() == head
        assert any(r["event"] == "checkpoint_refused" and r["log_level"] == "error" for r in logged)

    @pytest.mark.anyio
    async def test_the_task_raises_the_refusal(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner, tmp_path: Path
    ) -> None:
        """The checkpointer task itself ends with the IntegrityError (not wrapped), so the daemon sees it."""
        await append_n(store, 10)
        await Checkpointer(store, tree, signer).checkpoint()
        await append_n(store, 2)
        rewrite_event(tmp_path / "events.db", 3, '{"note":"","schedule":"rewritten"}')
        await tree.rebuild()
        with pytest.raises(IntegrityError):
            await checkpointer(store, tree, signer, every_events=1, interval=60, stop=anyio.Event())

    @pytest.mark.anyio
    async def test_the_witness_remembers_when_the_log_forgets(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner, tmp_path: Path
    ) -> None:
        """Rewritten *and* stripped of its checkpoint events, the log still meets the witness file's checkpoint."""
        await append_n(store, 20)
        await Checkpointer(store, tree, signer, witness=tmp_path / "w").checkpoint()
        rewrite_event(tmp_path / "events.db", 2, '{"note":"","schedule":"rewritten"}')
        delete_events(tmp_path / "events.db", "type = 'CheckpointSigned'")
        assert await store.head() == 20
        await tree.rebuild()
        with pytest.raises(IntegrityError, match="witness"):
            await Checkpointer(store, tree, signer, witness=tmp_path / "w").checkpoint()

    @pytest.mark.anyio
    async def test_a_forged_checkpoint_event_is_refused(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """A CheckpointSigned event whose note fails our key's signature stops signing (the log was tampered with)."""
        await append_n(store, 6)
        note = signer.sign("rollwatch.test/log\n6\n" + "A" * 43 + "=\n")
        forged = note.replace("\n6\n", "\n5\n")
        await store.append("checkpoints", [CheckpointSigned(size=5, root="A" * 43 + "=", note=forged)])
        with pytest.raises(IntegrityError, match="not valid"):
            await Checkpointer(store, tree, signer).checkpoint()
