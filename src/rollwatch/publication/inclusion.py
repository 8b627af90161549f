"""Inclusion proofs for released items, so that ``rollwatch audit --item ID`` can check them.

A released item stands for its rollout's ``RolloutScored`` event (or the
``RolloutRescored`` that flipped it to a pass). With the Merkle tree
at hand (:mod:`rollwatch.integrity`), the item's ``_rollwatch`` object carries what
:func:`rollwatch.integrity.routes.inclusion_fields` gives: the event's ``seq``,
``leaf_index``, ``canonical`` JSON and ``leaf_hash``, and an inclusion proof
``{"size", "path"}``. The proof is for the latest signed checkpoint's size when that
checkpoint covers the event, so an auditor checks it against the checkpoint it just
verified; otherwise for the tree as it stands (the auditor then waits for the next
checkpoint). An event the tree has not absorbed yet gets its leaf fields only.

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

    async def fields(self, items: Iterable[Released]) -> tuple[ItemFields, tuple[int, int]]:
        """The fields of each of ``items`` (by rollout id), and the tree sizes they were made for.

        The sizes, ``(checkpoint size, tree size)``, identify the answer: the same
        items with the same sizes get the same fields. The tree size is 0 when every
        item is under the checkpoint (so a growing tree does not change the answer).
        """
        latest = await self.tree.latest_checkpoint()
        signed = latest.size if latest is not None else 0
        if signed != self._size or len(self._kept) > _KEEP:
            self._size, self._kept = signed, {}
        kept = self._kept
        current = 0
        out: ItemFields = {}
        for r in items:
            seq = r.scored_seq
            if seq is None:  # no score recorded: nothing the item could be checked against
                continue
            if seq <= signed:
                if seq not in kept:
                    ev = await _event(self.store, seq)
                    if ev is None:
                        continue
                    kept[seq] = await inclusion_fields(self.tree, ev, signed)
                out[r.rollout_id] = kept[seq]
                continue
            # After the checkpoint: prove it in the tree as it stands, if the tree has it yet.
            current = current or await self.tree.current_size()
            ev = await _event(self.store, seq)
            if ev is None:
                continue
            out[r.rollout_id] = (
                await inclusion_fields(self.tree, ev, current) if seq <= current else _leaf_only(ev)
            )
        return out, (signed, current)
