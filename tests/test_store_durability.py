"""Crash safety and tamper evidence of the SQLite event log, with real processes and files."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch, write_config

CHILD = textwrap.dedent(
    """
    import sys, anyio
    from rollwatch.store.sqlite import SQLiteEventStore
    from rollwatch.events import SchedulePaused

    async def main():
        async with SQLiteEventStore(sys.argv[1]) as store:
            async def writer(i):
                n = 0
                while True:
                    n += 1
                    recs = await store.append(f"w{i}", [SchedulePaused(schedule="x", note=f"{i}-{n}-{k}") for k in range(2)])
                    # Acknowledged: append returned. Report it before anything else.
                    sys.stdout.write(" ".join(str(r.seq) for r in recs) + "\\n")
                    sys.stdout.flush()
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(writer, i)

    anyio.run(main)
    """
)


def test_acknowledged_appends_survive_sigkill(tmp_path: Path) -> None:
    """A writer SIGKILLed at random moments never loses an append it acknowledged."""
    db = tmp_path / "events.db"
    acked: set[int] = set()
    rng = random.Random(42)
    for _round in range(5):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        target = rng.randint(20, 400)
        for lines, line in enumerate(proc.stdout, start=1):
            acked.update(int(s) for s in line.split())
            if lines >= target:
                break
        proc.kill()
        # Lines already in the pipe were acknowledged too.
        rest = proc.stdout.read()
        acked.update(int(s) for s in rest.split())
        proc.stdout.close()
        proc.wait()
    assert len(acked) > 100

    async def check() -> None:
        async with SQLiteEventStore(db) as store:
            stored = {r.seq async for r in store.read(batch=5000)}
            assert acked <= stored
            report = await store.verify()
            assert report.events == len(stored) == max(stored)

    anyio.run(check)


def _fill(db: Path, n: int = 30) -> None:
    from rollwatch.events import SchedulePaused

    async def main() -> None:
        async with SQLiteEventStore(db) as store:
            for i in range(n):
                await store.append(f"s{i % 4}", [SchedulePaused(schedule=f"s{i}", note="hello")])

    anyio.run(main)


def _tamper(db: Path, *sql: str) -> None:
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER events_no_update")
    con.execute("DROP TRIGGER events_no_delete")
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()


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
                "INSERT INTO events SELECT 31, id || 'x', stream, version + 100, type, schema, at, data, hash FROM events WHERE seq = 30"
            ],
            31,
            id="row-appended-by-hand",
        ),
        pytest.param(
            ["UPDATE events SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 3"], 3, id="time-changed"
        ),
    ],
)
def test_verify_names_the_first_tampered_seq(tmp_path: Path, sql: list[str], bad_seq: int) -> None:
    """Any change to a stored event makes `rollwatch verify` exit 1 and name its seq."""
    cfg = write_config(tmp_path)
    _fill(tmp_path / "events.db")
    ok = rollwatch("--config", str(cfg), "verify")
    assert ok.returncode == 0, ok.stderr
    assert "30 events" in ok.stdout
    _tamper(tmp_path / "events.db", *sql)
    bad = rollwatch("--config", str(cfg), "verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"seq {bad_seq}" in bad.stderr


def test_log_refuses_update_and_delete_through_sqlite(tmp_path: Path) -> None:
    """The triggers make the table append-only for anyone going through SQLite."""
    db = tmp_path / "events.db"
    _fill(db, 2)
    con = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("UPDATE events SET data = '{}' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("DELETE FROM events")
    con.close()


def test_migrate_command_copies_the_log_to_postgresql(tmp_path: Path) -> None:
    """`rollwatch migrate --to postgresql://…` copies every event and the copy verifies."""
    from tests.pg import scratch_database

    cfg = write_config(tmp_path)
    _fill(tmp_path / "events.db", 40)

    async def main() -> None:
        async with scratch_database() as url:
            res = await anyio.to_thread.run_sync(
                lambda: rollwatch("--config", str(cfg), "migrate", "--to", url)
            )
            assert res.returncode == 0, res.stderr
            assert "copied 40 events" in res.stdout
            pg_cfg = tmp_path / "pg.toml"
            pg_cfg.write_text(f'[store]\nurl = "{url}"\n')
            ver = await anyio.to_thread.run_sync(lambda: rollwatch("--config", str(pg_cfg), "verify"))
            assert ver.returncode == 0, ver.stderr
            assert "40 events" in ver.stdout

    anyio.run(main)


def test_tail_follows_appends_from_another_process(tmp_path: Path) -> None:
    """`events tail -f --json` prints, as SPEC §4 envelopes, events another process appends later."""
    import json
    import os
    import time

    cfg = write_config(tmp_path)
    _fill(tmp_path / "events.db", 2)
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollwatch",
            "--config",
            str(cfg),
            "events",
            "tail",
            "-f",
            "--json",
            "--after",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ},
    )
    try:
        assert tail.stdout is not None
        # A separate process appends while the tail waits.
        _fill(tmp_path / "events.db", 3)
        import select

        deadline = time.monotonic() + 20
        out = b""
        fd = tail.stdout.fileno()
        while out.count(b"\n") < 3:
            left = deadline - time.monotonic()
            assert left > 0, f"tail printed only {out!r}"
            if select.select([fd], [], [], left)[0]:
                out += os.read(fd, 65536)
        lines = out.decode().splitlines()
        envelopes = [json.loads(ln) for ln in lines]
        assert [e["seq"] for e in envelopes] == [3, 4, 5]
        assert all(
            list(e) == ["seq", "id", "stream", "type", "schema", "at", "data", "hash"] for e in envelopes
        )
    finally:
        tail.kill()
        tail.communicate()


def test_an_append_gives_up_on_a_held_lock_after_the_busy_timeout(tmp_path: Path) -> None:
    """``store.busy_timeout``: an append waits that long for a lock another process holds
    (here a connection inside ``BEGIN EXCLUSIVE``), then fails naming the lock, writes
    nothing, and succeeds once the lock is gone."""
    from rollwatch.config import StoreConfig
    from rollwatch.errors import StoreError
    from rollwatch.events import SchedulePaused
    from rollwatch.store import open_store

    db = tmp_path / "events.db"
    _fill(db, 3)
    config = StoreConfig.model_validate({"url": f"sqlite:{db}", "busy_timeout": "200ms"})
    holder = sqlite3.connect(db, isolation_level=None)

    async def main() -> None:
        async with open_store(config) as store:
            holder.execute("BEGIN EXCLUSIVE")
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="database is locked"):
                await store.append("s", [SchedulePaused(schedule="s", note="while locked")])
            # 0.2 s configured; the default would wait 30 s (an append blocked in SQLite
            # cannot be cancelled, so this is measured, with a margin far beyond noise).
            assert time.monotonic() - t0 < 10
            holder.execute("COMMIT")
            [rec] = await store.append("s", [SchedulePaused(schedule="s", note="after")])
            assert rec.seq == 4

    anyio.run(main)
    holder.close()


@pytest.mark.parametrize(("streams", "types", "until"), [(1, 0, False), (400, 1, True), (3, 2, True)])
def test_read_streams_looks_each_stream_up_in_its_index(
    tmp_path: Path, streams: int, types: int, until: bool
) -> None:
    """read_streams' query (the public routes' check of each shown result's newest re-score)
    is answered through the (stream, version) index, never by walking the log by seq: on a
    log of millions the walk is seconds per public request. Planned on a real log file."""
    from rollwatch.events import SchedulePaused
    from rollwatch.store.sqlite import streams_sql

    db = tmp_path / "events.db"

    async def fill() -> None:
        async with SQLiteEventStore(db) as store:  # a log's shape: many streams of a few events
            for i in range(0, 6000, 3):
                await store.append(f"rollout-{i}", [SchedulePaused(schedule=f"s{i + k}") for k in range(3)])

    anyio.run(fill)
    con = sqlite3.connect(db)
    con.execute("ANALYZE")  # with statistics, the planner could prefer walking the table
    plan = " ".join(
        str(row[-1])
        for row in con.execute(
            "EXPLAIN QUERY PLAN " + streams_sql(streams, types, until),
            [f"rollout-{i}" for i in range(streams)] + ["SchedulePaused"] * types + [10**9] * until,
        )
    )
    con.close()
    assert "USING INDEX sqlite_autoindex_events_1 (stream=?)" in plan, plan
    assert "SCAN" not in plan, plan
