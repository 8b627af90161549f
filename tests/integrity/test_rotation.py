"""Checkpoint key rotation: the old key signs the new one into the log; audit follows it.

Against a real ``rollwatch serve`` (subprocess, real SQLite file, loopback HTTP): a
rotation made while it runs, then checked by the daemon (it signs with the new key),
``rollwatch audit --keep`` holding the old key, ``verify --checkpoint`` holding a
checkpoint of the old key, and a restart. And the attacks of someone who holds the
database file: a key swapped without a rotation, a forged rotation, a rotation whose
new key never signed it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from rollwatch.errors import IntegrityError, InvalidNote
from rollwatch.events import CHECKPOINT_STREAM, CheckpointKeyRotated
from rollwatch.integrity.checkpoint import NoteSigner, NoteVerifier
from rollwatch.integrity.rotation import KeyRing, open_rotation, sign_rotation, statement
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.integrity.conftest import append_n
from tests.integrity.served import Site, _poll, _stop

NAME = "rollwatch.test/tamper"


def _signer() -> NoteSigner:
    return NoteSigner(NAME, Ed25519PrivateKey.generate())


def _key_pem(signer_key: Ed25519PrivateKey) -> bytes:
    return signer_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _append(site: Site, events: list[CheckpointKeyRotated] | None = None, n: int = 0) -> None:
    async def go() -> None:
        async with SQLiteEventStore(site.db) as store:
            if events:
                await store.append(CHECKPOINT_STREAM, events)
            if n:
                await append_n(store, n, tag="later")

    anyio.run(go)


def _rotations(site: Site) -> list[int]:
    con = sqlite3.connect(site.db)
    try:
        return [r[0] for r in con.execute("SELECT seq FROM events WHERE type = 'CheckpointKeyRotated'")]
    finally:
        con.close()


def _served_key(site: Site) -> str:
    return httpx.get(site.url + "/public/key").text.strip()


# --- the note ----------------------------------------------------------------------------------


class TestTheNote:
    def test_both_keys_must_sign(self) -> None:
        old, new, other = _signer(), _signer(), _signer()
        good = sign_rotation(NAME, old, new)
        r = open_rotation(good)
        assert (r.old.vkey, r.new.vkey, r.origin) == (old.vkey, new.vkey, NAME)
        text = statement(NAME, old.vkey, new.vkey)
        # Signed by the new key only: it claims the old key's blessing without it.
        with pytest.raises(InvalidNote, match="not signed by"):
            open_rotation(new.sign(text))
        # Signed by the old key only: nobody showed they hold the new one.
        with pytest.raises(InvalidNote, match="not signed by"):
            open_rotation(old.sign(text))
        # Another key's signature under the old key's name does not count.
        forged = other.sign(text) + new.sign(text)[len(text) + 1 :]
        with pytest.raises(InvalidNote):
            open_rotation(forged)
        # The text changed after signing.
        with pytest.raises(InvalidNote, match="altered"):
            open_rotation(good.replace(f"origin {NAME}", "origin elsewhere/log"))

    def test_the_chain_must_link(self) -> None:
        a, b, c = _signer(), _signer(), _signer()
        ring = KeyRing(start=a.verifier())
        ring.add(5, {"old_key": a.vkey, "new_key": b.vkey, "note": sign_rotation(NAME, a, b)})
        assert ring.at(5).vkey == a.vkey  # type: ignore[union-attr]
        assert ring.at(6).vkey == b.vkey  # type: ignore[union-attr]
        # A link that does not start from the key in force (a -> c after a -> b) is refused.
        with pytest.raises(IntegrityError, match="key in force") as e:
            ring.add(9, {"old_key": a.vkey, "new_key": c.vkey, "note": sign_rotation(NAME, a, c)})
        assert e.value.seq == 9
        # The event's fields must say what its note says.
        with pytest.raises(IntegrityError, match="other keys"):
            ring.add(9, {"old_key": b.vkey, "new_key": a.vkey, "note": sign_rotation(NAME, b, c)})
        ring.check_holds(b.vkey)
        ring.check_holds(a.vkey)  # a retired key is behind, not a stranger
        with pytest.raises(IntegrityError, match="without a rotation"):
            ring.check_holds(c.vkey)


class _RotationLandsDuringRefresh(SQLiteEventStore):
    """A real store where one rotation is appended at the moment the ring asks for the head:
    the interleaving of a `key rotate` in another process with the signer's refresh."""

    pending: CheckpointKeyRotated | None = None

    async def head(self) -> int:
        if self.pending is not None:
            ev, self.pending = self.pending, None
            await self.append(CHECKPOINT_STREAM, [ev])
        return await super().head()


@pytest.mark.anyio
async def test_a_rotation_appended_during_a_refresh_is_never_skipped(tmp_path: Path) -> None:
    a, b = _signer(), _signer()
    async with _RotationLandsDuringRefresh(tmp_path / "events.db") as store:
        await append_n(store, 3)
        ring = await KeyRing.load(store, a.verifier(), NAME)
        store.pending = CheckpointKeyRotated(old_key=a.vkey, new_key=b.vkey, note=sign_rotation(NAME, a, b))
        first = await ring.refresh(store, NAME)
        second = await ring.refresh(store, NAME)
        assert [r.new.vkey for r in first + second] == [b.vkey]
        assert ring.current is not None
        assert ring.current.vkey == b.vkey


# --- a rotation on a live daemon ----------------------------------------------------------------


def test_a_rotation_is_followed_by_the_daemon_audit_verify_and_a_restart(
    site: tuple[Site, subprocess.Popen[str]],
) -> None:
    s, proc = site
    old_key = _served_key(s)
    r = rollwatch("--config", str(s.config), "key", "rotate")
    assert r.returncode == 0, r.stderr
    new_key = r.stdout.split("new key: ")[1].split()[0]
    assert new_key != old_key
    assert f"old key: {old_key}" in r.stdout
    [rot_seq] = _rotations(s)
    # The daemon picks up the new key at its next checkpoint, and signs with it.
    _append(s, n=7)
    _poll(lambda: _served_key(s) == new_key, 30, "the daemon to serve the new key")
    _poll(lambda: any(seq > rot_seq for seq, _ in s.checkpoints()), 30, "a checkpoint after the rotation")
    note = httpx.get(s.url + "/public/checkpoint").text
    cp = NoteVerifier.from_vkey(new_key).open_checkpoint(note)
    assert cp.size >= rot_seq
    # The auditor pinned the old key: the rotation leads it to the new one.
    a = rollwatch("audit", "--url", s.url, "--keep", str(s.dir / "audit.json"))
    assert a.returncode == 0, a.stderr
    assert f"rotated at seq {rot_seq} to {new_key}" in a.stdout
    assert json.loads((s.dir / "audit.json").read_text())["key"] == new_key
    again = rollwatch("audit", "--url", s.url, "--keep", str(s.dir / "audit.json"))
    assert again.returncode == 0, again.stderr
    # --key with the old key follows the chain too; an unrelated key does not.
    pinned = rollwatch("audit", "--url", s.url, "--key", old_key)
    assert pinned.returncode == 0, pinned.stderr
    stranger = rollwatch("audit", "--url", s.url, "--key", _signer().vkey)
    assert stranger.returncode == 1
    assert "no chain of key rotations" in stranger.stderr
    assert httpx.get(s.url + "/healthz").status_code == 200

    err = _stop(proc)
    assert proc.returncode == 0, err
    assert "log_tampered" not in err
    assert "checkpoint_key_retired" not in err
    # Files: the new key in place, the old one kept beside it.
    key_file = s.dir / "checkpoint.key"
    old_id = old_key.split("+")[1]
    assert (s.dir / f"checkpoint.key.retired-{old_id}").is_file()
    assert not (s.dir / "checkpoint.key.next").exists()
    # verify: checkpoints before the rotation by the old key, after it by the new one,
    # and a checkpoint kept before the rotation (old key) still binds the log.
    v = rollwatch("--config", str(s.config), "verify", "--checkpoint", str(s.dir / "kept.note"))
    assert v.returncode == 0, v.stderr
    n = len(s.checkpoints())
    assert f"{n} checkpoints, {n} signatures valid" in v.stdout
    # A restart signs on with the new key.
    restarted = s.serve()
    try:
        _poll(lambda: (h := s.healthz()) is not None and h.status_code == 200, 60, "the restarted daemon")
        assert _served_key(s) == new_key
    finally:
        err = _stop(restarted)
    assert restarted.returncode == 0, err
    assert key_file.is_file()


def test_a_rotation_cut_short_is_finished_at_the_next_start(stopped_site: Site) -> None:
    """The event was appended but the files not yet moved (a crash): start finishes the move."""
    s = stopped_site
    old_key = _served_key_from_file(s)
    r = rollwatch("--config", str(s.config), "key", "rotate")
    assert r.returncode == 0, r.stderr
    new_key = r.stdout.split("new key: ")[1].split()[0]
    key_file = s.dir / "checkpoint.key"
    retired = s.dir / f"checkpoint.key.retired-{old_key.split('+')[1]}"
    key_file.rename(s.dir / "checkpoint.key.next")
    retired.rename(key_file)
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 0, v.stderr
    again = s.serve()
    try:
        _poll(lambda: (h := s.healthz()) is not None and h.status_code == 200, 60, "the restarted daemon")
        # Served from its first checkpoint on (signed at start), as the rotation is (session 35).
        _poll(lambda: _served_key(s) == new_key, 30, "the new key's first checkpoint")
        NoteVerifier.from_vkey(new_key).open_checkpoint(httpx.get(s.url + "/public/checkpoint").text)
    finally:
        err = _stop(again)
    assert again.returncode == 0, err
    assert "checkpoint_key_rotation_finished" in err
    assert retired.is_file()
    assert not (s.dir / "checkpoint.key.next").exists()


def test_an_export_between_a_rotation_and_the_new_keys_first_checkpoint_is_refused(
    stopped_site: Site,
) -> None:
    """`publish export` ships the key in force and signs its index with it, at the newest signed
    checkpoint. Right after `key rotate`, before the daemon signs with the new key, that
    checkpoint is the retired key's: the export shipped the new key beside it, and every audit
    that trusts the export's key failed ("not signed by"). It is refused, saying when to export;
    once the new key has signed, the export ships a key that verifies its checkpoint."""
    s = stopped_site
    r = rollwatch("--config", str(s.config), "key", "rotate")
    assert r.returncode == 0, r.stderr
    new_key = r.stdout.split("new key: ")[1].split()[0]
    out = s.dir / "export"
    refused = rollwatch("--config", str(s.config), "publish", "export", str(out))
    assert refused.returncode == 2, refused.stderr
    assert "not signed by the key in force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (out / "key").exists()
    again = s.serve()
    try:
        _poll(lambda: (h := s.healthz()) is not None and h.status_code == 200, 60, "the restarted daemon")
        _poll(lambda: _served_key(s) == new_key, 30, "the new key's first checkpoint")
    finally:
        err = _stop(again)
    assert again.returncode == 0, err
    done = rollwatch("--config", str(s.config), "publish", "export", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "key").read_text().strip() == new_key
    NoteVerifier.from_vkey(new_key).open_checkpoint((out / "checkpoint").read_text())


def _served_key_from_file(s: Site) -> str:
    from rollwatch.integrity.keys import load_signer

    return load_signer(s.dir / "checkpoint.key", NAME, create=False).vkey


# --- attacks ----------------------------------------------------------------------------------


def test_a_key_swapped_without_a_rotation_is_refused(stopped_site: Site) -> None:
    """Someone replaces the key file with their own: the log's checkpoints are not theirs."""
    s = stopped_site
    key_file = s.dir / "checkpoint.key"
    key_file.write_bytes(_key_pem(Ed25519PrivateKey.generate()))
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1
    assert "is not signed by" in v.stderr, v.stderr
    head = s.head()
    again = s.serve()
    try:
        again.wait(timeout=60)
    finally:
        err = _stop(again)
    assert again.returncode == 1, err
    assert "integrity check failed at seq" in err
    assert s.head() == head


@pytest.mark.parametrize("forgery", ["new_key_only", "attacker_chain"])
def test_a_forged_rotation_stops_the_live_daemon_and_fails_verify(
    site: tuple[Site, subprocess.Popen[str]], forgery: str
) -> None:
    """A rotation event appended by someone without the old key: the signer refuses it, /healthz names it."""
    s, proc = site
    old_key = _served_key(s)
    attacker, attacker2 = _signer(), _signer()
    text = statement(NAME, old_key, attacker.vkey)
    if forgery == "new_key_only":
        # It claims the old key's blessing but carries only the attacker's signature.
        event = CheckpointKeyRotated(old_key=old_key, new_key=attacker.vkey, note=attacker.sign(text))
    else:
        # A well-formed link, but from a key that is not the one in force.
        event = CheckpointKeyRotated(
            old_key=attacker.vkey, new_key=attacker2.vkey, note=sign_rotation(NAME, attacker, attacker2)
        )
    signed_before = s.checkpoints()
    _append(s, [event], n=6)
    [bad] = _rotations(s)
    _poll(
        lambda: (
            (h := s.healthz()) is not None and h.status_code == 503 and h.json().get("first_bad_seq") == bad
        ),
        30,
        f"/healthz to name seq {bad}",
    )
    assert _served_key(s) == old_key
    err = _stop(proc)
    assert [c for c in s.checkpoints() if c not in signed_before] == []
    assert "log_tampered" in err
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1
    assert f"FAILED at seq {bad}:" in v.stderr, v.stderr
