"""A C2SP tlog-witness (https://c2sp.org/tlog-witness) with cosignature/v1 signatures.

``rollwatch witness serve`` runs one for a third party: it trusts a list of log keys,
keeps the latest checkpoint it cosigned for each log (by origin), and answers

    POST /add-checkpoint
    GET /<hex SHA-256 of the origin>/checkpoint

The first's body is ``old <size>\\n``, up to 63 base64 consistency-proof lines, a blank
line, and the signed checkpoint. It cosigns only a checkpoint that is signed by the
log's key and consistent with the one it holds:

* 404: the origin is not a log it witnesses; 403: no signature by that log's key verifies,
  or one by a key it trusts for that log fails to verify;
* 400: the body is malformed, or ``old`` is larger than the checkpoint's size;
* 409 (``Content-Type: text/x.tlog.size`` exactly, body ``<size>\\n``): ``old`` is not
  the size it holds;
* 422: the consistency proof from the size it holds does not verify, the checkpoint has
  the size it holds but another root (a fork), or a checkpoint of size 0 does not have
  the empty tree's root;
* 200: one cosignature line, ``— <name> base64(key ID ‖ u64 timestamp ‖ Ed25519 signature)``.

The second serves monitors the latest checkpoint it cosigned for that log, with the log's
signatures it verified and its own cosignature (404 for a log it never cosigned).

The signed message (tlog-cosignature, Ed25519) is ``cosignature/v1\\ntime <t>\\n``
followed by the checkpoint's text; the key ID is ``SHA-256(name ‖ 0x0A ‖ 0x04 ‖
key)[:4]`` and the witness's public key is the vkey ``<name>+<hex ID>+base64(0x04 ‖
key)``. Checking the old size and recording the new checkpoint happen under one lock,
and the state file is replaced and synced before the answer leaves, so two racing
submissions can never roll the witness back.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from rollwatch.errors import InvalidNote, WitnessRefused
from rollwatch.integrity.checkpoint import (
    Checkpoint,
    NoteVerifier,
    b64,
    check_key_name,
    split_note,
    write_file_atomically,
)
from rollwatch.integrity.keys import parse_private_key, read_key_file
from rollwatch.integrity.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from rollwatch.log import get_logger

log = get_logger(__name__)

COSIGNATURE_V1 = 0x04
"""The signed-note signature type of timestamped Ed25519 cosignatures."""

SIZE_TYPE = "text/x.tlog.size"
MAX_TIMESTAMP = 2**63 - 1
"""tlog-cosignature: a cosignature's timestamp must not exceed this."""
MAX_PROOF_LINES = 63
_MAX_BODY = 64 * 1024
_SIG_PREFIX = "\u2014 "


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    """``SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_V1]) + public_key).digest()[:4]


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header line, the time line, the checkpoint text."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


class Cosigner:
    """Makes cosignature/v1 lines with one Ed25519 key under one name."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self.name = check_key_name(name)
        self._key = key
        self.public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = cosignature_key_id(name, self.public_key)

    @property
    def vkey(self) -> str:
        """``<name>+<hex key ID>+base64(0x04 ‖ key)``."""
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([COSIGNATURE_V1]) + self.public_key)}"

    def cosign(self, text: str, timestamp: int | None = None) -> str:
        """The signature line (ending in a newline) over the checkpoint ``text``."""
        t = int(time.time()) if timestamp is None else timestamp
        sig = self._key.sign(cosigned_message(text, t))
        return f"{_SIG_PREFIX}{self.name} {b64(self.key_id + struct.pack('>Q', t) + sig)}\n"


@dataclass(frozen=True, slots=True)
class CosignatureVerifier:
    """Checks the cosignatures of one witness, given as a vkey of type 0x04."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse ``<name>+<hex key ID>+base64(0x04 ‖ key)``; ValueError naming what is wrong."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise ValueError(f"{vkey!r} is not a witness key: expected NAME+KEYID+BASE64KEY")
        name, hex_id, key_b64 = parts
        try:
            raw = base64.b64decode(key_b64, validate=True)
            kid = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise ValueError(f"{vkey!r} is not a witness key: bad key ID or key encoding") from None
        if len(raw) != 33 or raw[0] != COSIGNATURE_V1 or len(kid) != 4:
            raise ValueError(f"{vkey!r} is not a cosignature/v1 key (type 0x04, 32-byte Ed25519 key)")
        check_key_name(name)
        if cosignature_key_id(name, raw[1:]) != kid:
            raise ValueError(f"{vkey!r}: the key ID does not match the name and key")
        return cls(name, kid, raw[1:])

    def timestamp(self, note: str) -> int | None:
        """The time of this witness's cosignature on ``note`` (None: it has none).

        Other signatures are ignored; a cosignature by this key that does not verify
        raises :class:`InvalidNote`.
        """
        text, sigs = split_note(note)
        key = Ed25519PublicKey.from_public_bytes(self.public_key)
        found = None
        for name, blob in sigs:
            if name != self.name or blob[:4] != self.key_id:
                continue
            if len(blob) != 4 + 8 + 64:
                raise InvalidNote(f"the cosignature by {name} is not 8 + 64 bytes")
            (t,) = struct.unpack(">Q", blob[4:12])
            if t > MAX_TIMESTAMP:
                raise InvalidNote(f"the cosignature by {name} has a timestamp beyond 2^63 - 1")
            try:
                key.verify(blob[12:], cosigned_message(text, t))
            except InvalidSignature:
                raise InvalidNote(f"the cosignature by {name} does not verify") from None
            found = t if found is None else max(found, t)
        return found


def load_cosigner(path: Path, name: str) -> Cosigner:
    """The witness key in ``path`` (PEM or a 32-byte seed), made (mode 0600) when missing."""
    check_key_name(name)  # before a key is made: a bad --name must not leave one behind
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("witness_key_created", path=str(path))
        return Cosigner(name, key)
    return Cosigner(name, parse_private_key(read_key_file(path), str(path)))


def hold_exclusively(path: Path) -> IO[bytes]:
    """``path`` opened and locked (``flock``) for as long as it stays open; OSError naming the
    other process's hold when one has it."""
    f = path.open("rb")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise OSError("another witness process is serving with this key; stop it first") from None
    return f


# --- the witness --------------------------------------------------------------------------------


Refused = WitnessRefused
"""The name this module raises it under."""


def parse_submission(body: bytes) -> tuple[int, list[bytes], str]:
    """``(old size, consistency proof, signed checkpoint note)`` of an add-checkpoint body."""
    if len(body) > _MAX_BODY:
        raise Refused(400, f"the body is larger than {_MAX_BODY} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "the body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise Refused(400, "no blank line between the old size and proof, and the checkpoint")
    lines = head.split("\n")
    # A size is a uint64: past 4300 digits ``int`` raised a ValueError, a 500 and a traceback.
    m = re.fullmatch(r"old (0|[1-9][0-9]{0,19})", lines[0])
    if not m or int(m.group(1)) >= 1 << 64:
        raise Refused(400, f"the first line must be 'old <size>' (a size below 2^64), not {lines[0][:40]!r}")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise Refused(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except binascii.Error:
            h = b""
        if len(h) != HASH_SIZE:
            raise Refused(400, f"a consistency proof line is not a base64 SHA-256 hash: {line[:60]!r}")
        proof.append(h)
    return int(m.group(1)), proof, note


class WitnessState:
    """The latest cosigned checkpoint per origin, in one JSON file replaced atomically:
    its size and root, and the note as monitors get it (the log's verified signatures
    and this witness's cosignature)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.logs: dict[str, tuple[int, bytes]] = {}
        self.notes: dict[str, str] = {}
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            self.logs = {o: (int(v["size"]), base64.b64decode(v["root"])) for o, v in data.items()}
            self.notes = {o: str(v["note"]) for o, v in data.items() if v.get("note")}

    def check(self, cosigner: Cosigner) -> None:
        """ValueError unless each log's size and root are those of the note kept with them, and
        that note carries this witness's valid cosignature: an edited size or root (say, put
        back to let a fork through) is refused at start, not served from."""
        verifier = CosignatureVerifier.from_vkey(cosigner.vkey)
        for origin, (size, root) in self.logs.items():
            note = self.notes.get(origin)
            if note is None:  # a state file written before the notes were kept
                log.warning("witness_state_unverified", origin=origin, size=size)
                continue
            try:
                cp = Checkpoint.parse(split_note(note)[0])
                stamped = verifier.timestamp(note)
            except InvalidNote as e:
                raise ValueError(f"the checkpoint kept for {origin!r} is not valid: {e}") from None
            if (cp.origin, cp.size, cp.root) != (origin, size, root) or stamped is None:
                raise ValueError(
                    f"the size or root of {origin!r} ({size}) is not that of the checkpoint kept with it,"
                    " cosigned by this witness's key: the file was edited"
                )

    def save(
        self, logs: dict[str, tuple[int, bytes]] | None = None, notes: dict[str, str] | None = None
    ) -> None:
        """Write the file (synced, renamed into place, and the rename synced), with ``logs`` and
        ``notes`` when given, which become the state only once they are on disk."""
        logs = self.logs if logs is None else logs
        notes = self.notes if notes is None else notes
        data = {
            o: {"size": s, "root": b64(r), **({"note": notes[o]} if o in notes else {})}
            for o, (s, r) in sorted(logs.items())
        }
        # Through a new file of its own (synced, renamed, the folder synced): without the folder's
        # fsync a power cut after the answer could bring back the previous file, and the witness
        # cosign a fork of what it had just cosigned.
        write_file_atomically(self.path, json.dumps(data, indent=1))
        self.logs, self.notes = logs, notes


class Witness:
    """The witness's decisions (see the module docstring); :func:`witness_app` serves them."""

    def __init__(self, cosigner: Cosigner, logs: list[NoteVerifier], state: WitnessState) -> None:
        self.cosigner = cosigner
        self.logs: dict[str, list[NoteVerifier]] = {}
        for v in logs:
            self.logs.setdefault(v.name, []).append(v)
        self.state = state
        self._lock = anyio.Lock()

    async def add_checkpoint(self, body: bytes) -> str:
        """The cosignature line for the submitted checkpoint, or :class:`Refused`."""
        old, proof, note = parse_submission(body)
        try:
            text, _ = split_note(note)
            cp = Checkpoint.parse(text)
        except InvalidNote as e:
            raise Refused(400, f"not a signed checkpoint: {e}") from None
        verifiers = self.logs.get(cp.origin)
        if not verifiers:
            raise Refused(404, f"this witness does not witness the log {cp.origin!r}")
        log_lines = _check_log_signatures(cp.origin, verifiers, note)
        if old > cp.size:
            raise Refused(400, f"old size {old} is larger than the checkpoint's size {cp.size}")
        async with self._lock:
            held_size, held_root = self.state.logs.get(cp.origin, (0, b""))
            if old != held_size:
                raise Refused(409, f"{held_size}\n", SIZE_TYPE)
            if cp.size == 0 and cp.root != EMPTY_ROOT:
                raise Refused(
                    422, "a checkpoint of size 0 must have the empty tree's root (SHA-256 of nothing)"
                )
            if held_size == cp.size and held_size and held_root != cp.root:
                log.error("witness_fork_seen", origin=cp.origin, size=cp.size)
                raise Refused(422, f"the checkpoint of size {cp.size} has another root than the one cosigned")
            if held_size and not verify_consistency(held_size, cp.size, held_root, cp.root, proof):
                log.error("witness_inconsistent_checkpoint", origin=cp.origin, held=held_size, size=cp.size)
                raise Refused(
                    422, f"the checkpoint of size {cp.size} is not consistent with size {held_size}"
                )
            if not held_size and proof:
                raise Refused(422, "the consistency proof from size 0 must be empty")
            line = self.cosigner.cosign(text)
            # The state takes the checkpoint only once it is on disk: set before, a failed save
            # (a full disk) left it served to monitors with the cosignature, which a restart
            # then forgot, and the witness could cosign a fork of it.
            logs = {**self.state.logs, cp.origin: (cp.size, cp.root)}
            notes = {**self.state.notes, cp.origin: f"{text}\n{''.join(log_lines)}{line}"}
            try:
                await anyio.to_thread.run_sync(self.state.save, logs, notes)
            except OSError as e:
                log.error("witness_state_not_saved", origin=cp.origin, size=cp.size, error=str(e))
                raise Refused(
                    503, "the witness could not record the checkpoint; nothing was cosigned"
                ) from None
            log.info("witness_cosigned", origin=cp.origin, size=cp.size)
            return line

    def checkpoint_for(self, origin_hash: str) -> str | None:
        """The latest cosigned note of the log whose origin's SHA-256 is ``origin_hash``
        (lowercase hex), for monitors; None if this witness never cosigned one for it."""
        for origin, note in self.state.notes.items():
            if hashlib.sha256(origin.encode()).hexdigest() == origin_hash:
                return note
        return None


def _check_log_signatures(origin: str, verifiers: list[NoteVerifier], note: str) -> list[str]:
    """The note's signature lines by the log's trusted keys, all verified; refuse (403) a note
    that no trusted key of the log signed, or with a signature by a trusted key that does
    not verify (tlog-witness: such a note is malformed, even when another trusted key's
    signature verifies)."""
    _, sigs = split_note(note)
    lines = []
    for v in verifiers:
        ours = [blob for name, blob in sigs if name == v.name and blob[:4] == v.key_id]
        if not ours:
            continue
        try:
            v.open(note)
        except InvalidNote as e:
            raise Refused(403, f"a signature by a key of {origin!r} does not verify: {e}") from None
        lines += [f"{_SIG_PREFIX}{v.name} {b64(blob)}\n" for blob in ours]
    if not lines:
        raise Refused(403, f"no signature by a key of {origin!r} verifies")
    return lines


async def _bounded_body(request: Request) -> bytes:
    """The request's body, refused (400) as soon as it is past ``_MAX_BODY`` bytes, by its
    ``Content-Length`` or as it arrives (chunked). ``request.body()`` read it whole first:
    anyone could send one POST of gigabytes, all of it held in the witness's memory (2 GB
    in the 10 s a request may take, over loopback), and a few at once ended the witness."""
    too_large = Refused(400, f"the body is larger than {_MAX_BODY} bytes")
    size = request.headers.get("content-length", "")
    if size.isascii() and size.isdigit() and int(size) > _MAX_BODY:
        raise too_large
    chunks: list[bytes] = []
    got = 0
    async for chunk in request.stream():
        got += len(chunk)
        if got > _MAX_BODY:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def witness_app(witness: Witness) -> Starlette:
    """``POST /add-checkpoint``, ``GET /<origin hash>/checkpoint`` and ``GET /`` (the witness's
    vkey and the logs it witnesses)."""

    async def add_checkpoint(request: Request) -> Response:
        try:
            line = await witness.add_checkpoint(await _bounded_body(request))
        except ClientDisconnect:
            # The client left (or the server's deadline closed it) before its body was whole:
            # nothing was done. Uncaught, each was an ERROR with a traceback, at anyone's will.
            log.info("witness_request_incomplete")
            return PlainTextResponse("the request's body did not arrive whole; nothing was done\n", 400)
        except Refused as e:
            # The media type exactly as given: clients compare text/x.tlog.size as a whole
            # string, and Starlette would add "; charset=utf-8" to a text/ type.
            return Response(e.message, status_code=e.status, headers={"Content-Type": e.media_type})
        return PlainTextResponse(line)

    async def info(_: Request) -> Response:
        logs = "".join(f"log {o}\n" for o in sorted(witness.logs))
        return PlainTextResponse(f"witness {witness.cosigner.vkey}\n{logs}")

    async def checkpoint(request: Request) -> Response:
        note = witness.checkpoint_for(request.path_params["origin_hash"])
        if note is None:
            return PlainTextResponse(
                "this witness has cosigned no checkpoint of a log with that origin hash\n",
                status_code=404,
                headers={"Cache-Control": "no-cache"},
            )
        return PlainTextResponse(note, headers={"Cache-Control": "no-cache"})

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route("/{origin_hash}/checkpoint", checkpoint, methods=["GET"]),
            Route("/", info, methods=["GET"]),
        ]
    )
