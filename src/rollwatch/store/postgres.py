"""The event log in PostgreSQL, through asyncpg (so: on anyio's asyncio backend).

The same contract, envelope and hash chain as ``store/sqlite.py``; only the locking,
the waking of followers and the failure modes differ.

Gap-free ``seq`` with writers in several processes: a ``bigserial`` would hand out
numbers at INSERT time, so a transaction holding 7 can commit after one holding 8,
and a reader that saw 8 and moved its cursor past it never sees 7. Instead every
append transaction first takes one transaction-level advisory lock (a fixed key),
then reads the tip (seq, hash) in a *new* statement, computes seq, versions and the
hash chain in Python, inserts and commits; the lock is released by the commit. So
positions are handed out in commit order and a reader can never see a later seq
before an earlier one is visible. (The tip must be read in a statement after the one
that took the lock: in READ COMMITTED each statement takes its snapshot when it
starts, and a snapshot taken while still waiting for the lock would miss the commit
of the transaction that held it.) ``UNIQUE (stream, version)`` is the backstop for
the version arithmetic.

Group commit as in the SQLite store: ``append`` queues its events for one writer task
that takes everything queued and writes it in one transaction (one lock, one INSERT of every row,
one commit, one WAL flush); a call whose expected version is stale gets
``ConcurrencyConflict`` and contributes nothing, the others commit.

Durability: ``synchronous_commit`` stays ``on`` (the server's default, and set back
to ``on`` for the writer if the database or role turned it off): COMMIT then returns
only once the commit record is flushed to the server's disk (and, where synchronous
replication is configured, to the standbys it names). With ``off`` the server
acknowledges before the flush, and a server crash loses the last few hundred
milliseconds of appends that ``append`` already reported as done, which the contract
forbids. Group commit spreads the cost of that flush over every waiting append.

A connection that breaks while COMMIT is in flight leaves the outcome unknown. The
writer then asks the database, under the same advisory lock (which the old session
holds until its transaction has really ended), whether the group's last event is
stored with its hash, and reports success or failure accordingly.

Following: every append transaction ends with ``NOTIFY rollwatch_events, '<head
seq>'``, which PostgreSQL delivers only when it commits, to listeners in every
process. ``wait_for_new`` waits on a dedicated LISTEN connection; while that
connection is down (it is re-established in the background) it polls the head.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import anyio
import anyio.lowlevel
import asyncpg
from anyio.abc import TaskGroup, TaskStatus
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from rollwatch.abc import LEADERSHIP, SUBSCRIBER_TYPES, EventStore, WorkBoard
from rollwatch.config import redact_url
from rollwatch.errors import IntegrityError, NotLeading, StoreError, UsageError, seq_below_one
from rollwatch.events import GENESIS, Event, Recorded, chain_hash
from rollwatch.log import get_logger
from rollwatch.store._group_commit import GroupCommitter, Pending, assign
from rollwatch.store.postgres_work import SCHEMA as WORK_SCHEMA
from rollwatch.store.postgres_work import PostgresBoard

log = get_logger(__name__)

_APPEND_ONLY_BODY = """
BEGIN
    RAISE EXCEPTION 'the event log is append-only' USING ERRCODE = 'insufficient_privilege';
END """
"""The body of the append-only triggers' function, as PostgreSQL keeps it (``prosrc``)."""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq     bigint  PRIMARY KEY,      -- the global position, handed out under the append lock
    id      text    NOT NULL,
    stream  text    NOT NULL,
    version bigint  NOT NULL,
    type    text    NOT NULL,
    schema  integer NOT NULL,
    at      text    NOT NULL,         -- RFC 3339 exactly as hashed (timestamptz would reformat it)
    data    text    NOT NULL,         -- canonical JSON, exactly the bytes the hash covers (not jsonb,
                                      -- which reorders keys and rewrites numbers)
    hash    text    NOT NULL,
    UNIQUE (stream, version)
);
-- Append-only at the database level too: UPDATE, DELETE and TRUNCATE fail. (A superuser
-- can disable these; that is what the hash chain and verify are for.)
CREATE OR REPLACE FUNCTION rollwatch_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $${_APPEND_ONLY_BODY}$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'events'::regclass AND tgname = 'events_no_update') THEN
        CREATE TRIGGER events_no_update BEFORE UPDATE ON events
            FOR EACH ROW EXECUTE FUNCTION rollwatch_events_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'events'::regclass AND tgname = 'events_no_delete') THEN
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION rollwatch_events_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'events'::regclass AND tgname = 'events_no_truncate') THEN
        CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
            FOR EACH STATEMENT EXECUTE FUNCTION rollwatch_events_append_only();
    END IF;
END $$;
"""

SUBSCRIBER_INDEX = "events_subscribers"
_SUBSCRIBER_IN = f"type IN ({', '.join(repr(t) for t in SUBSCRIBER_TYPES)})"
_SUBSCRIBER_INDEX_CREATE = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {SUBSCRIBER_INDEX} ON events (seq) WHERE {_SUBSCRIBER_IN}"
)
SUBSCRIBER_INDEX_DEF = (
    f"CREATE INDEX {SUBSCRIBER_INDEX} ON events USING btree (seq) WHERE (type = ANY "
    f"(ARRAY[{', '.join(repr(t) + '::text' for t in SUBSCRIBER_TYPES)}]))"
)
"""The index of the subscriber events as PostgreSQL describes it (the table's schema left
out): any other definition is not read (someone with the database could redefine it to
leave a revocation out)."""
_SUBSCRIBER_INDEX_FOUND = (
    "SELECT regexp_replace(pg_get_indexdef(i.indexrelid), ' ON \\S+\\.events ', ' ON events ') AS def,"
    " i.indisvalid AS valid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE c.relname = $1 AND i.indrelid = 'events'::regclass"
)

_Conn = Union[asyncpg.Connection, "PoolConnectionProxy[asyncpg.Record]"]

_APPEND_ONLY_TRIGGERS = {
    "events_no_update": "BEFORE UPDATE ON events FOR EACH ROW",
    "events_no_delete": "BEFORE DELETE ON events FOR EACH ROW",
    "events_no_truncate": "BEFORE TRUNCATE ON events FOR EACH STATEMENT",
}
_SCHEMA_FOUND = """
SELECT c.oid, c.relkind::text AS relkind, n.nspname::text AS nspname, c.relrowsecurity OR c.relforcerowsecurity AS rls,
    c.relpersistence::text AS persistence,
    (SELECT array_agg(n2.nspname) FROM pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
     WHERE c2.relname = 'events' AND c2.oid <> c.oid AND n2.nspname = ANY(current_schemas(false))) AS also,
    (SELECT array_agg(polname::text) FROM pg_policy WHERE polrelid = c.oid) AS policies,
    (SELECT array_agg(rulename::text) FROM pg_rewrite WHERE ev_class = c.oid) AS rules,
    (SELECT array_agg(inhrelid::regclass::text) FROM pg_inherits WHERE inhparent = c.oid) AS children,
    (SELECT array_agg(ARRAY[t.tgname::text, pg_get_triggerdef(t.oid), t.tgenabled::text, p.prosrc,
                            p.prosecdef::text])
     FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
     WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) AS triggers
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('events')
"""


async def foreign_schema(conn: _Conn) -> list[str]:
    """What in the database acts on the log as it is written or read, and is not rollwatch's.

    Whoever owns the database can make PostgreSQL change the log without changing a row
    the hash chain covers: a trigger that drops an event as it is inserted (the append
    returns its seq, the next event takes it, the chain stays whole) or rewrites it, a
    rule, row-level security hiding events from reads (a revocation, say), a table
    inheriting from ``events`` (its rows are read as the log's), a relation named
    ``events`` in a schema our search path reads first, the append-only triggers disabled
    or their function rewritten. The log must be an ordinary table with our three
    triggers, as made (one missing is made again at the next open), and nothing else.
    """
    row = await conn.fetchrow(_SCHEMA_FOUND)
    if row is None:
        return []  # no log yet
    found = []
    where = f"{row['nspname']}.events"
    if row["relkind"] != "r":
        kind = {"v": "view", "m": "materialized view", "p": "partitioned table", "f": "foreign table"}
        found.append(
            f"{where} is a {kind.get(row['relkind'], 'relation of kind ' + row['relkind'])}, not a table"
        )
    if row["also"]:
        found.append(f"{where} is read, and shadows events in {', '.join(row['also'])}")
    if row["persistence"] != "p":
        found.append("the events table is unlogged (a crash of the database server empties it)")
    if row["rls"]:
        found.append("row-level security is on for the events table (policies can hide events)")
    found += [f"policy {p}" for p in row["policies"] or ()]
    found += [f"rule {r}" for r in row["rules"] or ()]
    found += [
        f"table {t} inherits from events (its rows are read as the log's)" for t in row["children"] or ()
    ]
    for name, definition, enabled, body, definer in row["triggers"] or ():
        ours = _APPEND_ONLY_TRIGGERS.get(name)
        if ours is None:
            found.append(f"trigger {name}")
        elif enabled != "O":
            found.append(f"trigger {name} (disabled)")
        elif (
            _unqualified(definition)
            != f"CREATE TRIGGER {name} {ours} EXECUTE FUNCTION rollwatch_events_append_only()"
            or body != _APPEND_ONLY_BODY
            or definer != "false"
        ):
            found.append(f"trigger {name} (its definition changed)")
    return found


def _unqualified(definition: str) -> str:
    """A trigger's definition with schema names left out (``ON public.events`` -> ``ON events``)."""
    return re.sub(r"(ON|FUNCTION) (?:\S+\.)?(events|rollwatch_events_append_only)\b", r"\1 \2", definition)


async def _insert(conn: _Conn, rows: Sequence[Recorded]) -> None:
    """Insert ``rows`` (in the caller's transaction); raise, the transaction to be rolled
    back, when the database did not store each exactly as sent."""
    stored = await conn.fetchval(_INSERT, *zip(*rows, strict=True))
    if stored != len(rows):
        found = await foreign_schema(conn)
        raise IntegrityError(
            rows[0].seq,
            f"the database changed or dropped events as they were written ({stored} of {len(rows)} stored"
            f" as sent): {'; '.join(found) or 'nothing found in its schema'}; nothing was written",
        )


def schema_finding(found: list[str], head: int, url: str) -> IntegrityError:
    """The finding for ``found`` (from :func:`foreign_schema`), at the seq an append would take next."""
    return IntegrityError(
        head + 1,
        "the database holds what rollwatch did not make, which can drop, hide or change events "
        f"as they are written or read: {'; '.join(found)} (in {_redact(url)}; psql's \\d+ events shows them)",
    )


#: The advisory lock every append and import transaction holds (b"rw-event" as a bigint).
APPEND_LOCK = int.from_bytes(b"rw-event", "big", signed=True)
#: Taken while creating the schema, so that processes opening a new database at once
#: do not race on CREATE TABLE (which is not safe to run concurrently in PostgreSQL).
SCHEMA_LOCK = int.from_bytes(b"rw-schem", "big", signed=True)
#: The NOTIFY channel; the payload is the head seq after the notifying commit.
CHANNEL = "rollwatch_events"

COLUMNS = ("seq", "id", "stream", "version", "type", "schema", "at", "data", "hash")
_COLUMNS = ", ".join(COLUMNS)
_LEAN_COLUMNS = "seq, NULL, NULL, NULL, type, schema, at, data, hash"
_SUBSCRIBER_READ = (
    f"SELECT {_COLUMNS} FROM events WHERE {_SUBSCRIBER_IN} AND seq > $1 AND seq <= $2 ORDER BY seq"
)
_BEGIN_LOCKED = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({APPEND_LOCK})"
# One statement, its rows as arrays, not COPY: a process stopped (SIGSTOP, a frozen VM)
# while sending a COPY's data left the server waiting inside the statement, where no
# timeout reaches, holding the append lock for good; stopped while sending this one, its
# session sits idle in its transaction, which ``idle_in_transaction_session_timeout`` ends.
# It answers how many rows were stored exactly as sent: a trigger or rule added under a
# running daemon that drops or rewrites one (see ``foreign_schema``) fails the append.
_INSERT = (
    "WITH sent AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[],"
    f" $6::integer[], $7::text[], $8::text[], $9::text[]) AS s ({_COLUMNS})),"
    f" stored AS (INSERT INTO events ({_COLUMNS}) SELECT * FROM sent RETURNING {_COLUMNS})"
    f" SELECT count(*) FROM stored JOIN sent USING ({_COLUMNS})"
)
_TIP = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
_VERSIONS = "SELECT stream, MAX(version) FROM events WHERE stream = ANY($1::text[]) GROUP BY stream"
_MAX_CACHED_STREAMS = 200_000
_RECONNECT_FIRST_S = 0.1
_RECONNECT_MAX_S = 5.0
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 2.0

T = TypeVar("T")


class _InDoubt(Exception):
    """Raised when the connection broke during COMMIT and the outcome could not be learned."""


class PostgresEventStore(EventStore):
    """The PostgreSQL implementation of :class:`rollwatch.abc.EventStore`.

    ``url`` is a libpq-style URL (``postgresql://user@host:5432/db``); the database
    must exist, the ``events`` table and its triggers are created on first open.
    ``readers`` bounds the pool that serves reads; ``poll_interval`` is how often
    ``wait_for_new`` polls the head while the LISTEN connection is down.
    ``stall_timeout`` is how long an append's transaction may sit idle (its process
    stopped) before PostgreSQL ends it and frees the append lock for every other node.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        readers: int = 4,
        poll_interval: float = 0.1,
        connect_timeout: float = 10.0,
        retry_for: float = 60.0,
        stall_timeout: float = 10.0,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.url = url
        self.read_only = read_only
        self._stall_ms = max(1, round(stall_timeout * 1000))
        self._retry_for = retry_for
        self._readers = readers
        self._poll_interval = poll_interval
        self._connect_timeout = connect_timeout
        self._writer_conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._writer = GroupCommitter(self._commit, lambda: self.append_observer)
        self._appended = anyio.Event()
        self._head = 0
        self._listening = False
        self._listener_lost = anyio.Event()
        self._listen_scope: anyio.CancelScope | None = None
        # Stream versions as of our last commit. Valid only while nobody else has
        # appended since (checked under the lock by comparing the tip's seq).
        self._versions_seen: dict[str, int] = {}
        self._versions_at = -1
        self._index_refused: str | None = None

    def __repr__(self) -> str:
        return f"PostgresEventStore({_redact(self.url)!r})"

    # -- lifecycle ----------------------------------------------------------------------

    async def _open(self, stack: AsyncExitStack) -> None:
        stack.push_async_callback(self._close_writer_conn)
        try:
            try:
                conn = await self._connect_writer()
            except asyncpg.InvalidCatalogNameError:
                if self.read_only:
                    raise self._no_log("its database does not exist") from None
                raise
            if self.read_only and await conn.fetchval("SELECT to_regclass('events') IS NULL"):
                raise self._no_log()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                # Looked at before the schema is made: making it replaces the append-only
                # triggers' function, which would hide that it had been rewritten.
                found = await foreign_schema(conn)
                if not found:
                    await conn.execute(SCHEMA)
                    await conn.execute(WORK_SCHEMA)
                    found = await foreign_schema(conn)
                head = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events") if found else 0
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self._readers, timeout=self._connect_timeout
            )
            stack.push_async_callback(self._pool.close)
        except _CONN_ERRORS as e:
            raise StoreError(f"cannot open the event log at {_redact(self.url)}: {e}") from e
        if found:
            raise schema_finding(found, head, self.url)
        tg: TaskGroup = await stack.enter_async_context(anyio.create_task_group())
        # On exit: refuse new appends, let the writer commit what is queued, then stop.
        stack.callback(self._close_writer)
        # LISTEN before reading the head: an append that commits in between is then
        # either in the head or announced.
        await tg.start(self._keep_listening)
        self._head = await self.head()
        await tg.start(self._writer.run)

    def _no_log(self, why: str = "the database holds none") -> UsageError:
        """A command that only reads the log, on a database without one: it makes none."""
        return UsageError(
            f"there is no event log at {_redact(self.url)} (store.url): {why}; "
            "`rollwatch serve` or `rollwatch run` creates the log in an existing database"
        )

    def _close_writer(self) -> None:
        self._writer.close()
        if self._listen_scope is not None:
            self._listen_scope.cancel()

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=self._connect_timeout)

    async def _connect_writer(self) -> asyncpg.Connection:
        conn = self._writer_conn
        if conn is not None and not conn.is_closed():
            return conn
        conn = self._writer_conn = await self._connect()
        # A process that stops inside an append (SIGSTOP, a frozen VM, a debugger) holds the
        # append lock, and every node's appends wait on it: PostgreSQL ends such a session
        # once its transaction has sat idle this long, and the lock is free again.
        await conn.execute(f"SET idle_in_transaction_session_timeout = {self._stall_ms}")
        if await conn.fetchval("SHOW synchronous_commit") == "off":
            log.warning("synchronous_commit_off", action="set to on for the event log writer")
            await conn.execute("SET synchronous_commit = on")
        if await conn.fetchval("SHOW fsync") == "off":
            log.warning("fsync_off", consequence="appends will not survive a crash of the database host")
        return conn

    async def _close_writer_conn(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None and not conn.is_closed():
            with anyio.CancelScope(shield=True):
                await conn.close(timeout=self._connect_timeout)

    # -- writing ------------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[Event], *, expected_version: int | None = None
    ) -> list[Recorded]:
        if not events:
            if not self._writer.open:
                raise StoreError("the event store is not open (use it with `async with`)")
            return []
        if "\x00" in stream:
            # PostgreSQL text cannot hold NUL; refuse here so the rest of the group commits.
            raise StoreError(
                f"stream name {stream!r} contains a NUL character, which PostgreSQL cannot store"
            )
        fence = LEADERSHIP.get()
        return await self._writer.append(
            stream, events, expected_version, fence if isinstance(fence, _Leadership) else None
        )

    async def _commit(self, group: list[Pending], wake_previous: Callable[[], None]) -> None:
        # Every await below lets the event loop run the previous group's callers anyway:
        # wake them at once.
        wake_previous()
        pause, deadline = _RETRY_FIRST_S, None
        while True:
            for p in group:
                p.result = p.error = None
            try:
                seq = await self._write_group(group)
                break
            except Exception as e:
                self._versions_seen = {}
                # Known not written and the database went away: write the group again
                # (seq, versions and hashes are assigned anew), for up to retry_for.
                now = anyio.current_time()
                deadline = deadline or now + self._retry_for
                if not isinstance(e, _InDoubt) and _transient(e) and now < deadline:
                    self._out_of_reach(e)
                    log.warning("append_retry", error=str(e) or type(e).__name__, calls=len(group))
                    await anyio.sleep(pause)
                    pause = min(pause * 2, _RETRY_MAX_S)
                    continue
                if _transient(e):
                    self._out_of_reach(e)
                self._fail_group(group, e)
                return
        self._reached()
        self.append_failing = None
        self._note_head(seq)

    def _out_of_reach(self, e: BaseException) -> None:
        """Note that the database did not answer (``/healthz`` says so until it does)."""
        if self.unreachable is None:
            log.warning("database_unreachable", url=_redact(self.url), error=str(e) or type(e).__name__)
        self.unreachable = (
            f"the database at {_redact(self.url)} is out of reach: {str(e) or type(e).__name__}"
        )

    def _reached(self) -> None:
        if self.unreachable is not None:
            log.info("database_reachable", url=_redact(self.url))
            self.unreachable = None

    def _fail_group(self, group: list[Pending], e: Exception) -> None:
        log.error("append_failed", error=str(e), calls=len(group))
        self.append_failing = str(e)
        if isinstance(e, _InDoubt):
            msg = (
                f"the connection to {_redact(self.url)} broke while committing and the outcome "
                f"could not be checked ({e}); the events may or may not be in the log: "
                "read the stream before appending again"
            )
        else:
            msg = f"append to {_redact(self.url)} failed, nothing was written: {e}"
        for p in group:
            p.result = None
            p.error = p.error or StoreError(msg)

    def _note_head(self, seq: int) -> None:
        if seq > self._head:
            self._head = seq
        self._appended.set()
        self._appended = anyio.Event()

    async def _write_group(self, group: list[Pending]) -> int:
        """One transaction for the whole group; return the tip's seq after it."""
        conn = await self._connect_writer()
        out: list[Recorded] = []
        committing = False
        try:
            # BEGIN and the lock in one round trip; READ COMMITTED: each later statement
            # takes a fresh snapshot, which sees every commit made before we got the lock.
            await conn.execute(_BEGIN_LOCKED)
            tip = await conn.fetchrow(_TIP)
            seq, prev = (tip[0], bytes.fromhex(tip[1])) if tip else (0, GENESIS)
            if seq != self._versions_at or len(self._versions_seen) > _MAX_CACHED_STREAMS:
                self._versions_seen = {}
            versions = self._versions_seen
            missing = list({p.stream for p in group} - versions.keys())
            if missing:
                versions.update(dict.fromkeys(missing, 0))
                versions.update({r[0]: r[1] for r in await conn.fetch(_VERSIONS, missing)})
            await self._check_fences(conn, group)
            seq, prev = assign(group, seq, prev, versions, out)
            if out:
                await _insert(conn, out)
            committing = True
            # NOTIFY is delivered to listeners only if and when the transaction commits.
            await self._finish(conn, f"SELECT pg_notify('{CHANNEL}', '{seq}'); COMMIT" if out else "COMMIT")
        except BaseException as e:
            self._versions_seen = {}
            if committing and out and await self._committed_after_all(out[-1], e):
                return seq  # every call's result stands
            for p in group:
                p.result = None
            # Also after a failed COMMIT statement: if NOTIFY failed, COMMIT never ran.
            if not conn.is_closed() and conn.is_in_transaction():
                try:
                    with anyio.CancelScope(shield=True):
                        await conn.execute("ROLLBACK")
                except Exception:
                    conn.terminate()
            raise
        self._versions_at = seq
        return seq

    async def _check_fences(self, conn: asyncpg.Connection, group: list[Pending]) -> None:
        """Refuse the calls made under a leadership whose session no longer holds its lock.

        Checked under the append lock, in the transaction that would commit them: a new
        leader waits for that lock once before it acts (see :meth:`lead`), so a call
        that passes here is in the log before the new leader reads it.
        """
        fences = {p.fence for p in group if isinstance(p.fence, _Leadership)}
        if not fences:
            return
        rows = await conn.fetch(
            "SELECT pid, classid::bigint, objid::bigint FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = ANY($1::int[])",
            [f.pid for f in fences],
        )
        held = {(r[0], r[1], r[2]) for r in rows}
        for p in group:
            f = p.fence
            if isinstance(f, _Leadership) and (f.pid, *f.lock_ids) not in held:
                p.error = NotLeading(f.role)
                log.warning("append_refused_not_leading", role=f.role, stream=p.stream)

    async def _finish(self, conn: asyncpg.Connection, sql: str) -> None:
        """Send the statement that ends the transaction (the tests break it on purpose)."""
        await conn.execute(sql)

    async def _committed_after_all(self, last: Recorded, error: BaseException) -> bool:
        """Whether a group whose COMMIT failed with ``error`` is in the log after all."""
        if isinstance(error, asyncpg.PostgresError) and not _connection_lost(error):
            return False  # the server answered the COMMIT: it did not commit
        if self._writer_conn is not None:
            self._writer_conn.terminate()
        self._writer_conn = None
        log.warning("commit_in_doubt", seq=last.seq, error=str(error))
        try:
            with anyio.CancelScope(shield=True):
                conn = await self._connect()
                try:
                    async with conn.transaction():
                        # Held by the broken session until its transaction has really
                        # ended, so what we read next is final.
                        await conn.execute("SET LOCAL lock_timeout = '60s'")
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
                        stored = await conn.fetchval("SELECT hash FROM events WHERE seq = $1", last.seq)
                finally:
                    await conn.close(timeout=self._connect_timeout)
        except Exception as e:
            raise _InDoubt(str(e)) from error
        log.info("commit_in_doubt_resolved", seq=last.seq, committed=stored == last.hash)
        return bool(stored == last.hash)

    async def import_recorded(self, batch: Sequence[Recorded]) -> int:
        """Append already-recorded events exactly as they are (``migrate`` uses this).

        The batch must continue this log: ``seq`` one past the head, every ``hash``
        chained to the previous one, every ``version`` one past its stream's. It is
        written in one transaction under the append lock, or not at all
        (``IntegrityError`` names the first event that does not fit). Returns the head.
        """
        if not self._writer.open:
            raise StoreError("the event store is not open (use it with `async with`)")
        if not batch:
            return await self.head()
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {self._stall_ms}")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
            tip = await conn.fetchrow(_TIP)
            seq, prev = (tip[0], bytes.fromhex(tip[1])) if tip else (0, GENESIS)
            streams = list({r.stream for r in batch})
            versions = dict.fromkeys(streams, 0)
            versions.update({r[0]: r[1] for r in await conn.fetch(_VERSIONS, streams)})
            for r in batch:
                if r.seq != seq + 1:
                    raise IntegrityError(
                        seq + 1, f"the imported event has seq {r.seq}, the log continues at {seq + 1}"
                    )
                if chain_hash(prev, r.canonical()).hex() != r.hash:
                    raise IntegrityError(
                        r.seq, "the imported event's hash does not match its content and the previous hash"
                    )
                if r.version != versions[r.stream] + 1:
                    raise IntegrityError(
                        r.seq,
                        f"the imported event has version {r.version} of stream {r.stream!r}, "
                        f"which is at {versions[r.stream]}",
                    )
                versions[r.stream] = r.version
                seq, prev = r.seq, bytes.fromhex(r.hash)
            await _insert(conn, batch)
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(seq))
        self._note_head(seq)
        return seq

    # -- reading ------------------------------------------------------------------------

    def _acquire(self) -> PoolAcquireContext[asyncpg.Record]:
        if self._pool is None:
            raise StoreError("the event store is not open (use it with `async with`)")
        return self._pool.acquire()

    async def _with_conn(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn`` on a pooled connection. When the connection or the server goes away
        (a restart, a failover, a terminated backend) it is tried again on a new one,
        backing off, for up to ``retry_for`` seconds; then ``StoreError``. So ``fn``
        must be safe to run twice: a read, or a write whose repetition is harmless."""
        pause, deadline = _RETRY_FIRST_S, None
        while True:
            try:
                async with self._acquire() as conn:
                    out = await fn(conn)
                self._reached()
                return out
            except Exception as e:
                if not _transient(e):
                    raise
                self._out_of_reach(e)
                now = anyio.current_time()
                deadline = deadline or now + self._retry_for
                if now >= deadline:
                    raise StoreError(f"the database at {_redact(self.url)} is unreachable: {e}") from e
                log.warning("database_retry", error=str(e) or type(e).__name__, retry_in_s=round(pause, 2))
                await anyio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX_S)

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
        where = ["seq > $1"]
        extra: list[Any] = []
        if stream is not None:
            extra.append(stream)
            where.append(f"stream = ${len(extra) + 1}")
        if types:
            extra.append(list(types))
            where.append(f"type = ANY(${len(extra) + 1}::text[])")
        if until is not None:
            extra.append(until)
            where.append(f"seq <= ${len(extra) + 1}")
        sql = (
            f"SELECT {_LEAN_COLUMNS if lean else _COLUMNS} FROM events WHERE {' AND '.join(where)}"
            f" ORDER BY seq LIMIT ${len(extra) + 2}"
        )
        cursor = after
        while True:
            # A connection per page, not per read: a reader that stops iterating (or
            # pauses between pages) holds nothing.
            async def page(conn: Any, after: int = cursor) -> list[asyncpg.Record]:
                return list(await conn.fetch(sql, after, *extra, batch))

            rows = await self._with_conn(page)
            recs = [tuple.__new__(Recorded, r) for r in rows]
            if recs:
                yield recs
            if len(recs) < batch:
                return
            cursor = recs[-1].seq

    async def read_at(self, seqs: Collection[int]) -> dict[int, Recorded]:
        want = sorted({int(s) for s in seqs})
        if not want:
            return {}

        async def read(conn: Any) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(f"SELECT {_COLUMNS} FROM events WHERE seq = ANY($1::bigint[])", want)
            )

        return {rec.seq: rec for rec in (tuple.__new__(Recorded, r) for r in await self._with_conn(read))}

    async def read_streams(
        self, streams: Collection[str], *, types: Collection[str] | None = None, until: int | None = None
    ) -> list[Recorded]:
        want = sorted(set(streams))
        if not want:
            return []
        kinds = list(types) if types else None

        async def read(conn: Any) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"SELECT {_COLUMNS} FROM events WHERE stream = ANY($1::text[])"
                    " AND ($2::text[] IS NULL OR type = ANY($2::text[]))"
                    " AND ($3::bigint IS NULL OR seq <= $3::bigint) ORDER BY seq",
                    want,
                    kinds,
                    until,
                )
            )

        return [tuple.__new__(Recorded, r) for r in await self._with_conn(read)]

    async def subscriber_events(self, *, after: int, until: int) -> list[Recorded]:
        async def read(conn: Any) -> list[asyncpg.Record]:
            found = await conn.fetchrow(_SUBSCRIBER_INDEX_FOUND, SUBSCRIBER_INDEX)
            async with conn.transaction():
                if found is None or found["def"] != SUBSCRIBER_INDEX_DEF or not found["valid"]:
                    # Not ours (or half built): the table's rows alone answer.
                    await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
                rows = list(await conn.fetch(_SUBSCRIBER_READ, after, until))
            return [found, rows]

        found, rows = await self._with_conn(read)
        if found is not None and (found["def"], found["valid"]) != (SUBSCRIBER_INDEX_DEF, True):
            shown = f"{found['def']}{'' if found['valid'] else ' (INVALID)'}"
            if self._index_refused != shown:
                self._index_refused = shown
                log.error(
                    "subscriber_index_refused",
                    index=SUBSCRIBER_INDEX,
                    found=shown,
                    expected=SUBSCRIBER_INDEX_DEF,
                    consequence="the subscribers' keys are read from every event of the log",
                )
        return [tuple.__new__(Recorded, r) for r in rows]

    async def build_subscriber_index(self) -> None:
        started = time.monotonic()

        async def build(conn: Any) -> bool:
            found = await conn.fetchrow(_SUBSCRIBER_INDEX_FOUND, SUBSCRIBER_INDEX)
            if found is not None and found["def"] == SUBSCRIBER_INDEX_DEF and not found["valid"]:
                # Ours, its build cut short (a CONCURRENTLY build leaves it INVALID): again.
                await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SUBSCRIBER_INDEX}")
            elif found is not None:
                return False  # ours, or one that is not (refused by subscriber_events, left as evidence)
            # CONCURRENTLY: appends go on while it reads the whole table (once).
            await conn.execute(_SUBSCRIBER_INDEX_CREATE)
            return True

        if await self._with_conn(build):
            log.info("subscriber_index_built", took_s=round(time.monotonic() - started, 3))

    def opener(self) -> Callable[[], EventStore]:
        return functools.partial(
            PostgresEventStore,
            self.url,
            readers=1,
            connect_timeout=self._connect_timeout,
            retry_for=self._retry_for,
        )

    async def head(self) -> int:
        return int(await self._with_conn(lambda c: c.fetchval("SELECT COALESCE(MAX(seq), 0) FROM events")))

    async def stream_version(self, stream: str) -> int:
        sql = "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = $1"
        return int(await self._with_conn(lambda c: c.fetchval(sql, stream)))

    async def clock_skew(self) -> float:
        # The server's clock read halfway through the round trip, as NTP does: the error
        # is at most half the round trip, milliseconds against the 60 s allowed.
        async def read(conn: Any) -> tuple[float, float, float]:
            t0 = time.time()
            server = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
            return t0, server, time.time()

        t0, server, t1 = await self._with_conn(read)
        return (t0 + t1) / 2 - server

    async def wait_for_new(self, after: int, timeout: float) -> int:  # noqa: ASYNC109 (returns on timeout, never raises)
        with anyio.move_on_after(timeout):
            while True:
                if self._head > after:
                    return self._head
                appended = self._appended
                if self._listening:
                    # NOTIFY (from any process), our own commits and the loss of the
                    # LISTEN connection all set this event.
                    await appended.wait()
                    continue
                with anyio.move_on_after(self._poll_interval):
                    await appended.wait()
                self._head = max(self._head, await self._head_or_last())
        return await self._head_or_last()

    async def _head_or_last(self) -> int:
        """The head, or the last one known while the database is out of reach."""
        try:
            return await self.head()
        except StoreError:
            return self._head

    # -- listening ------------------------------------------------------------------------

    async def _keep_listening(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold a LISTEN connection; re-establish it whenever it is lost."""
        with anyio.CancelScope() as scope:
            self._listen_scope = scope
            try:
                conn = await self._listen()
            except _CONN_ERRORS as e:
                raise StoreError(f"cannot LISTEN on {_redact(self.url)}: {e}") from e
            task_status.started()
            try:
                while True:
                    await self._listener_lost.wait()
                    self._listener_lost = anyio.Event()
                    log.warning("listen_connection_lost", fallback="polling the head")
                    delay = _RECONNECT_FIRST_S
                    while True:
                        try:
                            conn = await self._listen()
                            break
                        except Exception as e:  # keep trying whatever broke: followers poll meanwhile
                            if _transient(e):
                                self._out_of_reach(e)
                            log.warning("listen_reconnect_failed", error=str(e), retry_in_s=delay)
                            await anyio.sleep(delay)
                            delay = min(delay * 2, _RECONNECT_MAX_S)
                    log.info("listen_connection_restored")
                    # Appends while we were deaf were announced to nobody: re-read the head.
                    with anyio.move_on_after(self._connect_timeout):
                        try:
                            self._note_head(await self.head())
                        except _CONN_ERRORS as e:
                            log.warning("head_after_listen_failed", error=str(e))
            finally:
                self._listening = False
                conn.terminate()

    async def _listen(self) -> asyncpg.Connection:
        conn = await self._connect()
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listening = True
        return conn

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        try:
            seq = int(str(payload))
        except ValueError:
            return  # not ours: someone else NOTIFYing on our channel
        if seq > self._head:
            self._head = seq
            self._appended.set()
            self._appended = anyio.Event()

    def _on_listener_lost(self, conn: object) -> None:
        if self._listening:
            self._listening = False
            self._listener_lost.set()
            # Waiters switch to polling.
            self._appended.set()
            self._appended = anyio.Event()

    # -- leadership -----------------------------------------------------------------------

    def work_board(self, owner: str, lease: float) -> WorkBoard:
        # Every process on this database takes part in every run (rollwatch.work).
        return PostgresBoard(self._with_conn, owner, lease)

    async def lead(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        stop: anyio.Event,
        *,
        lease: float = 30.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        # A session-level advisory lock on a connection of its own: PostgreSQL releases
        # it when the session ends, so a node that dies hands leadership on at once. A
        # node that is stopped (SIGSTOP, a frozen VM) keeps its TCP connection open: the
        # server ends the session once it has been idle for ``lease`` (the keepalive
        # below speaks every third of it), and the leadership moves on.
        task_status.started()
        # Never under 5 s: a busy node (its cores scoring) may miss a beat of a second or two.
        idle = max(lease, _LEADER_IDLE_MIN)
        beat = min(2.0, idle / 3)
        key = _leader_key(name)
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            lost = False
            try:
                conn = await self._connect()
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    with anyio.move_on_after(1.0):
                        await stop.wait()
                    continue
                await self._idle_timeout(conn, idle)
                # Whatever a deposed leader appended before it lost the lock has committed
                # once we hold the append lock: the body reads the log after it.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
                log.info("leadership_acquired", role=name)
                # The body's appends carry the leadership; once its session is gone they
                # are refused (a leader stalled past the moment another took over).
                fence = LEADERSHIP.set(_Leadership(name, key, conn.get_server_pid()))
                async with anyio.create_task_group() as tg:

                    async def keepalive(c: asyncpg.Connection = conn) -> None:
                        nonlocal lost
                        while True:
                            await anyio.sleep(beat)
                            try:
                                await c.fetchval("SELECT 1", timeout=5)
                            except _CONN_ERRORS:
                                lost = True
                                tg.cancel_scope.cancel()
                                return

                    tg.start_soon(keepalive)
                    try:
                        await body()
                    except NotLeading:
                        # The body saw the loss before the keepalive did.
                        lost = True
                    finally:
                        LEADERSHIP.reset(fence)
                    tg.cancel_scope.cancel()
                if not lost:
                    return
                log.error("leadership_lost", role=name, hint="another node takes over")
            except _CONN_ERRORS as e:
                log.warning("leadership_unavailable", role=name, error=str(e))
                with anyio.move_on_after(1.0):
                    await stop.wait()
            finally:
                if conn is not None and not conn.is_closed():
                    with anyio.CancelScope(shield=True):
                        await conn.close(timeout=self._connect_timeout)

    async def led(self, name: str) -> bool:
        async def held(conn: asyncpg.Connection) -> bool:
            classid, objid = _Leadership(name, _leader_key(name), 0).lock_ids
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2)",
                    classid,
                    objid,
                )
            )

        return await self._with_conn(held)

    _idle_timeout_unsupported = False

    async def _idle_timeout(self, conn: asyncpg.Connection, lease: float) -> None:
        """End ``conn``'s session on the server once it is idle for ``lease`` (PostgreSQL 14
        and later; older servers keep a stopped leader's session, said once)."""
        try:
            await conn.execute(f"SET idle_session_timeout = {max(1000, int(lease * 1000))}")
        except asyncpg.UndefinedObjectError:  # before PostgreSQL 14
            if not PostgresEventStore._idle_timeout_unsupported:
                PostgresEventStore._idle_timeout_unsupported = True
                log.warning(
                    "leader_stall_not_bounded",
                    reason="this PostgreSQL has no idle_session_timeout (it came in 14)",
                    effect="a stopped leader keeps leading until its session ends",
                )

    # -- checking -------------------------------------------------------------------------

    async def verify_versions(self, until: int) -> None:
        # Stream versions are not in the hashed envelope (they follow from seq order);
        # checked up to the last event whose hash was checked.
        async with self._acquire() as conn:
            if found := await foreign_schema(conn):
                raise schema_finding(found, until, self.url)
            # Every read asks for seq > after (after >= 0): a row below 1 no check ever sees.
            first = await conn.fetchval("SELECT MIN(seq) FROM events")
            if first is not None and first < 1:
                raise seq_below_one(int(first))
            bad = await conn.fetchval(
                "SELECT seq FROM (SELECT seq, version, ROW_NUMBER() OVER "
                "(PARTITION BY stream ORDER BY seq) AS n FROM events WHERE seq <= $1) AS t "
                "WHERE version != n ORDER BY seq LIMIT 1",
                until,
            )
        if bad is not None:
            raise IntegrityError(bad, "its stream version does not follow the order of the log")


def _leader_key(name: str) -> int:
    """The advisory lock of the leadership of ``name``."""
    return int.from_bytes(
        hashlib.sha256(f"rollwatch-leader:{name}".encode()).digest()[:8], "big", signed=True
    )


_LEADER_IDLE_MIN = 5.0
"""The shortest time a leader's session may stay silent before the server ends it."""


@dataclass(frozen=True, slots=True)
class _Leadership:
    """A leadership held: its role, its advisory lock's key and the backend holding it."""

    role: str
    key: int
    pid: int

    @property
    def lock_ids(self) -> tuple[int, int]:
        """The key as pg_locks shows a bigint advisory lock: (classid, objid)."""
        k = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return k >> 32, k & 0xFFFF_FFFF


_CONN_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
"""What a connection or a query on it raises when the server goes away or kills the session
(asyncpg's InternalClientError included: a query on a new connection whose backend was
terminated as it started, "cannot switch to state 12; another operation (2) is in progress")."""


def _transient(e: BaseException) -> bool:
    """Whether ``e`` says the connection or the server went away (worth another try)."""
    if isinstance(e, asyncpg.PostgresError):
        # 53300: too many connections; 55000: the database does not accept connections
        # (ALLOW_CONNECTIONS false, for maintenance); 57P03: the server is starting up.
        return _connection_lost(e) or getattr(e, "sqlstate", "") in ("53300", "55000", "57P03")
    return isinstance(e, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError)


def _connection_lost(e: asyncpg.PostgresError) -> bool:
    # Class 08 (connection exception) and 57P (operator intervention: shutdown,
    # terminated backend) leave a COMMIT's outcome unknown.
    state = getattr(e, "sqlstate", "") or ""
    return state.startswith(("08", "57P"))


def _redact(url: str) -> str:
    """``url`` without a password, for messages and logs."""
    return redact_url(url)
