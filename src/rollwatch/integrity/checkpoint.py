"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes (Ed25519).

A checkpoint commits to the log's Merkle tree at one size::

    rollwatch.example/log                 origin (the log's name; also the key's name)
    1234                                  tree size (number of events, decimal)
    8S4T7Xb8m3gGk1pF1yR1cVj7aZc8TnV1m0c6yKjzQ1U=   root hash (base64)
                                          blank line
    — rollwatch.example/log AbCdEf…       base64(4-byte key ID ‖ 64-byte Ed25519 signature)

The signature covers the text above the blank line, final newline included. The key
ID is ``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4]``, and verifiers are
given the public key as a ``vkey`` string ``<name>+<hex key ID>+<base64(0x01 ‖ public
key)>`` (the format of Go's ``golang.org/x/mod/sumdb/note``). See
https://c2sp.org/tlog-checkpoint and https://c2sp.org/signed-note.

Each checkpoint the service signs is also appended to the log as a
:class:`CheckpointSigned` event, so the log carries its own history of signed tree
heads (``rollwatch verify`` checks every one).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from rollwatch.errors import InvalidNote, UnfitFile
from rollwatch.integrity.merkle import HASH_SIZE

ED25519 = 0x01
"""The signed-note signature type of Ed25519."""

_SIG_PREFIX = "— "  # U+2014 EM DASH, then a space
_MAX_NOTE = 64 * 1024
_MAX_SIGNATURES = 100
_NAME = re.compile(r"[^\s+\x00-\x1f\x7f-\x9f]+")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def b64(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4), as every C2SP format uses."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    """Decode strict standard base64 or raise :class:`InvalidNote` naming ``what`` (also for a
    ``text`` that is no string: a hostile JSON's number or null was an AttributeError)."""
    if not isinstance(text, str):
        raise InvalidNote(f"{what} is not a base64 string: {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidNote(f"{what} is not valid base64: {text[:60]!r}") from None


def check_key_name(name: str) -> str:
    """``name`` if it is a valid note key name (non-empty, no spaces, no ``+``, no control
    characters: a note's text holds none, so a name with an escape could sign no note)."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid key name: it must be non-empty, with no spaces, no '+'"
            " and no control characters"
        )
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte ID of an Ed25519 note key: ``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


# --- the checkpoint body ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One tree head: the log's ``origin``, its ``size`` and the ``root`` hash at that size."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The note text (tlog-checkpoint): origin, size, base64 root, extensions; each line ending in a newline."""
        return "".join(
            f"{line}\n" for line in (self.origin, str(self.size), b64(self.root), *self.extensions)
        )

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a (verified) note text; :class:`InvalidNote` if it is not one."""
        if not text.endswith("\n"):
            raise InvalidNote("a checkpoint's text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise InvalidNote(
                f"a checkpoint has at least 3 lines (origin, size, root); this one has {len(lines)}"
            )
        origin, size_s, root_s, *ext = lines
        if not origin:
            raise InvalidNote("the checkpoint's origin line is empty")
        # At most 20 digits (a uint64): ``int`` refuses more than 4300 with a ValueError, which
        # a witness answered with a 500 and a traceback for anyone's POST.
        if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size_s) or int(size_s) >= 1 << 64:
            raise InvalidNote(
                f"the checkpoint's tree size {size_s[:40]!r} is not a decimal number below 2^64"
            )
        root = unb64(root_s, "the checkpoint's root hash")
        if len(root) != HASH_SIZE:
            raise InvalidNote(f"the checkpoint's root hash is {len(root)} bytes, not {HASH_SIZE}")
        if any(not e for e in ext):
            raise InvalidNote("a checkpoint's extension lines must not be empty")
        return cls(origin=origin, size=int(size_s), root=root, extensions=tuple(ext))


# --- signing and verifying notes -------------------------------------------------------------


class NoteSigner:
    """Signs note texts with one Ed25519 key under one key name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = check_key_name(name)
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, self.public_key)

    @property
    def vkey(self) -> str:
        """The public verifier key: ``<name>+<hex key ID>+<base64(0x01 ‖ public key)>``."""
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([ED25519]) + self.public_key)}"

    def verifier(self) -> NoteVerifier:
        """The verifier of this signer's notes."""
        return NoteVerifier.from_vkey(self.vkey)

    def sign(self, text: str) -> str:
        """The signed note: ``text``, a blank line, and this key's signature line."""
        _check_text(text)
        sig = self._key.sign(text.encode())
        return f"{text}\n{_SIG_PREFIX}{self.name} {b64(self.key_id + sig)}\n"

    def sign_checkpoint(self, checkpoint: Checkpoint) -> str:
        """The signed note of ``checkpoint``."""
        return self.sign(checkpoint.body())


class NoteVerifier:
    """Verifies notes signed by one Ed25519 key, given as a ``vkey`` string."""

    def __init__(self, name: str, public_key: bytes) -> None:
        self.name = check_key_name(name)
        if len(public_key) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
        self.public_key = public_key
        self.key_id = key_id(name, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 ‖ public key)>``; ValueError if malformed."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise ValueError(f"{vkey!r} is not a verifier key: expected NAME+KEYID+BASE64KEY")
        name, hex_id, key_b64 = parts
        try:
            raw = unb64(key_b64, "the verifier key")
            kid = bytes.fromhex(hex_id)
        except (InvalidNote, ValueError):
            raise ValueError(f"{vkey!r} is not a verifier key: bad key ID or key encoding") from None
        if len(kid) != 4 or len(raw) != 33 or raw[0] != ED25519:
            raise ValueError(f"{vkey!r} is not an Ed25519 verifier key (type 0x01, 32-byte key, 4-byte ID)")
        v = cls(name, raw[1:])
        if v.key_id != kid:
            raise ValueError(
                f"{vkey!r}: the key ID {hex_id} does not match the name and key (expected {v.key_id.hex()})"
            )
        return v

    @property
    def vkey(self) -> str:
        """This key as a ``vkey`` string."""
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([ED25519]) + self.public_key)}"

    def open(self, note: str) -> str:
        """The text of ``note`` once its signature by this key is verified.

        Signatures by other keys are ignored, as the signed-note spec requires; a
        signature by this key that does not verify rejects the note, and so does a
        note this key did not sign.
        """
        text, sigs = split_note(note)
        ours = 0
        for name, blob in sigs:
            if name != self.name or blob[:4] != self.key_id:
                continue
            ours += 1
            if len(blob) != 4 + 64:
                raise InvalidNote(f"the signature by {name} is {len(blob) - 4} bytes, not 64 (Ed25519)")
            try:
                self._key.verify(blob[4:], text.encode())
            except InvalidSignature:
                raise InvalidNote(f"the signature by {name} does not verify: the note was altered") from None
        if not ours:
            names = ", ".join(sorted({n for n, _ in sigs})) or "none"
            raise InvalidNote(
                f"the note is not signed by {self.name} (key ID {self.key_id.hex()}); signers: {names}"
            )
        return text

    def open_checkpoint(self, note: str, *, origin: str | None = None) -> Checkpoint:
        """The checkpoint in ``note`` once verified; its origin must be ``origin`` when given."""
        cp = Checkpoint.parse(self.open(note))
        if origin is not None and cp.origin != origin:
            raise InvalidNote(f"the checkpoint is for log {cp.origin!r}, not {origin!r}")
        return cp


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise ValueError("a note's text must end with a newline")
    if _CONTROL.search(text):
        raise ValueError("a note's text must not contain control characters other than newline")


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A note's text and its signatures ``(key name, key ID ‖ signature)``, unverified."""
    if len(note) > _MAX_NOTE:
        raise InvalidNote(f"the note is {len(note)} characters long; at most {_MAX_NOTE} are accepted")
    if _CONTROL.search(note):
        raise InvalidNote("the note contains control characters")
    # The text may contain blank lines; the signatures begin after the last one.
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise InvalidNote("not a signed note: no blank line before the signatures, or no final newline")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    sigs: list[tuple[str, bytes]] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(_SIG_PREFIX):
            raise InvalidNote(
                f"not a signature line (it must start with an em dash and a space): {line[:60]!r}"
            )
        name, sep, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _NAME.fullmatch(name) or " " in sig_b64:
            raise InvalidNote(f"malformed signature line: {line[:60]!r}")
        blob = unb64(sig_b64, f"the signature by {name}")
        if len(blob) < 5:
            raise InvalidNote(f"the signature by {name} is too short")
        sigs.append((name, blob))
    if len(sigs) > _MAX_SIGNATURES:
        raise InvalidNote(f"the note has {len(sigs)} signatures; at most {_MAX_SIGNATURES} are accepted")
    return text, sigs


# --- the signed statement of a static export's release index ----------------------------------

RELEASE_INDEX = "rollwatch-release-index/2"
"""The first line of the note ``publish export`` signs over its ``releases.json``."""
RELEASE_INDEX_V1 = "rollwatch-release-index/1"
"""The same without the export's time (exports before session 18): still read."""
_EXPORTED = re.compile(r"exported \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def release_statement(checkpoint: Checkpoint, index_sha256: str, exported: datetime) -> str:
    """The text the log's key signs for an export's index: which checkpoint the export was cut
    at, the SHA-256 of ``releases.json`` (which names every release folder's manifest by its
    SHA-256, each manifest every chunk by its own) and when the export was made (so an auditor
    can refuse an old export served whole in place of the current one: ``audit
    --max-export-age``). Its second line is not a number, so no checkpoint parser takes it for a
    tree head signed by the same key."""
    when = exported.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{RELEASE_INDEX}\norigin {checkpoint.origin}\nsize {checkpoint.size}\n"
        f"root {b64(checkpoint.root)}\nreleases.json sha256 {index_sha256}\nexported {when}\n"
    )


@dataclass(frozen=True)
class ReleaseStatement:
    """What a (verified) release statement says."""

    checkpoint: Checkpoint
    index_sha256: str
    exported: datetime | None
    """When the export was made; None in a statement of the first format, which has no time."""


def parse_release_statement(text: str) -> ReleaseStatement:
    """What a (verified) release statement names; InvalidNote if it is not one."""
    lines = text.split("\n")
    v1 = lines[0] == RELEASE_INDEX_V1
    if len(lines) != (6 if v1 else 7) or lines[0] not in (RELEASE_INDEX, RELEASE_INDEX_V1) or lines[-1] != "":
        raise InvalidNote(f"not a {RELEASE_INDEX} statement")
    origin, size, root, sha = (
        lines[1].removeprefix("origin "),
        lines[2].removeprefix("size "),
        lines[3].removeprefix("root "),
        lines[4].removeprefix("releases.json sha256 "),
    )
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or not lines[4].startswith("releases.json sha256 "):
        raise InvalidNote(f"not a {RELEASE_INDEX} statement (no releases.json sha256)")
    if not (lines[1].startswith("origin ") and lines[2].startswith("size ") and lines[3].startswith("root ")):
        raise InvalidNote(f"not a {RELEASE_INDEX} statement (no origin, size or root)")
    exported = None
    if not v1:
        if not _EXPORTED.fullmatch(lines[5]):
            raise InvalidNote(f"not a {RELEASE_INDEX} statement (no export time)")
        try:
            exported = datetime.strptime(lines[5], "exported %Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise InvalidNote(f"not a {RELEASE_INDEX} statement (no export time)") from None
    return ReleaseStatement(Checkpoint.parse(f"{origin}\n{size}\n{root}\n"), sha, exported)


WITNESS_MAX = 1 << 20
"""The largest witness file read (a note is a few hundred bytes)."""


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; :class:`UnfitFile` when it is not a
    regular file or holds more. A missing file raises FileNotFoundError.

    Opened without blocking and checked once open: a named pipe put in the place of a key,
    origin or witness file held the read (``verify``, ``serve``, the signer) for good, deaf
    to SIGTERM."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:  # checked before fdopen, which refuses a folder with IsADirectoryError
        os.close(fd)
        raise UnfitFile("it is not a regular file (a pipe, a folder or a device was put in its place)")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnfitFile(f"it holds more than {limit} bytes")
    return data


def read_witness_file(path: Path) -> str | None:
    """The text of a witness file (``checkpoint.last``), or None when there is none.

    Raises :class:`InvalidNote` when what is there cannot hold a checkpoint: not a regular
    file, larger than :data:`WITNESS_MAX`, or not UTF-8 (which raised ``UnicodeDecodeError``
    wherever it was read)."""
    try:
        data = read_small_file(path, WITNESS_MAX)
    except FileNotFoundError:
        return None
    except UnfitFile as e:
        raise InvalidNote(str(e)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidNote("it is not UTF-8 text") from None


def write_file_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (synced, then renamed over it), through a
    new file of our own making (O_EXCL, a random name): at a name known beforehand
    (``.checkpoint.last.PID.tmp``) someone could put a named pipe, whose open for writing
    waited for a reader for good (nothing more signed, ``/healthz`` ok, SIGTERM unheeded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    # The rename made durable too: without the folder's fsync, a power cut could bring the old
    # file back (the last checkpoint this node signed or saw cosigned, against which a log put
    # back from an older copy is caught).
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
