"""Checkpoint key rotation: the old key vouches for the new one, in the log.

A rotation is a :class:`~rollwatch.events.CheckpointKeyRotated` event carrying a
signed note whose text is::

    rollwatch key rotation
    origin <the log's origin>
    old <old vkey>
    new <new vkey>

signed by the old key (it vouches for the new one) and by the new key (it is held
by whoever made the rotation). Checkpoints before the event are signed by the old
key, checkpoints after it by the new one. Read backwards from the key a verifier
trusts now, every link is signed by a key already trusted, so the whole chain is as
trustworthy as that key: someone who holds the database but not the key cannot add
a link (the new key's signature is missing) or splice in their own key (the old
key's signature is missing).

:class:`KeyRing` is the chain as the log records it; ``rollwatch key rotate``
(:func:`rotate_key`) appends a link; ``rollwatch audit`` follows the chain from the
key it pinned to the key the service serves (``GET /public/key/rotations``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from rollwatch.abc import EventStore
from rollwatch.errors import ConcurrencyConflict, ConfigError, IntegrityError, InvalidNote
from rollwatch.events import CHECKPOINT_STREAM, CheckpointKeyRotated, Recorded
from rollwatch.integrity.checkpoint import NoteSigner, NoteVerifier, split_note
from rollwatch.log import get_logger

log = get_logger(__name__)

HEADER = "rollwatch key rotation"


def statement(origin: str, old_vkey: str, new_vkey: str) -> str:
    """The text both keys sign."""
    return f"{HEADER}\norigin {origin}\nold {old_vkey}\nnew {new_vkey}\n"


def sign_rotation(origin: str, old: NoteSigner, new: NoteSigner) -> str:
    """The rotation note: the statement, signed by ``old`` then by ``new``."""
    text = statement(origin, old.vkey, new.vkey)
    signed_old = old.sign(text)
    signed_new = new.sign(text)
    # Both signature lines under one text (the signed-note format allows several).
    return signed_old + signed_new[len(text) + 1 :]


@dataclass(frozen=True, slots=True)
class Rotation:
    """One verified link: from ``old`` to ``new``, recorded at ``seq``."""

    seq: int
    origin: str
    old: NoteVerifier
    new: NoteVerifier
    note: str


def open_rotation(note: str, *, seq: int = 0) -> Rotation:
    """The rotation in ``note`` once both its signatures verify; :class:`InvalidNote` otherwise."""
    text, _ = split_note(note)
    lines = text[:-1].split("\n") if text.endswith("\n") else []
    if (
        len(lines) != 4
        or lines[0] != HEADER
        or not lines[1].startswith("origin ")
        or not lines[2].startswith("old ")
        or not lines[3].startswith("new ")
    ):
        raise InvalidNote("not a key rotation statement (header, origin, old and new key lines)")
    try:
        old = NoteVerifier.from_vkey(lines[2][4:])
        new = NoteVerifier.from_vkey(lines[3][4:])
    except ValueError as e:
        raise InvalidNote(f"the rotation names a malformed key: {e}") from None
    if old.vkey == new.vkey:
        raise InvalidNote("the rotation's old and new keys are the same")
    old.open(note)  # the old key vouches for the new one
    new.open(note)  # and the new one is held
    return Rotation(seq=seq, origin=lines[1][7:], old=old, new=new, note=note)


@dataclass
class KeyRing:
    """Which key signs checkpoints at each point of the log, from its rotation events.

    ``start`` is the key in force before the first rotation (the first rotation's old
    key, or the only key when there is none). :meth:`add` checks that each new link
    starts from the key in force and that both its signatures verify.
    """

    start: NoteVerifier | None = None
    rotations: list[Rotation] = field(default_factory=list)
    seen: int = 0
    """The log position up to which rotation events were read."""

    @property
    def current(self) -> NoteVerifier | None:
        """The key in force now."""
        return self.rotations[-1].new if self.rotations else self.start

    def keys(self) -> list[NoteVerifier]:
        """Every key of the chain, oldest first."""
        return [k for k in [self.start, *(r.new for r in self.rotations)] if k is not None]

    def at(self, seq: int) -> NoteVerifier | None:
        """The key in force for an event at ``seq`` (a checkpoint signed at that point)."""
        key = self.start
        for r in self.rotations:
            if r.seq < seq:
                key = r.new
        return key

    def add(self, seq: int, data: dict[str, Any], origin: str | None = None) -> Rotation:
        """Take the rotation event at ``seq``; :class:`IntegrityError` naming it if it is not a valid link."""
        note, old_key, new_key = data.get("note"), data.get("old_key"), data.get("new_key")
        if not isinstance(note, str) or not isinstance(old_key, str) or not isinstance(new_key, str):
            raise IntegrityError(seq, "this key rotation lacks its note, old key or new key")
        try:
            r = open_rotation(note, seq=seq)
        except InvalidNote as e:
            raise IntegrityError(seq, f"its key rotation does not verify: {e}") from None
        if (r.old.vkey, r.new.vkey) != (old_key, new_key):
            raise IntegrityError(seq, "its key rotation's note names other keys than the event records")
        if origin is not None and r.origin != origin:
            raise IntegrityError(seq, f"its key rotation is for log {r.origin!r}, not {origin!r}")
        current = self.current
        if current is not None and current.vkey != r.old.vkey:
            raise IntegrityError(
                seq,
                f"its key rotation starts from {r.old.vkey}, but the key in force is {current.vkey}: "
                "a link of the chain is missing or was forged",
            )
        if self.start is None:
            self.start = r.old
        self.rotations.append(r)
        return r

    def signer_of(self, note: str) -> NoteVerifier | None:
        """The key of the chain whose signature ``note`` carries (not yet verified), if any."""
        try:
            _, sigs = split_note(note)
        except InvalidNote:
            return None
        for key in reversed(self.keys()):
            if any(name == key.name and blob[:4] == key.key_id for name, blob in sigs):
                return key
        return None

    def check_holds(self, vkey: str) -> None:
        """The key at hand must be a key of the chain; IntegrityError naming the last link otherwise.

        Any key of the chain anchors it: the links after it are signed by it, the links
        before it are vouched for backwards. (A daemon still holding the key a rotation
        retired is behind, not tampered with.)
        """
        if self.rotations and vkey not in {k.vkey for k in self.keys()}:
            last = self.rotations[-1]
            raise IntegrityError(
                last.seq,
                f"the log's key rotations lead to {last.new.vkey}, and the key at hand ({vkey}) is none of "
                "their keys: the key was replaced without a rotation signed by the old one",
            )

    async def refresh(self, store: EventStore, origin: str | None = None) -> list[Rotation]:
        """Read rotation events appended since the last call; return the new links.

        The head is taken first and the read stops there: a rotation appended while
        this reads is found by the next call, never skipped.
        """
        head = await store.head()
        new: list[Rotation] = []
        async for page in store.read_batches(
            after=self.seen,
            until=head,
            stream=CHECKPOINT_STREAM,
            types=[CheckpointKeyRotated.TYPE],
            batch=100,
        ):
            for ev in page:
                new.append(self.add(ev.seq, ev.data, origin))
        self.seen = max(self.seen, head)
        return new

    @classmethod
    async def load(cls, store: EventStore, start: NoteVerifier | None, origin: str | None = None) -> KeyRing:
        """The chain recorded in ``store``; ``start`` is the key in force when the log has no rotation."""
        ring = cls()
        await ring.refresh(store, origin)
        if ring.start is None:
            ring.start = start
        return ring

    @classmethod
    def from_events(cls, events: Iterable[Recorded], start: NoteVerifier | None) -> KeyRing:
        """The chain from rotation events already read (in log order)."""
        ring = cls()
        for ev in events:
            ring.add(ev.seq, ev.data)
        if ring.start is None:
            ring.start = start
        return ring


# --- the key files of a rotation -------------------------------------------------------------


def next_key_path(key_file: Path) -> Path:
    """Where a rotation keeps the new key until it is in place."""
    return key_file.with_name(key_file.name + ".next")


def retired_key_path(key_file: Path, old: NoteSigner) -> Path:
    """Where a rotation keeps the old key (never deleted: it signed the log's past)."""
    return key_file.with_name(f"{key_file.name}.retired-{old.key_id.hex()}")


def _install(key_file: Path, old: NoteSigner) -> None:
    """Move the old key aside and the new one into place (both renames within one folder)."""
    nxt = next_key_path(key_file)
    if key_file.exists():
        os.replace(key_file, retired_key_path(key_file, old))
    os.replace(nxt, key_file)
    fd = os.open(key_file.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _last_rotation_to(store: EventStore) -> str | None:
    """The key the log's last rotation names (None: no rotation)."""
    last = None
    async for page in store.read_batches(stream=CHECKPOINT_STREAM, types=[CheckpointKeyRotated.TYPE]):
        last = page[-1]
    key = last.data.get("new_key") if last is not None else None
    return key if isinstance(key, str) else None


async def key_at_hand(store: EventStore, key_file: Path, name: str) -> NoteSigner | None:
    """The key that signs for this log now, never creating one: the key file's, or the key a
    rotation left in ``<key>.next`` when the log's last rotation names it (a rotation that
    stopped before moving the files)."""
    from rollwatch.integrity.keys import existing_signer, load_signer

    signer = await anyio.to_thread.run_sync(existing_signer, key_file, name)
    nxt = next_key_path(key_file)
    if not await anyio.Path(nxt).exists():
        return signer
    waiting = await anyio.to_thread.run_sync(lambda: load_signer(nxt, name, create=False))
    if await _last_rotation_to(store) == waiting.vkey:
        return waiting
    return signer


async def finish_rotation(store: EventStore, key_file: Path, name: str) -> None:
    """At start: finish a rotation that stopped after its event was appended.

    When the log's last rotation names the key waiting in ``<key>.next`` and the key
    file still holds the old key, the files are moved as the rotation would have.
    (Whether the rotation itself is valid is the scrub's and the signer's to check.)
    """
    from rollwatch.integrity.keys import credential_path, load_signer

    nxt = next_key_path(key_file)
    if credential_path() is not None or not await anyio.Path(nxt).exists():
        return
    waiting = await anyio.to_thread.run_sync(lambda: load_signer(nxt, name, create=False))
    if await _last_rotation_to(store) != waiting.vkey:
        return
    if await anyio.Path(key_file).exists():
        old = await anyio.to_thread.run_sync(lambda: load_signer(key_file, name, create=False))
        await anyio.to_thread.run_sync(_install, key_file, old)
    else:
        await anyio.to_thread.run_sync(os.replace, nxt, key_file)
    log.warning("checkpoint_key_rotation_finished", key=waiting.vkey, key_file=str(key_file))


async def rotate_key(
    store: EventStore,
    key_file: Path,
    name: str,
    origin: str,
    *,
    new_key_file: Path | None = None,
    node: str = "",
) -> tuple[NoteSigner, NoteSigner, Recorded]:
    """Rotate the checkpoint key: append the rotation, then put the new key in place.

    The new key is ``new_key_file`` (one the operator made) or a new one, written to
    ``<key>.next``. In this order, so a crash at any point
    leaves a state the next start finishes or ignores: the new key is written (and
    synced), the event appended, then the files renamed (old key kept as
    ``<key>.retired-<key id>``). With the key handed over by systemd
    (``$CREDENTIALS_DIRECTORY``) no file is moved: replace the credential.
    Raises :class:`ConfigError` when there is no key to rotate from, or the log's
    chain does not end at it.
    """
    from rollwatch.integrity.keys import credential_path, load_signer, parse_private_key, write_new_key

    old = await anyio.to_thread.run_sync(lambda: load_signer(key_file, name, create=False))
    ring = await KeyRing.load(store, old.verifier(), origin)
    if ring.current is not None and ring.current.vkey != old.vkey:
        raise ConfigError(
            str(key_file),
            [
                f"the log's checkpoint key is {ring.current.vkey}, not this one ({old.vkey}): nothing to rotate from"
            ],
        )
    nxt = next_key_path(key_file)
    given = None
    if new_key_file is not None:
        data = await anyio.Path(new_key_file).read_bytes()
        given = parse_private_key(data, str(new_key_file))
    in_files = credential_path() is None
    if in_files:
        await anyio.Path(nxt).unlink(missing_ok=True)
        new = NoteSigner(name, await anyio.to_thread.run_sync(write_new_key, nxt, given))
    elif given is not None:
        new = NoteSigner(name, given)
    else:
        raise ConfigError(
            "$CREDENTIALS_DIRECTORY",
            [
                "the key is handed over by systemd: make the new key, give it with --new-key, then replace the credential"
            ],
        )
    if new.vkey == old.vkey:
        raise ConfigError(str(new_key_file), ["the new key is the key in force already"])
    note = sign_rotation(origin, old, new)
    event = CheckpointKeyRotated(old_key=old.vkey, new_key=new.vkey, note=note, node=node)
    for attempt in range(10):
        # Appended after the stream's version as read: a checkpoint signed meanwhile by
        # the old key lands before the rotation, never after it.
        version = await store.stream_version(CHECKPOINT_STREAM)
        try:
            [rec] = await store.append(CHECKPOINT_STREAM, [event], expected_version=version)
            break
        except ConcurrencyConflict:
            if attempt == 9:
                raise
    if in_files:
        await anyio.to_thread.run_sync(_install, key_file, old)
    log.info("checkpoint_key_rotated", seq=rec.seq, old_key=old.vkey, new_key=new.vkey)
    return old, new, rec
