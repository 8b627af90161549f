"""C2SP tlog-cosignature (Ed25519, ``cosignature/v1``): a witness's timestamped signature.

A cosignature is a signed-note signature line on a checkpoint::

    — <witness name> base64(key ID ‖ u64 big-endian timestamp ‖ Ed25519 signature)

where the key ID is ``SHA-256(name ‖ "\\n" ‖ 0x04 ‖ public key)[:4]`` and the signature
covers::

    cosignature/v1
    time <timestamp>
    <the checkpoint's note text, final newline included>

It states that, as of ``timestamp`` (POSIX seconds), the largest consistent tree the
witness has seen for that origin has that root. Witness keys are given as vkeys with
signature type 0x04. See https://c2sp.org/tlog-cosignature.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from rollwatch.errors import InvalidNote
from rollwatch.integrity.checkpoint import b64, check_key_name, split_note, unb64

COSIGNATURE_V1 = 0x04
"""The signature type of an Ed25519 cosignature/v1 key."""

_MAX_TIME = (1 << 63) - 1


def _key_id(name: str, public_key: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_V1]) + public_key).digest()[:4]


def signed_message(note_text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs for a checkpoint whose note text is ``note_text``."""
    return f"cosignature/v1\ntime {timestamp}\n{note_text}".encode()


class CosignatureSigner:
    """A witness's Ed25519 cosigning key under the witness's name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = check_key_name(name)
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = _key_id(name, self.public_key)

    @property
    def vkey(self) -> str:
        """``<name>+<hex key ID>+<base64(0x04 ‖ public key)>``."""
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([COSIGNATURE_V1]) + self.public_key)}"

    def cosign(self, note_text: str, timestamp: int) -> str:
        """The cosignature line (with its newline) on the checkpoint whose text is ``note_text``."""
        sig = self._key.sign(signed_message(note_text, timestamp))
        return f"— {self.name} {b64(self.key_id + struct.pack('>Q', timestamp) + sig)}\n"


@dataclass(frozen=True, slots=True)
class CosignatureVerifier:
    """Verifies one witness's cosignatures, given its vkey (type 0x04)."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([COSIGNATURE_V1]) + self.public_key)}"

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse a witness vkey; ValueError naming what is wrong."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise ValueError(f"{vkey!r} is not a witness key: expected NAME+KEYID+BASE64KEY")
        name, hex_id, key_b64 = parts
        try:
            check_key_name(name)
            raw = unb64(key_b64, "the witness key")
            kid = bytes.fromhex(hex_id)
        except (InvalidNote, ValueError):
            raise ValueError(f"{vkey!r} is not a witness key: bad name, key ID or key encoding") from None
        if len(raw) != 33 or raw[0] != COSIGNATURE_V1 or len(kid) != 4:
            raise ValueError(f"{vkey!r} is not an Ed25519 cosignature/v1 key (type 0x04, 32-byte key)")
        v = cls(name, raw[1:])
        if v.key_id != kid:
            raise ValueError(
                f"{vkey!r}: the key ID does not match the name and key (expected {v.key_id.hex()})"
            )
        return v

    def timestamp(self, note: str) -> int | None:
        """The time of this witness's valid cosignature on ``note``; None when it carries none.

        A cosignature line by this key that does not verify raises :class:`InvalidNote`.
        """
        text, sigs = split_note(note)
        key = Ed25519PublicKey.from_public_bytes(self.public_key)
        found = None
        for name, blob in sigs:
            if name != self.name or blob[:4] != self.key_id:
                continue
            if len(blob) != 4 + 8 + 64:
                raise InvalidNote(f"the cosignature by {name} is {len(blob)} bytes, not 76")
            (ts,) = struct.unpack(">Q", blob[4:12])
            if ts > _MAX_TIME:
                raise InvalidNote(f"the cosignature by {name} has a timestamp beyond 2^63 - 1")
            try:
                key.verify(blob[12:], signed_message(text, ts))
            except InvalidSignature:
                raise InvalidNote(f"the cosignature by {name} does not verify") from None
            found = ts if found is None else max(found, ts)
        return found


def add_signatures(note: str, lines: str) -> str:
    """``note`` with the signature ``lines`` (each ending in a newline) appended."""
    return note + lines
