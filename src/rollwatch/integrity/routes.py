"""The public integrity routes (SPEC §6): checkpoint, key, and RFC 9162 proofs.

* ``GET /public/checkpoint``: the latest signed checkpoint note, ``text/plain``.
* ``GET /public/key``: the verifier key, ``<name>+<hex key ID>+<base64(0x01 ‖ key)>``.
* ``GET /public/proof/consistency?from=M&to=N``:
  ``{"from": M, "to": N, "path": [base64, ...]}``.
* ``GET /public/proof/inclusion?seq=S&size=N``:
  ``{"seq": S, "leaf_index": S - 1, "size": N, "leaf_hash": base64, "path": [base64, ...]}``.

Proofs are served for any size the tree holds, not only signed ones; a verifier
checks them against a root it trusts (a verified checkpoint). A bad or missing
parameter, or a size the tree does not hold yet, is a 400 naming it, in the error
body every route uses (:mod:`rollwatch.web.errors`). Proofs carry
hashes only: nothing of an event under embargo can be read from them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from rollwatch.errors import BadRequest, InvalidProof, NotFound
from rollwatch.events import Recorded
from rollwatch.integrity.checkpoint import b64
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.integrity.tree import MerkleTree
from rollwatch.web.params import ConsistencyQuery, InclusionQuery

_NO_STORE = {"Cache-Control": "no-cache"}


def integrity_routes(tree: MerkleTree, vkey: str) -> list[Route]:
    """The four public routes, serving ``tree`` and the verifier key ``vkey``."""

    async def checkpoint(_: Request) -> Response:
        latest = await tree.latest_checkpoint()
        if latest is None:
            raise NotFound("no checkpoint has been signed yet", _NO_STORE)
        return PlainTextResponse(latest.note, headers=_NO_STORE)

    async def key(_: Request) -> Response:
        return PlainTextResponse(vkey + "\n")

    async def consistency(request: Request) -> Response:
        q = ConsistencyQuery.parse(request)
        old, new = q.from_, q.to
        if old > new:
            raise BadRequest(f"from={old} is larger than to={new}")
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
        Route("/public/proof/consistency", consistency),
        Route("/public/proof/inclusion", inclusion),
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
