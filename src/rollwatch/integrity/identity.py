"""Which log derived state belongs to: the chain hash of the log's event 1.

The Merkle tree records the hash of event 1 of the log it was built from. State
found next to a log but recording another log's event 1 (a folder reused for
another database, a test run from a folder holding another log's ``var/``) is not
evidence about this log: the daemon sets it aside (renamed, never deleted) with one
WARNING and rebuilds, and ``rollwatch verify`` leaves it out. State that records
this log's event 1 and disagrees with the log is tampering, and is reported as such.

Event 1 is only a row of the file, though: someone holding it can edit that row (or
put another log in its place, a stale ``-wal`` of another database beside it does
that) and so make this log's own tree and witness file look like another log's, to
be set aside unread (``rollwatch verify`` then passed a log replaced wholesale).
State that carries a checkpoint signed by this deployment's key (the key file, the
systemd credential, or a key a rotation retired) is this deployment's whatever event
1 says: it is never set aside, and a log that disagrees with it is tampering, named
at seq 1 by the usual checks.

A log replaced wholesale (a new event 1) under a key that has signed before still
meets the signer's rule: no checkpoint of it exists anywhere, so nothing is signed
(see :class:`rollwatch.integrity.checkpointer.Checkpointer`).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from rollwatch.abc import EventStore
from rollwatch.errors import InvalidNote, UnfitFile
from rollwatch.integrity.checkpoint import (
    NoteSigner,
    NoteVerifier,
    read_small_file,
    read_witness_file,
    split_note,
)
from rollwatch.integrity.tree import read_tree_file, recorded_first_hash
from rollwatch.log import get_logger

if TYPE_CHECKING:
    from rollwatch.config import IntegrityConfig

log = get_logger(__name__)


async def first_hash(store: EventStore) -> str | None:
    """The chain hash of the log's event 1 (None while the log is empty or lacks it)."""
    async for page in store.read_batches(until=1, batch=1):
        return page[0].hash if page[0].seq == 1 else None
    return None


async def foreign_tree(
    store: EventStore, tree: Path, witness: Path | None = None, key_file: Path | None = None
) -> str | None:
    """The event-1 hash ``tree`` records when it is another log's (else None).

    Never another log's when the tree or ``witness`` holds a checkpoint signed by the key
    of ``key_file`` (or one it retired): see the module's docstring."""
    recorded = await anyio.to_thread.run_sync(recorded_first_hash, tree)
    if recorded is None:
        return None
    ours = await first_hash(store)
    if ours is None or ours == recorded:
        return None
    if key_file is not None and await anyio.to_thread.run_sync(signed_here, tree, witness, key_file):
        log.warning(
            "state_of_this_log_kept",
            tree=str(tree),
            its_log_first_hash=recorded,
            this_log_first_hash=ours,
            reason="it holds a checkpoint signed by this log's key: event 1 was changed or the log replaced",
        )
        return None
    return recorded


def _public_keys(key_file: Path) -> list[bytes]:
    """The public halves of this deployment's keys: the credential or key file, and retired ones."""
    from rollwatch.errors import ConfigError
    from rollwatch.integrity.keys import credential_path, parse_private_key, read_key_file

    files = [p for p in (credential_path(), key_file) if p is not None and p.is_file()]
    if key_file.parent.is_dir():
        files += sorted(key_file.parent.glob(f"{key_file.name}.retired-*"))
    keys = []
    for f in files:
        try:
            private = parse_private_key(read_key_file(f), str(f))
        except (OSError, ConfigError):
            continue
        keys.append(NoteSigner("k", private).public_key)
    return keys


ORIGIN_MAX = 4096
"""The largest origin file read (a name is a line)."""


def _read_origin_file(path: Path) -> str | None:
    """The origin kept in ``path`` (None when empty); ConfigError naming the file when it holds
    no name: bytes that are not UTF-8 raised UnicodeDecodeError, a traceback from ``verify``
    and ``serve``. Opened without blocking, as the witness file is."""
    from rollwatch.errors import ConfigError

    try:
        data = read_small_file(path, ORIGIN_MAX)
    except FileNotFoundError:
        return None
    except UnfitFile as e:
        raise ConfigError(str(path), [f"the log's origin file holds no name: {e}"]) from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    if text is None or "\n" in text:
        raise ConfigError(
            str(path),
            [
                "the log's origin file holds no name (not one line of UTF-8 text): it was damaged or edited; "
                "put back the name the log's checkpoints carry, or set integrity.origin"
            ],
        )
    return text or None


def _notes(tree: Path, witness: Path | None) -> list[str]:
    """The witness file's note and the latest checkpoint notes the tree absorbed."""
    notes = []
    if witness is not None:
        with contextlib.suppress(OSError, InvalidNote):
            if (text := read_witness_file(witness)) is not None:
                notes.append(text)
    rows = read_tree_file(tree, "SELECT note FROM tree_checkpoints ORDER BY seq DESC LIMIT 3")
    return notes + [str(r[0]) for r in rows]


def signed_here(tree: Path, witness: Path | None, key_file: Path) -> bool:
    """Whether the tree file or the witness file holds a note signed by one of this
    deployment's keys (blocking). Only a valid signature counts: the key's name is taken
    from the note (the origin may be one of the files set aside), the key from here."""
    keys = _public_keys(key_file)
    if not keys:
        return False
    for note in _notes(tree, witness):
        try:
            _, sigs = split_note(note)
        except InvalidNote:
            continue
        for name, _blob in sigs:
            for key in keys:
                try:
                    NoteVerifier(name, key).open(note)
                except (InvalidNote, ValueError):
                    continue
                return True
    return False


def _set_aside(paths: list[Path], tag: str) -> list[str]:
    moved = []
    for p in paths:
        if p.exists():
            target = p.with_name(f"{p.name}.of-log-{tag}")
            p.replace(target)
            moved.append(str(target))
    return moved


async def set_aside_foreign_state(
    store: EventStore,
    tree: Path,
    others: list[Path],
    *,
    witness: Path | None = None,
    key_file: Path | None = None,
) -> bool:
    """Move the tree and ``others`` (the witness file, the origin file) away when the tree is another log's; True if it was.

    Call before the tree is opened. Logs one WARNING naming both logs and where the
    files went. ``witness`` and ``key_file``: see :func:`foreign_tree`.
    """
    recorded = await foreign_tree(store, tree, witness, key_file)
    if recorded is None:
        return False
    paths = [tree, tree.with_name(tree.name + "-wal"), tree.with_name(tree.name + "-shm"), *others]
    moved = await anyio.to_thread.run_sync(_set_aside, paths, recorded[:16])
    log.warning(
        "state_of_another_log_set_aside",
        tree=str(tree),
        its_log_first_hash=recorded,
        this_log_first_hash=await first_hash(store),
        moved_to=moved,
        action="rebuilding the tree from this log",
    )
    return True


ORIGIN_FILE = "origin"


def _fresh_origin() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "rollwatch"
    return f"{host}/rollwatch-{uuid.uuid4().hex[:12]}"


async def _origin_in_log(store: EventStore) -> str | None:
    """The origin of the latest checkpoint the log records (a deployment older than the origin file)."""
    from rollwatch.errors import InvalidNote
    from rollwatch.events import CheckpointSigned
    from rollwatch.integrity.checkpoint import Checkpoint, split_note

    last: str | None = None
    async for page in store.read_batches(types=[CheckpointSigned.TYPE], batch=1000):
        # A row that does not parse (an edit: the integrity check names it) gives no origin.
        for rec in reversed(page):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                note = json.loads(rec.data_json).get("note")
                if isinstance(note, str):
                    last = note
                    break
    if last is None:
        return None
    try:
        return Checkpoint.parse(split_note(last)[0]).origin
    except InvalidNote:
        return None


def _database_origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    name = f"{parts.hostname or 'localhost'}/{parts.path.strip('/') or 'postgres'}/rollwatch"
    return re.sub(r"[^A-Za-z0-9./_-]", "-", name)


async def resolve_origin(
    config: IntegrityConfig,
    state_dir: Path,
    store: EventStore,
    *,
    create: bool = True,
    store_url: str | None = None,
) -> IntegrityConfig:
    """``config`` with the origin this log is signed under.

    A configured ``origin`` is used as it is. Otherwise the origin is the one kept in
    ``<state dir>/origin``; a state without one adopts the origin of the log's latest
    checkpoint, or else (a fresh log) gets ``HOST/rollwatch-RANDOM``, unique to this
    log, and keeps it there (with ``create``): it never changes afterwards, so
    deployments left at defaults no longer share the name ``rollwatch.example/log``.
    A shared log (PostgreSQL, ``store_url``) is named by its checkpoints, else by
    its database (``HOST/DATABASE/rollwatch``), the same for every node.
    """
    if "origin" in config.model_fields_set:
        return config
    if store.shared and store_url is not None:
        # Every node of a shared log must sign under one name, whichever leads: the
        # log's own (its checkpoints', else one named after its database), not a
        # name of each node's state.
        shared = await _origin_in_log(store) or _database_origin(store_url)
        return config.model_copy(update={"origin": shared})
    path = state_dir / ORIGIN_FILE
    origin = await anyio.to_thread.run_sync(_read_origin_file, path)
    if origin is None:
        origin = await _origin_in_log(store)
        if origin is None and not create:
            return config
        origin = origin or _fresh_origin()
        if create:
            await anyio.Path(state_dir).mkdir(parents=True, exist_ok=True)
            await anyio.Path(path).write_text(origin + "\n", encoding="utf-8")
            log.info("log_origin_chosen", origin=origin, kept_in=str(path))
    return config.model_copy(update={"origin": origin})
