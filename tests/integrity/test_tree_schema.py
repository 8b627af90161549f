"""Someone holding ``merkle.db`` adds a trigger or a view to it: the tree must not serve
what that makes of it. The file is derived from the log, so anything rollwatch never
makes there is dropped and the tree built again from the log, with an ERROR
``merkle_tree_tampered`` naming it: at open, and under a process that has it open (the
schema's version moves with any such change, and is looked at before each write)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import structlog

from rollwatch.errors import StoreError
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import append_n
from tests.integrity.test_merkle import ref_mth
from tests.integrity.test_tree import log_leaves

pytestmark = pytest.mark.anyio

# Each stored strip of node hashes is zeroed as it is written: every proof through it is wrong.
ZEROING = (
    "CREATE TRIGGER zeroing AFTER INSERT ON tree_strips BEGIN"
    " UPDATE tree_strips SET hashes = zeroblob(length(NEW.hashes)) WHERE k = NEW.k; END"
)
# The tree's checkpoints replaced by a view that shows none (and an INSTEAD OF trigger
# that swallows each one written).
HIDING = [
    "DROP TABLE tree_checkpoints",
    "CREATE VIEW tree_checkpoints (seq, size, root, note) AS SELECT 0, 0, '', '' WHERE 0",
    "CREATE TRIGGER swallow INSTEAD OF INSERT ON tree_checkpoints BEGIN SELECT 1; END",
]


def edit(file: Path, *sql: str) -> None:
    db = sqlite3.connect(file)
    try:
        for stmt in sql:
            db.execute(stmt)
        db.commit()
    finally:
        db.close()


def objects(file: Path) -> set[tuple[str, str]]:
    db = sqlite3.connect(file)
    try:
        return {
            (t, n)
            for t, n in db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')")
        }
    finally:
        db.close()


@pytest.mark.parametrize("sql", [[ZEROING], HIDING], ids=["trigger", "view"])
async def test_an_object_added_to_a_closed_tree_is_dropped_at_open(
    tmp_path: Path, store: SQLiteEventStore, sql: list[str]
) -> None:
    file = tmp_path / "merkle.db"
    async with MerkleTree(file, batch=7) as t:
        await append_n(store, 30)
        await t.catch_up(store)
    edit(file, *sql)
    await append_n(store, 40)
    with structlog.testing.capture_logs() as logged:
        async with MerkleTree(file, batch=7) as t:
            assert await t.catch_up(store) == 70
            assert await t.root() == ref_mth(await log_leaves(store))
    assert objects(file) == set()
    (found,) = [e for e in logged if e["event"] == "merkle_tree_tampered"]
    assert found["log_level"] == "error"
    assert ("zeroing" if sql == [ZEROING] else "swallow") in found["reason"]


@pytest.mark.parametrize("sql", [[ZEROING], HIDING], ids=["trigger", "view"])
async def test_an_object_added_under_an_open_tree_is_dropped_before_its_next_write(
    tmp_path: Path, store: SQLiteEventStore, sql: list[str]
) -> None:
    file = tmp_path / "merkle.db"
    async with MerkleTree(file, batch=7) as t:
        await append_n(store, 30)
        await t.catch_up(store)
        edit(file, *sql)
        await append_n(store, 40)
        with structlog.testing.capture_logs() as logged:
            assert await t.catch_up(store) == 70
        assert await t.root() == ref_mth(await log_leaves(store))
        assert objects(file) == set()
        assert [e["event"] for e in logged].count("merkle_tree_tampered") == 1
        # And it keeps growing as the log does.
        await append_n(store, 5)
        assert await t.catch_up(store) == 75
        assert await t.root() == ref_mth(await log_leaves(store))


async def test_a_read_only_open_names_the_object_and_reads_nothing(
    tmp_path: Path, store: SQLiteEventStore
) -> None:
    file = tmp_path / "merkle.db"
    async with MerkleTree(file, batch=7) as t:
        await append_n(store, 10)
        await t.catch_up(store)
    edit(file, ZEROING)
    with pytest.raises(StoreError, match="trigger zeroing"):
        async with MerkleTree(file, read_only=True):
            pass
