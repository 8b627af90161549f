"""What only the PostgreSQL event store has to prove: several processes, NOTIFY, the
database's own guards, commits whose outcome is in doubt, and migration from SQLite.

The shared contract runs on it through ``conftest.store``; these use real child
processes and a scratch database each (``tests/pg.py``).
"""

from __future__ import annotations

import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from rollwatch.abc import NO_STREAM
from rollwatch.errors import ConcurrencyConflict, IntegrityError, NotLeading, StoreError
from rollwatch.events import SchedulePaused, chain_hash
from rollwatch.migrate import migrate
from rollwatch.store.postgres import APPEND_LOCK, PostgresEventStore
from rollwatch.store.sqlite import SQLiteEventStore
from tests.pg import ADMIN_URL, scratch_database

pytestmark = pytest.mark.anyio

# A child process that opens the store, says "ready", waits for a line on stdin, then
# appends from several tasks and prints the seqs of every acknowledged append.
CHILD = textwrap.dedent(
    """
    import itertools, sys, anyio
    from rollwatch.events import SchedulePaused
    from rollwatch.log import configure_logging
    from rollwatch.store.postgres import PostgresEventStore

    configure_logging(stream=sys.stderr)  # stdout carries the protocol

    async def main(url, name, tasks, appends, size, stall):
        async with PostgresEventStore(url, stall_timeout=stall) as store:
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)

            async def writer(i):
                for j in (range(appends) if appends else itertools.count()):
                    events = [SchedulePaused(schedule=name, note=f"{i}-{j}-{k}") for k in range(size)]
                    recs = await store.append(f"{name}-{i}", events)
                    sys.stdout.write(" ".join(str(r.seq) for r in recs) + "\\n")
                    sys.stdout.flush()

            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(writer, i)

    url, name, tasks, appends, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    anyio.run(main, url, name, tasks, appends, size, float(sys.argv[6]))
    """
)


def ev(i: int = 0, note: str = "") -> SchedulePaused:
    return SchedulePaused(schedule=f"s{i}", note=note)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A scratch database with no store open on it."""
    async with scratch_database() as u:
        yield u


class _Child:
    """One appending child process, read line by line."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.out = BufferedByteReceiveStream(proc.stdout)

    @classmethod
    async def start(
        cls, url: str, name: str, *, tasks: int = 4, appends: int = 0, size: int = 3, stall: float = 10.0
    ) -> _Child:
        proc = await anyio.open_process(
            [sys.executable, "-c", CHILD, url, name, str(tasks), str(appends), str(size), str(stall)]
        )
        child = cls(proc)
        assert await child.line() == "ready"
        return child

    async def go(self) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(b"go\n")

    async def line(self) -> str | None:
        try:
            return (await self.out.receive_until(b"\n", 1 << 20)).decode()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return None

    async def batches(self) -> list[list[int]]:
        """Every acknowledged append's seqs until the child exits (which must be cleanly)."""
        out = []
        while (line := await self.line()) is not None:
            out.append([int(s) for s in line.split()])
        assert await self.proc.wait() == 0
        return out


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


async def listeners(conn: asyncpg.Connection, url: str) -> set[int]:
    """The sessions LISTENing in the database of ``url``."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'",
        url.rpartition("/")[2],
    )
    return {r[0] for r in rows}


async def _fill(url: str, n: int = 30) -> None:
    async with PostgresEventStore(url) as store:
        for i in range(n):
            await store.append(f"s{i % 4}", [ev(i, note="hello")])


class TestProcesses:
    async def test_four_processes_append_gap_free_while_a_reader_never_sees_a_gap(self, url: str) -> None:
        """Appends from 4 processes at once: seq is gap-free, each append contiguous, versions
        count per stream, the chain verifies, and a reader polling meanwhile only ever sees
        the next seq after the last one it saw (never a later one first)."""
        tasks, appends, size = 4, 25, 3
        async with PostgresEventStore(url) as store:
            children = [
                await _Child.start(url, f"p{n}", tasks=tasks, appends=appends, size=size) for n in range(4)
            ]
            results: list[list[list[int]]] = []
            seen: list[int] = []
            finished = anyio.Event()

            async def collect(child: _Child) -> None:
                results.append(await child.batches())

            async def reader() -> None:
                while not finished.is_set() or seen[-1:] != [await store.head()]:
                    async for page in store.read_batches(after=seen[-1] if seen else 0, batch=50):
                        seen.extend(r.seq for r in page)
                    assert seen == list(range(1, len(seen) + 1)), "a reader saw a gap"

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reader)
                    async with anyio.create_task_group() as writers:
                        for c in children:
                            writers.start_soon(collect, c)
                        for c in children:
                            await c.go()
                    finished.set()

            total = 4 * tasks * appends * size
            assert len(seen) == total
            all_batches = [b for r in results for b in r]
            assert len(all_batches) == 4 * tasks * appends
            assert sorted(s for b in all_batches for s in b) == list(range(1, total + 1))
            for b in all_batches:
                assert b == list(range(b[0], b[0] + size))
            for n in range(4):
                for i in range(tasks):
                    assert await store.stream_version(f"p{n}-{i}") == appends * size
            assert (await store.verify()).events == total

    async def test_a_process_stopped_inside_an_append_holds_no_other_up(self, url: str) -> None:
        """A node stopped (SIGSTOP: a frozen VM keeps its TCP connection open) while its
        append holds the append lock: PostgreSQL ends its session once the transaction has
        sat idle for its ``stall_timeout`` (it held the lock, and every node's appends, for
        good before), and another process's append goes through. Woken, the node appends
        on; nothing was half-written."""
        key = APPEND_LOCK & 0xFFFF_FFFF_FFFF_FFFF
        classid, objid = key >> 32, key & 0xFFFF_FFFF  # as pg_locks shows a bigint advisory lock
        admin = await asyncpg.connect(url)
        child = await _Child.start(url, "frozen", tasks=1, size=3, stall=1.0)
        try:
            await child.go()
            frozen = None
            with anyio.fail_after(60):
                while frozen is None:  # stop it until it is caught holding the lock between statements
                    assert await child.line() is not None
                    child.proc.send_signal(signal.SIGSTOP)
                    with anyio.move_on_after(0.5):
                        while (
                            frozen := await admin.fetchval(
                                "SELECT pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1"
                                " AND l.objid = $2 AND l.objsubid = 1 AND a.state = 'idle in transaction'",
                                classid,
                                objid,
                            )
                        ) is None:
                            await anyio.sleep(0.02)
                    if frozen is None:
                        child.proc.send_signal(signal.SIGCONT)
            with anyio.fail_after(20):  # the stopped node's session is ended
                while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", frozen):
                    await anyio.sleep(0.1)
            async with PostgresEventStore(url) as store:
                with anyio.fail_after(20):
                    [rec] = await store.append("other", [ev(1)])
                child.proc.send_signal(signal.SIGCONT)
                with anyio.fail_after(30):
                    while (line := await child.line()) is not None and int(line.split()[0]) < rec.seq:
                        pass
                assert line is not None, "the woken node stopped appending"
                got = [int(s) for s in line.split()]
                assert got == list(range(got[0], got[0] + 3)), "an append was split"
                child.proc.kill()
                await child.proc.wait()
                assert (await store.verify()).events == await store.head()
        finally:
            if child.proc.returncode is None:
                child.proc.send_signal(signal.SIGCONT)
                child.proc.kill()
                await child.proc.wait()
            await admin.close()

    async def test_a_node_stopped_while_sending_an_append_holds_no_other_up(self, url: str) -> None:
        """A node stopped in the middle of sending its append's rows (a frozen VM keeps the
        connection open; here a proxy stops passing its bytes on after the first MiB of a
        4 MiB append): the server has part of the statement and waits for the rest. When
        appends were sent as a ``COPY``, it waited inside the statement, where no timeout
        reaches, holding the append lock, and every node's appends, for good. Now the rows
        go as one statement's parameters: the session waits idle in its transaction, the
        server ends it after ``stall_timeout``, and the lock is free. The cut-off node then
        writes its group again on a new session: the event is in the log once."""
        frozen = anyio.Event()
        pg_port = int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

        async def pump(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, upstream: bool) -> None:
            sent = 0
            try:
                async for chunk in src:
                    if upstream and not frozen.is_set():
                        if sent + len(chunk) > 1 << 20 and sent > 0:
                            frozen.set()  # once: the node stops mid-statement, its socket open
                            await anyio.sleep_forever()
                        sent += len(chunk)
                    elif not upstream:
                        sent = 0  # an answer came back: the next statement starts
                    await dst.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            finally:
                await dst.aclose()

        sockets: list[anyio.abc.SocketStream] = []

        async def relay(client: anyio.abc.SocketStream) -> None:
            async with (
                client,
                await anyio.connect_tcp("127.0.0.1", pg_port) as server,
                anyio.create_task_group() as tg,
            ):
                sockets.extend((client, server))
                tg.start_soon(pump, server, client, False)
                await pump(client, server, True)
                tg.cancel_scope.cancel()

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        proxied = url.replace(f":{pg_port}/", f":{port}/", 1)
        big = ev(7, note="x" * (4 << 20))
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, relay)
            async with PostgresEventStore(proxied, stall_timeout=1.0) as cut:
                recs: list[Any] = []

                async def append_big() -> None:
                    recs.extend(await cut.append("big", [big]))

                async def unfreeze() -> None:
                    # Cut the frozen node off, so that a failing test ends (every store
                    # closing would wait on its append for good).
                    for sock in sockets:
                        await sock.aclose()

                async with anyio.create_task_group() as writes:
                    writes.start_soon(append_big)
                    with anyio.fail_after(30):
                        await frozen.wait()
                    async with PostgresEventStore(url) as other:
                        done: list[Any] = []

                        async def append_other() -> None:
                            done.extend(await other.append("other", [ev(1)]))

                        writes.start_soon(append_other)
                        with anyio.move_on_after(30):  # for good, before
                            while not done:
                                await anyio.sleep(0.05)
                        if not done:
                            await unfreeze()
                            pytest.fail("the node stopped mid-append held every other append up")
                    with anyio.fail_after(60):
                        while not recs:
                            await anyio.sleep(0.05)
                got = [r async for r in cut.read(stream="big")]
                assert [(r.seq, r.data["note"] == big.note) for r in got] == [(recs[0].seq, True)]
                assert (await cut.verify()).events == await cut.head()
            tg.cancel_scope.cancel()

    async def test_follower_is_woken_by_another_process_through_notify(self, url: str) -> None:
        """wait_for_new wakes when another process appends, by NOTIFY alone: polling is
        off (an hour apart) and the wait's own timeout is an hour."""
        async with PostgresEventStore(url, poll_interval=3600) as store:
            child = await _Child.start(url, "other", tasks=1, appends=1, size=2)
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:

                    async def wake() -> None:
                        assert await store.wait_for_new(0, timeout=3600) == 2

                    tg.start_soon(wake)
                    await anyio.wait_all_tasks_blocked()
                    await child.go()
                assert await child.batches() == [[1, 2]]
                seen = []
                async for r in store.follow():
                    seen.append((r.seq, r.stream))
                    if len(seen) == 2:
                        break
            assert seen == [(1, "other-0"), (2, "other-0")]

    async def test_listen_connection_is_restored_after_it_is_killed(self, url: str) -> None:
        """When the LISTEN session is terminated the store reconnects it, and NOTIFY from
        another process wakes a follower again (polling stays off)."""

        admin = await asyncpg.connect(url)
        try:
            async with PostgresEventStore(url, poll_interval=3600) as store:
                with anyio.fail_after(30):
                    (old,) = await listeners(admin, url)
                    await admin.execute("SELECT pg_terminate_backend($1)", old)
                    while not (new := await listeners(admin, url)) or old in new:
                        await anyio.sleep(0.02)  # a poll with a deadline, not a wait for time
                    child = await _Child.start(url, "after", tasks=1, appends=1, size=1)
                    async with anyio.create_task_group() as tg:

                        async def wake() -> None:
                            assert await store.wait_for_new(0, timeout=3600) == 1

                        tg.start_soon(wake)
                        await anyio.wait_all_tasks_blocked()
                        await child.go()
                    assert await child.batches() == [[1]]
        finally:
            await admin.close()

    async def test_follower_polls_while_it_cannot_listen(self, url: str) -> None:
        """With its LISTEN session killed and the database refusing new connections (so it
        cannot LISTEN again), a follower still sees another store's append by polling."""
        name = url.rpartition("/")[2]
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            async with PostgresEventStore(url, poll_interval=0.05) as a, PostgresEventStore(url) as b:
                await a.head()  # the pools' connections exist before connections are refused
                await b.append("warm", [ev()])
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                try:
                    for pid in await listeners(admin, url):
                        await admin.execute("SELECT pg_terminate_backend($1)", pid)
                    with anyio.fail_after(10):
                        async with anyio.create_task_group() as tg:

                            async def wake() -> None:
                                assert await a.wait_for_new(1, timeout=3600) == 2

                            tg.start_soon(wake)
                            await anyio.wait_all_tasks_blocked()
                            await b.append("x", [ev()])
                finally:
                    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        finally:
            await admin.close()

    async def test_acknowledged_appends_survive_sigkill_and_the_lock_is_released(self, url: str) -> None:
        """A writer killed mid-append loses nothing it acknowledged, and its unfinished
        transaction does not keep the append lock: the next writer goes on."""
        acked: set[int] = set()
        for _round in range(3):
            child = await _Child.start(url, "k", tasks=8, appends=0, size=2)
            await child.go()
            with anyio.fail_after(30):
                for _ in range(60):
                    line = await child.line()
                    assert line is not None
                    acked.update(int(s) for s in line.split())
            child.proc.kill()
            while (line := await child.line()) is not None:
                acked.update(int(s) for s in line.split())
            await child.proc.wait()
        async with PostgresEventStore(url) as store:
            with anyio.fail_after(30):
                (rec,) = await store.append("after", [ev()])
            stored = {r.seq async for r in store.read(batch=5000)}
            assert acked <= stored
            assert rec.seq == max(stored) == len(stored)
            assert (await store.verify()).events == len(stored)


class TestStores:
    async def test_two_stores_see_each_others_stream_versions(self, url: str) -> None:
        """Two stores (two sessions, as two processes would be) appending to one stream:
        each checks expected_version against what the other wrote."""
        async with PostgresEventStore(url) as a, PostgresEventStore(url) as b:
            await a.append("x", [ev()], expected_version=NO_STREAM)
            await b.append("x", [ev()], expected_version=1)
            with pytest.raises(ConcurrencyConflict, match="stream 'x' is at version 2"):
                await a.append("x", [ev()], expected_version=1)
            recs = await a.append("x", [ev(), ev()], expected_version=2)
            assert [(r.seq, r.version) for r in recs] == [(3, 3), (4, 4)]
            assert await b.stream_version("x") == 4
            assert (await b.verify()).events == 4

    async def test_racing_stores_let_exactly_one_create_a_stream(self, url: str) -> None:
        """Four stores racing to create one stream with NO_STREAM: one wins, three conflict."""
        outcomes: list[str] = []
        async with (
            PostgresEventStore(url) as s1,
            PostgresEventStore(url) as s2,
            PostgresEventStore(url) as s3,
            PostgresEventStore(url) as s4,
        ):

            async def racer(store: PostgresEventStore) -> None:
                try:
                    await store.append("x", [ev(), ev()], expected_version=NO_STREAM)
                    outcomes.append("ok")
                except ConcurrencyConflict:
                    outcomes.append("conflict")

            async with anyio.create_task_group() as tg:
                for s in (s1, s2, s3, s4):
                    tg.start_soon(racer, s)
            assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
            assert await s1.head() == 2

    async def test_stores_opening_a_new_database_at_once_create_the_schema_once(self, url: str) -> None:
        """Several stores opening an empty database at the same moment all open."""
        async with anyio.create_task_group() as tg:
            for _ in range(6):

                async def open_one() -> None:
                    async with PostgresEventStore(url) as s:
                        assert await s.head() == 0

                tg.start_soon(open_one)

    async def test_reopened_store_continues_the_chain(self, url: str) -> None:
        """Closing and reopening keeps seq, versions and the chain going."""
        async with PostgresEventStore(url) as store:
            await store.append("a", [ev(1), ev(2)])
        async with PostgresEventStore(url) as store:
            (r,) = await store.append("a", [ev(3)], expected_version=2)
            assert (r.seq, r.version) == (3, 3)
            assert (await store.verify()).events == 3

    async def test_writer_commits_synchronously_even_if_the_database_says_off(self, url: str) -> None:
        """A database configured with synchronous_commit = off does not weaken append's
        durability: the store's writer session sets it back to on."""
        name = url.rpartition("/")[2]
        await _sql(url, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        async with PostgresEventStore(url) as store:
            await store.append("a", [ev()])
            assert store._writer_conn is not None
            assert await store._writer_conn.fetchval("SHOW synchronous_commit") == "on"
            async with store._acquire() as reader:
                assert await reader.fetchval("SHOW synchronous_commit") == "off"

    async def test_unreachable_database_is_a_store_error(self) -> None:
        """Opening a store whose server is not there raises StoreError naming the URL, not its password."""
        store = PostgresEventStore("postgresql://rw:secret@127.0.0.1:1/nowhere", connect_timeout=5)
        with pytest.raises(StoreError, match=r"postgresql://rw:\*\*\*@127.0.0.1:1/nowhere") as e:
            await store.__aenter__()
        assert "secret" not in str(e.value)


class TestInDoubtCommit:
    async def test_commit_whose_reply_is_lost_is_reported_done(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The connection breaks after COMMIT took effect: the store finds the events
        stored and append returns them; the next append reconnects and chains on."""
        async with PostgresEventStore(url) as store:
            finish = store._finish

            async def commit_then_break(conn: asyncpg.Connection, sql: str) -> None:
                await finish(conn, sql)
                conn.terminate()
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

            monkeypatch.setattr(store, "_finish", commit_then_break)
            recs = await store.append("a", [ev(1), ev(2)])
            monkeypatch.setattr(store, "_finish", finish)
            assert [r.seq for r in recs] == [1, 2]
            (r,) = await store.append("a", [ev(3)], expected_version=2)
            assert r.seq == 3
            assert (await store.verify()).events == 3

    async def test_commit_that_never_happened_is_reported_failed(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The connection breaks before COMMIT reaches the server: append raises
        StoreError saying nothing was written, and nothing was (after retrying for
        ``retry_for``, kept short here)."""
        async with PostgresEventStore(url, retry_for=2.0) as store:
            finish = store._finish

            async def break_before_commit(conn: asyncpg.Connection, sql: str) -> None:
                conn.terminate()
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

            monkeypatch.setattr(store, "_finish", break_before_commit)
            with pytest.raises(StoreError, match="nothing was written"):
                await store.append("a", [ev(1)])
            monkeypatch.setattr(store, "_finish", finish)
            assert await store.head() == 0
            (r,) = await store.append("a", [ev(2)], expected_version=NO_STREAM)
            assert r.seq == 1


class TestDatabaseGuards:
    async def test_update_delete_and_truncate_are_refused(self, url: str) -> None:
        """Triggers make the table append-only for every session, not just ours."""
        await _fill(url, 2)
        for sql in ("UPDATE events SET data = '{}' WHERE seq = 1", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await _sql(url, sql)
        async with PostgresEventStore(url) as store:
            assert (await store.verify()).events == 2

    @pytest.mark.parametrize(
        ("sql", "bad_seq"),
        [
            pytest.param(
                ["UPDATE events SET data = replace(data, 'hello', 'hellp') WHERE seq = 17"],
                17,
                id="one-byte-changed",
            ),
            pytest.param(["DELETE FROM events WHERE seq = 11"], 11, id="row-deleted"),
            pytest.param(
                [
                    "UPDATE events SET seq = -1 WHERE seq = 8",
                    "UPDATE events SET seq = 8 WHERE seq = 9",
                    "UPDATE events SET seq = 9 WHERE seq = -1",
                ],
                8,
                id="rows-swapped",
            ),
            pytest.param(
                [
                    "INSERT INTO events SELECT 31, id || 'x', stream, version + 100, type, schema, at, data, hash"
                    " FROM events WHERE seq = 30"
                ],
                31,
                id="row-appended-by-hand",
            ),
            pytest.param(
                ["UPDATE events SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 3"], 3, id="time-changed"
            ),
            pytest.param(["UPDATE events SET version = 30 WHERE seq = 12"], 12, id="stream-version-changed"),
        ],
    )
    async def test_verify_names_the_first_tampered_seq(self, url: str, sql: list[str], bad_seq: int) -> None:
        """Any change to a stored event, made with the triggers disabled (and enabled
        again: left disabled, the store's open refuses the schema, test_pg_schema_tamper.py),
        makes verify raise IntegrityError naming its seq."""
        await _fill(url)
        await _sql(
            url, "ALTER TABLE events DISABLE TRIGGER USER", *sql, "ALTER TABLE events ENABLE TRIGGER USER"
        )
        async with PostgresEventStore(url) as store:
            with pytest.raises(IntegrityError, match=f"at seq {bad_seq}:") as e:
                await store.verify()
        assert e.value.seq == bad_seq


async def _sqlite_log(path: Path, n: int) -> list[tuple[object, ...]]:
    async with SQLiteEventStore(path) as src:
        for i in range(0, n, 7):
            await src.append(f"run-{i % 5}", [ev(i + k, note=f"é ✓ {i + k}") for k in range(min(7, n - i))])
        return [tuple(r) async for r in src.read(batch=5000)]


class TestMigrate:
    async def test_migrate_copies_a_sqlite_log_exactly(self, url: str, tmp_path: Path) -> None:
        """Every envelope field and hash arrives unchanged, the target verifies with the
        source's head hash, and appends on the target continue the same chain."""
        rows = await _sqlite_log(tmp_path / "events.db", 12_001)
        seen: list[int] = []
        async with SQLiteEventStore(tmp_path / "events.db") as src, PostgresEventStore(url) as dst:
            assert await migrate(src, dst, progress=seen.append) == 12_001
            assert seen == [5000, 10_000, 12_001]
            assert [tuple(r) async for r in dst.read(batch=5000)] == rows
            assert (await dst.verify()).head_hash == (await src.verify()).head_hash == rows[-1][-1]
            (r,) = await dst.append("run-0", [ev()], expected_version=await src.stream_version("run-0"))
            assert r.seq == 12_002
            assert r.hash == chain_hash(bytes.fromhex(str(rows[-1][-1])), r.canonical()).hex()
            assert (await dst.verify()).events == 12_002

    async def test_migrate_resumes_a_partial_copy(self, url: str, tmp_path: Path) -> None:
        """A target holding the source's first events gets the rest, and only the rest."""
        rows = await _sqlite_log(tmp_path / "events.db", 300)
        async with SQLiteEventStore(tmp_path / "events.db") as src, PostgresEventStore(url) as dst:
            await dst.import_recorded([r async for r in src.read(until=100)])
            assert await migrate(src, dst) == 200
            assert [tuple(r) async for r in dst.read()] == rows

    async def test_migrate_refuses_a_target_with_another_log(self, url: str, tmp_path: Path) -> None:
        """A target that already holds different events is left alone."""
        await _sqlite_log(tmp_path / "events.db", 20)
        async with SQLiteEventStore(tmp_path / "events.db") as src, PostgresEventStore(url) as dst:
            await dst.append("mine", [ev(), ev()])
            with pytest.raises(StoreError, match="differ from the source"):
                await migrate(src, dst)
            assert await dst.head() == 2

    async def test_migrate_stops_at_a_tampered_source_event(self, url: str, tmp_path: Path) -> None:
        """The target checks every imported hash: a tampered source raises IntegrityError
        naming the seq, and the batch holding it is not written."""
        import sqlite3

        db = tmp_path / "events.db"
        await _sqlite_log(db, 40)
        con = sqlite3.connect(db)
        con.execute("DROP TRIGGER events_no_update")
        con.execute("UPDATE events SET data = replace(data, '✓', 'x') WHERE seq = 17")
        con.commit()
        con.close()
        async with SQLiteEventStore(db) as src, PostgresEventStore(url) as dst:
            with pytest.raises(IntegrityError, match="at seq 17:"):
                await migrate(src, dst)
            assert await dst.head() == 0

    async def test_import_refuses_events_that_do_not_continue_the_log(self, url: str) -> None:
        """import_recorded checks seq, hash and stream version against the target's tip."""
        async with PostgresEventStore(url) as store:
            (r,) = await store.append("a", [ev()])
            bad_seq = r._replace(seq=3)
            with pytest.raises(IntegrityError, match="continues at 2"):
                await store.import_recorded([bad_seq])
            forged = r._replace(seq=2, version=2)
            with pytest.raises(IntegrityError, match="at seq 2: the imported event's hash"):
                await store.import_recorded([forged])
            wrong_version = r._replace(seq=2, version=5)
            wrong_version = wrong_version._replace(
                hash=chain_hash(bytes.fromhex(r.hash), wrong_version.canonical()).hex()
            )
            with pytest.raises(IntegrityError, match="version 5 of stream 'a', which is at 1"):
                await store.import_recorded([wrong_version])
            assert await store.head() == 1


class TestLeadership:
    async def test_a_deposed_leader_appends_nothing(self, url: str) -> None:
        """A leads; its lock's session is terminated (a leader cut off, or stopped while
        its session timed out), and B leads in its place. A's body, which has not noticed
        yet (its keepalive looks every 2 s), appends: the append is refused with
        NotLeading and the log holds only B's, so a schedule fire is never recorded by
        two leaders. An append of A's outside the leadership still goes through."""
        stop = anyio.Event()
        a_leads, b_leads, go = anyio.Event(), anyio.Event(), anyio.Event()
        a_result: list[object] = []

        async def a_body() -> None:
            a_leads.set()
            await go.wait()
            try:
                await a_store.append("schedule-s", [ev(note="a")])
                a_result.append("appended")
            except NotLeading as e:
                a_result.append(e)
            await stop.wait()

        async def b_body() -> None:
            b_leads.set()
            await b_store.append("schedule-s", [ev(note="b")])
            await stop.wait()

        async with PostgresEventStore(url) as a_store, PostgresEventStore(url) as b_store:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    await tg.start(a_store.lead, "scheduler", a_body, stop)
                    await a_leads.wait()
                    await tg.start(b_store.lead, "scheduler", b_body, stop)
                    admin = await asyncpg.connect(ADMIN_URL)
                    try:
                        # The one session holding an advisory lock: A's.
                        await admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_locks"
                            " WHERE locktype = 'advisory' AND granted AND database ="
                            " (SELECT oid FROM pg_database WHERE datname = $1)",
                            url.rpartition("/")[2],
                        )
                    finally:
                        await admin.close()
                    await b_leads.wait()
                    go.set()
                    while not a_result:
                        await anyio.sleep(0.01)
                    stop.set()
            [refused] = a_result
            assert isinstance(refused, NotLeading), refused
            notes = [r.event().note async for r in b_store.read(stream="schedule-s")]  # type: ignore[attr-defined]
            assert notes == ["b"]
            await a_store.append("other", [ev(note="not a leader's")])
            assert (await b_store.verify()).events == 2
