"""Fixtures for the integrity tests: a real SQLite log, its Merkle tree, a signing key, and log tampering."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollwatch.events import GENESIS, SchedulePaused, canonical_bytes, chain_hash
from rollwatch.integrity.checkpoint import NoteSigner
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch, write_config
from tests.integrity.served import EVENTS, Site, _free_port, _poll, _stop, serving

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


def run_sql(db: Path, *statements: str) -> None:
    """Run ``statements`` on the SQLite file ``db`` as someone holding it could, each on its
    own (autocommit), with nothing of rollwatch's in between: no trigger is dropped for them."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        for s in statements:
            con.execute(s)
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


def _site_config(directory: Path) -> Site:
    """A config serving the log in ``directory`` on a free loopback port. One scoring
    worker: these daemons score nothing, and each sandbox more adds about 0.5 s and 0.13 s
    of CPU to a start (the pool starts its sandboxes one after the other)."""
    port = _free_port()
    cfg = write_config(
        directory,
        f'[server]\nlisten = "127.0.0.1:{port}"\n[scoring]\nworkers = 1\n'
        '[integrity]\norigin = "rollwatch.test/tamper"\ncheckpoint_every = 5\n'
        'checkpoint_interval = "1s"\nscrub_interval = "500ms"\n',
    )
    return Site(directory, cfg, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def signed_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a log a real daemon served and signed, then stopped (once per xdist worker):
    40 events appended by another process, signed up to the last of them; a kept checkpoint
    (``kept.note``) and an audit file (``audit.json``). Never changed: tests attack copies."""
    s = _site_config(tmp_path_factory.mktemp("signed-log"))
    proc = s.serve()
    try:
        _poll(lambda: (r := s.healthz()) is not None and r.status_code == 200, 60, "the daemon to serve")

        async def fill() -> None:
            async with SQLiteEventStore(s.db) as store:
                await append_n(store, EVENTS)

        anyio.run(fill)
        _poll(lambda: any(size >= EVENTS for _, size in s.checkpoints()), 30, "a checkpoint of every event")
        note = httpx.get(s.url + "/public/checkpoint").text
        (s.dir / "kept.note").write_text(note)
        first = rollwatch("audit", "--url", s.url, "--keep", str(s.dir / "audit.json"))
        assert first.returncode == 0, first.stderr
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert "log_tampered" not in err, err
    return s.dir


@pytest.fixture
def stopped_site(signed_log: Path, tmp_path: Path) -> Site:
    """This test's own copy of the signed log and its files (tree, witness, key, projections,
    kept checkpoint, audit file), its daemon stopped, with a config naming the copy."""
    shutil.copytree(
        signed_log,
        tmp_path,
        symlinks=True,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("rollwatch.toml"),
    )
    return _site_config(tmp_path)


@pytest.fixture
def site(stopped_site: Site) -> Iterator[tuple[Site, subprocess.Popen[str]]]:
    """A live daemon serving this test's own copy of the signed log (a restart of the daemon that signed it)."""
    with serving(stopped_site) as proc:
        yield stopped_site, proc
