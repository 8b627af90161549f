"""The event log in one SQLite file (sqlite3 in worker threads, see ``rollwatch._sqlite``).

Durability: ``journal_mode=WAL`` so readers (the feed, projections, a CLI in another
process) never block the writer, and ``synchronous=FULL`` because in WAL mode
``NORMAL`` skips the fsync of the WAL at commit: a committed transaction would
survive kill -9 (the OS holds the pages) but not a power loss. With ``FULL`` every
commit is on disk before ``append`` returns. The cost is one fsync per commit, which
group commit spreads over every append waiting at that moment.

Group commit: ``append`` hands its events to one writer task and waits. The writer
takes everything queued, checks each call's expected version, assigns ``seq``,
versions and hashes in order, and writes them in one transaction; a call whose
version check fails gets ``ConcurrencyConflict`` and contributes nothing, the others
commit. Other processes (the CLI while the daemon runs) append to the same file:
``BEGIN IMMEDIATE`` takes SQLite's write lock before the tip of the chain is read,
so two writers can never fork the chain.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from rollwatch._sqlite import ThreadConnection, rollback
from rollwatch.abc import SUBSCRIBER_TYPES, EventStore, WorkBoard
from rollwatch.errors import IntegrityError, StoreError, damaged_log, seq_below_one
from rollwatch.events import GENESIS, Event, Recorded
from rollwatch.log import get_logger
from rollwatch.store._group_commit import GroupCommitter, Pending, assign
from rollwatch.work import LocalBoard

log = get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,      -- the global position; rowid, so reads by seq are a b-tree walk
    id      TEXT    NOT NULL,
    stream  TEXT    NOT NULL,
    version INTEGER NOT NULL,
    type    TEXT    NOT NULL,
    schema  INTEGER NOT NULL,
    at      TEXT    NOT NULL,
    data    TEXT    NOT NULL,         -- canonical JSON, exactly the bytes the hash covers
    hash    TEXT    NOT NULL,
    UNIQUE (stream, version)
);
-- Append-only at the database level too: an UPDATE or DELETE through SQLite fails.
-- (Someone with the file can drop these; that is what the hash chain and verify are for.)
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
)

READER_PRAGMAS = (*PRAGMAS[:-1], "PRAGMA cache_size=-8192")
"""The reader's: a catch-up reads the whole log once, in order, and a cache the size of
the writer's would only fill with pages read once (64 MB of a rebuild's memory); 8 MB
keeps what point reads use again (the indexes' upper pages, the newest pages)."""

READ_ONLY_PRAGMAS = ("PRAGMA query_only=1", "PRAGMA busy_timeout=30000", "PRAGMA cache_size=-8192")

_COLUMNS = "seq, id, stream, version, type, schema, at, data, hash"
_LEAN_COLUMNS = "seq, NULL, NULL, NULL, type, schema, at, data, hash"
"""What a catch-up reads (``read_batches(lean=True)``): 0.04 s less of a rebuild's 200k events."""

SUBSCRIBER_INDEX = "events_subscribers"
_SUBSCRIBER_IN = f"type IN ({', '.join(repr(t) for t in SUBSCRIBER_TYPES)})"
SUBSCRIBER_INDEX_SQL = f"CREATE INDEX {SUBSCRIBER_INDEX} ON events (seq) WHERE {_SUBSCRIBER_IN}"
"""The index of the subscriber events: exactly this text in ``sqlite_master`` or it is not
read (someone holding the file can redefine it: with ``AND seq != N``, a revocation left out)."""


@functools.cache
def _our_schema() -> dict[tuple[str, str], tuple[str, str | None]]:
    """What ``SCHEMA`` puts in ``sqlite_master``, as SQLite words it: (type, name) -> (table, sql)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return {(t, n): (tbl, sql) for t, n, tbl, sql in db.execute(_SCHEMA_READ)}
    finally:
        db.close()


_SCHEMA_READ = "SELECT type, name, tbl_name, sql FROM sqlite_master"
_ANALYZE_TABLES = ("sqlite_stat1", "sqlite_stat4")


def foreign_schema(db: sqlite3.Connection) -> list[str]:
    """Every object in the file's schema that rollwatch did not make, or made otherwise.

    Whoever holds the file can add to its schema what changes the log as it is written or
    read, and no hash sees it: a trigger that drops an event as it is inserted (the append
    returns its seq, the next event takes that seq, the chain stays whole), a view named
    ``events`` over the renamed table, a column or constraint edited into the table's
    definition. So the schema must be exactly ours: our table, its index, our two triggers
    (one missing is made again at the next start), and the subscribers' index under any
    definition (read only when it is exactly ours: :meth:`SQLiteEventStore.subscriber_events`).
    ANALYZE's statistics tables are SQLite's own and can only choose among these indexes.
    """
    ours = _our_schema()
    found = []
    for kind, name, table, sql in db.execute(_SCHEMA_READ):
        if (kind, name, table) == ("index", SUBSCRIBER_INDEX, "events") or (
            kind == "table" and name in _ANALYZE_TABLES
        ):
            continue
        if (kind, name) not in ours:
            found.append(f"{kind} {name}")
        elif ours[kind, name] != (table, sql):
            found.append(f"{kind} {name} (its definition changed)")
    return found


def schema_finding(found: list[str], head: int, path: Path) -> IntegrityError:
    """The finding for ``found`` (from :func:`foreign_schema`), at the seq an append would take next."""
    return IntegrityError(
        head + 1,
        "the log file's schema holds what rollwatch did not make, which can drop, hide or change "
        f"events as they are written or read: {', '.join(found)} (`sqlite3 {path} .schema` shows them)",
    )


_INSERT_ONE = f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
_CHUNK = 250  # rows per INSERT statement (9 parameters each; SQLite allows 32,766)
_INSERT_CHUNK = f"INSERT INTO events ({_COLUMNS}) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?)"] * _CHUNK)
_POLL_S = 0.1  # how often a follower looks for appends by other processes


def _insert(db: sqlite3.Connection, rows: list[Recorded]) -> None:
    """Insert ``rows``, many per statement.

    sqlite3 releases the GIL while a statement runs and takes it back to bind the next
    one: with ``executemany`` once per row, and each time the event loop's thread is
    busy encoding that can cost a switch interval (5 ms). A statement of _CHUNK rows
    hands the GIL over once, and costs SQLite no more than _CHUNK single-row ones.
    """
    full = len(rows) - len(rows) % _CHUNK
    for i in range(0, full, _CHUNK):
        db.execute(_INSERT_CHUNK, list(itertools.chain.from_iterable(rows[i : i + _CHUNK])))
    db.executemany(_INSERT_ONE, rows[full:])


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _on_read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def streams_sql(streams: int, types: int, until: bool) -> str:
    """:meth:`SQLiteEventStore.read_streams`'s query for that many streams and types (and a
    ``seq <= ?`` bound). Each stream is looked up in the ``(stream, version)`` index, never by
    walking the table by seq: no ORDER BY (the rows are sorted in Python), and the bound is
    written ``+seq`` so that it cannot be a range of the rowid (with statistics of a small
    log, the planner chose that walk for 400 streams)."""
    where = f"stream IN ({','.join('?' * streams)})"
    if types:
        where += f" AND type IN ({','.join('?' * types)})"
    if until:
        where += " AND +seq <= ?"
    return f"SELECT {_COLUMNS} FROM events WHERE {where}"


class SQLiteEventStore(EventStore):
    """The SQLite implementation of :class:`rollwatch.abc.EventStore`."""

    def __init__(self, path: Path | str, *, read_only: bool = False, busy_timeout: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.read_only = read_only
        """Open an existing file for reading only: nothing is created, ``append`` refuses."""
        self.busy_timeout = busy_timeout
        """Seconds a statement waits for a lock another process holds before it fails."""
        self._busy = f"PRAGMA busy_timeout={max(1, round(busy_timeout * 1000))}"
        self._writer_db: ThreadConnection | None = None
        self._reader_db: ThreadConnection | None = None
        self._writer = GroupCommitter(self._commit, lambda: self.append_observer)
        self._appended = anyio.Event()
        self._head = 0
        # Stream versions as of our last commit. Valid only while no other process has
        # appended since (checked under the write lock by comparing the tip's seq).
        self._versions_seen: dict[str, int] = {}
        self._versions_at = -1
        self._index_refused: str | None = None
        self._schema_checked = -1  # the schema version foreign_schema last passed
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file opened

    async def _open(self, stack: AsyncExitStack) -> None:
        if self.read_only:
            await self._open_read_only(stack)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer_db = await ThreadConnection.open(self.path, self._pragmas(PRAGMAS), self._damaged)
            stack.push_async_callback(self._writer_db.close)
            await self._writer_db.run(lambda db: db.executescript(SCHEMA))
            self._reader_db = await ThreadConnection.open(
                self.path, self._pragmas(READER_PRAGMAS), self._damaged
            )
            stack.push_async_callback(self._reader_db.close)
            found = await self._writer_db.run(self._check_schema)
            self._file_id = _file_id(self.path)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the event log {self.path}: {e}") from e
        self._head = await self.head()
        if found:
            raise schema_finding(found, self._head, self.path)
        tg: TaskGroup = await stack.enter_async_context(anyio.create_task_group())
        # On exit: refuse new appends, let the writer commit what is queued, then stop.
        stack.callback(self._writer.close)
        await tg.start(self._writer.run)

    async def _open_read_only(self, stack: AsyncExitStack) -> None:
        # sqlite3 would create a missing file: a check of a mistyped path must not
        # leave an empty log behind (and report "ok: 0 events").
        if not await anyio.Path(self.path).is_file():
            raise StoreError(f"there is no event log at {self.path}")
        # A WAL database on a read-only file system (a backup on a read-only mount or
        # snapshot) cannot be opened as usual: SQLite needs to make its -shm file beside it
        # ("unable to open database file"). Nothing can write to such a file system, so
        # the file is read as immutable: no locks, no -shm.
        # Not with a write-ahead log beside it (a plain copy of a live log): an immutable
        # open ignores that file, and would read the log without its newest events.
        uri = None
        if await anyio.to_thread.run_sync(_on_read_only_file_system, self.path):
            wal = self.path.with_name(self.path.name + "-wal")
            if await anyio.Path(wal).exists() and (await anyio.Path(wal).stat()).st_size > 0:
                raise StoreError(
                    f"cannot read the event log {self.path}: it is on a read-only file system with a "
                    f"write-ahead log beside it ({wal.name}), which SQLite reads only where it can write; "
                    "copy both to a writable folder (and back up with SQLite's online backup, README, Backups)"
                )
            uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro&immutable=1"
        try:
            self._reader_db = await ThreadConnection.open(
                self.path, self._pragmas(READ_ONLY_PRAGMAS), self._damaged, uri=uri
            )
            stack.push_async_callback(self._reader_db.close)
            tables = await self._reader_db.fetchall("SELECT 1 FROM sqlite_master WHERE name = 'events'")
            found = await self._reader_db.run(foreign_schema)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the event log {self.path}: {e}") from e
        if not tables:
            # An empty file (made by `touch`, or a copy that failed) or another database:
            # nothing to read, and a command that only reads must not make it a log.
            empty = "an empty file" if self.path.stat().st_size == 0 else "a database without an events table"
            raise StoreError(
                f"{self.path} is not a rollwatch event log ({empty}); `rollwatch serve` or `rollwatch run` creates one"
            )
        self._head = await self.head()
        if found:
            raise schema_finding(found, self._head, self.path)

    def _check_schema(self, db: sqlite3.Connection) -> list[str]:
        """:func:`foreign_schema`, remembering the schema's version it was checked at."""
        version = db.execute("PRAGMA schema_version").fetchone()[0]
        found = foreign_schema(db)
        self._schema_checked = -1 if found else version
        return found

    def _same_file(self, head: int) -> None:
        """Raise when the path now names another file, or none: what this process writes
        would reach no later reader (SQLite finds the write-ahead log by name, so both
        files would share one, which corrupts them)."""
        if self._file_id is not None and _file_id(self.path) != self._file_id:
            raise IntegrityError(
                head + 1,
                f"the log file {self.path} was replaced or removed while this process had it open: "
                "a restart, verify and the scrub read what is there now, not what this process wrote and read",
            )

    async def check_same_file(self) -> None:
        await anyio.to_thread.run_sync(self._same_file, self._head)

    def _damaged(self, e: sqlite3.DatabaseError) -> StoreError:
        return damaged_log(self.path, e)

    # -- writing ----------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[Event], *, expected_version: int | None = None
    ) -> list[Recorded]:
        if self.read_only:
            raise StoreError(f"the event log {self.path} is open read-only")
        if not events:
            if not self._writer.open:
                raise StoreError("the event store is not open (use it with `async with`)")
            return []
        return await self._writer.append(stream, events, expected_version)

    def _conn(self, reader: bool = False) -> ThreadConnection:
        db = self._reader_db if reader else self._writer_db
        if db is None:
            raise StoreError("the event store is not open (use it with `async with`)")
        return db

    async def _commit(self, group: list[Pending], wake_previous: Callable[[], None]) -> None:
        try:
            seq = await self._conn().run(self._commit_sync, group, wake_previous)
        except Exception as e:
            self._versions_seen = {}
            if self.append_failing != str(e):
                log.error("append_failed", error=str(e), calls=len(group))
            self.append_failing = str(e)
            for p in group:
                p.result = None
                p.error = p.error or StoreError(f"append to {self.path} failed, nothing was written: {e}")
            return
        if self.append_failing is not None:
            log.info("append_recovered", seq=seq)
            self.append_failing = None
        if seq > self._head:
            self._head = seq
        self._appended.set()
        self._appended = anyio.Event()

    def _commit_sync(
        self, db: sqlite3.Connection, group: list[Pending], wake_previous: Callable[[], None]
    ) -> int:
        """One transaction for the whole group (runs in the writer's thread)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            tip = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (tip[0], bytes.fromhex(tip[1])) if tip else (0, GENESIS)
            self._same_file(seq)
            # A trigger or view added while we run would act on this insert: the schema is
            # checked again whenever its version moved (under the write lock, so it holds).
            if db.execute("PRAGMA schema_version").fetchone()[0] != self._schema_checked and (
                found := self._check_schema(db)
            ):
                raise schema_finding(found, seq, self.path)
            if seq != self._versions_at or len(self._versions_seen) > 200_000:
                self._versions_seen = {}
            versions = self._versions_seen
            missing = list({p.stream for p in group} - versions.keys())
            for i in range(0, len(missing), 500):
                chunk = missing[i : i + 500]
                rows = db.execute(
                    f"SELECT stream, MAX(version) FROM events WHERE stream IN ({','.join('?' * len(chunk))})"
                    " GROUP BY stream",
                    chunk,
                ).fetchall()
                versions.update(dict.fromkeys(chunk, 0))
                versions.update(dict(rows))
            out: list[Recorded] = []
            seq, prev = assign(group, seq, prev, versions, out)
            _insert(db, out)
            # COMMIT spends its time in SQLite and fsync, without the GIL: now is when the
            # event loop's thread can run the previous group's callers (GroupCommitter.run).
            self._conn().call_soon(wake_previous)
            db.execute("COMMIT")
        except BaseException:
            self._versions_seen = {}
            rollback(db)
            raise
        self._versions_at = seq
        return seq

    # -- reading -------------------------------------------------------------------------

    async def read_batches(
        self,
        *,
        after: int = 0,
        stream: str | None = None,
        types: Collection[str] | None = None,
        until: int | None = None,
        batch: int = 1000,
        lean: bool = False,
    ) -> AsyncIterator[list[Recorded]]:
        db = self._conn(reader=True)
        where = ["seq > ?"]
        extra: list[Any] = []
        if stream is not None:
            where.append("stream = ?")
            extra.append(stream)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            extra.extend(types)
        if until is not None:
            where.append("seq <= ?")
            extra.append(until)
        columns = _LEAN_COLUMNS if lean else _COLUMNS
        sql = f"SELECT {columns} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"

        def page(conn: sqlite3.Connection, cursor: int) -> list[Recorded]:
            # A catch-up's (lean) rows as they come: it copies each into the tuple it hands
            # the read models. Others straight from the cursor: a fetchall() list would keep a
            # page of plain rows alive next to their copies (megabytes: more cache misses).
            if lean:
                return conn.execute(sql, (cursor, *extra, batch)).fetchall()
            return [tuple.__new__(Recorded, r) for r in conn.execute(sql, (cursor, *extra, batch))]

        cursor = after
        while True:
            recs = await db.run(page, cursor)
            if recs:
                yield recs
            if len(recs) < batch:
                return
            cursor = recs[-1][0]

    async def read_at(self, seqs: Collection[int]) -> dict[int, Recorded]:
        want = sorted({int(s) for s in seqs})

        def read(conn: sqlite3.Connection) -> dict[int, Recorded]:
            out: dict[int, Recorded] = {}
            for i in range(0, len(want), 500):
                chunk = want[i : i + 500]
                sql = f"SELECT {_COLUMNS} FROM events WHERE seq IN ({','.join('?' * len(chunk))})"
                for r in conn.execute(sql, chunk):
                    rec = tuple.__new__(Recorded, r)
                    out[rec.seq] = rec
            return out

        return await self._conn(reader=True).run(read) if want else {}

    async def read_streams(
        self, streams: Collection[str], *, types: Collection[str] | None = None, until: int | None = None
    ) -> list[Recorded]:
        want = sorted(set(streams))
        kinds = list(types or ())
        tail = [*kinds, *([until] if until is not None else [])]

        def read(conn: sqlite3.Connection) -> list[Recorded]:
            out: list[Recorded] = []
            for i in range(0, len(want), 400):
                chunk = want[i : i + 400]
                sql = streams_sql(len(chunk), len(kinds), until is not None)
                out += [tuple.__new__(Recorded, r) for r in conn.execute(sql, (*chunk, *tail))]
            out.sort(key=lambda r: r[0])
            return out

        return await self._conn(reader=True).run(read) if want else []

    async def subscriber_events(self, *, after: int, until: int) -> list[Recorded]:
        rows = await self._conn(reader=True).fetchall(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ? AND tbl_name = 'events'",
            (SUBSCRIBER_INDEX,),
        )
        found = rows[0][0] if rows else None
        # INDEXED BY: this index and no other one answers; NOT INDEXED: the table's rows alone.
        if found == SUBSCRIBER_INDEX_SQL:
            source = f"INDEXED BY {SUBSCRIBER_INDEX}"
        else:
            source = "NOT INDEXED"
            if found is not None and self._index_refused != found:
                self._index_refused = found
                log.error(
                    "subscriber_index_refused",
                    index=SUBSCRIBER_INDEX,
                    found=found,
                    expected=SUBSCRIBER_INDEX_SQL,
                    consequence="the subscribers' keys are read from every event of the log",
                )
        # The types as written in the index's condition (not parameters): SQLite uses a
        # partial index only for a query whose terms match its condition as written.
        sql = f"SELECT {_COLUMNS} FROM events {source} WHERE {_SUBSCRIBER_IN} AND seq > ? AND seq <= ? ORDER BY seq"
        return [
            tuple.__new__(Recorded, r) for r in await self._conn(reader=True).fetchall(sql, (after, until))
        ]

    async def build_subscriber_index(self) -> None:
        if self.read_only:
            return
        rows = await self._conn().fetchall(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (SUBSCRIBER_INDEX,)
        )
        if rows:  # ours, or one that is not (refused by subscriber_events, left as evidence)
            return
        started = time.monotonic()
        # One read of the whole log, under the write lock (appends wait for it, once).
        await self._conn().run(lambda db: db.execute(SUBSCRIBER_INDEX_SQL))
        log.info("subscriber_index_built", took_s=round(time.monotonic() - started, 3))

    def opener(self) -> Callable[[], EventStore]:
        return functools.partial(SQLiteEventStore, self.path, read_only=True, busy_timeout=self.busy_timeout)

    def _pragmas(self, pragmas: tuple[str, ...]) -> tuple[str, ...]:
        """``pragmas`` with this store's busy timeout."""
        return tuple(self._busy if p.startswith("PRAGMA busy_timeout") else p for p in pragmas)

    async def head(self) -> int:
        rows = await self._conn(reader=True).fetchall("SELECT MAX(seq) FROM events")
        return int(rows[0][0] or 0)

    async def stream_version(self, stream: str) -> int:
        rows = await self._conn(reader=True).fetchall(
            "SELECT MAX(version) FROM events WHERE stream = ?", (stream,)
        )
        return int(rows[0][0] or 0)

    async def wait_for_new(self, after: int, timeout: float) -> int:  # noqa: ASYNC109 (returns on timeout, never raises)
        with anyio.move_on_after(timeout):
            while True:
                if self._head > after:
                    return self._head
                # Appends by this process wake us at once; another process's are seen
                # by polling the head, which is one b-tree lookup.
                with anyio.move_on_after(_POLL_S):
                    await self._appended.wait()
                h = await self.head()
                if h > after:
                    self._head = max(self._head, h)
                    return h
        return await self.head()

    def work_board(self, owner: str, lease: float) -> WorkBoard:
        """This process's own board: one machine owns the log, and one process (holding
        the run's lock) drives each run."""
        return LocalBoard()

    async def verify_versions(self, until: int) -> None:
        # The (stream, version) index answers every read of one stream (a rollout's record):
        # an index edited alone, the rows left, leaves out or adds events there that a scan
        # of the table never sees. SQLite compares each index with the table's rows.
        # And a trigger or view added since the store was opened is named here (verify, scrub).
        if found_schema := await self._conn(reader=True).run(foreign_schema):
            raise schema_finding(found_schema, until, self.path)
        found = [m for (m,) in await self._conn(reader=True).fetchall("PRAGMA integrity_check(events)")]
        if found != ["ok"]:
            rows_named = [
                int(w) for m in found for w in m.split()[1:2] if m.startswith("row ") and w.isdigit()
            ]
            raise IntegrityError(
                min(rows_named, default=1), f"the log's index does not match its rows: {'; '.join(found[:3])}"
            )
        # Every read asks for seq > after (after >= 0): a row below 1 no check ever sees.
        rows = await self._conn(reader=True).fetchall("SELECT MIN(seq) FROM events")
        if rows and rows[0][0] is not None and rows[0][0] < 1:
            raise seq_below_one(int(rows[0][0]))
        # Stream versions are not in the hashed envelope (they follow from seq order).
        rows = await self._conn(reader=True).fetchall(
            "SELECT seq FROM (SELECT seq, version, ROW_NUMBER() OVER "
            "(PARTITION BY stream ORDER BY seq) AS n FROM events WHERE seq <= ?)"
            " WHERE version != n ORDER BY seq LIMIT 1",
            (until,),
        )
        if rows:
            raise IntegrityError(rows[0][0], "its stream version does not follow the order of the log")
