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

Reading the log: any :class:`EventStore` through ``read_batches``, the canonical
bytes rebuilt from each :class:`Recorded`. A SQLite log is read straight from its
file instead (:class:`SQLiteLogFile`), on a read-only connection of the tree's own,
as bytes: half the Python work per event. And in the daemon the follower runs in a
worker process (:meth:`MerkleTree.follow_in_worker`): hashing every event of a busy
log in the daemon's own process would compete with the appends for the GIL (in
``bench/bench_integrity.py``, an in-process follower costs appends 15-30% of their
throughput on two cores; the worker, a few per cent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from rollwatch import _child
from rollwatch._sqlite import ThreadConnection, is_damaged, rollback
from rollwatch.abc import EventStore
from rollwatch.errors import IntegrityError, InvalidProof, StoreError, damaged_log
from rollwatch.events import GENESIS, CheckpointSigned, Recorded
from rollwatch.integrity.health import TREE_EDITED
from rollwatch.integrity.merkle import (
    HASH_SIZE,
    Node,
    assemble,
    consistency_ranges,
    fold,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    nodes_for,
    root_from_inclusion,
    root_nodes,
)
from rollwatch.log import get_logger

log = get_logger(__name__)

FORMAT = 1
"""Bump when the stored layout changes: the tree is then dropped and rebuilt from the log."""

STRIP = 64
"""Hashes per row."""

_FILE_POLL_S = 0.1  # how often a follower of a bare file looks for new events

_WAKE_EVERY_S = 0.25
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
-- which log this tree is of: the chain hash of its event 1
CREATE TABLE IF NOT EXISTS tree_log (id INTEGER PRIMARY KEY CHECK (id = 1), first_hash TEXT NOT NULL);
-- every CheckpointSigned event of the log, as absorbed
CREATE TABLE IF NOT EXISTS tree_checkpoints (
    seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, root TEXT NOT NULL, note TEXT NOT NULL
);
"""


def _create_tables(db: sqlite3.Connection) -> None:
    """:data:`SCHEMA`'s tables that are missing, in the caller's transaction."""
    for stmt in SCHEMA.split(";"):
        if "CREATE" in stmt:
            db.execute(stmt)


def _foreign(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """Every trigger and view in a tree file (rollwatch makes none there)."""
    return db.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') ORDER BY name"
    ).fetchall()


def _named(objects: list[tuple[str, str]]) -> str:
    return ", ".join(f"{kind} {name}" for kind, name in objects)


_COLUMNS = "seq, id, stream, version, type, schema, at, data, hash"
# Everything as bytes (no UTF-8 decoding into str), and the data of checkpoint events.
_FILE_PAGE = f"""
SELECT seq, CAST(at AS BLOB), CAST(id AS BLOB), CAST(stream AS BLOB), CAST(type AS BLOB), schema,
       CAST(data AS BLOB), CASE WHEN type = '{CheckpointSigned.TYPE}' THEN data END, hash
FROM events WHERE seq > ? AND seq <= ? ORDER BY seq
"""
# A string goes into canonical JSON as is when it is ASCII from this set (the fast
# path of rollwatch.events.json_str); any other row is rebuilt by canonical_bytes.
_PLAIN = re.compile(rb"[A-Za-z0-9 ._:+/@=-]*")
_CANONICAL = b'{"at":"%s","data":%s,"id":"%s","schema":%d,"seq":%d,"stream":"%s","type":"%s"}'
_LEAF_PREFIX = hashlib.sha256(b"\x00")


class SQLiteLogFile:
    """A SQLite event log read straight from its file (what the tree's worker process reads)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)


class _FileReader:
    """Reads a SQLite log file on a connection of its own.

    Used only inside the tree writer's thread units, so it is never used from two
    threads at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def db(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA query_only=1")
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def head(self) -> int:
        with self._naming_damage():
            return int(self.db().execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0)

    def hash_at(self, seq: int) -> str | None:
        with self._naming_damage():
            row = self.db().execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    @contextlib.contextmanager
    def _naming_damage(self) -> Iterator[None]:
        """A damaged log file said as such, naming it (the daemon showed SQLite's words only,
        "the Merkle tree worker failed: DatabaseError: database disk image is malformed")."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            if is_damaged(e):
                raise damaged_log(self.path, e) from e
            raise

    def page(
        self, after: int, upto: int, prev: bytes | None = None
    ) -> tuple[list[int], list[bytes], str, list[tuple[int, str]], int | None]:
        """Events ``after < seq <= upto``: (seqs, leaf hashes, chain hash of the last, checkpoint data,
        the first seq whose chain hash does not follow from ``prev`` and its content, if any)."""
        with self._naming_damage():
            return self._page(after, upto, prev)

    def _page(
        self, after: int, upto: int, prev: bytes | None
    ) -> tuple[list[int], list[bytes], str, list[tuple[int, str]], int | None]:
        db = self.db()
        db.execute("BEGIN")
        try:
            rows = db.execute(_FILE_PAGE, (after, upto)).fetchall()
            last = (
                db.execute("SELECT hash FROM events WHERE seq = ?", (rows[-1][0],)).fetchone()
                if rows
                else None
            )
            seqs, leaves, cps, slow = [], [], [], []
            canon: list[bytes] = []
            new = _LEAF_PREFIX.copy
            plain = _PLAIN.fullmatch
            for i, (seq, at, eid, stream, typ, schema, data, cp, _) in enumerate(rows):
                seqs.append(seq)
                h = new()
                if plain(at + eid + stream + typ):
                    c = _CANONICAL % (at, data, eid, schema, seq, stream, typ)
                    h.update(c)
                    leaves.append(h.digest())
                    canon.append(c)
                else:
                    leaves.append(b"")
                    canon.append(b"")
                    slow.append(i)
                if cp is not None:
                    cps.append((seq, cp))
            for i in slow:
                rec = db.execute(f"SELECT {_COLUMNS} FROM events WHERE seq = ?", (seqs[i],)).fetchone()
                canon[i] = tuple.__new__(Recorded, rec).canonical()
                leaves[i] = leaf_hash(canon[i])
            bad = None
            if prev is not None:
                # Each new event is checked as it is absorbed: its chain hash must
                # follow from the one before, so a row slipped in with a made-up hash
                # (the append-only triggers dropped) never enters the tree.
                for seq, c, row in zip(seqs, canon, rows, strict=True):
                    if hashlib.sha256(prev + c).hexdigest() != row[8]:
                        bad = seq
                        break
                    prev = bytes.fromhex(row[8])
        finally:
            db.execute("COMMIT")
        return seqs, leaves, "" if last is None else str(last[0]), cps, bad


def changed_error(seq: int) -> IntegrityError:
    """The finding about an event :meth:`MerkleTree.changed` names (the scrub's words)."""
    return IntegrityError(
        seq,
        "its content differs from what the Merkle tree absorbed when it was appended: the event was changed since",
    )


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

    def __init__(self, path: Path | str, *, batch: int = 2000, read_only: bool = False) -> None:
        self.path = Path(path)
        self.batch = batch
        self.read_only = read_only
        """Read an existing file only (checks): nothing is created, nothing absorbed."""
        self.size = 0
        """The size as of this process's last catch-up or read."""
        self._w: ThreadConnection | None = None
        self._r: ThreadConnection | None = None
        self._files: dict[Path, _FileReader] = {}
        self._lock = anyio.Lock()
        self._identified = False
        self._schema_seen: tuple[int, int] | None = None
        """(connection, PRAGMA schema_version) last found holding nothing foreign."""

    async def __aenter__(self) -> MerkleTree:
        if self.read_only:
            if not await anyio.Path(self.path).is_file():
                raise StoreError(f"there is no Merkle tree at {self.path}")
            try:
                self._r = await ThreadConnection.open(
                    self.path, ("PRAGMA query_only=1", "PRAGMA busy_timeout=30000")
                )
                if added := await self._r.run(_foreign):
                    raise StoreError(
                        f"the Merkle tree {self.path} holds what rollwatch never makes there"
                        f" ({_named(added)}); it is derived from the log: delete it, or open it"
                        " read-write to have it built again"
                    )
                self.size, _ = await self._state()
            except sqlite3.Error as e:
                await self.__aexit__()
                raise StoreError(f"cannot read the Merkle tree {self.path}: {e}") from e
            return self
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
        files, self._files = list(self._files.values()), {}

        def close_files(_: sqlite3.Connection) -> None:
            for f in files:
                f.close()

        if self._w is not None and files:
            await self._w.run(close_files)
        for db in (self._w, self._r):
            if db is not None:
                await db.close()
        self._w = self._r = None

    def _conn(self, reader: bool = False) -> ThreadConnection:
        db = self._r if reader else self._w
        if db is None:
            raise StoreError("the Merkle tree is not open (use it with `async with`)")
        return db

    def _setup(self, db: sqlite3.Connection) -> int:
        db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self._drop_foreign(db)
            _create_tables(db)
            row = db.execute("SELECT format, size FROM tree_state").fetchone()
            if dropped:
                MerkleTree._clear(db)
                row = None
            elif row is not None and row[0] != FORMAT:
                log.info("merkle_tree_format_changed", stored=row[0], current=FORMAT, rebuild=True)
                MerkleTree._clear(db)
                row = None
            if row is None:
                db.execute("INSERT OR REPLACE INTO tree_state VALUES (1, ?, 0, '')", (FORMAT,))
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        self._schema_seen = (id(db), db.execute("PRAGMA schema_version").fetchone()[0])
        return int(row[1]) if row else 0

    def _drop_foreign(self, db: sqlite3.Connection) -> bool:
        """Drop every trigger and view in the file (in the caller's write transaction) and
        say whether there was one: rollwatch makes none there.

        Someone holding ``merkle.db`` could add a trigger that zeroes each node as it is
        written (every proof through it wrong), or replace a table by a view that shows
        nothing and swallows writes. What such an object did cannot be told apart, so the
        caller builds the tree again from the log (it is derived from the log). Looked at
        when the schema's version moved: one PRAGMA a write.
        """
        version = db.execute("PRAGMA schema_version").fetchone()[0]
        if self._schema_seen == (id(db), version):
            return False
        added = _foreign(db)
        for kind, name in added:
            db.execute(f'DROP {kind.upper()} IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
        if added:
            log.error(
                "merkle_tree_tampered",
                file=str(self.path),
                reason=f"it holds what rollwatch never makes there: {_named(added)}",
                action="dropped; building the tree again from the log",
            )
        self._schema_seen = (id(db), db.execute("PRAGMA schema_version").fetchone()[0])
        return bool(added)

    @staticmethod
    def _clear(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM tree_log")
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
                rollback(db)
                raise

        async with self._lock:
            await self._conn().run(clear)
            self.size = 0
            self._identified = False

    # -- catching up with the log -------------------------------------------------------------

    async def catch_up(
        self,
        store: EventStore | SQLiteLogFile,
        *,
        until: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Absorb every event not yet in the tree (up to ``until``); return the tree size.

        Raises :class:`IntegrityError` when the log no longer continues the tree: the
        last absorbed event changed, a seq is missing, or the log is shorter than the tree.
        """
        async with self._lock:
            file = self._file_reader(store)
            while True:
                size, last_hash = await self._state()
                head = until if until is not None else await self._head(store, file)
                if size > head:
                    if until is not None:
                        return size
                    raise self._fail(
                        head + 1,
                        f"the Merkle tree holds {size} events but the log only {head}: events were removed",
                    )
                if size:
                    await self._check_tail(store, file, size, last_hash)
                restart = False
                if file is not None:
                    while size < head and not restart:
                        want = min(head, size + self.batch)
                        new_size = await self._conn().run(self._absorb_file, file, size, want)
                        restart = new_size != want
                        size = new_size
                        if progress is not None:
                            progress(size, head)
                else:
                    assert isinstance(store, EventStore)
                    async for page in store.read_batches(after=size, until=head, batch=self.batch):
                        new_size = await self._conn().run(self._absorb_records, size, page)
                        if new_size != page[-1].seq:
                            restart = True
                            break
                        size = new_size
                        if progress is not None:
                            progress(size, head)
                # On a restart another process absorbed some of these first: go on from its size.
                self.size = size
                if size and not self._identified:
                    await self._record_identity(store, file)
                if not restart:
                    return size

    async def _record_identity(self, store: EventStore | SQLiteLogFile, file: _FileReader | None) -> None:
        """Remember which log this tree is of (the hash of its event 1), once."""
        first = await _first_hash(store, file, self._conn())
        if first is not None:
            await self._conn().run(
                lambda db: db.execute("INSERT OR IGNORE INTO tree_log VALUES (1, ?)", (first,))
            )
            self._identified = True

    async def first_hash(self) -> str | None:
        """The chain hash of event 1 of the log this tree was built from (None if not known)."""
        rows = await self._conn(reader=True).fetchall("SELECT first_hash FROM tree_log")
        return str(rows[0][0]) if rows else None

    def _file_reader(self, store: EventStore | SQLiteLogFile) -> _FileReader | None:
        from rollwatch.store.sqlite import SQLiteEventStore

        if not isinstance(store, SQLiteEventStore | SQLiteLogFile):
            return None
        reader = self._files.get(store.path)
        if reader is None:
            reader = self._files[store.path] = _FileReader(store.path)
        return reader

    async def _head(self, store: EventStore | SQLiteLogFile, file: _FileReader | None) -> int:
        if file is not None:
            return await self._conn().run(lambda _: file.head())
        assert isinstance(store, EventStore)
        return await store.head()

    def _fail(self, seq: int, reason: str) -> IntegrityError:
        # A warning: whoever runs the tree reports the finding (the daemon as one ERROR, log_tampered).
        log.warning("merkle_tree_log_mismatch", seq=seq, reason=reason, tree=str(self.path))
        return IntegrityError(seq, reason)

    async def _check_tail(
        self, store: EventStore | SQLiteLogFile, file: _FileReader | None, size: int, last_hash: str
    ) -> None:
        if file is not None:
            found = await self._conn().run(lambda _: file.hash_at(size))
        else:
            assert isinstance(store, EventStore)
            found = None
            async for page in store.read_batches(after=size - 1, until=size, batch=1):
                found = page[0].hash if page[0].seq == size else None
        if found is None:
            raise self._fail(
                size, f"event {size}, the last the Merkle tree absorbed, is missing from the log"
            )
        if found != last_hash:
            raise self._fail(
                size,
                f"event {size}, the last the Merkle tree absorbed, has changed in the log since "
                "(the log was rewritten); checkpoints signed before will not verify against it",
            )

    async def follow(
        self, store: EventStore | SQLiteLogFile, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Catch up, report started, then absorb new events as they are appended; never returns."""
        size = await self.catch_up(store)
        task_status.started()
        while True:
            try:
                if isinstance(store, SQLiteLogFile):
                    # No in-process wake-up for a file: look again shortly.
                    await anyio.sleep(_FILE_POLL_S)
                else:
                    await store.wait_for_new(size, timeout=5.0)
                size = await self.catch_up(store)
            except IntegrityError:
                raise
            except StoreError as e:
                # The log is out of reach for now (a database outage): try again. A log
                # that no longer matches the tree raises IntegrityError, which is final.
                log.warning("tree_follow_failed", error=str(e), retry_in_s=5.0)
                await anyio.sleep(5.0)

    async def follow_in_worker(
        self, store: EventStore, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Like :meth:`follow`, but the hashing runs in a worker process when the log is a SQLite file.

        Starts ``python -m rollwatch.integrity._worker``, wakes it on every append,
        and reports started once the worker has caught up. Raises
        :class:`IntegrityError` when the worker finds the log inconsistent with the
        tree, :class:`StoreError` when it dies otherwise. Other stores: :meth:`follow`.
        """
        file = self._file_reader(store)
        if file is None:
            await self.follow(store, task_status=task_status)
            return
        started = False

        class _Started:
            def started(self, value: object = None) -> None:
                nonlocal started
                if not started:
                    started = True
                    task_status.started()

        while True:
            try:
                await self._follow_with_worker(store, file, _Started())
                return
            except IntegrityError:
                raise
            except StoreError as e:
                if not started:
                    raise
                # The log or the tree cannot be written for now (a full disk, a lock held
                # elsewhere, a read-only file): as :meth:`follow` does, start again later.
                log.error("tree_follow_failed", error=str(e), retry_in_s=5.0)
                await anyio.sleep(5.0)

    async def _follow_with_worker(self, store: EventStore, file: _FileReader, task_status: Any) -> None:
        size = await self.current_size()
        cmd = [
            sys.executable,
            "-m",
            "rollwatch.integrity._worker",
            str(file.path),
            str(self.path),
            str(self.batch),
        ]
        failure: BaseException | None = None
        async with await anyio.open_process(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            start_new_session=True,  # see rollwatch._child
            env=_child.env(),
        ) as proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            stdin, lines = proc.stdin, BufferedByteReceiveStream(proc.stdout)

            async def wake() -> None:
                after = size
                while True:
                    head = await store.wait_for_new(after, timeout=5.0)
                    if head > after:
                        after = head
                        try:
                            await stdin.send(b"\n")
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            return  # the worker is gone; the reader below reports why
                        # At most four wake-ups a second: under a stream of commits the
                        # worker then hashes bigger batches in fewer transactions, and
                        # holds the log's WAL back from being checkpointed less often.
                        await anyio.sleep(_WAKE_EVERY_S)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wake)
                    started = False
                    while True:
                        try:
                            line = (await lines.receive_until(b"\n", 65536)).decode()
                        except (anyio.EndOfStream, anyio.IncompleteRead):
                            code = await proc.wait()
                            failure = StoreError(f"the Merkle tree worker exited with status {code}")
                            break
                        kind, _, rest = line.partition(" ")
                        if kind == "size":
                            self.size = int(rest)
                            if not started:
                                started = True
                                task_status.started()
                        elif kind == "integrity":
                            seq, _, reason = rest.partition(" ")
                            failure = IntegrityError(int(seq), reason)
                            break
                        else:
                            failure = StoreError(f"the Merkle tree worker failed: {rest}")
                            break
                    tg.cancel_scope.cancel()
            finally:
                # Closing its stdin tells the worker to stop; it finishes its batch first.
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await stdin.aclose()
                    await proc.wait()
        if failure is not None:
            raise failure

    def _absorb_file(self, db: sqlite3.Connection, file: _FileReader, expected: int, upto: int) -> int:
        prev = _previous_hash(db, expected)
        seqs, leaves, last_hash, cps, bad = file.page(expected, upto, prev)
        if not seqs:
            # upto never exceeds the head read before: those events must exist.
            raise self._fail(expected + 1, f"event {expected + 1} is missing from the log")
        first = seqs[0]
        for i, seq in enumerate(seqs):
            if seq != first + i:
                raise self._fail(first + i, f"event {first + i} is missing from the log (the next is {seq})")
        if bad is not None and first == expected + 1:
            raise self._fail(bad, "its hash does not match its content and the previous hash")
        rows = [(seq, *checkpoint_fields(data)) for seq, data in cps]
        return self._write_batch(db, expected, first, leaves, last_hash, rows)

    def _absorb_records(self, db: sqlite3.Connection, expected: int, events: Sequence[Recorded]) -> int:
        first = events[0].seq
        for i, ev in enumerate(events):
            if ev.seq != first + i:
                raise self._fail(
                    first + i, f"event {first + i} is missing from the log (the next is {ev.seq})"
                )
        prev = _previous_hash(db, expected) if first == expected + 1 else None
        leaves = []
        for ev in events:
            canonical = ev.canonical()
            leaves.append(leaf_hash(canonical))
            if prev is not None:
                if hashlib.sha256(prev + canonical).hexdigest() != ev.hash:
                    raise self._fail(ev.seq, "its hash does not match its content and the previous hash")
                prev = bytes.fromhex(ev.hash)
        cps = [
            (ev.seq, *checkpoint_fields(ev.data_json)) for ev in events if ev.type == CheckpointSigned.TYPE
        ]
        return self._write_batch(db, expected, first, leaves, events[-1].hash, cps)

    def _write_batch(
        self,
        db: sqlite3.Connection,
        expected: int,
        first: int,
        leaves: list[bytes],
        last_hash: str,
        cps: list[tuple[int, int, str, str]],
    ) -> int:
        """Add the leaves of events ``first, first + 1, ...`` in one transaction; return the size after."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._drop_foreign(db):
                # Built again from the log: the catch-up starts over from event 1.
                _create_tables(db)  # a table dropped for a view of its name
                self._clear(db)
                db.execute("COMMIT")
                self._identified = False
                return 0
            size = int(db.execute("SELECT size FROM tree_state").fetchone()[0])
            if size != expected:
                # Another process got here first; keep what it has not absorbed yet.
                skip = size - first + 1
                if skip < 0 or skip >= len(leaves):
                    rollback(db)
                    return size
                leaves = leaves[skip:]
                cps = [c for c in cps if c[0] > size]
            elif first != size + 1:
                raise self._fail(size + 1, f"event {size + 1} is missing from the log (the next is {first})")
            self._add_leaves(db, size, leaves)
            if cps:
                db.executemany("INSERT OR REPLACE INTO tree_checkpoints VALUES (?, ?, ?, ?)", cps)
            size += len(leaves)
            db.execute("UPDATE tree_state SET size = ?, last_hash = ?", (size, last_hash))
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return size

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
                rollback(db)
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

    async def inclusion_proofs(self, indices: Sequence[int], size: int) -> list[list[bytes]]:
        """The audit paths of several leaves in the tree of ``size``, read in one snapshot (proof bundles)."""

        def get(db: sqlite3.Connection, stored: int) -> list[list[bytes]]:
            self._check(size, stored)
            all_ranges = [inclusion_ranges(i, size) for i in indices]
            nodes = _get_nodes(db, set().union(*(nodes_for(r) for r in all_ranges)))
            return [assemble(r, nodes) for r in all_ranges]

        return await self._read(get)  # type: ignore[no-any-return]

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The proof that the tree of ``old_size`` is a prefix of the tree of ``new_size``."""

        def get(db: sqlite3.Connection, stored: int) -> list[bytes]:
            self._check(new_size, stored)
            ranges = consistency_ranges(old_size, new_size)
            return assemble(ranges, _get_nodes(db, nodes_for(ranges)))

        return await self._read(get)  # type: ignore[no-any-return]

    async def first_bad_node(self, size: int) -> tuple[int, int] | None:
        """The first stored interior node, among those of the tree of ``size``, that is not
        the hash of its two stored children, as (level, index); None when each is.

        Leaves are checked against the log elsewhere (``verify``, the scrub), and roots at
        the checkpoints' sizes are computed from the log's leaves: an interior node edited
        in ``merkle.db`` escaped both, and was served in every proof through it (inclusion
        and consistency proofs, proof bundles, the proofs sent to witnesses). One pass over
        the stored nodes, level by level, a strip of each at a time (about a second at 10⁶
        events)."""

        def get(db: sqlite3.Connection, stored: int) -> tuple[int, int] | None:
            n = min(size, stored)

            def strip(level: int, j: int) -> bytes:
                row = db.execute(
                    "SELECT hashes FROM tree_strips WHERE k = ?", ((level << 40) | j,)
                ).fetchone()
                return bytes(row[0]) if row is not None else b""

            level = 1
            while (1 << level) <= n:
                count = n >> level
                for j in range((count + STRIP - 1) // STRIP):
                    parents = strip(level, j)
                    children = strip(level - 1, 2 * j) + strip(level - 1, 2 * j + 1)
                    for i in range(min(STRIP, count - j * STRIP)):
                        left = children[2 * i * HASH_SIZE : (2 * i + 1) * HASH_SIZE]
                        right = children[(2 * i + 1) * HASH_SIZE : (2 * i + 2) * HASH_SIZE]
                        got = parents[i * HASH_SIZE : (i + 1) * HASH_SIZE]
                        if len(right) != HASH_SIZE or got != node_hash(left, right):
                            return level, j * STRIP + i
                level += 1
            return None

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

    async def leaf_blob(self, start: int, end: int) -> bytes:
        """:meth:`leaf_hashes` joined into one ``bytes``, read strip by strip (what the scrub
        and ``verify`` compare a page of the log's leaves with: one comparison, not one a leaf).
        Raises :class:`IntegrityError` where the file lacks a leaf below its size."""

        def get(db: sqlite3.Connection, stored: int) -> bytes:
            stop = min(end, stored)
            if start >= stop:
                return b""
            first, last = start // STRIP, (stop - 1) // STRIP
            rows = dict(
                db.execute(
                    "SELECT k, hashes FROM tree_strips WHERE k BETWEEN ? AND ?",
                    (_key(0, start), _key(0, stop - 1)),
                ).fetchall()
            )
            parts = []
            for j in range(first, last + 1):
                lo = start - j * STRIP if j == first else 0
                hi = stop - j * STRIP if j == last else STRIP
                blob = rows.get(_key(0, j * STRIP))
                piece = bytes(blob[lo * HASH_SIZE : hi * HASH_SIZE]) if isinstance(blob, bytes) else b""
                if len(piece) != (hi - lo) * HASH_SIZE:
                    # Below the size the file records: a row deleted or cut short there.
                    missing = j * STRIP + max(lo, len(blob) // HASH_SIZE if isinstance(blob, bytes) else 0)
                    raise IntegrityError(
                        missing + 1,
                        f"the Merkle tree holds {stored} events but not the leaves of events"
                        f" {missing + 1} to {j * STRIP + hi}: {TREE_EDITED}; rebuild the tree",
                    )
                parts.append(piece)
            return b"".join(parts)

        return await self._read(get)  # type: ignore[no-any-return]

    async def changed(
        self,
        records: Iterable[Recorded],
        signed: tuple[int, bytes] | None = None,
        *,
        leaves: Sequence[bytes] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Check events read from the log against what the tree absorbed when they were
        appended: (the seqs of those that are no longer the event absorbed there, the seqs
        it cannot tell yet, not absorbed). With ``signed`` (the size and root of a
        checkpoint whose signature was verified), an event it covers must be proven in that
        root by the tree's audit path, so an edit of ``merkle.db``'s leaf beside the log's row
        is found too; any other is compared with the stored leaf. The scrub finds such edits
        only at its next pass: a reader about to release or serve on an event's word asks
        here first (see :func:`changed_error`).

        ``leaves``: each record's :func:`leaf_hash`, in ``records``' order, where the caller
        has them already (else computed here)."""
        recs = list(records)
        hashes = list(leaves) if leaves is not None else [leaf_hash(r.canonical()) for r in recs]
        assert len(hashes) == len(recs), "one leaf hash per record"
        pairs = sorted(zip(recs, hashes, strict=True), key=lambda p: p[0].seq)
        size, root = signed if signed is not None else (0, b"")

        def get(db: sqlite3.Connection, stored: int) -> tuple[list[int], list[int]]:
            n = size if size <= stored else 0  # a tree file behind the checkpoint: leaves only
            proven = [(r.seq, leaf) for r, leaf in pairs if r.seq <= n]
            rest = [(r.seq, leaf) for r, leaf in pairs if r.seq > n]
            changed = []
            if proven:
                ranges = [inclusion_ranges(seq - 1, n) for seq, _ in proven]
                nodes = _get_nodes(db, set().union(*(nodes_for(x) for x in ranges)))
                for (seq, leaf), x in zip(proven, ranges, strict=True):
                    try:
                        ok = root_from_inclusion(seq - 1, n, leaf, assemble(x, nodes)) == root
                    except InvalidProof:
                        ok = False
                    if not ok:
                        changed.append(seq)
            absorbed = [(seq, leaf) for seq, leaf in rest if 1 <= seq <= stored]
            stored_leaves = _get_nodes(db, [(0, seq - 1) for seq, _ in absorbed])
            changed += [seq for seq, leaf in absorbed if stored_leaves[(0, seq - 1)] != leaf]
            return sorted(changed), [seq for seq, _ in rest if seq > stored]

        if not pairs:
            return [], []
        return await self._read(get)  # type: ignore[no-any-return]

    async def node_hashes(self, level: int, start: int, end: int, *, size: int | None = None) -> list[bytes]:
        """The hashes of the perfect subtrees ``(level, i)`` for ``start <= i < end`` (tiles are made of these).

        Every one must be complete in the tree of ``size`` (default: the stored size),
        else :class:`InvalidProof` says which size would hold them.
        """

        def get(db: sqlite3.Connection, stored: int) -> list[bytes]:
            n = stored if size is None else size
            self._check(n, stored)
            need = end << level
            if start < 0 or end < start or need > n:
                raise InvalidProof(
                    f"nodes {start}..{end - 1} at level {level} need a tree of {need} events; it has {n}"
                )
            nodes = _get_nodes(db, [(level, i) for i in range(start, end)])
            return [nodes[(level, i)] for i in range(start, end)]

        return await self._read(get)  # type: ignore[no-any-return]

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The last ``CheckpointSigned`` event the tree has absorbed."""
        rows = await self._conn(reader=True).fetchall(
            "SELECT seq, size, root, note FROM tree_checkpoints ORDER BY seq DESC LIMIT 1"
        )
        return StoredCheckpoint(*rows[0]) if rows else None

    async def checkpoint_rows(self) -> tuple[int, list[tuple[int, int, str, str]]]:
        """The tree's size and every checkpoint it recorded as absorbed, (seq, size, root,
        note) by seq, read in one snapshot: the two are written in one transaction, so a
        row past the size is an edit, never a catch-up that ran between two reads."""

        def get(db: sqlite3.Connection, stored: int) -> tuple[int, list[tuple[int, int, str, str]]]:
            rows = db.execute("SELECT seq, size, root, note FROM tree_checkpoints ORDER BY seq").fetchall()
            return stored, [(int(a), int(b), str(c), str(d)) for a, b, c, d in rows]

        return await self._read(get)  # type: ignore[no-any-return]

    async def checkpoint_events_between(self, lo: int, hi: int) -> int:
        """How many events with ``lo < seq <= hi`` are checkpoints."""
        rows = await self._conn(reader=True).fetchall(
            "SELECT COUNT(*) FROM tree_checkpoints WHERE seq > ? AND seq <= ?", (lo, hi)
        )
        return int(rows[0][0])


async def _first_hash(
    store: EventStore | SQLiteLogFile, file: _FileReader | None, conn: ThreadConnection
) -> str | None:
    if file is not None:
        return await conn.run(lambda _: file.hash_at(1))
    assert isinstance(store, EventStore)
    async for page in store.read_batches(until=1, batch=1):
        return page[0].hash if page[0].seq == 1 else None
    return None


def read_tree_file(tree_file: Path, sql: str) -> list[Any]:
    """The rows ``sql`` reads from a tree file, opened read-only (blocking); none when
    there is no file or it cannot be read."""
    if not tree_file.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{tree_file}?mode=ro", uri=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def recorded_first_hash(tree_file: Path) -> str | None:
    """The event-1 hash a tree file records, read without opening it for writing (None: no file, or not recorded)."""
    rows = read_tree_file(tree_file, "SELECT first_hash FROM tree_log")
    return str(rows[0][0]) if rows else None


def _previous_hash(db: sqlite3.Connection, size: int) -> bytes | None:
    """The chain hash new events continue from (None when the tree does not know it)."""
    if size == 0:
        return GENESIS
    row = db.execute("SELECT size, last_hash FROM tree_state").fetchone()
    if row is None or row[0] != size or not row[1]:
        return None
    return bytes.fromhex(row[1])


def checkpoint_fields(data: str | bytes) -> tuple[int, str, str]:
    """(size, root, note) of a ``CheckpointSigned`` event's data as stored.

    Malformed checkpoint events are kept as found (size -1 when it is no 64-bit integer):
    verification rejects them loudly, naming the seq. Data that is not a JSON object, or a
    size past SQLite's integers, stopped the tree's follower instead, and with it the daemon,
    with a traceback (whichever of the follower and the scrub saw such a row first).
    """
    try:
        d = json.loads(data)
    except (ValueError, RecursionError):
        return (-1, "", "")
    if not isinstance(d, dict):
        return (-1, "", "")
    size, root, note = d.get("size"), d.get("root"), d.get("note")
    if type(size) is not int or not -(1 << 63) <= size < (1 << 63):
        size = -1
    return (size, str(root or ""), str(note or ""))


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
