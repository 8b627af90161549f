"""The checkpointer: signs the log's tree every N events or T seconds, and at shutdown.

It never signs a checkpoint inconsistent with one signed before (C2SP
tlog-checkpoint: "A log MUST not sign any checkpoint which is inconsistent with any
checkpoint it previously signed"). Before signing size N it takes the last signed
checkpoints it knows of, (M, R), and checks an RFC 9162 consistency proof from M to
N, computed from the tree as the log now derives it, against R. Two places remember
what was signed, so that rewriting the log cannot make the signer forget:

* the log itself (the latest :class:`CheckpointSigned` event the tree absorbed), and
* a witness file in the state directory (``checkpoint.last``), written before the
  event is appended: a log rewritten *and* stripped of its checkpoint events still
  meets the witness.

A failed check logs an error and raises :class:`IntegrityError`; nothing is signed.
The usual cause is a log changed behind the service's back followed by a tree
rebuild (``rollwatch verify`` names the event when the chain itself is broken).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from rollwatch.abc import EventStore
from rollwatch.errors import (
    ConcurrencyConflict,
    ForeignCheckpointKey,
    IntegrityError,
    InvalidNote,
    KeyRetired,
    NotLeading,
    StoreError,
)
from rollwatch.events import CHECKPOINT_STREAM, CheckpointSigned
from rollwatch.integrity.checkpoint import (
    Checkpoint,
    NoteSigner,
    b64,
    read_witness_file,
    split_note,
    write_file_atomically,
)
from rollwatch.integrity.health import TREE_EDITED, Health
from rollwatch.integrity.merkle import leaf_hash, verify_consistency
from rollwatch.integrity.rotation import KeyRing
from rollwatch.integrity.tree import MerkleTree, checkpoint_fields
from rollwatch.log import get_logger

log = get_logger(__name__)

_RETRY_S = 5.0
"""Seconds between attempts at a checkpoint that failed on storage."""

STREAM = CHECKPOINT_STREAM
"""The log stream that holds the CheckpointSigned events."""


async def record_differs(
    store: EventStore, tree: MerkleTree, seq: int, recorded: tuple[int, str, str]
) -> IntegrityError | None:
    """None when the tree's record of the checkpoint at ``seq`` (size, root, note) is the log's
    ``CheckpointSigned`` event there, else the finding: the public routes serve that record.
    When they differ, the one whose leaf the tree absorbed when it was appended is the log's
    event as written."""
    rec = (await store.read_at([seq])).get(seq)
    if rec is not None and rec.type == CheckpointSigned.TYPE and checkpoint_fields(rec.data_json) == recorded:
        return None
    absorbed = await tree.leaf_hashes(seq - 1, seq) if rec is not None else []
    if rec is not None and absorbed != [leaf_hash(rec.canonical())]:
        return IntegrityError(
            seq, "its content differs from what the Merkle tree absorbed when it was appended"
        )
    return IntegrityError(
        seq,
        f"the Merkle tree's record of the checkpoint at seq {seq} differs from the log's CheckpointSigned "
        f"event: {TREE_EDITED}, and /checkpoint and the proofs are served from that record; rebuild the tree",
    )


class Checkpointer:
    """Signs checkpoints of ``tree`` (kept current from ``store``) with ``signer``.

    ``origin`` defaults to the key's name (the signed-note convention). ``witness``
    is the file that remembers the last signed note across log rewrites.
    """

    def __init__(
        self,
        store: EventStore,
        tree: MerkleTree,
        signer: NoteSigner,
        *,
        origin: str | None = None,
        witness: Path | None = None,
        node: str = "",
        health: Health | None = None,
        key_used_before: bool = False,
        reload: Callable[[], Awaitable[NoteSigner | None]] | None = None,
        promote: Callable[[], None] | None = None,
        on_trusted: Callable[[Checkpoint], None] | None = None,
        step_down: bool = False,
    ) -> None:
        self.node = node
        self.step_down = step_down
        """Raise :class:`KeyRetired` instead of staying retired (a leader of a shared log)."""
        self.on_trusted = on_trusted
        """Told each checkpoint this process signed, or found signed by a key of the log's
        chain (its signature verified): a tree head no file edit can move."""
        self.reload = reload
        self.promote = promote
        """Gives a new key the key file's name before its first signature (blocking; see
        ``keys.promote_key``)."""
        """Loads the key again (after a rotation made by ``rollwatch key rotate``)."""
        self.ring: KeyRing | None = None
        """The log's chain of checkpoint keys, read before each signature."""
        self._retired_said = False
        self.retired = False
        """The log rotated to another key than ours: nothing can be signed (``/healthz`` degraded)."""
        self.health = health
        self.key_used_before = key_used_before
        """The key existed before this process: it has signed this log before, so a
        non-empty log with no checkpoint anywhere (log, witness file) was replaced."""
        self.store = store
        self.tree = tree
        self.signer = signer
        self.origin = origin or signer.name
        self.witness = witness
        self.verifier = signer.verifier()
        self.covered = 0
        """The tree size as of the last checkpoint signed or found unnecessary."""
        self.latest: Checkpoint | None = None
        self._lock = anyio.Lock()

    # -- what was signed before ---------------------------------------------------------------

    def _from_note(self, note: str, where: str, seq: int) -> Checkpoint:
        """The checkpoint in a note found at ``where``: tampered notes raise, foreign keys warn."""
        try:
            text, _ = split_note(note)
            ring = self.ring or KeyRing(start=self.verifier)
            key = ring.signer_of(note)
            if key is not None:
                cp = key.open_checkpoint(note)
                if self.on_trusted is not None:
                    self.on_trusted(cp)
                return cp
            cp = Checkpoint.parse(text)
        except InvalidNote as e:
            raise self._refuse(seq, f"the checkpoint in {where} is not valid: {e}") from None
        # Signed by a key outside the log's chain (one lost, say): its tree head still
        # binds this log, so it is checked for consistency, though it proves nothing alone.
        log.warning("checkpoint_foreign_key", where=where, size=cp.size, our_key=self.verifier.vkey)
        return cp

    async def signed_before(self) -> list[tuple[str, Checkpoint]]:
        """Every checkpoint this log is bound by: the log's latest and the witness file's."""
        out: list[tuple[str, Checkpoint]] = []
        stored = await self.tree.latest_checkpoint()
        if stored is not None:
            await self._recorded_as_logged(stored.seq, (stored.size, stored.root, stored.note))
            where = f"the CheckpointSigned event at seq {stored.seq}"
            cp = self._from_note(stored.note, where, stored.seq)
            if (cp.size, b64(cp.root)) != (stored.size, stored.root):
                raise self._refuse(
                    stored.seq,
                    f"{where} records size {stored.size} and root {stored.root} but its note says otherwise",
                )
            out.append((where, cp))
        where = f"the witness file {self.witness}"
        try:
            witnessed = await anyio.to_thread.run_sync(_read_witness, self.witness)
        except InvalidNote as e:
            raise self._refuse(0, f"the checkpoint in {where} is not valid: {e}") from None
        if witnessed is not None:
            out.append((where, self._from_note(witnessed, where, 0)))
        return out

    async def _recorded_as_logged(self, seq: int, recorded: tuple[int, str, str]) -> None:
        """The tree's record of the checkpoint at ``seq`` (size, root, note) must be the log's
        event there: the public routes serve that record (see :func:`record_differs`)."""
        error = await record_differs(self.store, self.tree, seq, recorded)
        if error is not None:
            raise self._refuse(error.seq, error.reason)

    def _refuse(self, seq: int, reason: str) -> IntegrityError:
        log.error("checkpoint_refused", seq=seq, reason=reason)
        return IntegrityError(seq, reason)

    # -- signing ---------------------------------------------------------------------------------

    async def checkpoint(self) -> Checkpoint | None:
        """Sign and append a checkpoint of the whole log now, unless nothing new happened.

        Returns the new checkpoint, or None when the only events since the last one
        are checkpoint events. Raises :class:`IntegrityError` (after logging it) when
        the log is not consistent with what was signed before.
        """
        async with self._lock:
            if self.health is not None and not self.health.ok:
                # Never sign on top of a log found changed: a signature would vouch for it.
                log.warning("checkpoint_withheld", reason="the log was found tampered with")
                return None
            # The checkpoint stream's version before the tree catches up: our append
            # expects it, so a checkpoint another signer appends meanwhile (a leader
            # that lost its lease but is still signing, say) makes ours conflict
            # instead of landing after a larger one.
            version = await self.store.stream_version(STREAM)
            self.retired = not await self._key_in_force()
            if self.retired and self.step_down and self.ring is not None and self.ring.current is not None:
                raise KeyRetired(self.signer.vkey, self.ring.current.vkey)
            if self.retired:
                if self.health is not None:
                    self.health.stall(
                        "signer",
                        "no checkpoint can be signed: the log rotated to another key, and this service"
                        " signs with a retired one (give it the new key and restart it)",
                    )
                return None
            size = await self.tree.catch_up(self.store)
            # Another node signing this log with another key: signing on would start a
            # second series under ours (two nodes given different keys, started at once).
            await check_shared_key(self.store, self.tree, self.signer, self.origin)
            root = await self.tree.root(size)
            priors = await self.signed_before()
            for where, prior in priors:
                await self._check_consistent(where, prior, size, root)
            if not priors and size > 0 and self.key_used_before:
                raise self._refuse(
                    1,
                    f"the log holds {size} events but no signed checkpoint of them is found anywhere: none in the "
                    f"log (no CheckpointSigned event), no witness file ({self.witness}), though the key has been "
                    "used before; the log, the tree and the witness file may have been replaced by another history. "
                    "Refusing to sign. (To start a new log on purpose, move the key file away: a new key is made.)",
                )
            if priors:
                last = max((p for _, p in priors), key=lambda c: c.size)
                self.latest = last
                unsigned = size - last.size
                if unsigned == 0 or unsigned == await self.tree.checkpoint_events_between(last.size, size):
                    self.covered = size
                    return None
            cp = Checkpoint(origin=self.origin, size=size, root=root)
            # Shielded: once signed, the witness and the log both learn of it, or the
            # error says why.
            with anyio.CancelScope(shield=True):
                if self.promote is not None:
                    await anyio.to_thread.run_sync(self.promote)
                    self.promote = None
                note = self.signer.sign_checkpoint(cp)
                if self.witness is not None:
                    await anyio.to_thread.run_sync(write_file_atomically, self.witness, note)
                try:
                    [rec] = await self.store.append(
                        STREAM,
                        [CheckpointSigned(size=size, root=b64(root), note=note, node=self.node)],
                        expected_version=version,
                    )
                except ConcurrencyConflict:
                    log.info("checkpoint_superseded", size=size, reason="another signer appended one first")
                    return None
                except NotLeading:
                    log.info(
                        "checkpoint_superseded", size=size, reason="another node leads the checkpoints now"
                    )
                    return None
                await self.tree.catch_up(self.store)
            log.info("checkpoint_signed", size=size, root=b64(root), seq=rec.seq)
            if self.on_trusted is not None:
                self.on_trusted(cp)
            self.latest = cp
            self.covered = size
            return cp

    async def _key_in_force(self) -> bool:
        """Follow the log's key rotations; False (and one ERROR) when our key is not the one in force."""
        if self.ring is None:
            self.ring = await KeyRing.load(self.store, self.verifier, self.origin)
        else:
            await self.ring.refresh(self.store, self.origin)
        current = self.ring.current
        if current is None or current.vkey == self.signer.vkey:
            return True
        if self.reload is not None:
            signer = await self.reload()
            if signer is not None and signer.vkey == current.vkey:
                log.info("checkpoint_key_in_use", key=signer.vkey, retired=self.signer.vkey)
                self.signer, self.verifier = signer, signer.verifier()
                self._retired_said = False
                return True
        if not self._retired_said:
            self._retired_said = True
            log.error(
                "checkpoint_key_retired",
                key=self.signer.vkey,
                in_force=current.vkey,
                reason="the log rotated to another key; give the service the new key (restart it)",
            )
        return False

    async def _check_consistent(self, where: str, prior: Checkpoint, size: int, root: bytes) -> None:
        if prior.size > size:
            raise self._refuse(
                prior.size,
                f"{where} signed a tree of {prior.size} events but the log now has {size}: "
                "events were removed; refusing to sign",
            )
        proof = await self.tree.consistency_proof(prior.size, size)
        if not verify_consistency(prior.size, size, prior.root, root, proof):
            old_root = await self.tree.root(prior.size)
            raise self._refuse(
                prior.size,
                f"the log is not consistent with {where} (size {prior.size}, root {b64(prior.root)}): "
                f"its first {prior.size} events now hash to {b64(old_root)}, so an event at or before "
                f"seq {prior.size} was changed after it was signed; refusing to sign size {size}",
            )

    async def run(self, *, every_events: int, interval: float) -> None:
        """Sign whenever ``every_events`` events or ``interval`` seconds have passed; never returns."""
        deadline = anyio.current_time() + interval
        while True:
            target = self.covered + every_events
            remaining = max(0.0, deadline - anyio.current_time())
            head = await self.store.wait_for_new(target - 1, timeout=remaining)
            if head >= target or anyio.current_time() >= deadline:
                try:
                    await self.checkpoint()
                except IntegrityError:
                    raise
                except (StoreError, OSError, sqlite3.OperationalError) as e:
                    # The log, the tree or the witness file cannot be written for now (a
                    # database outage, a full disk, a read-only folder): nothing was
                    # appended; try again shortly (the events that made it due are still
                    # there: without the pause this would try again at once, forever).
                    log.error("checkpoint_failed", error=str(e), retry_in_s=_RETRY_S)
                    if self.health is not None:
                        # Everything appended meanwhile stays unsigned (open to a consistent
                        # rewrite), so the operator hears of it in /healthz, not in the logs alone.
                        self.health.stall("signer", f"no checkpoint can be signed: {e}")
                    await anyio.sleep(_RETRY_S)
                    continue
                if self.health is not None and not self.retired:
                    self.health.resume("signer")
                deadline = anyio.current_time() + interval


async def check_shared_key(
    store: EventStore, tree: MerkleTree, signer: NoteSigner, origin: str, *, at: int | None = None
) -> None:
    """On a shared log, :class:`ForeignCheckpointKey` when its latest checkpoint (or the one
    at seq ``at``, if that event is a checkpoint) is signed by a key outside the log's key
    chain as this node knows it (its own key and the rotations in the log): the nodes were
    given different keys. Checked at start, before the scrub would call that checkpoint
    tampered with, before each signature, and on a finding (``at``: the seq it names).

    Once the log holds rotations, this node's key must also be one of the chain's (the key
    in force or one it retired): a key outside it would sign a second series, and the
    scrub would call the chain tampered with ("the key was replaced without a rotation")."""
    if not store.shared:
        return
    seq = await _foreign_at(store, tree, signer, origin, at)
    if seq is not None:
        node = await _node_of(store, seq)
        log.error("checkpoint_key_mismatch", seq=seq, signed_by=node, our_key=signer.vkey)
        raise ForeignCheckpointKey(signer.vkey, seq, node)


async def _foreign_at(
    store: EventStore, tree: MerkleTree, signer: NoteSigner, origin: str, at: int | None
) -> int | None:
    """The seq of the checkpoint that shows ``signer`` foreign to the log's chain of keys
    (see :func:`check_shared_key`), or None."""
    stored = await tree.latest_checkpoint()
    found: tuple[int, str] | None = None
    if at is None:
        if stored is not None:
            found = (stored.seq, stored.note)
    else:
        rec = (await store.read_at([at])).get(at)
        if rec is not None and rec.type == CheckpointSigned.TYPE and isinstance(rec.data.get("note"), str):
            found = (at, rec.data["note"])
    # Read after the checkpoint: every rotation before it is in the chain.
    ring = await KeyRing.load(store, signer.verifier(), origin)
    chain = ring.keys()
    if ring.rotations and signer.vkey not in {k.vkey for k in chain}:
        # Named by the log's latest checkpoint (a key of the chain signed it), else its last rotation.
        return stored.seq if stored is not None else ring.rotations[-1].seq
    if found is not None and ring.signer_of(found[1]) is None:
        return found[0]
    return None


async def _node_of(store: EventStore, seq: int) -> str:
    rec = (await store.read_at([seq])).get(seq)
    node = rec.data.get("node") if rec is not None else None
    return node if isinstance(node, str) else ""


def _read_witness(path: Path | None) -> str | None:
    return None if path is None else read_witness_file(path)


async def checkpointer(
    store: EventStore,
    tree: MerkleTree,
    signer: NoteSigner,
    *,
    every_events: int,
    interval: float,
    stop: anyio.Event,
    origin: str | None = None,
    witness: Path | None = None,
    node: str = "",
    health: Health | None = None,
    key_used_before: bool = False,
    reload: Callable[[], Awaitable[NoteSigner | None]] | None = None,
    promote: Callable[[], None] | None = None,
    on_trusted: Callable[[Checkpoint], None] | None = None,
    step_down: bool = False,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The checkpointer task: sign at start, every N events or T seconds, and once more at ``stop``.

    Set ``stop`` once nothing else will append (after the runs have ended): the task
    then signs a final checkpoint and returns. Raises :class:`IntegrityError` when
    the log is inconsistent with a checkpoint signed before (nothing is signed), and,
    with ``step_down``, :class:`KeyRetired` once the log retired the key it signs with.
    """
    cp = Checkpointer(
        store,
        tree,
        signer,
        origin=origin,
        witness=witness,
        node=node,
        health=health,
        key_used_before=key_used_before,
        reload=reload,
        promote=promote,
        on_trusted=on_trusted,
        step_down=step_down,
    )
    await cp.checkpoint()
    task_status.started()
    failure: BaseException | None = None
    async with anyio.create_task_group() as tg:

        async def until_stopped() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(until_stopped)
        try:
            await cp.run(every_events=every_events, interval=interval)
        except Exception as e:
            # Raised from here, not through the task group: callers see the
            # IntegrityError itself rather than an ExceptionGroup around it.
            failure = e
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    with anyio.CancelScope(shield=True):
        await cp.checkpoint()


async def final_checkpoint(
    store: EventStore,
    tree: MerkleTree,
    signer: NoteSigner,
    *,
    origin: str | None = None,
    witness: Path | None = None,
) -> Checkpoint | None:
    """Sign the log as it stands (at shutdown, once nothing else appends); None if nothing is new."""
    with anyio.CancelScope(shield=True):
        cp = await Checkpointer(store, tree, signer, origin=origin, witness=witness).checkpoint()
    return cp  # noqa: RET504 (a return inside the scope reads to mypy as possibly swallowed)
