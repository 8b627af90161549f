"""RFC 9162 Merkle trees: hashes, proofs as subtree ranges, and proof verification.

Pure functions, no I/O. The tree over the log has one leaf per event, in ``seq``
order (leaf index = seq - 1), and the leaf is the event's canonical bytes (see
``rollwatch.events``)::

    leaf hash  = SHA-256(0x00 ‖ canonical bytes)
    node hash  = SHA-256(0x01 ‖ left ‖ right)
    MTH({})    = SHA-256()                        (the empty tree)
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n]))   k = the largest power of two < n

Storage is someone else's business: a proof is first described as the list of
subtree ranges ``[lo, hi)`` whose MTHs it carries (:func:`inclusion_ranges`,
:func:`consistency_ranges`, RFC 9162 §2.1.3.1 and §2.1.4.1). Every such range is
either a *perfect aligned* subtree (``hi - lo`` a power of two, ``lo`` a multiple
of it) or a run of them ending at the tree's right edge, so
:func:`subtree_nodes` decomposes it into at most log₂ n perfect nodes
``(level, index)`` that a store can keep once and never change. A proof thus costs
O(log n) node lookups, whatever the tree size; :func:`assemble` turns the looked-up
nodes into the proof's hashes.

The verifiers are RFC 9162 §2.1.3.2 and §2.1.4.2, step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from rollwatch.errors import InvalidProof

EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32

Node = tuple[int, int]
"""A perfect subtree: ``(level, index)`` covers leaves ``[index·2^level, (index+1)·2^level)``."""

Range = tuple[int, int]
"""A run of leaves ``[lo, hi)``."""

_LEAF = hashlib.sha256(b"\x00")
_NODE = hashlib.sha256(b"\x01")


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf (an event's canonical bytes)."""
    h = _LEAF.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    h = _NODE.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


# --- proofs as subtree ranges ------------------------------------------------------------


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose MTHs form the audit path of leaf ``index`` in a tree of ``size``.

    RFC 9162 §2.1.3.1 ``PATH(m, D[n])``, in the RFC's order (from the leaf up).
    """
    if not 0 <= index < size:
        raise InvalidProof(f"leaf index {index} is not in a tree of size {size}")
    top_down: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            lo += k
    top_down.reverse()
    return top_down


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """The subtrees whose MTHs form the consistency proof from ``old_size`` to ``new_size``.

    RFC 9162 §2.1.4.1 ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)``, in the RFC's
    order. Empty when the sizes are equal or the old tree is empty (nothing to prove).
    """
    if not 0 <= old_size <= new_size:
        raise InvalidProof(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    top_down: list[Range] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        if m == hi - lo:
            # SUBPROOF(m, D[m], b): the old tree's own subtree, unless the verifier
            # already has it (it is the whole old tree: b is still true).
            if not complete:
                top_down.append((lo, hi))
            break
        k = split_point(hi - lo)
        if m <= k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            lo += k
            m -= k
            complete = False
    top_down.reverse()
    return top_down


def subtree_nodes(lo: int, hi: int) -> list[Node]:
    """The perfect nodes whose right fold is ``MTH(D[lo:hi])``, largest first.

    ``MTH(D[lo:hi]) = node(N₁, node(N₂, … node(Nₖ₋₁, Nₖ)))``: the binary
    decomposition of ``hi - lo``. Requires ``lo`` to be a multiple of the largest
    part, which holds for every range an RFC 9162 proof or root needs.
    """
    if not 0 <= lo < hi:
        raise InvalidProof(f"empty or negative leaf range [{lo}, {hi})")
    out: list[Node] = []
    size = hi - lo
    while size:
        level = size.bit_length() - 1
        width = 1 << level
        if lo % width:
            raise ValueError(f"leaf range [{lo}, {hi}) is not aligned to its subtrees")
        out.append((level, lo >> level))
        lo += width
        size -= width
    return out


def root_nodes(size: int) -> list[Node]:
    """The perfect nodes whose right fold is the root of a tree of ``size`` (empty for 0)."""
    return subtree_nodes(0, size) if size else []


def fold(hashes: Sequence[bytes]) -> bytes:
    """``node(h₁, node(h₂, … node(hₖ₋₁, hₖ)))``; the empty tree's root for no hashes."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def nodes_for(ranges: Iterable[Range]) -> set[Node]:
    """Every perfect node the ranges need: what to look up, in one go."""
    out: set[Node] = set()
    for lo, hi in ranges:
        out.update(subtree_nodes(lo, hi))
    return out


def assemble(ranges: Sequence[Range], nodes: Mapping[Node, bytes]) -> list[bytes]:
    """The proof's hashes: each range's MTH from the looked-up perfect nodes."""
    return [fold([nodes[n] for n in subtree_nodes(lo, hi)]) for lo, hi in ranges]


def proof_cost(ranges: Sequence[Range]) -> tuple[int, int]:
    """(node lookups, hash computations) a stored tree spends on a proof of ``ranges``."""
    parts = [len(subtree_nodes(lo, hi)) for lo, hi in ranges]
    return sum(parts), sum(p - 1 for p in parts)


class CompactRange:
    """The right edge of a growing tree: its root for every size, in O(log n) memory.

    Holds one hash per set bit of the size (the perfect subtrees of
    :func:`root_nodes`); appending a leaf merges equal-sized subtrees like a binary
    counter. Streams of millions of leaves stay at a few dozen hashes.
    """

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash."""
        h = leaf
        n = self.size
        while n & 1:
            h = node_hash(self._stack.pop(), h)
            n >>= 1
        self._stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        """The tree head of the leaves appended so far."""
        return fold(self._stack)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ------------------------------------------


def _check_hashes(path: Sequence[bytes]) -> None:
    for h in path:
        if len(h) != HASH_SIZE:
            raise InvalidProof(f"a proof hash is {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root that ``path`` proves leaf ``index`` (hash ``leaf``) is under, at ``size``.

    Raises :class:`InvalidProof` when the path has the wrong shape for the index
    and size (the RFC's "stop and fail" steps).
    """
    _check_hashes([leaf, *path])
    if not 0 <= index < size:
        raise InvalidProof(f"leaf index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise InvalidProof("the inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("the inclusion path is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """Whether ``path`` proves leaf ``index`` (hash ``leaf``) is in the tree of ``size`` with ``root``."""
    try:
        return root_from_inclusion(index, size, leaf, path) == root
    except InvalidProof:
        return False


def roots_from_consistency(
    old_size: int, new_size: int, old_root: bytes, path: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """The (old, new) roots that ``path`` links, for ``0 < old_size < new_size``.

    The proof holds when both match the roots the verifier trusts. Raises
    :class:`InvalidProof` when the path has the wrong shape for the sizes.
    """
    _check_hashes([old_root, *path])
    if not 0 < old_size < new_size:
        raise InvalidProof(f"no consistency path links size {old_size} to size {new_size}")
    if not path:
        raise InvalidProof("the consistency path is empty")
    proof = list(path)
    if old_size & (old_size - 1) == 0:
        proof.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise InvalidProof("the consistency path is longer than the new tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("the consistency path is shorter than the new tree is deep")
    return fr, sr


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> bool:
    """Whether ``path`` proves the tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``)."""
    if old_size < 0 or old_size > new_size:
        return False
    if old_size in (0, new_size):
        # Nothing to link: the proof is empty and the roots speak for themselves. Both
        # are still checked: two trees of one size share their root, and the empty tree's
        # is SHA-256 of nothing (a "root" of size 0 that is not is no tree at all).
        if path or len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
            return False
        if old_size == 0 and old_root != EMPTY_ROOT:
            return False
        return (old_size == 0 and new_size > 0) or old_root == new_root
    try:
        fr, sr = roots_from_consistency(old_size, new_size, old_root, path)
    except InvalidProof:
        return False
    return fr == old_root and sr == new_root
