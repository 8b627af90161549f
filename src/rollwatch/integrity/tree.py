"""The log's Merkle tree, kept incrementally in a SQLite file next to the projections.

Like a projection, the tree is derived from the log only and fed by a catch-up loop
(:meth:`MerkleTree.catch_up`, :meth:`MerkleTree.follow`); ``merkle.db`` can be
deleted and rebuilt at any time, and a rebuild after the log was rewritten yields a
tree that no longer matches the checkpoints signed before (which is the point).

What is stored: the hash of every *perfect* subtree, ``(level, index)`` covering
leaves ``[index·2^level, (index+1)·2^level)``, about 2n hashes for n events. A
perfect subtree never changes once its last leaf exists, so the nodes of any past
tree size are all still there, and every root or proof for any size ≤ the current
one is O(log n) lookups (see :mod:`rollwatch.integrity.merkle`). Hashes are packed
64 to a row (one row per level and run of 64 indices): appending rewrites only the
last, partial row of each level it touches, and a proof reads O(log n) rows in one
query.

Appending keeps memory flat: each batch of events reads the tree's right edge (one
hash per set bit of the size), hashes the batch, and writes the new rows, all in one
transaction together with the new size, so a crash never leaves half a batch, and
two processes catching up at once (``BEGIN IMMEDIATE``) never apply an event twice.

The tree checks the log as it goes: every batch must continue at ``size + 1``, and
before each catch-up the event it absorbed last must still carry the hash it had
(a rewrite of the log's tail is refused with :class:`IntegrityError`). Rewrites
further back are what checkpoints and ``rollwatch verify`` catch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from rollwatch._sqlite import ThreadConnection
from rollwatch.abc import EventStore
from rollwatch.errors import IntegrityError, StoreError
from rollwatch.events import Recorded
from rollwatch.integrity.checkpoint import CheckpointSigned
from rollwatch.integrity.merkle import (
    HASH_SIZE,
    InvalidProof,
    Node,
    assemble,
    consistency_ranges,
    fold,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    nodes_for,
    root_nodes,
)
from rollwatch.log import get_logger

log = get_logger(__name__)

FORMAT = 1
"""Bump when the stored layout changes: the tree is then dropped and rebuilt from the log."""

STRIP = 64
"""Hashes per row."""

_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=30000")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tree_state (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    format    INTEGER NOT NULL,
    size      INTEGER NOT NULL,   -- leaves absorbed: events 1..size
    last_hash TEXT    NOT NULL    -- the chain hash of event `size`, to notice a rewritten tail
);
-- k = level << 40 | (index / 64), hashes = 32 bytes per node from index 64·(k & (2^40 - 1)) on
CREATE TABLE IF NOT EXISTS tree_strips (k INTEGER PRIMARY KEY, hashes BLOB NOT NULL);
-- every CheckpointSigned event of the log, as absorbed
CREATE TABLE IF NOT EXISTS tree_checkpoints (
    seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, root TEXT NOT NULL, note TEXT NOT NULL
);
"""


def _key(level: int, index: int) -> int:
    return (level << 40) | (index // STRIP)


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A ``CheckpointSigned`` event as the tree found it in the log (not yet verified)."""

    seq: int
    size: int
    root: str
    note: str


class MerkleTree:
    """The RFC 9162 tree over every event of the log, in ``merkle.db``.

    Use with ``async with``. Readers (proofs, roots) may run while a catch-up writes:
    rows only ever grow, and a read takes one snapshot.
    """

    def __init__(self, path: Path | str, *, batch: int = 2000) -> None:
        self.path = Path(path)
        self.batch = batch
        self.size = 0
        """The size as of this process's last catch-up or read."""
        self._w: ThreadConnection | None = None
        self._r: ThreadConnection | None = None
        self._lock = anyio.Lock()

    async def __aenter__(self) -> MerkleTree:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._w = await ThreadConnection.open(self.path, _PRAGMAS)
            self._r = await ThreadConnection.open(self.path, _PRAGMAS)
            self.size = await self._w.run(self._setup)
        except sqlite3.Error as e:
            await self.__aexit__()
            raise StoreError(f"cannot open the Merkle tree {self.path}: {e}") from e
        return self

    async def __aexit__(self, *exc: object) -> None:
        for db in (self._w, self._r):
            if db is not None:
                await db.close()
        self._w = self._r = None

    def _conn(self, reader: bool = False) -> ThreadConnection:
        db = self._r if reader else self._w
        if db is None:
            raise StoreError("the Merkle tree is not open (use it with `async with`)")
        return db

    @staticmethod
    def _setup(db: sqlite3.Connection) -> int:
        db.executescript(SCHEMA)  # idempotent; executescript commits on its own
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT format, size FROM tree_state").fetchone()
            if row is not None and row[0] != FORMAT:
                log.info("merkle_tree_format_changed", stored=row[0], current=FORMAT, rebuild=True)
                MerkleTree._clear(db)
                row = None
            if row is None:
                db.execute("INSERT OR REPLACE INTO tree_state VALUES (1, ?, 0, '')", (FORMAT,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(row[1]) if row else 0

    @staticmethod
    def _clear(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM tree_strips")
        db.execute("DELETE FROM tree_checkpoints")
        db.execute("INSERT OR REPLACE INTO tree_state VALUES (1, ?, 0, '')", (FORMAT,))

    async def rebuild(self) -> None:
        """Drop every node; the next catch-up hashes the log from its first event."""

        def clear(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._clear(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        async with self._lock:
            await self._conn().run(clear)
            self.size = 0

    # -- catching up with the log -------------------------------------------------------------

    async def catch_up(
        self,
        store: EventStore,
        *,
        until: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Absorb every event not yet in the tree (up to ``until``); return the tree size.

        Raises :class:`IntegrityError` when the log no longer continues the tree: the
        last absorbed event changed, or the log is shorter than the tree.
        """
        async with self._lock:
            while True:
                size, last_hash = await self._state()
                head = await store.head() if until is None else until
                if size > head:
                    if until is not None:
                        return size
                    raise self._fail(
                        head + 1,
                        f"the Merkle tree holds {size} events but the log only {head}: events were removed",
                    )
                if size:
                    await self._check_tail(store, size, last_hash)
                restart = False
                async for page in store.read_batches(after=size, until=head, batch=self.batch):
                    new_size = await self._conn().run(self._absorb, size, page)
                    if new_size != page[-1].seq:
                        # Another process absorbed some of these first: start from its size.
                        restart = True
                        break
                    size = new_size
                    if progress is not None:
                        progress(size, head)
                self.size = size
                if not restart:
                    return size

    def _fail(self, seq: int, reason: str) -> IntegrityError:
        log.error("merkle_tree_log_mismatch", seq=seq, reason=reason, tree=str(self.path))
        return IntegrityError(seq, reason)

    async def _check_tail(self, store: EventStore, size: int, last_hash: str) -> None:
        tail: list[Recorded] = []
        async for page in store.read_batches(after=size - 1, until=size, batch=1):
            tail.extend(page)
        if not tail or tail[0].seq != size:
            raise self._fail(
                size, f"event {size}, the last the Merkle tree absorbed, is missing from the log"
            )
        if tail[0].hash != last_hash:
            raise self._fail(
                size,
                f"event {size}, the last the Merkle tree absorbed, has changed in the log since "
                "(the log was rewritten); checkpoints signed before will not verify against it",
            )

    async def follow(
        self, store: EventStore, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Catch up, report started, then absorb new events as they are appended; never returns."""
        size = await self.catch_up(store)
        task_status.started()
        while True:
            await store.wait_for_new(size, timeout=5.0)
            size = await self.catch_up(store)

    def _absorb(self, db: sqlite3.Connection, expected: int, events: Sequence[Recorded]) -> int:
        """Add ``events`` (seq ``expected + 1`` on) in one transaction; return the size after."""
        # Hash before taking the write lock: the lock is held for the writes only.
        leaves = [leaf_hash(ev.canonical()) for ev in events]
        db.execute("BEGIN IMMEDIATE")
        try:
            size = db.execute("SELECT size FROM tree_state").fetchone()[0]
            if size != expected:
                skip = size - events[0].seq + 1
                if skip < 0 or skip >= len(events):
                    db.execute("ROLLBACK")
                    return int(size)
                events, leaves = events[skip:], leaves[skip:]
            for i, ev in enumerate(events):
                if ev.seq != size + 1 + i:
                    raise self._fail(
                        size + 1 + i, f"event {size + 1 + i} is missing from the log (the next is {ev.seq})"
                    )
            self._add_leaves(db, size, leaves)
            cps = [(ev.seq, *_checkpoint_fields(ev)) for ev in events if ev.type == CheckpointSigned.TYPE]
            if cps:
                db.executemany("INSERT OR REPLACE INTO tree_checkpoints VALUES (?, ?, ?, ?)", cps)
            size += len(events)
            db.execute("UPDATE tree_state SET size = ?, last_hash = ?", (size, events[-1].hash))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(size)

    def _add_leaves(self, db: sqlite3.Connection, n: int, leaves: list[bytes]) -> None:
        """Write ``leaves`` (indices n, n+1, ...) and every perfect subtree they complete."""
        edge = root_nodes(n)
        got = _get_nodes(db, edge)
        frontier = {level: got[(level, index)] for level, index in edge}
        level, first, new = 0, n, leaves
        while new:
            self._write_level(db, level, first, new)
            # Parent p is complete once its right child 2p+1 exists; its left child is
            # either new too or the level's last old node (the tree's right edge).
            end = first + len(new)
            parents = []
            for p in range(first // 2, end // 2):
                li = 2 * p - first
                left = new[li] if li >= 0 else frontier[level]
                parents.append(node_hash(left, new[li + 1]))
            level, first, new = level + 1, first // 2, parents

    @staticmethod
    def _write_level(db: sqlite3.Connection, level: int, first: int, hashes: list[bytes]) -> None:
        rows = []
        i, idx = 0, first
        while i < len(hashes):
            off = idx % STRIP
            take = min(STRIP - off, len(hashes) - i)
            blob = b"".join(hashes[i : i + take])
            k = _key(level, idx)
            if off:
                row = db.execute("SELECT hashes FROM tree_strips WHERE k = ?", (k,)).fetchone()
                if row is None or len(row[0]) < off * HASH_SIZE:
                    raise StoreError(
                        f"the Merkle tree file lacks nodes at level {level} before {idx}; rebuild it"
                    )
                blob = row[0][: off * HASH_SIZE] + blob
            rows.append((k, blob))
            i += take
            idx += take
        db.executemany("INSERT OR REPLACE INTO tree_strips (k, hashes) VALUES (?, ?)", rows)

    async def append_leaf_hashes(self, leaves: list[bytes]) -> int:
        """Append leaf hashes that come from nowhere (benchmarks build big trees this way)."""

        def add(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                size = int(db.execute("SELECT size FROM tree_state").fetchone()[0])
                self._add_leaves(db, size, leaves)
                size += len(leaves)
                db.execute("UPDATE tree_state SET size = ?, last_hash = ''", (size,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return size

        async with self._lock:
            self.size = await self._conn().run(add)
            return self.size

    # -- reading ---------------------------------------------------------------------------------

    async def _state(self) -> tuple[int, str]:
        rows = await self._conn(reader=True).fetchall("SELECT size, last_hash FROM tree_state")
        return int(rows[0][0]), str(rows[0][1])

    async def current_size(self) -> int:
        """The number of events in the tree now (as stored; another process may have grown it)."""
        self.size, _ = await self._state()
        return self.size

    async def _read(self, fn: Callable[[sqlite3.Connection, int], Any]) -> Any:
        """Run ``fn(db, stored size)`` in one read transaction (one snapshot)."""

        def snapshot(db: sqlite3.Connection) -> Any:
            db.execute("BEGIN")
            try:
                size = int(db.execute("SELECT size FROM tree_state").fetchone()[0])
                return fn(db, size)
            finally:
                db.execute("COMMIT")

        return await self._conn(reader=True).run(snapshot)

    @staticmethod
    def _check(size: int, stored: int) -> None:
        if not 0 <= size <= stored:
            raise InvalidProof(f"tree size {size} is not available: the tree holds {stored} events")

    async def root(self, size: int | None = None) -> bytes:
        """The tree head at ``size`` (default: the current size)."""

        def get(db: sqlite3.Connection, stored: int) -> bytes:
            n = stored if size is None else size
            self._check(n, stored)
            nodes = root_nodes(n)
            return fold([_get_nodes(db, nodes)[x] for x in nodes])

        return await self._read(get)  # type: ignore[no-any-return]

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` (event ``index + 1``) in the tree of ``size``."""

        def get(db: sqlite3.Connection, stored: int) -> list[bytes]:
            self._check(size, stored)
            ranges = inclusion_ranges(index, size)
            return assemble(ranges, _get_nodes(db, nodes_for(ranges)))

        return await self._read(get)  # type: ignore[no-any-return]

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The proof that the tree of ``old_size`` is a prefix of the tree of ``new_size``."""

        def get(db: sqlite3.Connection, stored: int) -> list[bytes]:
            self._check(new_size, stored)
            ranges = consistency_ranges(old_size, new_size)
            return assemble(ranges, _get_nodes(db, nodes_for(ranges)))

        return await self._read(get)  # type: ignore[no-any-return]

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """The stored leaf hashes of indices ``[start, end)`` (``end`` capped at the size)."""

        def get(db: sqlite3.Connection, stored: int) -> list[bytes]:
            stop = min(end, stored)
            if start >= stop:
                return []
            nodes = _get_nodes(db, [(0, i) for i in range(start, stop)])
            return [nodes[(0, i)] for i in range(start, stop)]

        return await self._read(get)  # type: ignore[no-any-return]

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The last ``CheckpointSigned`` event the tree has absorbed."""
        rows = await self._conn(reader=True).fetchall(
            "SELECT seq, size, root, note FROM tree_checkpoints ORDER BY seq DESC LIMIT 1"
        )
        return StoredCheckpoint(*rows[0]) if rows else None

    async def checkpoint_events_between(self, lo: int, hi: int) -> int:
        """How many events with ``lo < seq <= hi`` are checkpoints."""
        rows = await self._conn(reader=True).fetchall(
            "SELECT COUNT(*) FROM tree_checkpoints WHERE seq > ? AND seq <= ?", (lo, hi)
        )
        return int(rows[0][0])


def _checkpoint_fields(ev: Recorded) -> tuple[int, str, str]:
    d = ev.data
    size, root, note = d.get("size"), d.get("root"), d.get("note")
    # Malformed checkpoint events are kept as found: verification rejects them loudly.
    return (size if isinstance(size, int) else -1, str(root or ""), str(note or ""))


def _get_nodes(db: sqlite3.Connection, nodes: Iterable[Node]) -> dict[Node, bytes]:
    """The stored hashes of ``nodes``, reading each row once."""
    wanted: dict[int, list[Node]] = {}
    for level, index in nodes:
        wanted.setdefault(_key(level, index), []).append((level, index))
    out: dict[Node, bytes] = {}
    keys = list(wanted)
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        for k, blob in db.execute(
            f"SELECT k, hashes FROM tree_strips WHERE k IN ({','.join('?' * len(chunk))})", chunk
        ):
            for level, index in wanted[k]:
                off = (index % STRIP) * HASH_SIZE
                h = blob[off : off + HASH_SIZE]
                if len(h) == HASH_SIZE:
                    out[(level, index)] = bytes(h)
    if len(out) != sum(len(v) for v in wanted.values()):
        missing = sorted({n for v in wanted.values() for n in v} - out.keys())[:3]
        raise StoreError(f"the Merkle tree file lacks nodes {missing}; rebuild it from the log")
    return out
