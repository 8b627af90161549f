"""Fixtures for the integrity tests: a real SQLite log, its Merkle tree, a signing key, and log tampering."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollwatch.events import GENESIS, SchedulePaused, canonical_bytes, chain_hash
from rollwatch.integrity.checkpoint import NoteSigner
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore

ORIGIN = "rollwatch.test/log"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    """An open, empty SQLite event log."""
    async with SQLiteEventStore(tmp_path / "events.db") as s:
        yield s


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[MerkleTree]:
    """An open, empty Merkle tree file (small batches, so catch-up crosses many of them)."""
    async with MerkleTree(tmp_path / "merkle.db", batch=7) as t:
        yield t


@pytest.fixture
def signer() -> NoteSigner:
    """A fresh Ed25519 checkpoint signer named like the test log."""
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


async def append_n(store: SQLiteEventStore, n: int, *, per_call: int = 3, tag: str = "e") -> None:
    """Append ``n`` small events, ``per_call`` at a time."""
    done = 0
    while done < n:
        k = min(per_call, n - done)
        await store.append(
            f"s-{tag}-{done % 5}", [SchedulePaused(schedule=f"{tag}{done + i}") for i in range(k)]
        )
        done += k


def rewrite_event(db_path: Path, seq: int, data_json: str, *, recompute_chain: bool = True) -> None:
    """Tamper with the log as someone holding the file could: drop the append-only
    triggers, change one event's data, and (by default) recompute every hash after it
    so that the hash chain alone no longer shows the change."""
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        con.execute("DROP TRIGGER IF EXISTS events_no_delete")
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE events SET data = ? WHERE seq = ?", (data_json, seq))
        if recompute_chain:
            prev = GENESIS
            rows = con.execute(
                "SELECT seq, id, stream, type, schema, at, data FROM events ORDER BY seq"
            ).fetchall()
            for s, eid, stream, typ, schema, at, data in rows:
                prev = chain_hash(
                    prev,
                    canonical_bytes(
                        seq=s, id=eid, stream=stream, type=typ, schema=schema, at=at, data_json=data
                    ),
                )
                if s >= seq:
                    con.execute("UPDATE events SET hash = ? WHERE seq = ?", (prev.hex(), s))
        con.execute("COMMIT")
    finally:
        con.close()


def delete_events(db_path: Path, where: str) -> None:
    """Remove events matching ``where`` (and renumber nothing: the log then has gaps or a shorter tail)."""
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_delete")
        con.execute(f"DELETE FROM events WHERE {where}")
    finally:
        con.close()
