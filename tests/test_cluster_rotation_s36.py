"""`rollwatch key rotate` on a cluster: two real daemons on one PostgreSQL log, each with
its own copy of the checkpoint key (the README's model: every node the same key file
contents), the rotation run by the operator on one node's configuration.

What holds (session 36, tested here): the node that does not sign follows the rotation
from the log. Its scrub checks the new key's checkpoints against the chain and passes,
it serves the new key at ``/public/key`` beside them (``audit --url`` of it passes, from
the old key too), and once the leader is gone it does not sign with the key the log
retired (``/healthz`` 503 saying so, through a restart too) until it is given the new
key, which it then signs with from its next checkpoint, without a restart.

What did not (both failed before session 36's fixes):

* a node given a key outside the log's chain of rotations (not the old key, not the new
  one) was told the log was tampered with (ERROR ``log_tampered``, exit 1) instead of
  exit 2 ``checkpoint_key_mismatch``, as a node with another key is on a log with no rotation;
* the node left leading with the retired key, which reads its key file before each
  checkpoint, stopped (exit 2) when it read the file while the new key was being copied in;
* a rotation run with a non-leader's configuration left the leader, holding the retired key,
  leading and signing nothing, and the node holding the new key never came to lead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from rollwatch.errors import InvalidNote
from rollwatch.integrity.checkpoint import NoteVerifier
from tests.helpers import rollwatch
from tests.test_cluster import ENV, FAST_LEASE, Cluster, cluster, exited

pytestmark = pytest.mark.anyio

NODES = ("node-a", "node-b")


def _pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def key_files(tmp_path: Path) -> dict[str, Path]:
    """One key file per node (its own folder: a rotation keeps the retired key beside it),
    all holding the same key, as copied to each machine."""
    pem = _pem()
    out = {}
    for n in NODES:
        f = tmp_path / f"keys-{n}" / "checkpoint.key"
        f.parent.mkdir()
        f.write_bytes(pem)
        f.chmod(0o600)
        out[n] = f
    return out


def own_key_and_fast_watches(tmp_path: Path, keys: dict[str, Path]) -> Callable[[str, str], str]:
    def edit(node: str, toml: str) -> str:
        shared = f'key_file = "{tmp_path / "checkpoint.key"}"'
        assert shared in toml
        return toml.replace(
            shared, f'key_file = "{keys[node]}"\ncheckpoint_interval = "1s"\nscrub_interval = "1s"'
        )

    return edit


def url(c: Cluster, node: str) -> str:
    port = re.search(r'listen = "127.0.0.1:(\d+)"', c.cfgs[node].read_text())
    assert port is not None
    return f"http://127.0.0.1:{port[1]}"


async def served_key(c: Cluster, node: str) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(url(c, node) + "/public/key")).text.strip()


async def poll(what: str, ok: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    """Poll ``ok()`` until it holds; a timeout names ``what``."""
    try:
        with anyio.fail_after(timeout):
            while not await ok():
                await anyio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


def restart(c: Cluster, node: str) -> None:
    """Start ``node`` again (after it stopped), as the cluster started it; its log goes on."""
    with c.logs[node].open("ab") as err:
        c.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(c.cfgs[node]), "serve", "--grace", "2"],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def audit(c: Cluster, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: rollwatch("audit", "--url", url(c, node), *args, env=ENV))


def scrubbed(log: Path, at_least: int) -> bool:
    """Whether a scrub pass while running checked ``at_least`` events and passed."""
    for line in log.read_text(errors="replace").splitlines():
        if '"scrub_passed"' in line and '"next_in_s"' in line and json.loads(line)["events"] >= at_least:
            return True
    return False


async def rotate(c: Cluster, node: str) -> tuple[str, str, int]:
    """``rollwatch key rotate`` on ``node``'s configuration: (old key, new key, seq)."""
    r = await c.cli(node, "key", "rotate")
    assert r.returncode == 0, r.stderr
    seq = int(r.stdout.split("rotated at seq ")[1].split()[0])
    return r.stdout.split("old key: ")[1].split()[0], r.stdout.split("new key: ")[1].split()[0], seq


async def test_the_other_node_follows_a_rotation_and_signs_with_the_retired_key_never(tmp_path: Path) -> None:
    """The leader of the checkpoints rotates its key (the operator runs `key rotate` with its
    configuration); the other node, whose key file still holds the old key, scrubs the log
    (rotation and the new key's checkpoints) and passes, serves the new key, and audits of it
    pass. The leader killed, the other leads, and signs nothing with the retired key (503
    naming it), before and after a restart; given the new key (the file copied), it signs with
    it at its next checkpoint, without a restart. Held before session 36's fix (no code changed
    for it)."""
    keys = key_files(tmp_path)
    edit = own_key_and_fast_watches(tmp_path, keys)
    async with cluster(tmp_path, delay=0.05, cluster=FAST_LEASE, edit=edit) as c:
        [first, *_] = await c.until(60, "CheckpointSigned")
        leader = str(first["node"])
        other = "node-b" if leader == "node-a" else "node-a"
        old, new, rot_seq = await rotate(c, leader)
        assert keys[leader].with_name(f"checkpoint.key.retired-{old.split('+')[1]}").is_file()
        # Something to sign after the rotation: the leader signs it with the new key.
        assert (await c.cli(other, "schedules", "trigger", "fake-often")).returncode == 0
        after = await c.until(
            60, "CheckpointSigned", enough=lambda evs: any(e["size"] > rot_seq for e in evs)
        )
        assert {e["node"] for e in after} == {leader}

        # The other node: its scrub passes over the rotation, and it serves the new key.
        async def scrubbed_past_rotation() -> bool:
            return scrubbed(c.logs[other], rot_seq + 1)

        async def serves_new_key() -> bool:
            return await served_key(c, other) == new

        await poll("scrub pass of the other node past the rotation", scrubbed_past_rotation)
        await poll("new key served by the other node", serves_new_key)
        a = await audit(c, other, "--key", old)
        assert a.returncode == 0, a.stderr
        assert f"rotated at seq {rot_seq} to {new}" in a.stdout
        tofu = await audit(c, other)
        assert tofu.returncode == 0, tofu.stderr
        await c.health(other, lambda r: r.status_code == 200)

        # The leader gone: the other leads, with the retired key in its file.
        c.kill(leader)
        signed = len(await c.events("CheckpointSigned"))
        assert (await c.cli(other, "schedules", "trigger", "fake-often")).returncode == 0
        retired = lambda r: r.status_code == 503 and "signs with a retired one" in r.text  # noqa: E731
        await c.health(other, retired, timeout=60)
        # A restart alone changes nothing: it starts (no finding), leads, and still signs nothing.
        assert await c.stop(other) == 0
        restart(c, other)
        await c.health(other, retired, timeout=60)
        assert len(await c.events("CheckpointSigned")) == signed

        # The operator gives it the new key: it signs with it, running as it is.
        keys[other].write_bytes(keys[leader].read_bytes())
        await c.until(60, "CheckpointSigned", enough=lambda evs: any(e["node"] == other for e in evs))
        await c.health(other, lambda r: r.status_code == 200)
        assert await served_key(c, other) == new
        a = await audit(c, other, "--key", old)
        assert a.returncode == 0, a.stderr
        assert await c.stop(other) == 0
        cps = await c.events("CheckpointSigned")

    # Every checkpoint of a tree before the rotation verifies with the old key, every later
    # one (the leader's and the other node's) with the new key.
    for cp in cps:
        NoteVerifier.from_vkey(old if cp["size"] < rot_seq else new).open_checkpoint(cp["note"])
    log = c.logs[other].read_text()
    assert "checkpoint_key_retired" in log
    assert "log_tampered" not in log
    assert "Traceback" not in log


async def test_a_node_given_a_key_outside_the_rotation_chain_exits_2_naming_the_key(tmp_path: Path) -> None:
    """After a rotation on the leader, the other node is given a third key (neither the old
    nor the new one: the wrong file copied) and restarted: it exits 2 saying every node needs
    the same checkpoint key (ERROR checkpoint_key_mismatch), as it does on a log with no
    rotation, and calls nothing tampered. Before, its check at start found the chain not
    leading to its key and reported the log tampered with (ERROR log_tampered, exit 1
    "event log integrity check failed at seq N")."""
    keys = key_files(tmp_path)
    edit = own_key_and_fast_watches(tmp_path, keys)
    async with cluster(tmp_path, delay=0.05, cluster=FAST_LEASE, edit=edit) as c:
        [first, *_] = await c.until(60, "CheckpointSigned")
        leader = str(first["node"])
        other = "node-b" if leader == "node-a" else "node-a"
        await rotate(c, leader)
        assert await c.stop(other) == 0
        keys[other].write_bytes(_pem())
        restart(c, other)
        assert await exited(c, other) == 2
        log = c.logs[other].read_text()
        assert "needs the same checkpoint key" in log, log[-3000:]
        assert "checkpoint_key_mismatch" in log
        assert "tampered" not in log
        assert "Traceback" not in log
        assert await c.stop(leader) == 0


async def test_a_key_file_read_mid_copy_leaves_the_retired_leader_running(tmp_path: Path) -> None:
    """The node left leading with the retired key reads its key file before each checkpoint.
    The operator copies the new key in with `cp`, which empties the file before it writes it:
    read then, it is no key. The node says so (WARNING checkpoint_key_unreadable), stays up
    and retired, and signs with the new key once the copy is whole. Before, the read raised
    out of the signer and the daemon stopped (exit 2, "not an unencrypted PEM private key")."""
    keys = key_files(tmp_path)
    edit = own_key_and_fast_watches(tmp_path, keys)
    async with cluster(tmp_path, delay=0.05, cluster=FAST_LEASE, edit=edit) as c:
        [first, *_] = await c.until(60, "CheckpointSigned")
        leader = str(first["node"])
        other = "node-b" if leader == "node-a" else "node-a"
        _, new, _ = await rotate(c, leader)
        c.kill(leader)
        assert (await c.cli(other, "schedules", "trigger", "fake-often")).returncode == 0
        await c.health(other, lambda r: r.status_code == 503 and "signs with a retired one" in r.text, 60)
        keys[other].write_bytes(b"")  # `cp` has emptied it and not yet written

        async def read_or_gone() -> bool:
            return (
                "checkpoint_key_unreadable" in c.logs[other].read_text() or c.procs[other].poll() is not None
            )

        await poll("read of the emptied key file", read_or_gone)
        assert c.procs[other].poll() is None, c.logs[other].read_text()[-2000:]
        keys[other].write_bytes(keys[leader].read_bytes())
        cps = await c.until(60, "CheckpointSigned", enough=lambda evs: any(e["node"] == other for e in evs))
        NoteVerifier.from_vkey(new).open_checkpoint(str(cps[-1]["note"]))
        await c.health(other, lambda r: r.status_code == 200, 60)
        assert await c.stop(other) == 0
    assert "Traceback" not in c.logs[other].read_text()


async def test_a_leader_left_with_the_retired_key_steps_down_for_the_node_holding_the_new_one(
    tmp_path: Path,
) -> None:
    """The operator runs `key rotate` with the configuration of the node that does NOT lead:
    that node's key file holds the new key, the leader's still the retired one. The leader
    gives up the checkpoints' leadership (INFO ``checkpoint_leadership_released``) and the
    other node takes it and signs with the new key; nothing after the rotation verifies
    with the old key. The stepped-down node's /healthz says what it waits for, without
    503 while the other signs. Given the new key (the file copied), it competes again: the
    new leader killed, it signs with the new key. Before, the leader kept the leadership
    and signed nothing (503 "signs with a retired one") until it was given the new key."""
    keys = key_files(tmp_path)
    edit = own_key_and_fast_watches(tmp_path, keys)
    async with cluster(tmp_path, delay=0.05, cluster=FAST_LEASE, edit=edit) as c:
        [first, *_] = await c.until(60, "CheckpointSigned")
        leader = str(first["node"])
        other = "node-b" if leader == "node-a" else "node-a"
        old, new, rot_seq = await rotate(c, other)
        assert (await c.cli(leader, "schedules", "trigger", "fake-often")).returncode == 0
        after = await c.until(
            20, "CheckpointSigned", enough=lambda evs: any(e["size"] > rot_seq for e in evs)
        )
        late = [e for e in after if e["size"] > rot_seq]
        assert {e["node"] for e in late} == {other}, late
        assert "checkpoint_leadership_released" in c.logs[leader].read_text()

        def standby(r: httpx.Response) -> bool:
            return r.status_code == 200 and "standby" in r.json()

        await c.health(leader, standby, timeout=10)

        # Given the new key, the old leader competes again: the new leader gone, it signs.
        keys[leader].write_bytes(keys[other].read_bytes())
        await c.health(leader, lambda r: r.status_code == 200 and "standby" not in r.json(), timeout=10)
        c.kill(other)
        signed = max(e["size"] for e in await c.events("CheckpointSigned"))
        assert (await c.cli(leader, "schedules", "trigger", "fake-often")).returncode == 0
        cps = await c.until(
            20,
            "CheckpointSigned",
            enough=lambda evs: any(e["node"] == leader and e["size"] > signed for e in evs),
        )
        await c.health(leader, lambda r: r.status_code == 200, timeout=10)
        assert await c.stop(leader) == 0

    for cp in cps:
        if cp["size"] >= rot_seq:
            NoteVerifier.from_vkey(new).open_checkpoint(cp["note"])
            with pytest.raises(InvalidNote):
                NoteVerifier.from_vkey(old).open_checkpoint(cp["note"])
        else:
            NoteVerifier.from_vkey(old).open_checkpoint(cp["note"])
    log = c.logs[leader].read_text()
    assert "log_tampered" not in log
    assert "Traceback" not in log
