"""The operator's check (``rollwatch verify``'s tree part): every checkpoint against the log, the stored tree against the log."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rollwatch.config import IntegrityConfig, StoreConfig
from rollwatch.errors import IntegrityError
from rollwatch.events import CheckpointSigned, Recorded
from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner, b64
from rollwatch.integrity.checkpointer import Checkpointer
from rollwatch.integrity.keys import load_signer, promote_key
from rollwatch.integrity.tree import MerkleTree
from rollwatch.integrity.verify import check_log_tree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import append_n, rewrite_event
from tests.integrity.test_merkle import ref_leaf, ref_mth


async def signed_log(store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner) -> None:
    """Three checkpoints over 60 events, as a daemon would leave them."""
    cpr = Checkpointer(store, tree, signer)
    for n in (15, 25, 20):
        await append_n(store, n)
        await cpr.checkpoint()


class TestCheckLogTree:
    @pytest.mark.anyio
    async def test_a_clean_log_passes(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """Every checkpoint verifies, matches the log's root at its size, and the stored tree matches leaf for leaf."""
        await signed_log(store, tree, signer)
        report = await check_log_tree(store, vkey=signer.vkey, tree=tree)
        leaves = [ref_leaf(e.canonical()) async for e in store.read()]
        assert report.events == len(leaves) == 63
        assert report.root == b64(ref_mth(leaves))
        assert (report.checkpoints, report.signatures, report.tree_leaves) == (3, 3, 63)
        plain = await check_log_tree(store)
        assert (plain.checkpoints, plain.signatures, plain.tree_leaves) == (3, 0, 0)

    @pytest.mark.anyio
    async def test_a_rewrite_is_named_exactly_while_the_tree_remembers(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner, tmp_path: Path
    ) -> None:
        """An old event rewritten with the chain recomputed: the stored tree's leaf names the exact seq."""
        await signed_log(store, tree, signer)
        rewrite_event(tmp_path / "events.db", 22, '{"note":"","schedule":"rewritten"}')
        with pytest.raises(IntegrityError) as e:
            await check_log_tree(store, vkey=signer.vkey, tree=tree)
        assert e.value.seq == 22

    @pytest.mark.anyio
    async def test_after_a_tree_rebuild_the_checkpoints_bracket_the_rewrite(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner, tmp_path: Path
    ) -> None:
        """With the tree rebuilt from the rewritten log, the first checkpoint covering the event fails, naming the span."""
        await signed_log(store, tree, signer)
        rewrite_event(tmp_path / "events.db", 22, '{"note":"","schedule":"rewritten"}')
        await tree.rebuild()
        await tree.catch_up(store)
        with pytest.raises(IntegrityError) as e:
            await check_log_tree(store, vkey=signer.vkey, tree=tree)
        # Checkpoints: size 15 (seq 16), size 41 (seq 42), size 62 (seq 63).
        assert e.value.seq == 42
        assert "between seq 16 and 41" in e.value.reason

    @pytest.mark.anyio
    async def test_a_forged_note_is_named(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """A checkpoint event whose note is not signed by the service's key fails at its seq."""
        await signed_log(store, tree, signer)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        mallory = NoteSigner(signer.name, Ed25519PrivateKey.generate())
        root = await tree.root(63)
        note = mallory.sign_checkpoint(Checkpoint(signer.name, 63, root))
        [ev] = await store.append("checkpoints", [CheckpointSigned(size=63, root=b64(root), note=note)])
        with pytest.raises(IntegrityError) as e:
            await check_log_tree(store, vkey=signer.vkey)
        assert e.value.seq == ev.seq
        assert "not signed by" in e.value.reason

    @pytest.mark.anyio
    async def test_a_checkpoint_claiming_the_future_is_named(
        self, store: SQLiteEventStore, signer: NoteSigner
    ) -> None:
        """A checkpoint event signing more events than precede it fails at its seq."""
        await append_n(store, 3)
        note = signer.sign_checkpoint(Checkpoint(signer.name, 9, bytes(32)))
        [ev] = await store.append("checkpoints", [CheckpointSigned(size=9, root=b64(bytes(32)), note=note)])
        with pytest.raises(IntegrityError, match="precede it") as e:
            await check_log_tree(store, vkey=signer.vkey)
        assert e.value.seq == ev.seq


class TestWhileTheLogGrows:
    """The scrub checks the log while a daemon goes on signing checkpoints and its tree worker
    goes on absorbing them: nothing that grows the log honestly mid-pass is a finding. CI saw
    a cluster node's start scrub call the log tampered ("the Merkle tree's record of the
    checkpoint at seq 1 is not in the log") and the node go read-only: the other node had
    signed its first checkpoint between the scrub's read of the log and of the tree."""

    @pytest.mark.anyio
    async def test_a_checkpoint_absorbed_mid_pass(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        await signed_log(store, tree, signer)
        cpr = Checkpointer(store, tree, signer)
        grown = 0

        async def grow() -> None:
            nonlocal grown
            if not grown:
                await append_n(store, 4, tag="late")
                assert await cpr.checkpoint() is not None
                grown = await tree.current_size()

        report = await check_log_tree(store, vkey=signer.vkey, tree=tree, chain=True, pace=grow)
        assert grown == 68
        assert report.events >= 63

    @pytest.mark.anyio
    async def test_a_checkpoint_absorbed_after_the_log_checkpoints_were_read(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner
    ) -> None:
        """The growth lands just after the pass has read the log's checkpoints (a store that
        hands over the real one's pages, then lets the other writer in)."""
        await signed_log(store, tree, signer)
        cpr = Checkpointer(store, tree, signer)

        class Racing:
            def __init__(self) -> None:
                self.grown = False

            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

            async def read_batches(self, **kw: Any) -> AsyncIterator[list[Recorded]]:
                async for page in store.read_batches(**kw):
                    yield page
                if kw.get("types") and not self.grown:
                    self.grown = True
                    await append_n(store, 4, tag="late")
                    assert await cpr.checkpoint() is not None

        racing = Racing()
        report = await check_log_tree(racing, vkey=signer.vkey, tree=tree, chain=True)  # type: ignore[arg-type]
        assert racing.grown
        assert await tree.current_size() == 68
        assert report.events == 68
        # A record past the tree's size, in one snapshot, is still an edit.
        db = sqlite3.connect(tree.path, isolation_level=None)
        with db:
            db.execute(
                "INSERT INTO tree_checkpoints SELECT seq + 100, size, root, note FROM tree_checkpoints LIMIT 1"
            )
        db.close()
        with pytest.raises(IntegrityError, match="is not in the log"):
            await check_log_tree(store, vkey=signer.vkey, tree=tree)


class TestVerifyTreeForConfig:
    @pytest.mark.anyio
    async def test_uses_the_configured_key_and_tree(self, tmp_path: Path, store: SQLiteEventStore) -> None:
        """verify_state (what `rollwatch verify` runs) finds the key and merkle.db from the configuration and checks signatures."""
        from rollwatch.integrity.verify import verify_state

        store_cfg = StoreConfig(url=f"sqlite:{tmp_path / 'events.db'}")
        cfg = IntegrityConfig(origin="rollwatch.test/log")
        signer = load_signer(cfg.key_path(store_cfg), cfg.name)
        promote_key(cfg.key_path(store_cfg))  # what the checkpointer does before it signs
        async with MerkleTree(cfg.tree_path(store_cfg)) as tree:
            await signed_log(store, tree, signer)
        report = await verify_state(store, cfg, store_cfg)
        assert (report.checkpoints, report.signatures, report.tree_leaves) == (3, 3, 63)
        assert cfg.tree_path(store_cfg) == tmp_path / "merkle.db"
        assert cfg.key_path(store_cfg) == tmp_path / "checkpoint.key"


# ``verify`` checks each event's content, the stream versions and SQLite's index beside the
# hashing: in a second process on a log above SPLIT_ABOVE events, in its own below.
CONTENT_CHECK = {"in-this-process": 10**9, "in-a-second-process": -1}


class TestVerifyContentCheck:
    async def _verify(self, tmp_path: Path, split_above: int, monkeypatch: pytest.MonkeyPatch) -> int:
        from rollwatch.integrity import verify

        monkeypatch.setattr(verify, "SPLIT_ABOVE", split_above)
        store_cfg = StoreConfig(url=f"sqlite:{tmp_path / 'events.db'}")
        async with SQLiteEventStore(tmp_path / "events.db", read_only=True) as store:
            report = await verify.verify_state(
                store, IntegrityConfig(origin="rollwatch.test/log"), store_cfg, chain=True
            )
        return report.events

    @pytest.mark.anyio
    @pytest.mark.parametrize("where", CONTENT_CHECK)
    async def test_a_clean_log_passes(
        self, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Either way a clean log passes, every event counted."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await append_n(store, 120, per_call=40)
        assert await self._verify(tmp_path, CONTENT_CHECK[where], monkeypatch) == 120

    @pytest.mark.anyio
    @pytest.mark.parametrize("where", CONTENT_CHECK)
    async def test_data_no_rollwatch_wrote_is_named(
        self, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An event's data rewritten out of canonical form, every hash after it recomputed
        (no tree, no checkpoint to betray it): only the content check sees it, either way."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await append_n(store, 120, per_call=40)
            data = (await store.read_at([77]))[77].data_json
        rewrite_event(tmp_path / "events.db", 77, data.replace(":", ": "))
        with pytest.raises(IntegrityError) as found:
            await self._verify(tmp_path, CONTENT_CHECK[where], monkeypatch)
        assert found.value.seq == 77, found.value

    @pytest.mark.anyio
    @pytest.mark.parametrize("where", CONTENT_CHECK)
    async def test_a_version_no_hash_covers_is_named(
        self, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A stream version changed (no hash covers it) is found either way, and so is the
        first of two findings when the hashing finds a later one."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await append_n(store, 120, per_call=40)
        con = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
        try:
            con.execute("DROP TRIGGER IF EXISTS events_no_update")
            con.execute("UPDATE events SET version = version + 1000 WHERE seq = 30")
            con.execute("UPDATE events SET hash = ? WHERE seq = 90", ("0" * 64,))
        finally:
            con.close()
        with pytest.raises(IntegrityError) as found:
            await self._verify(tmp_path, CONTENT_CHECK[where], monkeypatch)
        assert found.value.seq == 30, found.value
