"""The public integrity routes (SPEC §6): checkpoint, key, and RFC 9162 proofs.

* ``GET /public/checkpoint``: the latest signed checkpoint note, ``text/plain``.
* ``GET /public/key``: the verifier key, ``<name>+<hex key ID>+<base64(0x01 ‖ key)>``.
* ``GET /public/key/rotations``: ``{"key": vkey, "rotations": [{"seq", "old_key",
  "new_key", "note", "canonical", "leaf_hash"}, ...]}``, the chain of keys
  (:mod:`rollwatch.integrity.rotation`), oldest first.
* ``GET /public/proof/consistency?from=M&to=N``:
  ``{"from": M, "to": N, "path": [base64, ...]}``.
* ``GET /public/proof/inclusion?seq=S&size=N``:
  ``{"seq": S, "leaf_index": S - 1, "size": N, "leaf_hash": base64, "path": [base64, ...]}``.

The same log as a C2SP tlog-tiles log (:mod:`rollwatch.integrity.tiles`), with the
server's root as its prefix, and ``/public/`` too (as in ``publish export`` output):
``GET /checkpoint`` (the note above), ``GET /tile/<L>/<N>[.p/<W>]``
(hash tiles, anyone) and ``GET /tile/entries/<N>[.p/<W>]`` (entry bundles, the
operator only: they hold every event, results under embargo included; anyone else
gets 403). Full tiles are cached for a year, partial ones for a minute (entry bundles
``private``: no shared cache may hand the operator's copy to anyone else); a malformed
path is a 400, a tile the tree does not hold yet a 404.

Proofs and hash tiles are served for the signed tree only (sizes up to the latest
checkpoint's), which is all a verifier checks them against: the log's live size is
not public, since its steps between two checkpoints would tell each verdict from the
next (a pass is appended with one more decision than a failure). A bad or missing
parameter, or a size beyond the latest checkpoint, is a 400 naming it, in the error
body every route uses (:mod:`rollwatch.web.errors`); a tile beyond it is a 404.
Proofs carry hashes only: nothing of an event under embargo can be read from them.
Entry bundles (the operator's) follow the live tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from rollwatch.abc import EventStore
from rollwatch.errors import (
    BadRequest,
    EntryTooLong,
    Forbidden,
    IntegrityError,
    InvalidNote,
    InvalidProof,
    NotFound,
    ServiceUnavailable,
    TilePathError,
)
from rollwatch.events import CHECKPOINT_STREAM, CheckpointKeyRotated, Recorded
from rollwatch.integrity.checkpoint import NoteVerifier, b64
from rollwatch.integrity.checkpointer import record_differs
from rollwatch.integrity.health import Health
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.integrity.rotation import KeyRing
from rollwatch.integrity.tiles import (
    FULL_CACHE,
    PARTIAL_CACHE,
    entry_bundle,
    hash_tile,
    parse_tile_path,
)
from rollwatch.integrity.tree import MerkleTree, StoredCheckpoint
from rollwatch.web.access import Operators
from rollwatch.web.params import ConsistencyQuery, InclusionQuery

_NO_STORE = {"Cache-Control": "no-cache"}


async def signed_size(tree: MerkleTree) -> int:
    """The size of the latest signed checkpoint (0 before the first): what the public
    routes serve proofs and hash tiles for."""
    latest = await tree.latest_checkpoint()
    return latest.size if latest is not None else 0


class ServedCheckpoint:
    """The latest checkpoint as ``/public/checkpoint`` and ``/checkpoint`` serve it (and the size
    the public proofs and hash tiles are cut at): the tree's record, checked once per record.

    The tree keeps its own copy of each checkpoint, and its latest was served as it stood: a note
    edited there (its signature changed) was served, as was a row added past the log's head (and
    proofs cut at its size), while ``/healthz`` said tampered. A record is now served when it is
    the log's ``CheckpointSigned`` event at its seq, or else a note of ours that verifies and says
    the record's size and root (the log lost or changed that event: what was public stays served);
    any other record is a finding (``health``) and a 503, and ``/healthz`` says it is withheld.
    """

    def __init__(
        self,
        tree: MerkleTree,
        store: EventStore | None,
        health: Health | None = None,
        vkey: Callable[[], str] | None = None,
    ) -> None:
        self.tree = tree
        self.store = store
        self.health = health
        self.vkey = vkey
        self._checked: StoredCheckpoint | None = None
        self._refused: StoredCheckpoint | None = None
        self._ring: KeyRing | None = None
        self._signed_by: tuple[StoredCheckpoint, str] | None = None

    async def latest(self) -> StoredCheckpoint:
        """The record to serve; NotFound before the first, ServiceUnavailable when known bad."""
        latest = await self.tree.latest_checkpoint()
        if latest is None:
            raise NotFound("no checkpoint has been signed yet", _NO_STORE)
        if self.store is None or latest == self._checked:
            return latest
        if latest != self._refused:
            error = await record_differs(
                self.store, self.tree, latest.seq, (latest.size, latest.root, latest.note)
            )
            if error is None or self._genuine(latest):
                self._checked = latest
                if self.health is not None:
                    self.health.withheld = None
                return latest
            self._refused = latest
            if self.health is not None:
                self.health.withheld = f"seq {latest.seq}"
                self.health.tampered(error, found_by="checkpoint route")
        raise ServiceUnavailable(
            "the latest checkpoint is withheld: the Merkle tree's record of it is not a checkpoint this log"
            " signed (tampering); the operator is told (/healthz)",
            _NO_STORE,
        )

    async def size(self) -> int:
        """The latest checkpoint's size (0 before the first); ServiceUnavailable when known bad."""
        try:
            return (await self.latest()).size
        except NotFound:
            return 0

    async def key(self, in_force: str) -> str:
        """The key ``/public/key`` serves: the key of the log's chain that signed the checkpoint
        served now, else ``in_force`` (the signer's key: before the first checkpoint, or while
        the latest is withheld).

        A rotation takes effect at the signer's next checkpoint: it loads the new key, then signs,
        appends and absorbs. Served from the moment it loaded it, the new key stood beside a
        checkpoint of the old one and a ``/public/key/rotations`` without the link to it (links
        within the latest checkpoint only): an audit that pinned the old key found no chain of
        rotations leading to the key served, one that trusted the key served a checkpoint not
        signed by it. The key a rotation names is served from the checkpoint that holds it on, as
        the rotation itself is."""
        try:
            latest = await self.latest()
        except (NotFound, ServiceUnavailable):
            return in_force
        if self.store is None:
            return in_force
        if self._signed_by is not None and self._signed_by[0] == latest:
            return self._signed_by[1]
        try:
            if self._ring is None:
                self._ring = await KeyRing.load(self.store, NoteVerifier.from_vkey(in_force))
            else:
                await self._ring.refresh(self.store)
        except (IntegrityError, ValueError):
            # A forged link is the scrub's and the signer's finding; this route says what it did.
            self._ring = None
            return in_force
        # Every rotation before the record is in the ring: the record's seq is at most the head
        # the refresh read (the tree absorbs only what the log holds).
        by = self._ring.signer_of(latest.note)
        vkey = by.vkey if by is not None else in_force
        self._signed_by = (latest, vkey)
        return vkey

    def _genuine(self, record: StoredCheckpoint) -> bool:
        """Whether ``record``'s note is signed by the key in force and says its size and root."""
        if self.vkey is None:
            return False
        try:
            cp = NoteVerifier.from_vkey(self.vkey()).open_checkpoint(record.note)
        except (InvalidNote, ValueError):
            return False
        return (cp.size, b64(cp.root)) == (record.size, record.root)


def _within_signed(name: str, size: int, signed: int) -> None:
    if size > signed:
        raise BadRequest(
            f"{name}={size} is beyond the latest signed checkpoint (size {signed}): "
            "proofs are served for signed tree sizes only; fetch /checkpoint again later"
        )


def integrity_routes(
    tree: MerkleTree,
    vkey: str | Callable[[], str],
    store: EventStore | None = None,
    cosigned: Callable[[str], str] | None = None,
    served: ServedCheckpoint | None = None,
) -> list[Route]:
    """The public routes, serving ``tree``, the verifier key ``vkey`` (the key in force
    when a callable: it changes at a rotation) and the key rotations ``store`` holds.

    ``cosigned`` adds the witnesses' cosignatures to the latest checkpoint's note;
    ``served`` checks the note before it is served (default: against ``store``).
    """
    current_key = vkey if callable(vkey) else (lambda: vkey)
    served = served or ServedCheckpoint(tree, store, None, current_key)

    async def checkpoint(_: Request) -> Response:
        latest = await served.latest()
        note = cosigned(latest.note) if cosigned is not None else latest.note
        return PlainTextResponse(note, headers=_NO_STORE)

    async def key(_: Request) -> Response:
        return PlainTextResponse(await served.key(current_key()) + "\n", headers=_NO_STORE)

    async def rotations(_: Request) -> Response:
        # Every link of the chain from the first key to the one in force, with its event
        # (an auditor checks that event's inclusion in the signed tree). Links within the
        # latest checkpoint only, as the proofs and hash tiles: a rotation's seq before that
        # told the log's live size (session 33), and the key it names is served from the
        # next checkpoint on, which holds it.
        out: list[dict[str, Any]] = []
        if store is not None:
            signed = await served.size()
            async for page in store.read_batches(
                stream=CHECKPOINT_STREAM, types=[CheckpointKeyRotated.TYPE], batch=100
            ):
                for ev in page:
                    if ev.seq > signed:
                        continue
                    canonical = ev.canonical()
                    out.append(
                        {
                            "seq": ev.seq,
                            "old_key": ev.data.get("old_key"),
                            "new_key": ev.data.get("new_key"),
                            "note": ev.data.get("note"),
                            "canonical": canonical.decode(),
                            "leaf_hash": b64(leaf_hash(canonical)),
                        }
                    )
        return JSONResponse({"key": await served.key(current_key()), "rotations": out}, headers=_NO_STORE)

    async def consistency(request: Request) -> Response:
        q = ConsistencyQuery.parse(request)
        old, new = q.from_, q.to
        if old > new:
            raise BadRequest(f"from={old} is larger than to={new}")
        _within_signed("to", new, await served.size())
        try:
            path = await tree.consistency_proof(old, new)
        except InvalidProof as e:
            raise BadRequest(str(e)) from None
        return JSONResponse({"from": old, "to": new, "path": [b64(h) for h in path]}, headers=_NO_STORE)

    async def inclusion(request: Request) -> Response:
        q = InclusionQuery.parse(request)
        seq, size = q.seq, q.size
        if seq > size:
            raise BadRequest(f"event {seq} is not in a tree of size {size}")
        _within_signed("size", size, await served.size())
        try:
            path = await tree.inclusion_proof(seq - 1, size)
            [leaf] = await tree.leaf_hashes(seq - 1, seq)
        except InvalidProof as e:
            raise BadRequest(str(e)) from None
        return JSONResponse(
            {
                "seq": seq,
                "leaf_index": seq - 1,
                "size": size,
                "leaf_hash": b64(leaf),
                "path": [b64(h) for h in path],
            },
            headers=_NO_STORE,
        )

    return [
        Route("/public/checkpoint", checkpoint),
        Route("/public/key", key),
        Route("/public/key/rotations", rotations),
        Route("/public/proof/consistency", consistency),
        Route("/public/proof/inclusion", inclusion),
    ]


def tlog_routes(
    tree: MerkleTree,
    store: EventStore,
    operators: Operators | None = None,
    cosigned: Callable[[str], str] | None = None,
    served: ServedCheckpoint | None = None,
) -> list[Route]:
    """``/checkpoint``, ``/tile/...`` and ``/tile/entries/...`` (C2SP tlog-tiles) over ``tree``.

    Entry bundles go only to the operator, as ``operators`` decides (default:
    loopback peers); ``cosigned`` adds the witnesses' cosignatures to the checkpoint;
    ``served`` checks the note before it is served (default: against ``store``).
    """
    gate = operators or Operators()
    served = served or ServedCheckpoint(tree, store, None)

    async def checkpoint(_: Request) -> Response:
        latest = await served.latest()
        note = cosigned(latest.note) if cosigned is not None else latest.note
        return PlainTextResponse(note, headers=_NO_STORE)

    async def tile(request: Request) -> Response:
        try:
            t = parse_tile_path(request.path_params["path"])
        except TilePathError as e:
            raise BadRequest(str(e)) from None
        cache = FULL_CACHE if t.full else PARTIAL_CACHE
        headers = {"Cache-Control": cache}
        try:
            if t.level is None:
                # The operator's answer: no shared cache (a CDN, a caching proxy) may keep it
                # for the next client; only the operator's own browser may.
                headers = {"Cache-Control": cache.replace("public", "private"), "Vary": "Authorization"}
                if not await gate.allows(request):
                    raise Forbidden(
                        "entry bundles hold every event, results under embargo included: operator only; "
                        "a released result's events are in /public/rollouts/{id}.json"
                    )
                body = await entry_bundle(store, t, await tree.current_size())
            else:
                body = await hash_tile(tree, t, size=await served.size())
        except InvalidProof as e:
            raise NotFound(f"{t.path()} is not in the tree yet: {e}", _NO_STORE) from None
        except EntryTooLong as e:
            raise NotFound(str(e)) from None
        return Response(body, media_type="application/octet-stream", headers=headers)

    # At the root (SPEC §7) and under /public/, where `publish export` output is usually
    # hosted: one tlog prefix for the daemon and its static copy alike.
    return [
        Route("/checkpoint", checkpoint),
        Route("/tile/{path:path}", tile),
        Route("/public/tile/{path:path}", tile),
    ]


async def inclusion_fields(tree: MerkleTree, event: Recorded, size: int) -> dict[str, Any]:
    """What a released item of ``/public/feed.json`` carries under ``_rollwatch`` for ``rollwatch audit --item``.

    ``event`` is the event the item stands for (its ``RolloutScored``), ``size`` the
    tree size of the latest checkpoint (at least ``event.seq``)::

        {"seq": S, "leaf_index": S - 1, "canonical": "<the event's canonical JSON>",
         "leaf_hash": base64, "inclusion": {"size": N, "path": [base64, ...]}}

    The auditor recomputes the leaf hash from ``canonical``, checks it names the
    item's rollout, and checks the path against a signed checkpoint.
    """
    canonical = event.canonical()
    path = await tree.inclusion_proof(event.seq - 1, size)
    return {
        "seq": event.seq,
        "leaf_index": event.seq - 1,
        "canonical": canonical.decode(),
        "leaf_hash": b64(leaf_hash(canonical)),
        "inclusion": {"size": size, "path": [b64(h) for h in path]},
    }
