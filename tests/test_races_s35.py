"""Session 35: checks that compare two stores while the daemon goes on writing both.

CI saw an honest append reported as tampering (``check_log_tree``: the log's checkpoints read
before the tree, ee31523). These are the other checks of the read models against the log that
read the two in an order that does not hold while a daemon (or another process on the same
files) goes on appending and catching up: each test lets the other writer in at the exact point
between the two reads (a wrapper around a real store, or a second real ``ProjectionDB`` on the
same file, as the daemon's is), and an edit of the same kind is still found.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollwatch.events import Recorded, RolloutRescored
from rollwatch.integrity.tree import MerkleTree
from rollwatch.projections import ProjectionDB
from rollwatch.publication import release_due
from rollwatch.publication.public import released_one
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import add_rollout, all_projections, finish_run, new_run_id, serving, start_run


def _edit(file: Path, sql: str, *params: object) -> None:
    """One statement on a file, as someone holding it runs it."""
    db = sqlite3.connect(file, isolation_level=None)
    try:
        db.execute(sql, params)
    finally:
        db.close()


def _rescore(rid: str, passed: bool) -> RolloutRescored:
    """A re-score of ``rid`` under a newer problem version (``rollwatch rescore``)."""
    return RolloutRescored(
        rollout_id=rid,
        problem_id="p1",
        passed=passed,
        score=1.0 if passed else 0.0,
        scorer="python-function",
        problem_hash="h-newer",
        scorer_version="1",
        rescore_id=str(uuid.uuid4()),
        previous_passed=not passed,
    )


class TestReadModelsWeighedWhileTheDaemonCatchesUp:
    """A command that reads the projections (``rollwatch report``, ``publish export``) first weighs
    the file (:meth:`ProjectionDB.distrust`) while the daemon goes on appending and catching the
    same file up: nothing the daemon applies honestly meanwhile makes the file untrusted."""

    @pytest.mark.anyio
    async def test_a_file_caught_up_between_the_head_and_the_file_is_caught_up_in_place(
        self, tmp_path: Path
    ) -> None:
        """Between the command's read of the log's head and its read of the file, the daemon
        appends a run and applies it: the file is then one event past the head the command read.
        Read in that order, the file was "at seq N+1, beyond the log's head N", and the command
        built every projection again from the whole log (minutes on a big one; the daemon then
        followed). It must be caught up in place; a checkpoint edited past the head is still named."""
        async with (
            SQLiteEventStore(tmp_path / "events.db") as store,
            ProjectionDB(tmp_path / "projections.db", all_projections()) as daemon,
        ):
            await start_run(store, new_run_id())
            await daemon.catch_up(store)

            class Racing:
                """The log, letting the daemon append and catch up just after the head is read."""

                def __init__(self) -> None:
                    self.grown = False

                def __getattr__(self, name: str) -> Any:
                    return getattr(store, name)

                async def head(self) -> int:
                    head = await store.head()
                    if not self.grown:
                        self.grown = True
                        await start_run(store, new_run_id())
                        assert await daemon.catch_up(store) == head + 1
                    return head

            racing = Racing()
            async with ProjectionDB(tmp_path / "projections.db", all_projections(), setup=False) as command:
                assert await command.distrust(racing) is None  # type: ignore[arg-type]
                assert racing.grown
                racing.grown = False
                planned: list[bool] = []
                assert await command.build(racing, planned=planned.append) == 3  # type: ignore[arg-type]
                assert racing.grown
                assert planned == [False]  # caught up in place, not built beside

                # A checkpoint moved past the log's head by someone holding the file still is.
                _edit(daemon.file, "UPDATE projection_state SET seq = 9 WHERE name = 'public'")
                why = await command.distrust(store)
                assert why is not None
                assert "projection public is at seq 9, beyond the log's head 3" in why


class _Lagging:
    """The daemon's check of events against the Merkle tree (a real tree), whose worker absorbs
    the log's newest events just after the first check that found them not absorbed yet."""

    def __init__(self, tree: MerkleTree, store: SQLiteEventStore) -> None:
        self.tree = tree
        self.store = store
        self.waited = 0

    async def changed(
        self, records: Iterable[Recorded], *, prove: bool = True
    ) -> tuple[list[int], list[int]]:
        changed, unabsorbed = await self.tree.changed(records)
        if unabsorbed and not self.waited:
            self.waited = len(unabsorbed)
            await self.tree.catch_up(self.store)
        return changed, unabsorbed


class TestTheLogsDueReleasesWhileTheTreeCatchesUp:
    """The release job releases what the projections file shows due, then what the scrub found due
    in the log itself (``also``): one released only then was missed by the file (an edit, and the
    file is built again). A release the file showed, that waited on the Merkle tree, was not."""

    @pytest.mark.anyio
    async def test_a_release_that_waited_for_the_tree_is_no_file_edit(self, tmp_path: Path) -> None:
        """A due pass is re-scored (``rollwatch rescore``, passing again) just before the job runs:
        its first release waits, the tree not having absorbed the re-score yet; the tree worker
        absorbs it; the scrub had found the same pass due in the log. Tried again as the log's
        finding, it was released and counted "missed by the file": ERROR projections_tampered and a
        rebuild of every read model, though the file had shown it. It is released, nothing named."""
        async with (
            serving(tmp_path) as env,
            MerkleTree(tmp_path / "merkle.db") as tree,
        ):
            assert isinstance(env.store, SQLiteEventStore)
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=0, problem_id="p1")
            await finish_run(env.store, run, rollouts=1, passed=1)
            await tree.catch_up(env.store)
            await env.store.append(f"rollout-{rid}", [_rescore(rid, True)])
            await env.pdb.catch_up(env.store)
            distrusted: list[str] = []
            env.pdb.on_distrusted = distrusted.append
            check = _Lagging(tree, env.store)
            now = datetime.now(UTC) + timedelta(seconds=1)
            assert await release_due(env.store, env.pdb, now, check, also=[rid]) == 1
            assert check.waited == 1
            types = [rec.type async for rec in env.store.read(stream=f"rollout-{rid}")]
            assert types.count("PublicReleased") == 1
            assert distrusted == []

    @pytest.mark.anyio
    async def test_a_due_row_edited_away_is_still_named_while_another_waits(self, tmp_path: Path) -> None:
        """The same race beside a pass whose row was edited away (its date moved past 9999): that
        one, which the file did not show, is released as the log's finding and the file named."""
        async with (
            serving(tmp_path) as env,
            MerkleTree(tmp_path / "merkle.db") as tree,
        ):
            assert isinstance(env.store, SQLiteEventStore)
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=0, problem_id="p1")
            hidden = await add_rollout(env.store, run, passed=True, embargo_s=0, problem_id="p2")
            await finish_run(env.store, run, rollouts=2, passed=2)
            await tree.catch_up(env.store)
            await env.store.append(f"rollout-{rid}", [_rescore(rid, True)])
            await env.pdb.catch_up(env.store)
            _edit(
                env.pdb.file,
                "UPDATE public_rollouts SET not_before_ts = 253402300799 WHERE rollout_id = ?",
                hidden,
            )
            distrusted: list[str] = []
            env.pdb.on_distrusted = distrusted.append
            now = datetime.now(UTC) + timedelta(seconds=1)
            assert (
                await release_due(env.store, env.pdb, now, _Lagging(tree, env.store), also=[rid, hidden]) == 2
            )
            assert len(distrusted) == 1
            assert hidden in distrusted[0]
            assert rid not in distrusted[0]


class TestReleasedResultsReadWhileTheFileMovesOn:
    """A released result is served (and exported) only once the log's events at its row's seqs say
    what the row says, and its newest re-score is checked against the row's superseded mark. The
    row is read from the file that the daemon goes on catching up, so it may say more than this
    process has applied: what it is checked against must be the log as far as the row says."""

    @pytest.mark.anyio
    async def test_a_restoring_rescore_applied_by_another_process(self, tmp_path: Path) -> None:
        """A released pass is failed by a re-score (its row marked superseded), then passed again by
        a later one (the mark lifted). The daemon applies both to the file; ``publish export`` (this
        ``ProjectionDB``, caught up before the second) reads the row with no mark. Checked against
        the log only as far as its own catch-up (the failing re-score), the row was "a re-score
        failed it, and the row has no superseded mark": ERROR projections_tampered, the result left
        out of the export. It is served; a mark lifted by an edit is still found."""
        async with serving(tmp_path) as env:
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=0, problem_id="p1")
            await finish_run(env.store, run, rollouts=1, passed=1)
            await env.pdb.catch_up(env.store)
            now = datetime.now(UTC) + timedelta(seconds=1)
            assert await release_due(env.store, env.pdb, now) == 1
            await env.store.append(f"rollout-{rid}", [_rescore(rid, False)])
            await env.pdb.catch_up(env.store)  # the exporter's own catch-up: the mark
            await env.store.append(f"rollout-{rid}", [_rescore(rid, True)])
            async with ProjectionDB(env.pdb.path, all_projections()) as daemon:
                await daemon.catch_up(env.store)  # the daemon's: the mark lifted
            distrusted: list[str] = []
            env.pdb.on_distrusted = distrusted.append
            found = await released_one(env.store, env.pdb, rid, now)
            assert found is not None
            assert found.superseded_at is None
            assert distrusted == []

            # A failing re-score after it, its mark lifted in the file by an edit, and the file's
            # checkpoint moved back before that re-score (so that the rows seem to say less of the
            # log than they do): withheld, named.
            await env.store.append(f"rollout-{rid}", [_rescore(rid, False)])
            await env.pdb.catch_up(env.store)
            _edit(
                env.pdb.file,
                "UPDATE public_rollouts SET superseded_seq = NULL, superseded_at = NULL,"
                " superseded_hash = NULL WHERE rollout_id = ?",
                rid,
            )
            _edit(env.pdb.file, "UPDATE projection_state SET seq = 2 WHERE name = 'public'")
            assert await released_one(env.store, env.pdb, rid, now) is None
            assert distrusted
            assert "no superseded mark" in distrusted[0]
