"""Tampering tried by helper att-c: edits of the log file not tried elsewhere in this folder.

Each test performs one concrete edit on a real SQLite file (a copy of a log a real daemon
signed, see ``conftest.signed_log``) and checks that ``rollwatch verify`` exits 1 naming
what is wrong, without a traceback.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from rollwatch.integrity.tree import MerkleTree, SQLiteLogFile
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.integrity.served import Site, _poll, _stop, unhealthy
from tests.integrity.test_forged_rows import append_raw


def _verify(s: Site, *extra: str) -> tuple[int, str]:
    r = rollwatch("--config", str(s.config), "verify", *extra, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr


def test_data_nested_past_the_parsers_depth_is_named(stopped_site: Site) -> None:
    """A row appended around rollwatch, chain hash right, whose data is JSON nested 100,000
    deep (rollwatch never writes it: its events are flat objects)."""
    s = stopped_site
    seq = append_raw(s, "RolloutScored", _deep())
    code, out = _verify(s)
    assert code == 1, out
    assert f"FAILED at seq {seq}:" in out, out


def _deep() -> str:
    return '{"a":' * 100_000 + "1" + "}" * 100_000


def test_a_checkpoint_row_nested_past_the_parsers_depth_is_named(stopped_site: Site) -> None:
    """The last CheckpointSigned row's data replaced by JSON nested 100,000 deep (the
    checkpoint rows are read first, each parsed)."""
    s = stopped_site
    con = sqlite3.connect(s.db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        [seq] = con.execute("SELECT MAX(seq) FROM events WHERE type = 'CheckpointSigned'").fetchone()
        con.execute("UPDATE events SET data = ? WHERE seq = ?", (_deep(), seq))
    finally:
        con.close()
    code, out = _verify(s)
    assert code == 1, out
    assert f"FAILED at seq {seq}:" in out, out


@pytest.mark.parametrize(
    "data",
    [
        '{"node":"","note":"x","root":"AAAA","size":1180591620717411303424}',
        "[1]",
        "not json",
    ],
    ids=["size_past_64_bits", "a_list", "not_json"],
)
def test_a_checkpoint_row_appended_around_a_live_daemon_is_named(
    site: tuple[Site, subprocess.Popen[str]], data: str
) -> None:
    """A CheckpointSigned row appended under a live daemon, its chain hash right, whose
    data the Merkle tree's follower cannot file (a size past SQLite's 64-bit integers, data
    that is no object or no JSON): /healthz turns 503 ``tampered`` naming its seq, and
    ``verify`` names it once the daemon is stopped."""
    s, proc = site
    seq = append_raw(s, "CheckpointSigned", data)
    unhealthy(s.url, "/healthz to turn 503", timeout=60)
    r = _poll(
        lambda: (h := s.healthz()) is not None and h.json().get("first_bad_seq") == seq and h,
        60,
        f"/healthz to name seq {seq}",
    )
    assert isinstance(r, httpx.Response)
    assert r.json()["status"] == "tampered", r.json()
    err = _stop(proc)
    assert "Traceback" not in err, err[-3000:]
    code, out = _verify(s)
    assert code == 1, out
    assert f"FAILED at seq {seq}:" in out, out


@pytest.mark.parametrize("seq", [0, -7])
def test_a_row_below_seq_one_is_named(stopped_site: Site, seq: int) -> None:
    """A row inserted at seq 0 or below, a stream of its own at version 1 (its stream version
    holds): every read asks for ``seq > after``, so the chain, the tree and the content check
    never saw it, and verify passed. Now it is named, by verify and by a start's scrub."""
    s = stopped_site
    con = sqlite3.connect(s.db, isolation_level=None)
    try:
        con.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
            (
                seq,
                "00000000-0000-4000-8000-000000000000",
                "rollout-hidden",
                1,
                "RolloutScored",
                1,
                "2026-01-01T00:00:00.000000Z",
                '{"passed":true,"rollout_id":"hidden","score":1.0,"scorer":"s"}',
                "0" * 64,
            ),
        )
    finally:
        con.close()
    code, out = _verify(s)
    assert code == 1, out
    assert f"FAILED at seq {seq}: a row at seq {seq}" in out, out
    proc = s.serve()
    try:
        proc.wait(timeout=60)
    finally:
        err = _stop(proc)
    assert proc.returncode == 1, err[-3000:]
    assert f"integrity check failed at seq {seq}" in err, err[-3000:]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "data",
    ['{"node":"","note":"x","root":"AAAA","size":1180591620717411303424}', "[1]", "not json"],
    ids=["size_past_64_bits", "a_list", "not_json"],
)
@pytest.mark.anyio
@pytest.mark.parametrize("source", ["file", "store"])
async def test_the_tree_takes_in_a_malformed_checkpoint_row_as_found(
    stopped_site: Site, tmp_path: Path, data: str, source: str
) -> None:
    """The tree's follower (the worker's file reader, or a store's records) files such a row
    as found, for verification to name, rather than failing: it raised OverflowError,
    JSONDecodeError or AttributeError, which stopped a live daemon with a traceback whenever
    the follower saw the row before the scrub did (the test above passed or failed by that race)."""
    seq = append_raw(stopped_site, "CheckpointSigned", data)
    async with MerkleTree(tmp_path / "fresh.db") as tree:
        if source == "file":
            size = await tree.catch_up(SQLiteLogFile(stopped_site.db))
        else:
            async with SQLiteEventStore(stopped_site.db) as store:
                size = await tree.catch_up(store)
    assert size == seq
