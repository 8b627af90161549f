"""The log as a C2SP tlog-tiles log: hash tiles, entry bundles, and their paths.

https://c2sp.org/tlog-tiles serves a Merkle tree as static resources under a prefix
(ours: the server's root, ``/``; in ``publish export`` output, the export directory):

* ``checkpoint``: the latest signed checkpoint note (the same as ``/public/checkpoint``).
* ``tile/<L>/<N>[.p/<W>]``: the hashes at height ``8·L`` of the tree, 256 to a tile
  (8,192 bytes), tile ``N`` holding nodes ``N·256 .. N·256+255`` of that height. A
  level-0 tile holds leaf hashes; a level-1 tile the roots of full level-0 tiles. A
  partial tile (``.p/<W>``, ``1 <= W <= 255``) holds the first ``W`` of them.
* ``tile/entries/<N>[.p/<W>]``: the leaves themselves, each a big-endian uint16
  length and the event's canonical bytes (what ``SHA-256(0x00 ‖ ·)`` hashes).

``N`` is written in 3-digit groups, every group but the last prefixed with ``x``:
1234067 is ``x001/x234/067``. Our tree keeps the hash of every perfect subtree
(:mod:`rollwatch.integrity.tree`), and a tile's hashes are exactly such subtrees, so
a tile is one read of 256 stored hashes, never a rehash.

Full tiles and bundles never change once the tree has them: they are served with a
year's ``Cache-Control`` and ``immutable``, and ``publish export`` writes them as
plain files. A partial one is also fixed for its width but is superseded as the log
grows, so it is cached for a minute.

Entry bundles hold every event, results under embargo and subscriber records
included, so the daemon serves them to the operator only (see
:mod:`rollwatch.integrity.routes`) and ``publish export`` never writes them; a
released result's own events travel in its proof bundle
(:mod:`rollwatch.publication.proofs`). An event longer than 65,535 bytes (a very long
answer) cannot be written in the bundle format at all: its bundle is refused, while
its hash tiles and proofs work as for any other event.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from rollwatch.abc import EventStore
from rollwatch.errors import EntryTooLong, InvalidProof, TilePathError
from rollwatch.integrity.tree import MerkleTree

HEIGHT = 8
"""Tree levels per tile."""

WIDTH = 1 << HEIGHT
"""Hashes (or entries) in a full tile."""

MAX_ENTRY = 0xFFFF
"""The longest entry an entry bundle can hold (its length is a uint16)."""

FULL_CACHE = "public, max-age=31536000, immutable"
PARTIAL_CACHE = "public, max-age=60"

_LEVEL = re.compile(r"0|[1-9][0-9]?")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")
_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile: ``level`` None for an entry bundle; ``width`` 256 for a full tile."""

    level: int | None
    index: int
    width: int = WIDTH

    @property
    def full(self) -> bool:
        """Whether the tile is full (immutable for ever)."""
        return self.width == WIDTH

    @property
    def height(self) -> int:
        """The tree level its hashes are at (entries: 0, the leaves)."""
        return HEIGHT * (self.level or 0)

    def needs(self) -> int:
        """The smallest tree size that holds the whole tile."""
        return (self.index * WIDTH + self.width) << self.height

    def path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``."""
        head = "entries" if self.level is None else str(self.level)
        tail = "" if self.full else f".p/{self.width}"
        return f"tile/{head}/{encode_index(self.index)}{tail}"


def encode_index(n: int) -> str:
    """``N`` as the spec's path elements: 3-digit groups, all but the last prefixed ``x``."""
    if n < 0:
        raise ValueError(f"a tile index is not negative: {n}")
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def parse_tile_path(path: str) -> Tile:
    """The tile named by ``path`` (what follows ``tile/``); :class:`TilePathError` if it is none.

    Only the canonical spelling is accepted (no leading zeros, no leading ``x000``
    group), so each tile has one URL, which keeps caches from holding copies.
    """
    parts = path.split("/")
    if len(parts) < 2:
        raise TilePathError(f"{path!r} is not <L>/<N>[.p/<W>] or entries/<N>[.p/<W>]")
    head, rest = parts[0], parts[1:]
    if head == "entries":
        level = None
    elif _LEVEL.fullmatch(head) and int(head) <= 63:
        level = int(head)
    else:
        raise TilePathError(f"tile level {head!r} is not 0..63 (or 'entries') without leading zeros")
    width = WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        w = rest[-1]
        if not _WIDTH.fullmatch(w) or int(w) > WIDTH - 1:
            raise TilePathError(f"partial tile width {w!r} is not 1..255 without leading zeros")
        width = int(w)
        rest = [*rest[:-2], rest[-2][:-2]]
    *groups, last = rest
    if not _LAST.fullmatch(last) or not all(_GROUP.fullmatch(g) for g in groups):
        raise TilePathError(f"tile index {'/'.join(rest)!r} is not 3-digit groups, x-prefixed but the last")
    if groups and groups[0] == "x000":
        raise TilePathError(f"tile index {'/'.join(rest)!r} has a leading zero group")
    index = int("".join(g[1:] for g in groups) + last)
    return Tile(level, index, width)


def tiles_for(size: int) -> Iterator[Tile]:
    """Every hash tile a client may need for a tree of ``size``: the full ones and one partial per level."""
    level = 0
    while size >> (HEIGHT * level):
        nodes = size >> (HEIGHT * level)
        for index in range(nodes // WIDTH):
            yield Tile(level, index)
        if nodes % WIDTH:
            yield Tile(level, nodes // WIDTH, nodes % WIDTH)
        level += 1


async def hash_tile(tree: MerkleTree, tile: Tile, *, size: int | None = None) -> bytes:
    """The tile's bytes, read from ``tree``; :class:`InvalidProof` if the tree (of ``size``) lacks it."""
    if tile.level is None:
        raise ValueError("an entry bundle is not a hash tile")
    start = tile.index * WIDTH
    return b"".join(await tree.node_hashes(tile.height, start, start + tile.width, size=size))


async def entry_bundle(store: EventStore, tile: Tile, available: int) -> bytes:
    """The bundle of events ``index·256 + 1 ..`` (``width`` of them), each uint16-length-prefixed.

    ``available`` is the tree size the bundle may reach (a bundle never runs ahead of
    the hash tiles); :class:`InvalidProof` if it would, :class:`EntryTooLong` for an
    event too long for the format.
    """
    if tile.level is not None:
        raise ValueError("a hash tile is not an entry bundle")
    if tile.needs() > available:
        raise InvalidProof(f"{tile.path()} needs a tree of {tile.needs()} events; it has {available}")
    first = tile.index * WIDTH + 1
    out = bytearray()
    expected = first
    async for ev in store.read(after=first - 1, until=first + tile.width - 1):
        if ev.seq != expected:
            raise InvalidProof(f"event {expected} is missing from the log")
        data = ev.canonical()
        if len(data) > MAX_ENTRY:
            raise EntryTooLong(ev.seq, len(data))
        out += struct.pack(">H", len(data)) + data
        expected += 1
    if expected != first + tile.width:
        raise InvalidProof(f"event {expected} is missing from the log")
    return bytes(out)
