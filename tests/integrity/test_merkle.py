"""RFC 9162 hashing and proofs, against an independent reference written here from the RFC.

The reference below follows RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH), §2.1.4.1
(PROOF/SUBPROOF) as the recursive definitions, and §2.1.3.2 / §2.1.4.2 for
verification, without importing any of rollwatch's verifiers.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollwatch.integrity import merkle

# --- the independent reference ----------------------------------------------------------------


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_leaf(entry: bytes) -> bytes:
    return sha(b"\x00" + entry)


def ref_mth(leaves: list[bytes]) -> bytes:
    """MTH over leaf *hashes* (the tree's leaves are already hashed entries)."""
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    return ref_subproof(m, leaves, True)


def ref_verify_inclusion(index: int, size: int, leaf: bytes, path: list[bytes], root: bytes) -> bool:
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = sha(b"\x01" + p + r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        else:
            r = sha(b"\x01" + r + p)
        fn //= 2
        sn //= 2
    return sn == 0 and r == root


def ref_verify_consistency(m: int, n: int, old: bytes, new: bytes, path: list[bytes]) -> bool:
    if m == n:
        return not path and old == new
    if not path:
        return False
    proof = list(path)
    if m & (m - 1) == 0:
        proof = [old, *proof]
    fn, sn = m - 1, n - 1
    while fn % 2 == 1:
        fn //= 2
        sn //= 2
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = sha(b"\x01" + c + fr)
            sr = sha(b"\x01" + c + sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        else:
            sr = sha(b"\x01" + sr + c)
        fn //= 2
        sn //= 2
    return fr == old and sr == new and sn == 0


# --- helpers: proofs from rollwatch's range planner over an in-memory node table -------------------


class Nodes:
    """Every perfect node of a list of leaves, as a stored tree would keep them."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.table: dict[merkle.Node, bytes] = {}
        level, row = 0, leaves
        while row:
            for i, h in enumerate(row):
                self.table[(level, i)] = h
            row = [merkle.node_hash(row[i], row[i + 1]) for i in range(0, len(row) - 1, 2)]
            level += 1

    def inclusion(self, index: int, size: int) -> list[bytes]:
        ranges = merkle.inclusion_ranges(index, size)
        return merkle.assemble(ranges, {n: self.table[n] for n in merkle.nodes_for(ranges)})

    def consistency(self, m: int, n: int) -> list[bytes]:
        ranges = merkle.consistency_ranges(m, n)
        return merkle.assemble(ranges, {x: self.table[x] for x in merkle.nodes_for(ranges)})

    def root(self, size: int) -> bytes:
        return merkle.fold([self.table[n] for n in merkle.root_nodes(size)])


def leaves_of(n: int, seed: int = 0) -> list[bytes]:
    rnd = random.Random(seed)
    return [ref_leaf(rnd.randbytes(rnd.randrange(0, 40))) for _ in range(n)]


N_ALL = 100
LEAVES = leaves_of(400)
ROOTS = [ref_mth(LEAVES[:n]) for n in range(len(LEAVES) + 1)]
NODES = Nodes(LEAVES)


class TestHashing:
    def test_known_answers_from_certificate_transparency(self) -> None:
        """The roots of the RFC 6962 test leaves match the values published with Certificate Transparency."""
        entries = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            bytes(range(0x50, 0x58)),
            bytes(range(0x60, 0x70)),
        ]
        expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ]
        cr = merkle.CompactRange()
        for entry, want in zip(entries, expected, strict=True):
            cr.append(merkle.leaf_hash(entry))
            assert cr.root().hex() == want
        assert merkle.EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    def test_compact_range_and_stored_nodes_give_every_root(self) -> None:
        """The streaming root and the root folded from stored perfect nodes equal MTH at every size."""
        cr = merkle.CompactRange()
        assert cr.root() == ROOTS[0] == NODES.root(0)
        for n, leaf in enumerate(LEAVES, start=1):
            cr.append(leaf)
            assert cr.root() == ROOTS[n]
            assert NODES.root(n) == ROOTS[n]

    def test_leaf_and_node_hashes_are_domain_separated(self) -> None:
        """Leaves hash with a 0x00 prefix and nodes with 0x01, so a node never passes for a leaf."""
        a, b = ref_leaf(b"a"), ref_leaf(b"b")
        assert merkle.leaf_hash(b"a") == a
        assert merkle.node_hash(a, b) == sha(b"\x01" + a + b)
        assert merkle.leaf_hash(a + b) != merkle.node_hash(a, b)


class TestInclusion:
    def test_every_leaf_of_every_size_up_to_100(self) -> None:
        """For all sizes ≤ 100 and every leaf, the path equals the RFC's PATH and verifies both ways."""
        for size in range(1, N_ALL + 1):
            leaves = LEAVES[:size]
            for index in range(size):
                path = NODES.inclusion(index, size)
                assert path == ref_path(index, leaves)
                assert ref_verify_inclusion(index, size, leaves[index], path, ROOTS[size])
                assert merkle.verify_inclusion(index, size, leaves[index], path, ROOTS[size])

    def test_spot_checks_up_to_400(self) -> None:
        """Random (leaf, size) pairs on larger trees verify with the independent verifier."""
        rnd = random.Random(1)
        for _ in range(300):
            size = rnd.randrange(N_ALL, len(LEAVES) + 1)
            index = rnd.randrange(size)
            path = NODES.inclusion(index, size)
            assert path == ref_path(index, LEAVES[:size])
            assert ref_verify_inclusion(index, size, LEAVES[index], path, ROOTS[size])

    def test_wrong_leaf_index_size_or_path_fails(self) -> None:
        """Another leaf, index, size, a bit flipped, a hash missing or added: verification fails."""
        size, index = 77, 30
        leaf, root = LEAVES[index], ROOTS[size]
        path = NODES.inclusion(index, size)
        assert merkle.verify_inclusion(index, size, leaf, path, root)
        assert not merkle.verify_inclusion(index, size, LEAVES[index + 1], path, root)
        assert not merkle.verify_inclusion(index + 1, size, leaf, path, root)
        # (A size with the same path shape, 78, would pass: the root binds the size.)
        assert not merkle.verify_inclusion(index, 2 * size, leaf, path, root)
        assert not merkle.verify_inclusion(index, size, leaf, path[:-1], root)
        assert not merkle.verify_inclusion(index, size, leaf, [*path, path[0]], root)
        assert not merkle.verify_inclusion(size, size, leaf, path, root)
        for i in range(len(path)):
            bad = list(path)
            bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
            assert not merkle.verify_inclusion(index, size, leaf, bad, root)

    def test_proofs_need_logarithmically_many_nodes(self) -> None:
        """An inclusion path reads at most about 2·log2(n) stored nodes, whatever the leaf."""
        for size in (1000, 10**6, 10**9 + 7):
            worst = max(
                merkle.proof_cost(merkle.inclusion_ranges(i, size))[0]
                for i in (0, 1, size // 3, size // 2, size - 2, size - 1)
            )
            assert worst <= 2 * size.bit_length()


class TestConsistency:
    def test_all_pairs_up_to_100(self) -> None:
        """For all 0 ≤ M ≤ N ≤ 100 the proof equals the RFC's PROOF and verifies with both verifiers."""
        for n in range(1, N_ALL + 1):
            for m in range(1, n + 1):
                path = NODES.consistency(m, n)
                assert path == ref_proof(m, LEAVES[:n])
                assert ref_verify_consistency(m, n, ROOTS[m], ROOTS[n], path), (m, n)
                assert merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], path), (m, n)
            assert NODES.consistency(0, n) == []
            assert merkle.verify_consistency(0, n, merkle.EMPTY_ROOT, ROOTS[n], [])

    def test_spot_checks_up_to_400(self) -> None:
        """Random (M, N) pairs on larger trees verify with the independent verifier."""
        rnd = random.Random(2)
        for _ in range(300):
            n = rnd.randrange(N_ALL, len(LEAVES) + 1)
            m = rnd.randrange(1, n + 1)
            path = NODES.consistency(m, n)
            assert path == ref_proof(m, LEAVES[:n])
            assert ref_verify_consistency(m, n, ROOTS[m], ROOTS[n], path)

    def test_any_change_to_an_old_leaf_breaks_consistency(self) -> None:
        """Changing any one leaf of the old tree: no proof from the rewritten tree links to the old root."""
        for n in (2, 3, 7, 8, 9, 31, 64, 100):
            for m in range(1, n):
                for changed in {0, m // 2, m - 1}:
                    rewritten = list(LEAVES[:n])
                    rewritten[changed] = ref_leaf(b"rewritten")
                    forged = Nodes(rewritten)
                    path = forged.consistency(m, n)
                    new_root = ref_mth(rewritten)
                    assert not ref_verify_consistency(m, n, ROOTS[m], new_root, path)
                    assert not merkle.verify_consistency(m, n, ROOTS[m], new_root, path)

    @settings(max_examples=200, deadline=None)
    @given(data=st.data())
    def test_changed_old_leaf_fails_property(self, data: st.DataObject) -> None:
        """Property: for random sizes M < N ≤ 400 and any changed leaf below M, the proof fails."""
        n = data.draw(st.integers(2, len(LEAVES)))
        m = data.draw(st.integers(1, n - 1))
        changed = data.draw(st.integers(0, m - 1))
        rewritten = list(LEAVES[:n])
        rewritten[changed] = ref_leaf(data.draw(st.binary(max_size=20)) + b"!")
        forged = Nodes(rewritten)
        assert not merkle.verify_consistency(m, n, ROOTS[m], forged.root(n), forged.consistency(m, n))
        # ... while an honest proof over the same sizes holds.
        assert merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], NODES.consistency(m, n))

    def test_wrong_sizes_roots_or_paths_fail(self) -> None:
        """Swapped roots, wrong sizes, truncated or padded paths, flipped bits: verification fails."""
        m, n = 13, 57
        path = NODES.consistency(m, n)
        assert merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], path)
        assert not merkle.verify_consistency(m, n, ROOTS[n], ROOTS[m], path)
        assert not merkle.verify_consistency(m + 1, n, ROOTS[m], ROOTS[n], path)
        assert not merkle.verify_consistency(m, 2 * n, ROOTS[m], ROOTS[n], path)
        assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], path[:-1])
        assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], [*path, path[0]])
        assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], [])
        assert not merkle.verify_consistency(n, m, ROOTS[n], ROOTS[m], path)
        assert not merkle.verify_consistency(m, m, ROOTS[m], ROOTS[n], [])
        assert not merkle.verify_consistency(0, n, ROOTS[1], ROOTS[n], [])
        for i in range(len(path)):
            bad = list(path)
            bad[i] = bytes([bad[i][0] ^ 0x80]) + bad[i][1:]
            assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], bad)

    def test_malformed_requests_raise(self) -> None:
        """Ranges for impossible sizes raise InvalidProof rather than returning a wrong proof."""
        with pytest.raises(merkle.InvalidProof):
            merkle.consistency_ranges(5, 4)
        with pytest.raises(merkle.InvalidProof):
            merkle.inclusion_ranges(4, 4)
        with pytest.raises(merkle.InvalidProof):
            merkle.root_from_inclusion(0, 2, b"short", [])


# Certificate Transparency's RFC 6962 test tree (the 8 leaves of
# test_known_answers_from_certificate_transparency): the hash of every perfect subtree,
# as published with CT's (and transparency-dev's) proof test vectors, by (level, index).
CT_NODES = {
    (0, 0): "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    (0, 1): "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    (0, 2): "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    (0, 3): "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    (0, 4): "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    (0, 5): "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    (0, 6): "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    (0, 7): "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    (1, 0): "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    (1, 1): "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    (1, 2): "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    (1, 3): "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    (2, 0): "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    (2, 1): "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    (3, 0): "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
CT_ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


def ct(node: tuple[int, int]) -> bytes:
    return bytes.fromhex(CT_NODES[node])


def ct_root(size: int) -> bytes:
    return merkle.EMPTY_ROOT if size == 0 else bytes.fromhex(CT_ROOTS[size])


CT_NODE_BYTES = {n: ct(n) for n in CT_NODES}


class TestKnownAnswers:
    """Proofs over CT's RFC 6962 test tree equal the published ones, hash for hash: sizes of
    one, powers of two and not, the leaf at the right edge; and the degenerate cases."""

    @pytest.mark.parametrize(
        ("index", "size", "path"),
        [
            (0, 1, []),
            (0, 8, [(0, 1), (1, 1), (2, 1)]),
            (5, 8, [(0, 4), (1, 3), (2, 0)]),
            (2, 3, [(1, 0)]),
            (1, 5, [(0, 0), (1, 1), (0, 4)]),
        ],
    )
    def test_inclusion_paths_are_the_published_ones(
        self, index: int, size: int, path: list[tuple[int, int]]
    ) -> None:
        want = [ct(n) for n in path]
        got = merkle.assemble(merkle.inclusion_ranges(index, size), CT_NODE_BYTES)
        assert got == want
        assert merkle.verify_inclusion(index, size, ct((0, index)), want, ct_root(size))
        assert not merkle.verify_inclusion(index, size, ct((0, index)), want, merkle.EMPTY_ROOT)

    @pytest.mark.parametrize(
        ("old", "new", "path"),
        [
            (1, 8, [(0, 1), (1, 1), (2, 1)]),
            (6, 8, [(1, 2), (1, 3), (2, 0)]),
            (2, 5, [(1, 1), (0, 4)]),
            (6, 7, [(1, 2), (0, 6), (2, 0)]),
        ],
    )
    def test_consistency_proofs_are_the_published_ones(
        self, old: int, new: int, path: list[tuple[int, int]]
    ) -> None:
        want = [ct(n) for n in path]
        got = merkle.assemble(merkle.consistency_ranges(old, new), CT_NODE_BYTES)
        assert got == want
        assert merkle.verify_consistency(old, new, ct_root(old), ct_root(new), want)
        assert not merkle.verify_consistency(old, new, ct_root(new), ct_root(old), want)

    def test_degenerate_sizes(self) -> None:
        """Equal sizes need equal roots and no proof; the empty tree has SHA-256("") as its root and
        precedes every tree; no leaf is in it; a root that is not a hash links nothing."""
        empty, r1 = merkle.EMPTY_ROOT, ct_root(1)
        assert merkle.verify_consistency(0, 0, empty, empty, [])
        assert not merkle.verify_consistency(0, 0, empty, r1, [])  # two empty trees, two roots
        assert not merkle.verify_consistency(0, 0, r1, r1, [])
        assert merkle.verify_consistency(0, 8, empty, ct_root(8), [])
        assert not merkle.verify_consistency(0, 1, empty, empty, [empty])  # a proof from 0 is empty
        assert not merkle.verify_consistency(0, 1, empty, b"not a hash", [])
        assert merkle.verify_consistency(1, 1, r1, r1, [])
        assert not merkle.verify_consistency(1, 1, r1, ct_root(2), [])
        assert not merkle.verify_consistency(1, 1, r1, r1, [r1])
        assert not merkle.verify_consistency(8, 8, b"short", b"short", [])
        assert not merkle.verify_inclusion(0, 0, empty, [], empty)
        assert merkle.verify_inclusion(0, 1, r1, [], r1)
        assert not merkle.verify_inclusion(0, 1, r1, [r1], r1)
