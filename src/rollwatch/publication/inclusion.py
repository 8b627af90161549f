"""Inclusion proofs for released items, so that ``rollwatch audit --item ID`` can check them.

A released item stands for its rollout's ``RolloutScored`` event (or the
``RolloutRescored`` that flipped it to a pass). With the Merkle tree
at hand (:mod:`rollwatch.integrity`), the item's ``_rollwatch`` object carries what
:func:`rollwatch.integrity.routes.inclusion_fields` gives: the event's ``seq``,
``leaf_index``, ``canonical`` JSON and ``leaf_hash``, and an inclusion proof
``{"size", "path"}`` for the latest signed checkpoint's size, so an auditor checks it
against the checkpoint it just verified. An event after that checkpoint gets its leaf
fields only (the auditor waits for the next checkpoint): a proof against the tree as it
stands would tell anyone the log's live size, which the public routes keep to the
signed tree (its steps between checkpoints time each verdict under embargo).

Proofs are O(log n) node reads, made only for the items served; those under the
latest checkpoint are kept until the next one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rollwatch.abc import EventStore
from rollwatch.events import Recorded
from rollwatch.integrity.checkpoint import b64
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.integrity.routes import inclusion_fields
from rollwatch.integrity.tree import MerkleTree
from rollwatch.publication.public import Released

ItemFields = dict[str, dict[str, Any]]
"""Rollout id -> the fields to merge into its item's ``_rollwatch`` object."""

_KEEP = 10_000  # proofs kept for the current checkpoint (the feed asks for about 100)


async def _event(store: EventStore, seq: int) -> Recorded | None:
    async for ev in store.read(after=seq - 1, until=seq):
        return ev
    return None


def _leaf_only(event: Recorded) -> dict[str, Any]:
    canonical = event.canonical()
    return {
        "seq": event.seq,
        "leaf_index": event.seq - 1,
        "canonical": canonical.decode(),
        "leaf_hash": b64(leaf_hash(canonical)),
    }


class InclusionProofs:
    """The ``_rollwatch`` inclusion fields of released items, from ``store`` and its ``tree``."""

    def __init__(self, store: EventStore, tree: MerkleTree) -> None:
        self.store = store
        self.tree = tree
        self._size = 0
        self._kept: dict[int, dict[str, Any]] = {}  # seq -> fields for a tree of self._size

    async def fields(self, items: Iterable[Released]) -> tuple[ItemFields, int]:
        """The fields of each of ``items`` (by rollout id), and the checkpoint size they
        were made for: the same items with the same size get the same fields."""
        latest = await self.tree.latest_checkpoint()
        signed = latest.size if latest is not None else 0
        if signed != self._size or len(self._kept) > _KEEP:
            self._size, self._kept = signed, {}
        kept = self._kept
        out: ItemFields = {}
        for r in items:
            seq = r.scored_seq
            if seq is None:  # no score recorded: nothing the item could be checked against
                continue
            if seq not in kept:
                ev = await _event(self.store, seq)
                if ev is None:
                    continue
                kept[seq] = await inclusion_fields(self.tree, ev, signed) if seq <= signed else _leaf_only(ev)
            out[r.rollout_id] = kept[seq]
        return out, signed
