"""Attacks by someone holding the log's folder (helper att-f): files put where rollwatch reads
them that are not what it wrote there (named pipes, folders, huge files, bytes that are not
UTF-8). Each must be named by ``verify`` and ``serve``, never wait for good or end in a traceback.

Before the fix: a named pipe in place of ``checkpoint.key`` (or of a retired key beside it,
read when event 1 was edited) held ``verify`` in its read for good and ``serve`` too, deaf to
SIGTERM; an ``origin`` file of bytes that are not UTF-8 made both print a traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers import rollwatch, write_config
from tests.integrity.conftest import rewrite_event, run_sql
from tests.integrity.served import Site, _free_port, _poll, _stop

DEADLINE = 30.0
"""Long enough for a check of 41 events; a command that waits for good is killed at it."""


def _verify(site: Site) -> subprocess.CompletedProcess[str]:
    try:
        return rollwatch("--config", str(site.config), "verify", timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"verify did not finish within {DEADLINE:g} s: it waits on something put in the folder")


def _serve_refuses(site: Site) -> tuple[int, str]:
    """``serve``'s exit status and stderr; fails when it has not exited within the deadline."""
    proc = site.serve()
    try:
        _poll(lambda: proc.poll() is not None, DEADLINE, "serve to refuse the folder")
    finally:
        if proc.poll() is None:
            proc.kill()
        err = _stop(proc)
    return proc.returncode, err


def _unsigned_origin_config(site: Site) -> Site:
    """``site`` with a config that names no origin: the state's ``origin`` file is read."""
    port = _free_port()
    cfg = write_config(
        site.dir,
        f'[server]\nlisten = "127.0.0.1:{port}"\n[scoring]\nworkers = 1\n'
        '[integrity]\ncheckpoint_every = 5\ncheckpoint_interval = "1s"\nscrub_interval = "500ms"\n',
    )
    return Site(site.dir, cfg, f"http://127.0.0.1:{port}")


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err[-3000:]


def _verify_refuses(site: Site, *said: str) -> None:
    """``verify`` exits non-zero (no check run) with each of ``said`` on stderr, no traceback."""
    got = _verify(site)
    assert got.returncode != 0, got.stdout
    for words in said:
        assert words in got.stderr, got.stderr
    _no_traceback(got.stderr)


def _serve_refuses_naming(site: Site, *said: str) -> None:
    """``serve`` exits non-zero within the deadline with each of ``said`` on stderr, no traceback."""
    status, err = _serve_refuses(site)
    assert status != 0
    for words in said:
        assert words in err, err[-3000:]
    _no_traceback(err)


def _verify_fails(site: Site, *said: str) -> None:
    """``verify`` exits 1 (the check ran and failed) with each of ``said`` in its output."""
    got = _verify(site)
    out = got.stdout + got.stderr
    assert got.returncode == 1, out
    for words in said:
        assert words in out, out
    _no_traceback(got.stderr)


def _verify_passes(site: Site) -> None:
    """``verify`` exits 0 naming the whole signed log (41 events), no traceback."""
    got = _verify(site)
    assert got.returncode == 0, got.stderr
    assert "ok: 41 events" in got.stdout, got.stdout
    _no_traceback(got.stderr)


def test_a_pipe_in_place_of_the_key_file_is_named_not_waited_on(stopped_site: Site) -> None:
    key = stopped_site.dir / "checkpoint.key"
    key.unlink()
    os.mkfifo(key)
    _verify_refuses(stopped_site, "not a regular file", str(key))
    _serve_refuses_naming(stopped_site, "not a regular file", str(key))


def test_a_huge_key_file_is_named_unread(stopped_site: Site) -> None:
    key = stopped_site.dir / "checkpoint.key"
    with key.open("r+b") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB read whole before
    _verify_refuses(stopped_site, "more than", str(key))


def test_a_pipe_as_a_retired_key_does_not_hold_the_check_of_an_edited_first_event(stopped_site: Site) -> None:
    # Event 1 edited (chain recomputed) makes the check ask which keys are this deployment's,
    # reading every retired key file beside the key: a pipe there held that read for good.
    os.mkfifo(stopped_site.dir / "checkpoint.key.retired-1")
    con = sqlite3.connect(stopped_site.db)
    try:
        data = json.loads(con.execute("SELECT data FROM events WHERE seq = 1").fetchone()[0])
    finally:
        con.close()
    data["schedule"] = "forged"
    rewrite_event(stopped_site.db, 1, json.dumps(data, separators=(",", ":"), sort_keys=True))
    _verify_fails(stopped_site, "FAILED at seq 1:")


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00rollwatch", b"a.example/log\nb.example/log\n", b"x" * 5000, "pipe", "folder"],
    ids=["not-utf8", "two-lines", "huge", "pipe", "folder"],
)
def test_an_origin_file_that_holds_no_name_is_named(stopped_site: Site, content: bytes | str) -> None:
    site = _unsigned_origin_config(stopped_site)
    origin = site.dir / "origin"
    if content == "pipe":  # a named pipe: opening it to read waited for a writer for good
        origin.unlink(missing_ok=True)
        os.mkfifo(origin)
    elif content == "folder":  # was taken for no file, then written to at start: a traceback
        origin.unlink(missing_ok=True)
        origin.mkdir()
    else:
        assert isinstance(content, bytes)
        origin.write_bytes(content)
    _verify_refuses(site, "origin file holds no name", str(origin))
    _serve_refuses_naming(site, "origin file holds no name")


def test_an_origin_file_naming_another_log_fails_every_signature(stopped_site: Site) -> None:
    site = _unsigned_origin_config(stopped_site)
    (site.dir / "origin").write_text("evil.example/log\n")
    _verify_fails(site, "FAILED at seq", "not signed by evil.example/log")


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _folder(p: Path) -> None:
    p.mkdir()


def _replace_by_fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


@pytest.mark.parametrize(
    ("name", "make", "said"),
    [
        ("events.db-shm", _fifo, "cannot read the event log"),
        ("events.db-wal", _folder, "cannot read the event log"),
        ("merkle.db", _replace_by_fifo, "there is no Merkle tree"),
    ],
)
def test_sqlite_side_files_replaced_are_named(stopped_site: Site, name: str, make: object, said: str) -> None:
    assert callable(make)
    make(stopped_site.dir / name)
    _verify_refuses(stopped_site, said)


@pytest.mark.parametrize("name", ["events.db-wal", "merkle.db-wal"])
def test_a_pipe_as_a_write_ahead_log_changes_nothing_and_holds_nothing(stopped_site: Site, name: str) -> None:
    # SQLite reads an empty write-ahead log there: the log is what was signed, and verify says so.
    os.mkfifo(stopped_site.dir / name)
    _verify_passes(stopped_site)


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        # No hash covers the version; stored as TEXT it is no number SQLite can convert.
        ("UPDATE events SET version = '2x' WHERE seq = 10", "its stream version does not follow"),
        # A REAL where the schema's INTEGER belongs: the row's leaf changes.
        ("UPDATE events SET schema = 1.5 WHERE seq = 10", "its content differs from what the Merkle tree"),
    ],
)
def test_a_value_of_another_type_is_named_at_its_seq(stopped_site: Site, edit: str, said: str) -> None:
    run_sql(stopped_site.db, "DROP TRIGGER events_no_update", edit)
    _verify_fails(stopped_site, "FAILED at seq 10:", said)


def test_statistics_made_up_in_sqlite_stat1_change_no_answer(stopped_site: Site) -> None:
    # ANALYZE's table is allowed in the schema; rows steering the planner (an index said to
    # be unordered, sizes made up, a row for no index) can only choose among our indexes.
    run_sql(
        stopped_site.db,
        "ANALYZE",
        "DELETE FROM sqlite_stat1",
        "INSERT INTO sqlite_stat1 VALUES ('events', 'sqlite_autoindex_events_1', "
        "'1 1 1 unordered noskipscan sz=999999'), ('events', NULL, 'x'), ('events', 'events_subscribers', '0 0')",
    )
    _verify_passes(stopped_site)
