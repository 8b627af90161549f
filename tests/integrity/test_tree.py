"""The Merkle tree kept in merkle.db: fed from a real log, checked against the RFC reference."""

from __future__ import annotations

import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from hypothesis import given, settings
from hypothesis import strategies as st

from rollwatch.abc import EventStore, VerifyReport, WorkBoard
from rollwatch.errors import IntegrityError
from rollwatch.events import CheckpointSigned, Event, Recorded, SchedulePaused
from rollwatch.integrity import merkle
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import append_n, rewrite_event
from tests.integrity.test_merkle import (
    ref_leaf,
    ref_mth,
    ref_path,
    ref_proof,
    ref_verify_consistency,
    ref_verify_inclusion,
)


async def log_leaves(store: SQLiteEventStore) -> list[bytes]:
    """Every event's leaf hash, computed here from the canonical bytes by the reference."""
    return [ref_leaf(ev.canonical()) async for ev in store.read()]


class TestCatchUp:
    @pytest.mark.anyio
    async def test_roots_and_proofs_match_the_reference_at_every_size(
        self, store: SQLiteEventStore, tree: MerkleTree
    ) -> None:
        """Catching up in uneven steps, the stored tree gives the reference root, paths and proofs for every size."""
        for step in (1, 2, 5, 13, 29, 40, 3):
            await append_n(store, step, per_call=4)
            await tree.catch_up(store)
        leaves = await log_leaves(store)
        n = len(leaves)
        assert await tree.current_size() == n == 93
        roots = [ref_mth(leaves[:k]) for k in range(n + 1)]
        for size in range(n + 1):
            assert await tree.root(size) == roots[size]
        for size in range(1, n + 1):
            for index in range(0, size, 3):
                path = await tree.inclusion_proof(index, size)
                assert path == ref_path(index, leaves[:size])
                assert ref_verify_inclusion(index, size, leaves[index], path, roots[size])
            for old in range(1, size + 1, 2):
                proof = await tree.consistency_proof(old, size)
                assert proof == ref_proof(old, leaves[:size])
                assert ref_verify_consistency(old, size, roots[old], roots[size], proof)
        assert await tree.leaf_hashes(0, n + 10) == leaves

    @pytest.mark.anyio
    async def test_reopening_resumes_where_it_stopped(self, tmp_path: Path, store: SQLiteEventStore) -> None:
        """A tree closed and reopened continues from its stored size, without re-absorbing events."""
        async with MerkleTree(tmp_path / "t.db", batch=10) as t:
            await append_n(store, 70)
            assert await t.catch_up(store) == 70
        await append_n(store, 45)
        async with MerkleTree(tmp_path / "t.db", batch=10) as t:
            assert t.size == 70
            assert await t.catch_up(store) == 115
            assert await t.root() == ref_mth(await log_leaves(store))

    @pytest.mark.anyio
    async def test_two_trees_on_one_file_catch_up_at_once(
        self, tmp_path: Path, store: SQLiteEventStore
    ) -> None:
        """Two processes' trees on the same file (daemon and CLI) interleave batches; each event is absorbed once."""
        await append_n(store, 500, per_call=50)
        async with MerkleTree(tmp_path / "t.db", batch=17) as a, MerkleTree(tmp_path / "t.db", batch=23) as b:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.catch_up, store)
                tg.start_soon(b.catch_up, store)
            assert await a.current_size() == await b.current_size() == 500
            assert await a.root() == ref_mth(await log_leaves(store))

    @pytest.mark.anyio
    async def test_follow_absorbs_new_events(self, store: SQLiteEventStore, tree: MerkleTree) -> None:
        """follow() reports started once caught up, then absorbs each append as it lands."""
        await append_n(store, 10)
        async with anyio.create_task_group() as tg:
            await tg.start(tree.follow, store)
            assert tree.size == 10
            await append_n(store, 5)
            with anyio.fail_after(10):
                while tree.size < 15:
                    await anyio.wait_all_tasks_blocked()
                    await tree.current_size()
            tg.cancel_scope.cancel()
        assert await tree.root() == ref_mth(await log_leaves(store))

    @pytest.mark.anyio
    async def test_checkpoint_events_are_indexed(self, store: SQLiteEventStore, tree: MerkleTree) -> None:
        """CheckpointSigned events are leaves like any other, and the tree lists them."""
        await append_n(store, 4)
        await store.append("checkpoints", [CheckpointSigned(size=4, root="x", note="n\n")])
        await append_n(store, 2)
        await tree.catch_up(store)
        latest = await tree.latest_checkpoint()
        assert latest is not None
        assert (latest.seq, latest.size, latest.note) == (5, 4, "n\n")
        assert await tree.checkpoint_events_between(4, 7) == 1
        assert await tree.current_size() == 7


class TestLimits:
    @pytest.mark.anyio
    async def test_sizes_beyond_the_tree_are_refused(self, store: SQLiteEventStore, tree: MerkleTree) -> None:
        """Proofs and roots for sizes the tree does not hold raise InvalidProof."""
        await append_n(store, 5)
        await tree.catch_up(store)
        for call in (
            tree.root(6),
            tree.inclusion_proof(0, 6),
            tree.inclusion_proof(5, 5),
            tree.consistency_proof(2, 6),
            tree.consistency_proof(4, 3),
        ):
            with pytest.raises(merkle.InvalidProof):
                await call

    @pytest.mark.anyio
    async def test_memory_stays_flat_as_the_log_grows(self, tmp_path: Path, store: SQLiteEventStore) -> None:
        """Peak Python memory of a catch-up over 10x the events stays within a small factor (batches, not the log)."""
        for i in range(20):
            await store.append(f"m{i}", [SchedulePaused(schedule="m", note="x" * 200) for _ in range(1000)])
        peaks = []
        for n, name in ((2000, "a.db"), (20000, "b.db")):
            async with MerkleTree(tmp_path / name, batch=1000) as t:
                tracemalloc.start()
                await t.catch_up(store, until=n)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                peaks.append(peak)
        assert peaks[1] < 2 * peaks[0] + 200_000, peaks


class TestLogChecks:
    @pytest.mark.anyio
    async def test_a_rewritten_tail_is_refused(
        self, store: SQLiteEventStore, tree: MerkleTree, tmp_path: Path
    ) -> None:
        """If the last event the tree absorbed changes (chain recomputed), catch-up refuses, naming it."""
        await append_n(store, 12)
        await tree.catch_up(store)
        rewrite_event(tmp_path / "events.db", 12, '{"note":"","schedule":"forged"}')
        await append_n(store, 3)
        with pytest.raises(IntegrityError) as e:
            await tree.catch_up(store)
        assert e.value.seq == 12
        assert "changed" in e.value.reason

    @pytest.mark.anyio
    async def test_a_log_shorter_than_the_tree_is_refused(self, tmp_path: Path, tree: MerkleTree) -> None:
        """A tree fed from one log refuses a log with fewer events (events were removed)."""
        async with SQLiteEventStore(tmp_path / "a.db") as a:
            await append_n(a, 9)
            await tree.catch_up(a)
        async with SQLiteEventStore(tmp_path / "b.db") as b:
            await append_n(b, 4)
            with pytest.raises(IntegrityError, match="removed"):
                await tree.catch_up(b)

    @pytest.mark.anyio
    async def test_rebuild_derives_the_tree_of_the_log_as_it_is_now(
        self, store: SQLiteEventStore, tree: MerkleTree, tmp_path: Path
    ) -> None:
        """After an old event is rewritten, a rebuilt tree has a different root at every size covering it."""
        await append_n(store, 30)
        await tree.catch_up(store)
        before = [await tree.root(k) for k in range(31)]
        rewrite_event(tmp_path / "events.db", 7, '{"note":"","schedule":"forged"}')
        await tree.rebuild()
        assert await tree.catch_up(store) == 30
        after = [await tree.root(k) for k in range(31)]
        assert after[:7] == before[:7]
        assert all(a != b for a, b in zip(after[7:], before[7:], strict=True))


class GenericStore(EventStore):
    """The SQLite store seen only through the EventStore interface (forces the generic read path)."""

    def __init__(self, inner: SQLiteEventStore) -> None:
        super().__init__()
        self.inner = inner

    async def _open(self, stack: AsyncExitStack) -> None:  # pragma: no cover - never opened
        raise NotImplementedError

    async def append(
        self, stream: str, events: Sequence[Event], *, expected_version: int | None = None
    ) -> list[Recorded]:
        return await self.inner.append(stream, events, expected_version=expected_version)

    def read_batches(self, **kw: Any) -> AsyncIterator[list[Recorded]]:
        return self.inner.read_batches(**kw)

    async def head(self) -> int:
        return await self.inner.head()

    def work_board(self, owner: str, lease: float) -> WorkBoard:
        return self.inner.work_board(owner, lease)

    async def stream_version(self, stream: str) -> int:
        return await self.inner.stream_version(stream)

    async def wait_for_new(self, after: int, timeout: float) -> int:
        return await self.inner.wait_for_new(after, timeout)

    async def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        return await self.inner.verify(progress)


# Stream names as a caller might choose them: plain ones take the fast path, the rest
# (quotes, backslashes, control characters, NUL, non-ASCII) must be rebuilt exactly.
streams = st.text(
    alphabet=st.sampled_from([*"az09 ._:+/@=-", '"', "\\", "\n", "\x00", "\x7f", "é", "\u2028", "😀", "{"]),
    max_size=12,
)


class TestReadPaths:
    @pytest.mark.anyio
    async def test_file_and_generic_paths_agree_with_the_canonical_bytes(self, tmp_path: Path) -> None:
        """Whatever the stream names, the file reader and the generic path give every event's reference leaf."""

        @settings(max_examples=25, deadline=None)
        @given(names=st.lists(streams, min_size=1, max_size=8))
        def check(names: list[str]) -> None:
            async def run() -> None:
                d = Path(tempfile.mkdtemp(dir=tmp_path))
                async with SQLiteEventStore(d / "e.db") as store:
                    for i, name in enumerate(names):
                        await store.append(name, [SchedulePaused(schedule=name, note=f'{i}\u00e9"')])
                    want = await log_leaves(store)
                    async with (
                        MerkleTree(d / "fast.db", batch=3) as fast,
                        MerkleTree(d / "slow.db", batch=3) as slow,
                    ):
                        await fast.catch_up(store)
                        await slow.catch_up(GenericStore(store))
                        assert await fast.leaf_hashes(0, len(want)) == want
                        assert await slow.leaf_hashes(0, len(want)) == want

            anyio.run(run)

        await anyio.to_thread.run_sync(check)

    @pytest.mark.anyio
    async def test_generic_path_checks_like_the_file_path(
        self, store: SQLiteEventStore, tree: MerkleTree, tmp_path: Path
    ) -> None:
        """Through the generic path too, a rewritten tail is refused and the roots are the reference's."""
        generic = GenericStore(store)
        await append_n(store, 23)
        assert await tree.catch_up(generic) == 23
        assert await tree.root() == ref_mth(await log_leaves(store))
        rewrite_event(tmp_path / "events.db", 23, '{"note":"","schedule":"forged"}')
        with pytest.raises(IntegrityError) as e:
            await tree.catch_up(generic)
        assert e.value.seq == 23


class TestWorker:
    @pytest.mark.anyio
    async def test_worker_follows_appends(self, store: SQLiteEventStore, tree: MerkleTree) -> None:
        """follow_in_worker reports started once the worker caught up, then the worker absorbs each append."""
        await append_n(store, 40)
        async with anyio.create_task_group() as tg:
            await tg.start(tree.follow_in_worker, store)
            assert tree.size == 40
            await append_n(store, 25)
            with anyio.fail_after(20):
                while await tree.current_size() < 65:
                    await store.wait_for_new(await store.head(), timeout=0.2)
            tg.cancel_scope.cancel()
        assert await tree.root() == ref_mth(await log_leaves(store))

    @pytest.mark.anyio
    async def test_worker_reports_a_rewritten_tail(
        self, store: SQLiteEventStore, tree: MerkleTree, tmp_path: Path
    ) -> None:
        """When the worker finds the last absorbed event changed, follow_in_worker raises its IntegrityError."""
        await append_n(store, 10)
        caught: list[IntegrityError] = []

        async def run(*, task_status: TaskStatus[None]) -> None:
            try:
                await tree.follow_in_worker(store, task_status=task_status)
            except IntegrityError as e:
                caught.append(e)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(run)
                rewrite_event(tmp_path / "events.db", 10, '{"note":"","schedule":"forged"}')
                await append_n(store, 1)
        assert [e.seq for e in caught] == [10]
