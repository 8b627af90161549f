"""Signed notes and checkpoints (C2SP signed-note, tlog-checkpoint) and the signing key's storage."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from rollwatch.errors import ConfigError, InvalidNote
from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner, NoteVerifier
from rollwatch.integrity.keys import existing_signer, load_signer, pending_key_path, promote_key

# The example of golang.org/x/mod/sumdb/note (its tests and documentation).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


class TestNotes:
    def test_signing_reproduces_the_go_reference_note(self) -> None:
        """With the Go package's example key, our signer writes its note byte for byte, and its vkey."""
        s = NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(GO_SEED))
        assert s.vkey == GO_VKEY
        assert s.sign(GO_TEXT) == GO_NOTE

    def test_verifying_the_go_reference_note(self) -> None:
        """The Go example note opens with its vkey; changing one character of the text rejects it."""
        v = NoteVerifier.from_vkey(GO_VKEY)
        assert v.open(GO_NOTE) == GO_TEXT
        with pytest.raises(InvalidNote, match="does not verify"):
            v.open(GO_NOTE.replace("cryptography", "cryptographY"))

    def test_key_id_is_the_spec_hash(self, signer: NoteSigner) -> None:
        """The key ID is SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4], and the vkey round-trips."""
        import hashlib

        want = hashlib.sha256(signer.name.encode() + b"\n\x01" + signer.public_key).digest()[:4]
        assert signer.key_id == want
        v = NoteVerifier.from_vkey(signer.vkey)
        assert (v.name, v.key_id, v.public_key) == (signer.name, signer.key_id, signer.public_key)

    def test_mangled_vkeys_are_rejected(self) -> None:
        """Truncations and single-character changes of a vkey never parse (as the Go tests require)."""
        b = GO_VKEY
        for i in range(len(b)):
            mangled = b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :]
            with pytest.raises(ValueError):  # noqa: PT011 (the message varies with the mangling)
                NoteVerifier.from_vkey(mangled)
        for cut in (5, 13, 22, len(b) - 1):
            with pytest.raises(ValueError):  # noqa: PT011
                NoteVerifier.from_vkey(b[:cut])

    def test_other_signatures_are_ignored_but_ours_is_required(self, signer: NoteSigner) -> None:
        """Unknown signers' lines are skipped; a note without our signature, or with a bad one, is rejected."""
        other = NoteSigner("witness.example", Ed25519PrivateKey.generate())
        text = "hello\n"
        ours = signer.sign(text)
        theirs = other.sign(text)
        both = ours + theirs.split("\n\n", 1)[1]
        assert signer.verifier().open(both) == text
        with pytest.raises(InvalidNote, match="not signed by"):
            signer.verifier().open(theirs)
        sig_line = ours.split("\n\n", 1)[1]
        name, blob = sig_line[2:].split(" ")
        raw = bytearray(base64.b64decode(blob))
        raw[10] ^= 1
        forged = text + "\n— " + name + " " + base64.b64encode(bytes(raw)).decode() + "\n"
        with pytest.raises(InvalidNote, match="does not verify"):
            signer.verifier().open(forged)

    @pytest.mark.parametrize(
        "note",
        [
            "no blank line\n— a AAAA\n",
            "text\n\n— a\n",
            "text\n\nnot a signature\n",
            "text\n\n— a !!!notbase64\n",
            "text\n\n— a AAAAAAAA",
            "text\x01\n\n— a AAAAAAAA\n",
        ],
        ids=[
            "no-blank-line",
            "no-signature",
            "not-em-dash",
            "bad-base64",
            "no-final-newline",
            "control-char",
        ],
    )
    def test_malformed_notes_are_rejected(self, signer: NoteSigner, note: str) -> None:
        """Notes that break the signed-note format are rejected before any signature is checked."""
        with pytest.raises(InvalidNote):
            signer.verifier().open(note)


class TestCheckpointBody:
    def test_body_is_origin_size_base64_root(self) -> None:
        """The body is exactly origin, decimal size and standard base64 root, each on its own line."""
        cp = Checkpoint(origin="example.com/log", size=20852163, root=bytes(range(32)))
        assert cp.body() == "example.com/log\n20852163\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
        assert Checkpoint.parse(cp.body()) == cp

    @pytest.mark.parametrize(
        "text",
        [
            "o\n1\n",
            "\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "o\n01\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "o\n-1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "o\n1\nAAEC\n",
            "o\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n",
            "o\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ],
        ids=[
            "two-lines",
            "empty-origin",
            "leading-zero",
            "negative",
            "short-root",
            "empty-extension",
            "no-newline",
        ],
    )
    def test_malformed_bodies_are_rejected(self, text: str) -> None:
        """A body that is not a tlog-checkpoint is rejected, naming what is wrong."""
        with pytest.raises(InvalidNote):
            Checkpoint.parse(text)

    def test_signed_checkpoint_opens_and_checks_its_origin(self, signer: NoteSigner) -> None:
        """A signed checkpoint opens to the same checkpoint; a different expected origin rejects it."""
        cp = Checkpoint(origin=signer.name, size=3, root=bytes(32))
        note = signer.sign_checkpoint(cp)
        assert note.startswith(cp.body() + "\n— " + signer.name + " ")
        assert signer.verifier().open_checkpoint(note, origin=signer.name) == cp
        with pytest.raises(InvalidNote, match="for log"):
            signer.verifier().open_checkpoint(note, origin="another/log")


class TestKeys:
    def test_first_start_makes_a_0600_key_and_later_starts_reuse_it(self, tmp_path: Path) -> None:
        """The key is created owner-only (0600) on first use, as ``checkpoint.key.pending``
        until its first signature gives it the key file's name; read back unchanged
        before and after."""
        path = tmp_path / "state" / "checkpoint.key"
        pending = pending_key_path(path)
        a = load_signer(path, "rollwatch.test/log")
        assert not path.exists()
        assert stat.S_IMODE(pending.stat().st_mode) == 0o600
        assert pending.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        b = load_signer(path, "rollwatch.test/log")
        assert a.vkey == b.vkey
        promote_key(path)
        assert not pending.exists()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        c = load_signer(path, "rollwatch.test/log")
        assert a.vkey == c.vkey
        assert not list(path.parent.glob(".*tmp"))

    def test_a_key_that_never_signed_is_not_used_where_one_must_exist(self, tmp_path: Path) -> None:
        """What needs a key that has signed (``key rotate``) says the pending one has not yet."""
        path = tmp_path / "checkpoint.key"
        load_signer(path, "rollwatch.test/log")
        with pytest.raises(ConfigError, match=r"checkpoint.key.pending\) has not signed a checkpoint yet"):
            load_signer(path, "rollwatch.test/log", create=False)
        assert existing_signer(path, "rollwatch.test/log") is None

    def test_verify_never_creates_a_key(self, tmp_path: Path) -> None:
        """existing_signer returns None where no key exists, and creates nothing."""
        assert existing_signer(tmp_path / "none.key", "x") is None
        assert not (tmp_path / "none.key").exists()

    def test_systemd_credential_takes_precedence(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$CREDENTIALS_DIRECTORY/checkpoint-key is used when present, and the key file is not created."""
        key = Ed25519PrivateKey.generate()
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "checkpoint-key").write_bytes(
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        s = load_signer(tmp_path / "checkpoint.key", "n")
        assert s.public_key == NoteSigner("n", key).public_key
        assert not (tmp_path / "checkpoint.key").exists()

    def test_raw_seed_and_wrong_key_types(self, tmp_path: Path) -> None:
        """A raw 32-byte seed is accepted; a P-256 key or garbage is a ConfigError naming the file."""
        seed_file = tmp_path / "seed"
        seed_file.write_bytes(GO_SEED)
        os.chmod(seed_file, 0o600)
        assert load_signer(seed_file, "PeterNeumann").vkey == GO_VKEY
        ec = tmp_path / "ec.pem"
        ec.write_bytes(
            generate_private_key(SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        with pytest.raises(ConfigError, match="not Ed25519"):
            load_signer(ec, "n")
        junk = tmp_path / "junk"
        junk.write_bytes(b"hello")
        with pytest.raises(ConfigError, match="junk"):
            load_signer(junk, "n")


@pytest.mark.skipif(
    __import__("shutil").which("strace") is None, reason="needs strace (make system installs it)"
)
def test_a_file_written_atomically_has_its_rename_synced(tmp_path: Path) -> None:
    """``checkpoint.last`` and ``checkpoint.cosigned`` (the last checkpoint a node signed or saw
    cosigned, which a log put back from an older copy is held to) are written to a new file,
    synced and renamed into place: the folder was not synced after the rename, so a power cut
    could bring the old file back. Watched with strace in a real process: an fsync of the folder
    follows the rename."""
    import subprocess
    import sys

    trace = tmp_path / "trace"
    folder = tmp_path / "state"
    code = (
        "import sys; from pathlib import Path; from rollwatch.integrity.checkpoint import write_file_atomically;"
        " write_file_atomically(Path(sys.argv[1]), 'old'); write_file_atomically(Path(sys.argv[1]), 'new')"
    )
    strace = ["strace", "-f", "-y", "-e", "trace=fsync,rename,renameat,renameat2", "-o", str(trace)]
    subprocess.run(
        [*strace, sys.executable, "-c", code, str(folder / "checkpoint.last")],
        check=True,
        timeout=60,
    )
    assert (folder / "checkpoint.last").read_text() == "new"
    lines = trace.read_text().splitlines()
    renamed = [i for i, line in enumerate(lines) if "rename" in line and 'checkpoint.last"' in line]
    assert len(renamed) == 2, lines
    for i, j in zip(renamed, [*renamed[1:], len(lines)], strict=True):
        assert any("fsync(" in line and f"<{folder}>" in line for line in lines[i:j]), lines
