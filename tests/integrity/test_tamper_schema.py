"""Tampering through SQLite's schema by someone holding the log file (helper-70).

No row, hash or leaf is edited: what is added to the file's schema changes the log as it is
written or read. A ``BEFORE INSERT`` trigger answering ``RAISE(IGNORE)`` drops an event as it
is appended: the append returns its seq, the next event takes that seq, and the chain, the tree
and every checkpoint stay whole, so ``verify``, the scrub and a restart all passed while a
failing re-score (or a revocation) was never written. A view named ``events`` over the renamed
table, and a constraint edited into the table's definition, are the same kind of edit. The
store now refuses a schema that is not exactly the one rollwatch made: at open (so ``verify``,
each scrub pass and a restart), and at each append whose schema moved since it was checked.
The same visit without SQL: a page of the log overwritten (the live scrub only warned), the
file renamed over (the live daemon kept the old one). And a trigger in the projections file.
Real SQLite files, a real daemon, the real scrub.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest

from rollwatch.errors import IntegrityError, StoreError
from rollwatch.events import SchedulePaused
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.integrity.conftest import append_n, run_sql
from tests.integrity.served import Site, _poll, _stop, serving, unhealthy
from tests.integrity.test_early_release import _get_auth, _site, _text
from tests.integrity.test_tamper import refused_start
from tests.integrity.test_tamper_2026 import _passed, _rescore_failed, _subscribe
from tests.publication.helpers import add_rollout, bearer, finish_run, new_run_id, start_run

HIDE_RESCORES = "CREATE TRIGGER hide BEFORE INSERT ON events WHEN NEW.type = 'RolloutRescored' BEGIN SELECT RAISE(IGNORE); END"


def _head(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT MAX(seq) FROM events").fetchone()[0])
    finally:
        con.close()


def test_a_trigger_that_drops_a_rescore_is_named(tmp_path: Path) -> None:
    """The trigger added under a live daemon: a pass re-scored as a failure was dropped as it
    was appended (the append returned its seq), the subscriber's record kept the pass, and the
    scrub, ``verify`` and a restart passed the log. Now the append refuses naming the trigger,
    the scrub names it (``/healthz`` 503), ``verify`` exits 1 and a restart refuses."""
    s, _, _ = _site(tmp_path)
    with s.config.open("a") as cfg:  # [integrity] is the file's last section
        cfg.write('scrub_interval = "500ms"\n')
    honest = _passed(s.db)
    with serving(s):
        auth = bearer(anyio.run(_subscribe, s.db))
        _poll(
            lambda: (r := _get_auth(s.url + f"/v1/rollouts/{honest}", auth)) and r.status_code == 200,
            30,
            "the record",
        )
        run_sql(s.db, HIDE_RESCORES)
        head = _head(s.db)
        with pytest.raises(IntegrityError, match="trigger hide"):
            anyio.run(_rescore_failed, s.db, honest)
        assert _head(s.db) == head
        h = unhealthy(s.url, "/healthz to name the trigger", 30)
        assert "trigger hide" in h.text, h.text
    v = rollwatch("verify", "--config", str(s.config))
    assert v.returncode == 1, v.stdout + v.stderr
    assert "the log file's schema holds what rollwatch did not make" in v.stderr, v.stderr
    assert "trigger hide" in v.stderr, v.stderr
    err = refused_start(s)
    assert "trigger hide" in err, err[-2000:]


@pytest.mark.anyio
async def test_a_trigger_added_under_an_open_store_stops_its_appends(tmp_path: Path) -> None:
    """Added while the store is open (a daemon running): the next append checks the schema
    again (its version moved) and fails naming the trigger, nothing written. Before, the
    append returned seq 2 and the log held one event."""
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store:
        await store.append("s", [SchedulePaused(schedule="a")])
        run_sql(db, "CREATE TRIGGER hide BEFORE INSERT ON events BEGIN SELECT RAISE(IGNORE); END")
        with pytest.raises(StoreError, match="trigger hide"):
            await store.append("s", [SchedulePaused(schedule="b")])
        assert await store.head() == 1


@pytest.mark.anyio
async def test_a_view_named_events_is_named(tmp_path: Path) -> None:
    """The table renamed (its triggers follow it) and a view named ``events`` put in its
    place, showing the rows there are now, with a trigger that inserts through it: every later
    event is stored where no reader sees it (the append returned its seq, ``verify`` passed a
    log of one event). Now every open names the view."""
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store:
        await store.append("s", [SchedulePaused(schedule="a")])
    run_sql(
        db,
        "ALTER TABLE events RENAME TO events_kept",
        "CREATE VIEW events AS SELECT * FROM events_kept WHERE seq <= 1",
        "CREATE TRIGGER through INSTEAD OF INSERT ON events BEGIN"
        " INSERT INTO events_kept VALUES (NEW.seq, NEW.id, NEW.stream, NEW.version, NEW.type,"
        " NEW.schema, NEW.at, NEW.data, NEW.hash); END",
    )
    with pytest.raises(IntegrityError, match="view events"):
        async with SQLiteEventStore(db) as store:
            await store.append("s", [SchedulePaused(schedule="b")])
    with pytest.raises(
        IntegrityError,
        match=r"at seq 2: .*: table events_kept, .*trigger events_no_update \(its definition changed\), .*view events, trigger through \(",
    ):
        async with SQLiteEventStore(db, read_only=True) as store:
            await store.verify()


@pytest.mark.anyio
async def test_a_check_edited_into_the_table_is_named(tmp_path: Path) -> None:
    """A ``CHECK`` edited into the table's definition (``writable_schema``) that refuses every
    later event of a type: a denial of service, which must be named, not a silent loss. Every
    open names the edited table (``verify`` passed it before)."""
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store:
        await store.append("s", [SchedulePaused(schedule="a")])
    con = sqlite3.connect(db, isolation_level=None)
    try:
        (version,) = con.execute("PRAGMA schema_version").fetchone()
        con.execute("PRAGMA writable_schema = ON")
        con.execute(
            "UPDATE sqlite_master SET sql = replace(sql, 'UNIQUE (stream, version)',"
            " 'UNIQUE (stream, version), CHECK (seq < 2)') WHERE name = 'events'"
        )
        con.execute(f"PRAGMA schema_version = {version + 1}")
    finally:
        con.close()
    for read_only in (True, False):
        with pytest.raises(IntegrityError, match=r"at seq 2: .*: table events \(its definition changed\) "):
            async with SQLiteEventStore(db, read_only=read_only) as store:
                await store.verify()


def test_a_damaged_page_under_a_live_daemon_is_named(site: tuple[Site, subprocess.Popen[str]]) -> None:
    """Bytes of a page of old events overwritten, no SQL: the scrub could not read the log,
    logged ``scrub_failed`` at each pass and retried, and ``/healthz`` said ok while the daemon
    signed and released on (a restart and ``verify`` refused the file). The scrub now names the
    first seq it cannot read, as a finding."""
    s, _ = site

    async def more() -> None:  # so that the second leaf page holds old events, not the tail
        async with SQLiteEventStore(s.db) as store:
            await append_n(store, 120, tag="late")

    anyio.run(more)
    head = _head(s.db)
    _poll(lambda: any(size >= head for _, size in s.checkpoints()), 30, "a checkpoint of every event")
    con = sqlite3.connect(s.db, isolation_level=None)
    try:
        assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        (size,) = con.execute("PRAGMA page_size").fetchone()
        leaves = con.execute(
            "SELECT pageno, ncell FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY path"
        ).fetchall()
        page, first_seq = leaves[1][0], leaves[0][1] + 1  # the second leaf, and the first seq on it
    finally:
        con.close()
    with s.db.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(bytes(8))  # the page's header: no b-tree page any more
    h = unhealthy(s.url, "/healthz to name the damaged log", 20)
    assert h.json()["first_bad_seq"] == first_seq, h.text
    assert "is damaged" in h.text, h.text


def test_a_log_file_renamed_over_the_live_one_is_named(site: tuple[Site, subprocess.Popen[str]]) -> None:
    """A copy of the log renamed over it under a live daemon: the daemon kept the file it had
    opened, never saw what other processes appended to the new one (a revocation, a re-score),
    and the scrub, reading the new file, passed it: ``/healthz`` said ok. Now the daemon's
    scrub loop names the file replaced."""
    s, _ = site
    src, dst = sqlite3.connect(s.db), sqlite3.connect(s.dir / "copy.db")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    (s.dir / "copy.db").rename(s.db)
    h = unhealthy(s.url, "/healthz to name the file replaced", 20)
    assert "was replaced or removed while this process had it open" in h.text, h.text


@pytest.mark.anyio
async def test_an_append_after_the_file_was_replaced_is_refused(tmp_path: Path) -> None:
    """An open store whose file was renamed over: its append would go to the file no later
    reader opens (and share the write-ahead log, found by name, with the new one). Refused."""
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store:
        await store.append("s", [SchedulePaused(schedule="a")])
        run_sql(tmp_path / "other.db", "CREATE TABLE t (x)")
        (tmp_path / "other.db").rename(db)
        with pytest.raises(StoreError, match="was replaced or removed while this process had it open"):
            await store.append("s", [SchedulePaused(schedule="b")])


CENSOR_P4 = (
    "CREATE TRIGGER censor AFTER INSERT ON public_rollouts WHEN NEW.problem_id = 'p4'"
    " BEGIN DELETE FROM public_rollouts WHERE rollout_id = NEW.rollout_id; END"
)
"""A trigger in the projections file deleting the public row of each new result of problem p4."""


async def _a_later_pass(db: Path) -> str:
    """A run with one released pass of problem p4 appended to the log ``db``; its rollout id."""
    async with SQLiteEventStore(db) as store:
        run = new_run_id()
        await start_run(store, run)
        rid = await add_rollout(store, run, passed=True, problem_id="p4")
        await finish_run(store, run, rollouts=1, passed=1)
        return rid


def test_a_trigger_in_the_projections_file_hides_no_later_result(tmp_path: Path) -> None:
    """A trigger added to the projections file that deletes the public row of every new result
    of a problem: a one-time visit to the file hid each later result of it from the public,
    release after release, and nothing noticed (the routes check what they serve, not what
    is missing). rollwatch makes no trigger or view there: the file is built again from the
    log beside (``projections_building_beside``), without it, and the result is served."""
    s, _, _ = _site(tmp_path)
    with serving(s):
        _poll(lambda: _text(s.url + "/public/results.jsonl").count("\n") == 1, 30, "the released pass")
    run_sql(s.dir / "events.projections.db", CENSOR_P4)
    rid = anyio.run(_a_later_pass, s.db)
    with serving(s) as proc:
        _poll(lambda: rid in _text(s.url + "/public/results.jsonl"), 20, "the later result in public")
        err = _stop(proc)
    assert "trigger censor" in err, err[-2000:]


def test_a_trigger_added_to_the_projections_file_under_a_live_daemon_acts_on_nothing(tmp_path: Path) -> None:
    """The same trigger added while the daemon runs: it acted on every write until the next
    start (each later result of the problem deleted from the public rows as it was released).
    Now the writer looks at the file's schema whenever its version moved, before it writes:
    the trigger is dropped before it can act, logged (ERROR ``projections_tampered`` naming
    it), and the file is built again from the log beside (``projections_rebuilding``)."""
    s, _, _ = _site(tmp_path)
    with serving(s) as proc:
        _poll(lambda: _text(s.url + "/public/results.jsonl").count("\n") == 1, 30, "the released pass")
        run_sql(s.dir / "events.projections.db", CENSOR_P4)
        rid = anyio.run(_a_later_pass, s.db)
        _poll(lambda: rid in _text(s.url + "/public/results.jsonl"), 20, "the later result in public")
        err = _stop(proc)
    assert "projections_tampered" in err, err[-2000:]
    assert "trigger censor" in err, err[-2000:]
    assert "projections_rebuilding" in err, err[-2000:]
