"""Tampering with a PostgreSQL log by its database superuser, tried from outside.

The append-only triggers stop rollwatch's own role, not a superuser: one can disable them
(``session_replication_role = replica``) and rewrite, delete or truncate events. The hash
chain, the Merkle tree and the signed checkpoints are what must catch it, as they do for
a SQLite file (``test_tamper.py``). A real daemon signs a log of 40 events on a scratch
database; it is stopped, the superuser changes the log, and then ``rollwatch verify``
must exit 1 naming the first bad seq and a restarted daemon must refuse to start naming it.
One attack is also made under a live daemon: /healthz turns 503 naming the seq.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from rollwatch.events import GENESIS, canonical_bytes, chain_hash
from rollwatch.store.postgres import PostgresEventStore
from tests.integrity.conftest import append_n
from tests.pg import scratch_database
from tests.test_ctrl_c import _free_port

pytestmark = pytest.mark.anyio

EVENTS = 40


async def _superuser(url: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Run ``statements`` in one transaction with the append-only triggers off."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            for sql, args in statements:
                await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _recompute_chain(url: str) -> None:
    """Every hash recomputed, as an attacker hiding a change from the chain would."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT seq, id, stream, type, schema, at, data FROM events ORDER BY seq")
        prev = GENESIS
        fixed = []
        for r in rows:
            prev = chain_hash(
                prev,
                canonical_bytes(
                    seq=r["seq"],
                    id=r["id"],
                    stream=r["stream"],
                    type=r["type"],
                    schema=r["schema"],
                    at=r["at"],
                    data_json=r["data"],
                ),
            )
            fixed.append((prev.hex(), r["seq"]))
    finally:
        await conn.close()
    await _superuser(url, *[("UPDATE events SET hash = $1 WHERE seq = $2", f) for f in fixed])


async def _paused_at_or_after(url: str, seq: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT min(seq) FROM events WHERE seq >= $1 AND type = 'SchedulePaused'", seq
            )
        )
    finally:
        await conn.close()


async def rewrite_keeping_the_chain(url: str) -> int:
    """One event's data changed (valid JSON, canonical), its hash left as it was."""
    seq = await _paused_at_or_after(url, EVENTS // 2)
    await _superuser(url, ("UPDATE events SET data = $1 WHERE seq = $2", ('{"note":"","schedule":"x"}', seq)))
    return seq


async def rewrite_and_recompute_the_chain(url: str) -> int:
    seq = await _paused_at_or_after(url, 10)
    await _superuser(url, ("UPDATE events SET data = $1 WHERE seq = $2", ('{"note":"","schedule":"y"}', seq)))
    await _recompute_chain(url)
    return seq


async def delete_a_row(url: str) -> int:
    await _superuser(url, ("DELETE FROM events WHERE seq = 12", ()))
    return 12


async def truncate_the_tail(url: str) -> int:
    await _superuser(url, ("DELETE FROM events WHERE seq > 20", ()))
    return 21


async def insert_below_seq_one(url: str) -> int:
    """A row at seq 0, a stream of its own at version 1: every read asks for seq > after,
    so no hash or check saw it (verify passed)."""
    await _superuser(
        url,
        (
            "INSERT INTO events (seq, id, stream, version, type, schema, at, data, hash)"
            " VALUES (0, $1, 'rollout-hidden', 1, 'RolloutScored', 1, $2, $3, $4)",
            (
                "00000000-0000-4000-8000-000000000000",
                "2026-01-01T00:00:00.000000Z",
                '{"passed":true,"rollout_id":"hidden","score":1.0,"scorer":"s"}',
                "0" * 64,
            ),
        ),
    )
    return 0


ATTACKS = [
    rewrite_keeping_the_chain,
    rewrite_and_recompute_the_chain,
    delete_a_row,
    truncate_the_tail,
    insert_below_seq_one,
]


class _Node:
    def __init__(self, tmp_path: Path, url: str) -> None:
        self.dir = tmp_path
        self.port = _free_port()
        self.url = url
        self.config = tmp_path / "rollwatch.toml"
        self.config.write_text(
            f'[store]\nurl = "{url}"\n[server]\nlisten = "127.0.0.1:{self.port}"\n'
            '[integrity]\norigin = "rollwatch.test/pg-tamper"\ncheckpoint_every = 5\n'
            'checkpoint_interval = "1s"\nscrub_interval = "500ms"\n'
        )

    def rollwatch(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(self.config), *args],
            cwd=self.dir,  # the log's state (tree, witness, key) goes to var/pg-HOST-PORT-DB here
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"},
        )

    def healthz(self) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
        except httpx.HTTPError:
            return None


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


async def _poll(pred: Callable[[], Awaitable[object]], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (got := await pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.1)
    return got


async def _signed_size(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT data FROM events WHERE type = 'CheckpointSigned'")
        return max((json.loads(r["data"])["size"] for r in rows), default=0)
    finally:
        await conn.close()


async def _signed_log(node: _Node) -> subprocess.Popen[str]:
    """A daemon serving ``node``'s log of EVENTS events, once it has signed every one of them."""
    async with PostgresEventStore(node.url) as store:
        await append_n(store, EVENTS)  # type: ignore[arg-type]  # any store appends
    proc = node.rollwatch("serve", "--grace", "2")

    async def signed() -> bool:
        assert proc.poll() is None, _stop(proc)
        return await _signed_size(node.url) >= EVENTS

    await _poll(signed, 60, "a checkpoint of every event")
    return proc


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
async def test_verify_and_a_restart_name_the_first_bad_seq(
    tmp_path: Path, attack: Callable[[str], Awaitable[int]]
) -> None:
    async with scratch_database() as url:
        node = _Node(tmp_path, url)
        proc = await _signed_log(node)
        err = await anyio.to_thread.run_sync(_stop, proc)
        assert proc.returncode == 0, err
        bad = await attack(url)

        verify = node.rollwatch("verify")
        out, err = await anyio.to_thread.run_sync(lambda: verify.communicate(timeout=120))
        assert verify.returncode == 1, out + err
        assert f"FAILED at seq {bad}:" in err, err

        again = node.rollwatch("serve", "--grace", "2")
        try:
            await anyio.to_thread.run_sync(lambda: again.wait(timeout=60))
        finally:
            err = await anyio.to_thread.run_sync(_stop, again)
        assert again.returncode == 1, err
        assert f"integrity check failed at seq {bad}:" in err, err
        assert "Traceback" not in err


async def test_a_live_daemon_stops_signing_and_names_the_seq(tmp_path: Path) -> None:
    async with scratch_database() as url:
        node = _Node(tmp_path, url)
        proc = await _signed_log(node)
        try:
            signed = await _signed_size(url)
            bad = await rewrite_and_recompute_the_chain(url)

            async def named() -> httpx.Response | None:
                h = await anyio.to_thread.run_sync(node.healthz)
                return (
                    h
                    if h is not None and h.status_code == 503 and h.json().get("first_bad_seq") == bad
                    else None
                )

            r = await _poll(named, 30, f"/healthz to name seq {bad}")
            assert isinstance(r, httpx.Response)
            assert r.json()["status"] == "tampered"
        finally:
            err = await anyio.to_thread.run_sync(_stop, proc)
        assert proc.returncode == 0, err
        assert await _signed_size(url) == signed, "a checkpoint was signed after the log was changed"
        assert any("log_tampered" in line for line in err.splitlines()), err
