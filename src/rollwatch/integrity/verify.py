"""The operator's check of the tree and of every checkpoint in the log (``rollwatch verify``).

Reads the log twice, in batches (memory stays flat whatever its size): first the
``CheckpointSigned`` events, then every event, hashing the leaves into a
:class:`CompactRange`. It then knows, for each checkpoint, the root the log derives
*now* for the size it signed, and checks:

* the note is signed by this service's key (when the key is at hand) and says the
  size and root its event records;
* it signed the events before it (its size is below its own ``seq``);
* its root is the log's root at that size: a single event changed, even with the
  hash chain recomputed after it, fails every checkpoint signed since, and the
  error names the span between the last checkpoint that still holds and the first
  that does not;
* consecutive checkpoints are linked by a consistency proof from the stored tree,
  and the stored tree holds, leaf for leaf, what the log holds: an event changed
  after the tree absorbed it is named exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson

from rollwatch.abc import EventStore
from rollwatch.errors import IntegrityError, InvalidNote, UnfitFile, UnknownEventType, UsageError
from rollwatch.events import (
    GENESIS,
    CheckpointKeyRotated,
    CheckpointSigned,
    Recorded,
    canonical_bytes,
    canonical_json_fast,
    decode,
    event_class,
)
from rollwatch.integrity.checkpoint import NoteVerifier, b64, read_small_file, read_witness_file, unb64
from rollwatch.integrity.health import TREE_EDITED
from rollwatch.integrity.merkle import EMPTY_ROOT, HASH_SIZE, CompactRange, leaf_hash, verify_consistency
from rollwatch.integrity.rotation import KeyRing
from rollwatch.integrity.tree import MerkleTree, checkpoint_fields
from rollwatch.log import get_logger

log = get_logger(__name__)

if TYPE_CHECKING:
    from rollwatch.config import IntegrityConfig, StoreConfig


@dataclass(frozen=True, slots=True)
class TreeReport:
    """What :func:`check_log_tree` checked."""

    events: int
    root: str
    """The log's tree head now, base64."""
    checkpoints: int
    signatures: int
    """Checkpoints whose signature was verified (0 when no key was at hand)."""
    tree_leaves: int
    """Leaves compared with the stored tree."""
    head_hash: str = ""
    """The last event's chain hash, when the chain was checked (``chain=True``)."""


@dataclass(frozen=True, slots=True)
class _Claim:
    seq: int
    size: int
    root: bytes
    where: str = ""
    """Empty for the log's own CheckpointSigned events; else where the checkpoint was kept."""


@dataclass(frozen=True, slots=True)
class KeptCheckpoint:
    """A signed checkpoint kept outside the log: the witness file, or one someone saved."""

    where: str
    note: str


def _kept_claim(kept: KeptCheckpoint, ring: KeyRing) -> _Claim:
    """The size and root a kept note signs; an unreadable or wrongly signed one is tampering.

    It may be signed by any key of the log's chain (one kept before a rotation is
    signed by the key of its day).
    """
    from rollwatch.integrity.checkpoint import Checkpoint, split_note

    verifier = ring.signer_of(kept.note) or ring.current
    try:
        cp = (
            verifier.open_checkpoint(kept.note)
            if verifier is not None
            else Checkpoint.parse(split_note(kept.note)[0])
        )
    except InvalidNote as e:
        raise IntegrityError(0, f"{kept.where} does not hold a valid checkpoint of this log: {e}") from None
    return _Claim(0, cp.size, cp.root, kept.where)


def _claim(seq: int, data: dict[str, object], verifier: NoteVerifier | None) -> tuple[_Claim, bool]:
    size, root_s, note = data.get("size"), data.get("root"), data.get("note")
    if not isinstance(size, int) or not isinstance(root_s, str) or not isinstance(note, str):
        raise IntegrityError(seq, "this CheckpointSigned event lacks its size, root or note")
    try:
        root = unb64(root_s, "its root")
        cp = verifier.open_checkpoint(note) if verifier is not None else None
    except InvalidNote as e:
        raise IntegrityError(seq, f"its checkpoint is not valid: {e}") from None
    if cp is not None and (cp.size, cp.root) != (size, root):
        raise IntegrityError(
            seq, f"its note signs size {cp.size}, root {b64(cp.root)}, not the size and root it records"
        )
    if not 0 <= size < seq:
        raise IntegrityError(seq, f"it signs a tree of {size} events but {seq - 1} precede it")
    return _Claim(seq, size, root), cp is not None


async def check_log_tree(
    store: EventStore,
    *,
    vkey: str | None = None,
    tree: MerkleTree | None = None,
    progress: Callable[[int], None] | None = None,
    chain: bool = False,
    pace: Callable[[], Awaitable[None]] | None = None,
    kept: Sequence[KeptCheckpoint] = (),
    content: bool = True,
    seen: Callable[[list[Recorded]], None] | None = None,
) -> TreeReport:
    """Check every checkpoint against the log (and ``tree`` against the log); raise IntegrityError naming the seq.

    ``chain``: check every event's chain hash in the same pass, and (``content``) its
    data (:func:`foreign_data`). ``kept``: checkpoints
    kept outside the log (the witness file, one a user saved), each of which the log
    must still contain: a log now shorter than one, or whose first ``size`` events
    hash to another root (a fork, a rewrite), fails. ``pace`` is awaited after each
    page (the scrub yields the cores there). ``seen`` is given each page once checked
    (the scrub takes the subscriber events from it).
    """
    start = NoteVerifier.from_vkey(vkey) if vkey else None
    claims: list[_Claim] = []
    signatures = 0
    found: list[Recorded] = []
    # A checkpoint or rotation row whose data is no JSON object is named when the pass below
    # reaches its seq (an earlier finding first): raised here, as JSONDecodeError, it failed
    # every scrub pass as one that could not run (`/healthz` ok, every other edit unseen).
    unreadable: IntegrityError | None = None
    # The stored tree is read before the log: everything it holds is then in the log as
    # read below (the log only grows), while a daemon's tree worker goes on absorbing. Read
    # after the log's checkpoints, a checkpoint signed and absorbed in between (another
    # node's, or this daemon's own) was "the Merkle tree's record ... is not in the log":
    # the scrub called the log tampered and the daemon went read-only (CI, a cluster test).
    stored, tree_cps = await tree.checkpoint_rows() if tree is not None else (0, [])
    async for page in store.read_batches(
        types=[CheckpointSigned.TYPE, CheckpointKeyRotated.TYPE], batch=1000
    ):
        for ev in page:
            if (why := _not_an_object(ev)) is None:
                found.append(ev)
            elif unreadable is None:
                unreadable = IntegrityError(ev.seq, why)
    # Which key signs at each point: the chain of rotations, which must lead to the
    # key at hand (each link is signed by both its keys; see rotation.py).
    ring = KeyRing.from_events((ev for ev in found if ev.type == CheckpointKeyRotated.TYPE), start)
    if vkey:
        ring.check_holds(vkey)
    recorded = {ev.seq: checkpoint_fields(ev.data_json) for ev in found if ev.type == CheckpointSigned.TYPE}
    for ev in found:
        if ev.type == CheckpointSigned.TYPE:
            claim, signed = _claim(ev.seq, ev.data, ring.at(ev.seq))
            claims.append(claim)
            signatures += signed
    del found
    outside = [_kept_claim(k, ring) for k in kept]
    by_size: dict[int, list[_Claim]] = {}
    for c in [*claims, *outside]:
        by_size.setdefault(c.size, []).append(c)

    cr = CompactRange()
    holds = 0  # the largest signed size found to hold so far
    compared = 0

    def check_root(size: int, root: bytes) -> None:
        nonlocal holds
        for c in by_size.get(size, ()):
            if c.root != root and c.where:
                raise IntegrityError(
                    holds + 1,
                    f"{c.where} signed root {b64(c.root)} for the first {size} events, but the log's first "
                    f"{size} events now hash to {b64(root)}: the log was forked or rewritten at or after seq "
                    f"{holds + 1} (the last checkpoint that still holds signs {holds} events)",
                )
            if c.root != root:
                raise IntegrityError(
                    c.seq,
                    f"its checkpoint signed root {b64(c.root)} for the first {size} events, but they now hash to "
                    f"{b64(root)}: an event between seq {holds + 1} and {size} was changed after it was signed",
                )
        if size in by_size:
            holds = max(holds, size)

    check_root(0, EMPTY_ROOT)
    prev = GENESIS
    async for page in store.read_batches(batch=5000):
        # In this order, so that each fault is named for what it is: a deleted row as
        # missing (not as the next event's wrong hash), a rewrite as a changed event.
        for i, ev in enumerate(page, start=cr.size + 1):
            if ev.seq != i:
                raise IntegrityError(i, f"event {i} is missing (the next stored is {ev.seq})")
        leaves, prev, bad, odd = await anyio.to_thread.run_sync(
            _leaf_hashes, page, prev if chain else None, content
        )
        if page[0].seq <= stored and tree is not None:
            absorbed = await tree.leaf_blob(page[0].seq - 1, page[-1].seq)
            n = len(absorbed) // HASH_SIZE
            if b"".join(leaves[:n]) != absorbed:
                i = next(i for i in range(n) if leaves[i] != absorbed[i * HASH_SIZE : (i + 1) * HASH_SIZE])
                raise IntegrityError(
                    page[i].seq,
                    "its content differs from what the Merkle tree absorbed when it was appended: "
                    "the event was changed since",
                )
            compared += n
        if bad is not None and (odd is None or bad <= odd.seq):
            raise IntegrityError(bad, "its hash does not match its content and the previous hash")
        if odd is not None:
            raise odd
        if unreadable is not None and unreadable.seq <= page[-1].seq:
            raise unreadable
        for leaf in leaves:
            cr.append(leaf)
            if cr.size in by_size:
                check_root(cr.size, cr.root())
        if progress is not None:
            progress(page[-1].seq)
        if seen is not None:
            seen(page)
        if pace is not None:
            await pace()
    for c in claims:
        if c.size > cr.size:
            raise IntegrityError(c.seq, f"it signs {c.size} events but the log holds {cr.size}")
    for c in outside:
        if c.size > cr.size:
            raise IntegrityError(
                cr.size + 1,
                f"{c.where} signed a tree of {c.size} events but the log holds only {cr.size}: events were removed",
            )

    if tree is not None:
        await _check_stored_tree(tree, stored, tree_cps, cr, claims, recorded)
    return TreeReport(
        events=cr.size,
        root=b64(cr.root()),
        checkpoints=len(claims),
        signatures=signatures,
        tree_leaves=compared,
        head_hash=prev.hex() if chain and cr.size else "",
    )


def _stored_types_ok(ev: Recorded) -> bool:
    """Whether every column of ``ev``'s row holds the type rollwatch writes there."""
    return (
        type(ev.at) is str
        and type(ev.id) is str
        and type(ev.stream) is str
        and type(ev.type) is str
        and type(ev.data_json) is str
        and type(ev.hash) is str
        and type(ev.schema) is int
    )


def _readable(ev: Recorded) -> Recorded:
    """``ev``, its BLOBs (or numbers) read as the text they spell, so that its leaf and chain
    hash are computed as for any row (:func:`foreign_data` names the row itself)."""
    if _stored_types_ok(ev):
        return ev

    def text(v: object) -> str:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    return ev._replace(
        at=text(ev.at),
        id=text(ev.id),
        stream=text(ev.stream),
        type=text(ev.type),
        data_json=text(ev.data_json),
        hash=text(ev.hash),
    )


def _not_an_object(ev: Recorded) -> str | None:
    """Why ``ev``'s data is no JSON object (what every checkpoint and rotation is), or None."""
    try:
        data = ev.data
    except RecursionError:
        return "its data is JSON nested deeper than a parser can read: rollwatch never writes such a row"
    except ValueError as e:
        return f"its data is not valid JSON ({e}): rollwatch never writes such a row"
    if not isinstance(data, dict):
        return f"its data is a JSON {type(data).__name__}, not an object: rollwatch never writes such a row"
    return None


def _leaf_hashes(
    page: list[Recorded], prev: bytes | None, content: bool = True
) -> tuple[list[bytes], bytes, int | None, IntegrityError | None]:
    """The leaf hash of every event, and (given the hash before the page) the chain check
    and the content check: (leaves, the last hash, the first seq whose chain hash is wrong
    or None, the first event no rollwatch wrote or None; see :func:`foreign_data`)."""
    if prev is None:
        return [leaf_hash(_readable(ev).canonical()) for ev in page], b"", None, None
    leaves: list[bytes] = []
    add = leaves.append
    sha256 = hashlib.sha256
    bad = None
    odd = None
    for ev in page:
        # Every scrub pass and verify run this for each event: the row's columns taken as they
        # are where each holds the type rollwatch writes (see _readable), and the chain hash
        # (events.chain_hash) computed without first joining its two parts.
        seq, id_, stream, _, type_, schema, at, data_json, hash_ = ev
        if (
            type(at) is str
            and type(id_) is str
            and type(stream) is str
            and type(type_) is str
            and type(data_json) is str
            and type(hash_) is str
            and type(schema) is int
        ):
            canonical = canonical_bytes(
                seq=seq, id=id_, stream=stream, type=type_, schema=schema, at=at, data_json=data_json
            )
        else:
            row = _readable(ev)
            canonical, hash_ = row.canonical(), row.hash
        add(leaf_hash(canonical))
        if bad is None:
            h = sha256(prev)
            h.update(canonical)
            if h.hexdigest() == hash_:
                prev = h.digest()
            else:
                bad = seq
        if content and odd is None and (why := foreign_data(ev)) is not None:
            odd = IntegrityError(seq, why)
    return leaves, prev, bad, odd


SPLIT_ABOVE = 20_000
"""Events above which the check at start (:func:`rollwatch.integrity.scrub.scrub_pass`) and
``verify`` check the content in a second process beside the hashing. Below, one process
does both: a second interpreter's start and imports (about 0.25 s of CPU) cost more than
the content check it would take over (about 15 µs an event)."""


async def content_and_versions(store: EventStore) -> int:
    """Every event's content (:func:`content_pass`), then what no hash covers (the stream
    versions, SQLite's index: :meth:`EventStore.verify_versions`) up to the same event; the
    events read. Raises :class:`IntegrityError` naming the first finding."""
    events = await content_pass(store)
    await store.verify_versions(events)
    return events


async def content_pass(store: EventStore) -> int:
    """Every event's data checked (:func:`foreign_data`) in one pass; the events read.
    Raises :class:`IntegrityError` naming the first that rollwatch cannot have written."""
    events = 0
    async for page in store.read_batches(batch=5000):
        odd = await anyio.to_thread.run_sync(_first_foreign, page)
        if odd is not None:
            raise odd
        events += len(page)
    return events


def _first_foreign(page: list[Recorded]) -> IntegrityError | None:
    for ev in page:
        if (why := foreign_data(ev)) is not None:
            return IntegrityError(ev.seq, why)
    return None


_SORTED = orjson.OPT_SORT_KEYS
_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
"""What :func:`rollwatch.events.rfc3339` writes."""


def foreign_data(ev: Recorded) -> str | None:
    """Why ``ev``'s data cannot have been written by rollwatch, or None.

    rollwatch stores ``canonical_json`` of an event's fields and nothing else, so a
    row with a valid chain hash whose data is not JSON, not an object, or not in
    canonical form (spaces, unsorted or repeated keys: two readers may then see two
    different verdicts under one signed hash), or whose time is not what
    :func:`rollwatch.events.rfc3339` writes, was written around rollwatch, by someone
    who could recompute the chain. So was data of a type and schema this version knows
    that does not decode (a field its type needs is missing): every schema of a type
    rollwatch wrote decodes in every later version, upcast where it must be. The values'
    types are not checked here: fields a provider reports (a finish reason, say) were
    written as the provider sent them by earlier versions, and such an event is no
    forgery; a read model that cannot take one names it (:func:`rollwatch.events.wrong_field`).
    A type or a schema this version does not know is no such evidence: a newer rollwatch
    writes them.
    orjson answers for almost every row (about 3 us); where it disagrees (a float it
    writes differently, say), ``canonical_json`` decides.
    """
    if not _stored_types_ok(ev):
        # SQLite keeps a BLOB as it is in a TEXT column (and a number in any column): read as
        # bytes, such a row made the pass raise TypeError, and every scrub pass failed as one
        # that could not run while /healthz said ok.
        kinds = {k: type(v).__name__ for k, v in ev._asdict().items() if k not in ("seq", "version")}
        return f"its row holds values of types rollwatch never writes there ({kinds}): rollwatch never writes such a row"
    if _AT.fullmatch(ev.at) is None:
        return f"its time {ev.at!r} is not one rollwatch writes (UTC, RFC 3339, microseconds)"
    text = ev.data_json
    raw = text.encode()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            data = json.loads(text)
        except RecursionError:
            # orjson stops at 1,024 levels, json at the interpreter's recursion limit: data
            # nested deeper failed the whole pass as one that could not run (verify named
            # no seq, and hid every other finding; the scrub said only that it could not run).
            return "its data is JSON nested deeper than a parser can read: rollwatch never writes such a row"
        except ValueError as e:
            return f"its data is not valid JSON ({e}): rollwatch never writes such a row"
    if type(data) is not dict:
        return f"its data is a JSON {type(data).__name__}, not an object: rollwatch never writes such a row"
    if orjson.dumps(data, option=_SORTED) != raw:
        try:
            again = canonical_json_fast(json.loads(text))
        except (ValueError, RecursionError):
            again = None
        if again != text:
            return (
                "its data is not in canonical JSON form (spaces, key order or a repeated key): "
                "rollwatch never writes such a row"
            )
    cls = event_class(ev.type)
    if cls is not None and ev.schema <= cls.SCHEMA:
        try:
            decode(ev.type, ev.schema, data)
        except UnknownEventType as e:
            return f"its data is no {ev.type} of schema {ev.schema} ({e}): rollwatch never writes such a row"
    return None


async def _check_stored_tree(
    tree: MerkleTree,
    stored: int,
    rows: list[tuple[int, int, str, str]],
    cr: CompactRange,
    claims: list[_Claim],
    recorded: dict[int, tuple[int, str, str]],
) -> None:
    """The stored tree's proofs link consecutive checkpoints, its root is the log's, and the
    checkpoints it recorded (which ``/checkpoint``, the proofs and the hash tiles are served
    by) are the log's ``CheckpointSigned`` events it absorbed, as they are in the log."""
    if stored > cr.size:
        raise IntegrityError(cr.size + 1, f"the Merkle tree holds {stored} events but the log only {cr.size}")
    if stored == cr.size and await tree.root(stored) != cr.root():
        raise IntegrityError(stored, "the stored Merkle tree's root is not the log's; rebuild the tree")
    # The tree keeps its own copy of each checkpoint: the latest is what the public routes
    # serve and prove against. An edited copy was served while every check passed.
    kept = {seq: (size, root, note) for seq, size, root, note in rows}
    logged = {seq: fields for seq, fields in recorded.items() if seq <= stored}
    differ = sorted(seq for seq in kept.keys() | logged.keys() if kept.get(seq) != logged.get(seq))
    if differ:
        seq = differ[0]
        what = (
            "is not in the log"
            if seq not in logged
            else "is missing"
            if seq not in kept
            else "differs from the log's CheckpointSigned event"
        )
        raise IntegrityError(
            seq,
            f"the Merkle tree's record of the checkpoint at seq {seq} {what}: {TREE_EDITED}, and "
            "/checkpoint and the proofs are served from that record; rebuild the tree",
        )
    bad = await tree.first_bad_node(stored)
    if bad is not None:
        level, index = bad
        first, last = index << level, ((index + 1) << level)
        raise IntegrityError(
            first + 1,
            f"the Merkle tree's stored node over events {first + 1} to {last} (level {level}) is not the hash of "
            f"its two children: {TREE_EDITED}, and every proof through that node is wrong; rebuild the tree",
        )
    linked = sorted((c for c in claims if c.size <= stored), key=lambda c: c.seq)
    for a, b in pairwise(linked):
        if b.size < a.size:
            raise IntegrityError(
                b.seq, f"its checkpoint (size {b.size}) is older than the one at seq {a.seq} (size {a.size})"
            )
        proof = await tree.consistency_proof(a.size, b.size)
        if not verify_consistency(a.size, b.size, a.root, b.root, proof):
            raise IntegrityError(
                b.seq, f"no consistency proof links its checkpoint (size {b.size}) to the one at seq {a.seq}"
            )


def read_kept(witness: Path | None) -> list[KeptCheckpoint]:
    """The witness file's checkpoint, if there is one.

    Raises :class:`IntegrityError` when something is there that cannot hold one (a pipe, a
    folder, bytes that are not UTF-8: see :func:`read_witness_file`), as for text that is no
    checkpoint: a pipe was passed over as no witness file, and bytes that are not UTF-8 failed
    every scrub pass as one that could not run (``/healthz`` ok) and printed a traceback."""
    if witness is None:
        return []
    where = f"the witness file {witness}"
    try:
        text = read_witness_file(witness)
    except InvalidNote as e:
        raise IntegrityError(0, f"{where} does not hold a valid checkpoint of this log: {e}") from None
    return [] if text is None else [KeptCheckpoint(where, text)]


KEPT_MAX = 64 * 1024 * 1024
"""The largest ``--checkpoint`` file read: what ``rollwatch audit --keep`` writes (its ``MAX_KEEP``)."""


def load_kept_checkpoint(path: Path) -> KeptCheckpoint:
    """A checkpoint someone kept: a signed note, or the JSON file ``rollwatch audit --keep`` writes.

    Raises :class:`UsageError` when the file cannot be read as either.
    """
    try:
        # Bounded, and refused unless a regular file: /dev/zero was read until memory ran
        # out, a named pipe waited for ever (as `audit --keep` once did).
        text = read_small_file(path, KEPT_MAX).decode("utf-8")
    except (OSError, UnicodeDecodeError, UnfitFile) as e:
        raise UsageError(f"--checkpoint {path}: cannot read it: {e}") from None
    if text.lstrip().startswith("{"):
        try:
            note = json.loads(text)["checkpoint"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"--checkpoint {path}: JSON without a 'checkpoint' note") from None
        if not isinstance(note, str):
            raise UsageError(f"--checkpoint {path}: its 'checkpoint' is not a note")
        text = note
    return KeptCheckpoint(f"the checkpoint kept in {path}", text)


async def verify_state(
    store: EventStore,
    integrity: IntegrityConfig,
    store_config: StoreConfig,
    *,
    checkpoint: Path | None = None,
    progress: Callable[[int], None] | None = None,
    chain: bool = False,
) -> TreeReport:
    """``rollwatch verify``: every checkpoint in the log, the stored tree, the witness file
    and ``checkpoint`` (one someone kept), all against the log, and what no hash covers
    (:meth:`EventStore.verify_versions`); ``chain``: every event's chain hash too, in the
    same pass, and every event's content.

    Uses the configured key when it exists (never creates one) and opens the tree
    read-only when it exists; raises :class:`IntegrityError` naming the seq at fault.
    """
    from rollwatch.integrity.identity import foreign_tree, resolve_origin

    integrity = await resolve_origin(
        integrity, integrity.state_dir(store_config), store, create=False, store_url=store_config.url
    )
    from rollwatch.integrity.rotation import key_at_hand

    signer = await key_at_hand(store, integrity.key_path(store_config), integrity.name)
    vkey = signer.vkey if signer is not None else None
    path = integrity.tree_path(store_config)
    foreign = await foreign_tree(
        store, path, integrity.witness_path(store_config), integrity.key_path(store_config)
    )
    kept = [] if foreign else await anyio.to_thread.run_sync(read_kept, integrity.witness_path(store_config))
    witnessed = bool(kept)
    if foreign:
        # Another log's state is no evidence about this one (the daemon sets it aside).
        log.warning("state_of_another_log_ignored", tree=str(path), its_log_first_hash=foreign)
    if checkpoint is not None:
        kept.append(await anyio.to_thread.run_sync(load_kept_checkpoint, checkpoint))

    async def hashed(content: bool) -> TreeReport:
        if foreign or not await anyio.Path(path).exists():
            return await check_log_tree(
                store, vkey=vkey, progress=progress, kept=kept, chain=chain, content=content
            )
        async with MerkleTree(path, read_only=True) as tree:
            return await check_log_tree(
                store, vkey=vkey, tree=tree, progress=progress, kept=kept, chain=chain, content=content
            )

    # The signer's rule (see Checkpointer): a key file is a key that has signed, so a
    # non-empty log with no checkpoint anywhere beside it (none in the log, no witness
    # file) was replaced; `serve` refuses to sign it, and so `verify` fails it (it passed).
    used_before = await anyio.Path(integrity.key_path(store_config)).is_file()

    def unsigned(report: TreeReport) -> TreeReport:
        if used_before and not witnessed and report.events > 0 and report.checkpoints == 0:
            raise IntegrityError(
                1,
                f"the log holds {report.events} events but no signed checkpoint of them is found anywhere: "
                "none in the log (no CheckpointSigned event), no witness file, though the key "
                f"{integrity.key_path(store_config)} has signed before; the log may have been replaced by another "
                "history (to start a new log on purpose, move the key file away)",
            )
        return report

    if not chain:
        alone = await hashed(False)
        await store.verify_versions(alone.events)
        return unsigned(alone)
    # Each event's content, then the stream versions and SQLite's index (which no hash
    # covers: :meth:`EventStore.verify_versions`), are checked in a second process
    # meanwhile (together they cost about what the hashing does); the first bad seq
    # either finds is the one named. On a log of up to SPLIT_ABOVE events, the same two
    # checks run here, one after the other: that second process's start cost more CPU
    # (about 0.2 s) than the whole check of such a log.
    from rollwatch.integrity._worker import worker_pass

    found: list[IntegrityError] = []
    covered: list[int] = []

    async def beside() -> None:
        try:
            covered.append(
                await worker_pass("rollwatch.integrity.content", store_config.url, "the content check")
            )
        except IntegrityError as e:
            found.append(e)

    report = None
    if await store.head() <= SPLIT_ABOVE:
        try:
            report = await hashed(False)
        except IntegrityError as e:
            found.append(e)
        try:
            covered.append(await content_and_versions(store))
        except IntegrityError as e:
            found.append(e)
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(beside)
            try:
                report = await hashed(False)
            except IntegrityError as e:
                found.append(e)
    if found:
        raise min(found, key=lambda e: e.seq)
    assert report is not None
    if covered[0] < report.events:  # appended while the process checked: versions up to here
        await store.verify_versions(report.events)
    return unsigned(report)
