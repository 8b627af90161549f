"""Session 2026's tampering by someone holding the database files (helper-61): edits not tried
in ``test_tamper.py``, ``test_forged_rows.py`` or ``test_early_release.py``.

*An index edited, the table left.* Every row of the log, every hash and every leaf stay as
appended; only SQLite's index over ``(stream, version)`` is replaced by one built over other
values (``writable_schema``), so that reading a rollout's events (``WHERE stream = ?``, through
that index) returns what the attacker chose. *A stream's version edited* (no hash covers it).
*Every local file rolled back together* (the limit the threat model states: only what was kept
outside names it). Real daemon, real files, real HTTP.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.events import RolloutRescored
from rollwatch.publication.keys import hash_key, key_prefix, new_key
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.integrity.conftest import append_n, delete_events, rewrite_event
from tests.integrity.served import Site, _poll, _stop, serving, unhealthy
from tests.integrity.test_early_release import _caught_child, _events, _get_auth, _site
from tests.integrity.test_tamper import _paused_from, refused_start
from tests.publication.helpers import add_subscriber, bearer


def edit_index(db: Path, *, swap: tuple[int, int] | None = None, omit: int | None = None) -> None:
    """Point the log's ``(stream, version)`` index at pages built over other keys: ``swap``
    gives two events each other's key, ``omit`` leaves an event out. The table is untouched."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("CREATE TABLE shadow (stream TEXT NOT NULL, version INTEGER NOT NULL)")
        con.execute("INSERT INTO shadow (rowid, stream, version) SELECT seq, stream, version FROM events")
        if swap is not None:
            a, b = swap
            ka = con.execute("SELECT stream, version FROM events WHERE seq = ?", (a,)).fetchone()
            kb = con.execute("SELECT stream, version FROM events WHERE seq = ?", (b,)).fetchone()
            con.execute("UPDATE shadow SET stream = ?, version = ? WHERE rowid = ?", (*kb, a))
            con.execute("UPDATE shadow SET stream = ?, version = ? WHERE rowid = ?", (*ka, b))
        if omit is not None:
            con.execute("DELETE FROM shadow WHERE rowid = ?", (omit,))
        con.execute("CREATE UNIQUE INDEX shadow_idx ON shadow (stream, version)")
        (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'shadow_idx'").fetchone()
        (version,) = con.execute("PRAGMA schema_version").fetchone()
        con.execute("PRAGMA writable_schema = ON")
        con.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = 'sqlite_autoindex_events_1'", (root,))
        con.execute("DELETE FROM sqlite_master WHERE name IN ('shadow', 'shadow_idx')")
        con.execute(f"PRAGMA schema_version = {version + 1}")
        con.execute("COMMIT")
    finally:
        con.close()


def _passed(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT data FROM events WHERE type = 'RolloutScored'").fetchall()
    finally:
        con.close()
    return next(str(d.split('"rollout_id":"')[1][:36]) for (d,) in rows if '"passed":true' in d)


def test_an_index_swapped_to_show_another_rollouts_verdict_is_named(tmp_path: Path) -> None:
    """The failure's verdict and a pass's swapped in the index: the record read through it
    carries the index's stream, which the leaf covers, so nothing false is served (503) and
    ``verify`` fails. Held before this session; kept as the case the omission below is not."""
    s, _, failed = _site(tmp_path)
    honest = _passed(s.db)
    with serving(s):
        auth = bearer(anyio.run(_subscribe, s.db))
        _poll(
            lambda: (r := _get_auth(s.url + f"/v1/rollouts/{failed}", auth)) and r.status_code == 200,
            30,
            "a record",
        )
        fail_seq, _ = _events(s.db, failed)["RolloutScored"]
        pass_seq, _ = _events(s.db, honest)["RolloutScored"]
        edit_index(s.db, swap=(fail_seq, pass_seq))
        r = _get_auth(s.url + f"/v1/rollouts/{failed}", auth)
        assert r is not None
        assert r.status_code == 503, r.text
    v = rollwatch("verify", "--config", str(s.config))
    assert v.returncode == 1, v.stdout + v.stderr


async def _subscribe(db: Path) -> str:
    async with SQLiteEventStore(db) as store:
        return await add_subscriber(store, "reader")


async def _rescore_failed(db: Path, rollout_id: str) -> int:
    async with SQLiteEventStore(db) as store:
        recs = await store.append(
            f"rollout-{rollout_id}",
            [
                RolloutRescored(
                    rollout_id=rollout_id,
                    problem_id="p1",
                    passed=False,
                    score=0.0,
                    scorer="python-function",
                    problem_hash="ab" * 32,
                    scorer_version="1",
                    rescore_id=str(uuid.uuid4()),
                    previous_passed=True,
                )
            ],
        )
        return recs[-1].seq


def test_a_rescore_left_out_of_the_index_is_named(tmp_path: Path) -> None:
    """A pass re-scored as a failure, the re-score's entry then left out of the index: every
    row and leaf as appended, so the subscriber's record (read through the index) showed the
    pass with no re-score, and ``verify``, the scrub and a restart all passed the log. Now
    the scrub names it (``/healthz`` 503), ``verify`` exits 1 and a restart refuses."""
    s, _, _ = _site(tmp_path)
    with s.config.open("a") as cfg:  # [integrity] is the file's last section
        cfg.write('scrub_interval = "500ms"\n')
    honest = _passed(s.db)
    with serving(s):
        auth = bearer(anyio.run(_subscribe, s.db))
        seq = anyio.run(_rescore_failed, s.db, honest)
        _poll(
            lambda: (
                (r := _get_auth(s.url + f"/v1/rollouts/{honest}", auth))
                and r.status_code == 200
                and r.json()["rescores"]
            ),
            30,
            "the re-score in the record",
        )
        edit_index(s.db, omit=seq)
        h = unhealthy(s.url, "/healthz to name the index", 30)
        assert h.json()["first_bad_seq"] == seq, h.text
        assert "index" in h.text, h.text
    v = rollwatch("verify", "--config", str(s.config))
    assert v.returncode == 1, v.stdout + v.stderr
    assert f"FAILED at seq {seq}: the log's index does not match its rows" in v.stderr, v.stderr
    proc = s.serve()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 1, err[-2000:]
    assert f"seq {seq}" in err, err[-2000:]


def test_a_rollback_of_every_local_file_is_caught_only_from_outside(stopped_site: Site) -> None:
    """The log cut back to a checkpoint it holds, with ``merkle.db`` and ``checkpoint.last``
    removed (the key kept): a consistent prefix of what was signed. As the threat model's
    limits say, the daemon starts on it and signs on; what was kept outside names it: a
    subscriber's ``audit --keep`` and ``verify --checkpoint`` with a later checkpoint."""
    s = stopped_site
    with serving(s):
        cut = s.checkpoints()[-1][0]  # the one its daemon signed at stop

        async def more() -> None:
            async with SQLiteEventStore(s.db) as store:
                await append_n(store, 12, tag="late")

        anyio.run(more)
        _poll(
            lambda: any(size >= cut + 12 for _, size in s.checkpoints()), 30, "a checkpoint of the new events"
        )
        (s.dir / "later.note").write_text(httpx.get(s.url + "/public/checkpoint").text)
        a = rollwatch("audit", "--url", s.url, "--keep", str(s.dir / "audit.json"))
        assert a.returncode == 0, a.stderr
    delete_events(s.db, f"seq > {cut}")
    for name in ("merkle.db", "checkpoint.last"):
        (s.dir / name).unlink()
    plain = rollwatch("--config", str(s.config), "verify")
    assert plain.returncode == 0, plain.stderr  # the limit: nothing local remembers the tail
    kept = rollwatch("--config", str(s.config), "verify", "--checkpoint", str(s.dir / "later.note"))
    assert kept.returncode == 1, kept.stdout
    assert f"FAILED at seq {cut + 1}:" in kept.stderr, kept.stderr
    assert "events were removed" in kept.stderr, kept.stderr
    with serving(s):  # starts, as the limits say
        a = rollwatch("audit", "--url", s.url, "--keep", str(s.dir / "audit.json"))
        assert a.returncode == 1, a.stdout
        assert "the log was truncated or rolled back" in a.stderr, a.stderr


def test_a_changed_stream_version_stops_a_start(stopped_site: Site) -> None:
    """No hash covers a stream's version: only ``verify`` compared it with the order of the
    log, and a daemon started on the edited log served and signed on. The check at start (the
    scrub's first pass) now compares them too, and the daemon refuses naming the seq."""
    s = stopped_site
    con = sqlite3.connect(s.db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER events_no_update")
        con.execute("UPDATE events SET version = version + 30 WHERE seq = 12")
    finally:
        con.close()
    err = refused_start(s)
    assert "integrity check failed at seq 12: its stream version does not follow" in err, err[-2000:]


# --- session 2026, helper-81 ---------------------------------------------------------------------


def _move_tree_away(s: Site) -> None:
    """``merkle.db`` (and its WAL files) renamed away, as someone holding the folder can: the
    daemon's open connections keep the file they opened; a new open by path finds none."""
    for suffix in ("", "-wal", "-shm"):
        p = s.dir / f"merkle.db{suffix}"
        if p.exists():
            p.rename(s.dir / f"merkle.db.away{suffix}")


def _view_in_tree(s: Site) -> None:
    """A view added to ``merkle.db`` in place: a read-only open refuses such a file (the
    daemon's writer drops it, but only at its next write, and an idle log has none)."""
    con = sqlite3.connect(s.dir / "merkle.db", isolation_level=None)
    try:
        con.execute("CREATE VIEW spare AS SELECT 1")
    finally:
        con.close()


@pytest.mark.parametrize("spoil", [_move_tree_away, _view_in_tree], ids=["moved_away", "view_added"])
def test_a_tree_file_a_pass_cannot_open_does_not_stop_the_scrub(
    site: tuple[Site, subprocess.Popen[str]], spoil: Callable[[Site], None]
) -> None:
    """``merkle.db`` moved away (or given a view) under a live daemon, then an old, signed event rewritten (the
    chain recomputed). Each scrub pass opens the tree by its path, found none and failed as
    ``scrub_failed`` (a WARNING, "could not run"), pass after pass: ``/healthz`` said ok, the
    daemon signed and released on, and the rewrite was never found while it ran. (The hash is
    left as it was: with the chain recomputed, the tree's follower sees the tail change.)"""
    s, proc = site
    spoil(s)
    bad = _paused_from(s, 10)
    rewrite_event(s.db, bad, '{"note":"","schedule":"rewritten"}', recompute_chain=False)
    r = unhealthy(s.url, "the scrub to find the rewrite", timeout=20)
    body = r.json()
    assert body["status"] == "tampered", body
    assert body["first_bad_seq"] == bad, body
    err = _stop(proc)
    assert "log_tampered" in err, err[-3000:]


def test_a_witness_file_that_is_not_text_does_not_stop_the_scrub(
    site: tuple[Site, subprocess.Popen[str]],
) -> None:
    """``checkpoint.last`` overwritten with bytes that are not UTF-8 under a live daemon, then
    a signed event edited: each scrub pass died reading the file (``UnicodeDecodeError``),
    logged as ``scrub_failed`` pass after pass while ``/healthz`` said ok, and the edit went
    unseen; ``verify`` printed a traceback. A witness file that holds no checkpoint is a
    finding, as one that holds text that is no checkpoint was already."""
    s, proc = site
    (s.dir / "checkpoint.last").write_bytes(b"\xff\xfe not a note")
    bad = _paused_from(s, 10)
    rewrite_event(s.db, bad, '{"note":"","schedule":"rewritten"}', recompute_chain=False)
    r = unhealthy(s.url, "the scrub to name a finding", timeout=20)
    assert r.json()["status"] == "tampered", r.json()
    _stop(proc)
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1, v.stdout + v.stderr
    assert "Traceback" not in v.stderr, v.stderr
    assert "checkpoint.last does not hold a valid checkpoint" in v.stderr, v.stderr


def _spoil_last_checkpoint_row(db: Path) -> int:
    """The log's latest ``CheckpointSigned`` row given data that is not JSON, its hash left."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        [seq] = con.execute("SELECT MAX(seq) FROM events WHERE type = 'CheckpointSigned'").fetchone()
        con.execute("UPDATE events SET data = 'not json' WHERE seq = ?", (seq,))
    finally:
        con.close()
    return int(seq)


def test_a_checkpoint_row_that_is_not_json_does_not_stop_the_scrub(
    site: tuple[Site, subprocess.Popen[str]],
) -> None:
    """A ``CheckpointSigned`` row's data made something that is not JSON, under a live daemon,
    and an older signed event edited. The checkpoints are read before every other event, and
    one that did not parse raised ``JSONDecodeError``: each scrub pass failed as one that could
    not run (``scrub_failed``, ``/healthz`` ok), so neither edit was found while the daemon ran,
    and ``verify`` printed a traceback. Now such a row is named, in the order of the log."""
    s, proc = site
    cp_seq = _spoil_last_checkpoint_row(s.db)
    bad = _paused_from(s, 10)
    rewrite_event(s.db, bad, '{"note":"","schedule":"rewritten"}', recompute_chain=False)
    r = unhealthy(s.url, "the scrub to name a finding", timeout=20)
    assert r.json()["status"] == "tampered", r.json()
    _poll(
        lambda: (h := s.healthz()) is not None and h.json().get("first_bad_seq") == bad,
        20,
        f"/healthz to name seq {bad}",
    )
    _stop(proc)
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1, v.stdout + v.stderr
    assert "Traceback" not in v.stderr, v.stderr
    assert f"FAILED at seq {bad}:" in v.stderr, v.stderr
    assert cp_seq > bad


def test_verify_names_a_checkpoint_row_that_is_not_json(stopped_site: Site) -> None:
    """Alone, the row is named at its seq by ``verify`` and a restart (a traceback before)."""
    s = stopped_site
    cp_seq = _spoil_last_checkpoint_row(s.db)
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1, v.stdout + v.stderr
    assert "Traceback" not in v.stderr, v.stderr
    assert f"FAILED at seq {cp_seq}:" in v.stderr, v.stderr
    err = refused_start(s)
    assert f"integrity check failed at seq {cp_seq}:" in err, err[-3000:]


def test_verify_names_a_checkpoint_row_that_is_not_json_with_the_origin_file_gone(stopped_site: Site) -> None:
    """As above, with no origin configured and the state folder's ``origin`` file gone: it is read from
    the log's latest checkpoint row, which raised ``JSONDecodeError`` (a traceback from
    ``verify`` and from a start). A row that does not parse gives no origin; the check names
    what does not match."""
    s = stopped_site
    cp_seq = _spoil_last_checkpoint_row(s.db)
    # The origin left to the state (no origin in the config) and its file gone.
    s.config.write_text(s.config.read_text().replace('origin = "rollwatch.test/tamper"\n', ""))
    (s.dir / "origin").unlink(missing_ok=True)
    v = rollwatch("--config", str(s.config), "verify")
    assert "Traceback" not in v.stderr, v.stderr
    assert v.returncode == 1, v.stdout + v.stderr
    # Its only checkpoint row spoiled, the log names no origin: the witness file, signed
    # under the log's own, is the first thing found not to match (or the row itself).
    assert "FAILED at seq " in v.stderr, v.stderr
    assert cp_seq > 0
    err = refused_start(s)
    assert "Traceback" not in err, err[-3000:]
    assert "integrity check failed at seq " in err, err[-3000:]


@pytest.mark.parametrize("column", ["at", "data"])
def test_a_value_stored_as_a_blob_does_not_stop_the_scrub(
    site: tuple[Site, subprocess.Popen[str]], column: str
) -> None:
    """An older signed event edited under a live daemon, and a later row's ``at`` or ``data``
    stored as a BLOB of the same bytes (SQLite keeps a BLOB as it is in a TEXT column; no
    constraint or trigger says no). Python reads it as bytes: the pass's hashing raised
    ``TypeError`` (``AttributeError`` for the data), every scrub pass failed as one that could
    not run (``scrub_failed``, ``/healthz`` ok) and the edit went unseen while the daemon ran."""
    s, _ = site
    bad = _paused_from(s, 10)
    rewrite_event(s.db, bad, '{"note":"","schedule":"rewritten"}', recompute_chain=False)
    _sql_blob(s.db, column, _paused_from(s, bad + 5))
    r = unhealthy(s.url, "the scrub to name a finding", timeout=20)
    assert r.json()["status"] == "tampered", r.json()
    _poll(
        lambda: (h := s.healthz()) is not None and h.json().get("first_bad_seq") == bad,
        20,
        f"/healthz to name seq {bad}",
    )


def test_verify_names_a_value_stored_as_a_blob(stopped_site: Site) -> None:
    """Alone, such a row is named at its seq by ``verify`` (a traceback before)."""
    s = stopped_site
    seq = _paused_from(s, 20)
    _sql_blob(s.db, "at", seq)
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1, v.stdout + v.stderr
    assert "Traceback" not in v.stderr, v.stderr
    assert f"FAILED at seq {seq}:" in v.stderr, v.stderr


def _sql_blob(db: Path, column: str, seq: int) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        con.execute(f"UPDATE events SET {column} = CAST({column} AS BLOB) WHERE seq = ?", (seq,))
    finally:
        con.close()


def test_a_pipe_in_place_of_the_witness_file_does_not_stop_the_signer_unseen(
    site: tuple[Site, subprocess.Popen[str]],
) -> None:
    """``checkpoint.last`` replaced by a named pipe under a live daemon: the signer's read of it
    waited for a writer for good. Nothing more was signed (every later event open to a
    consistent rewrite, the limit that holds only until the next checkpoint), ``/healthz`` said
    ok, and SIGTERM could not stop the daemon. The scrub passed over it (not a file: no
    witness). Such a file now holds no checkpoint: the signer refuses, naming it."""
    s, proc = site
    witness = s.dir / "checkpoint.last"
    witness.unlink()
    os.mkfifo(witness)

    async def more() -> None:
        async with SQLiteEventStore(s.db) as store:
            await append_n(store, 12, tag="late")

    anyio.run(more)
    r = unhealthy(s.url, "the signer or the scrub to name the witness file", timeout=20)
    assert r.json()["status"] == "tampered", r.json()
    assert any("checkpoint.last" in reason for reason in r.json()["reasons"]), r.json()
    started = time.monotonic()
    err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - started < 20, "the daemon did not stop by itself"
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1, v.stdout + v.stderr
    assert "checkpoint.last does not hold a valid checkpoint" in v.stderr, v.stderr


def test_a_pipe_at_the_witness_files_temporary_name_does_not_stop_the_signer(
    site: tuple[Site, subprocess.Popen[str]],
) -> None:
    """A named pipe made where the signer writes the witness file before renaming it
    (``.checkpoint.last.PID.tmp``: the daemon's pid is no secret): opening it to write waited
    for a reader for good. Nothing more was signed, ``/healthz`` said ok, SIGTERM could not
    stop the daemon. The temporary file is now one the signer makes itself, new."""
    s, proc = site
    os.mkfifo(s.dir / f".checkpoint.last.{proc.pid}.tmp")
    signed = len(s.checkpoints())

    async def more() -> None:
        async with SQLiteEventStore(s.db) as store:
            await append_n(store, 12, tag="late")

    anyio.run(more)
    _poll(lambda: len(s.checkpoints()) > signed, 20, "a checkpoint of the new events")
    assert s.healthz() is not None
    started = time.monotonic()
    err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - started < 20, "the daemon did not stop by itself"


def test_a_key_edited_into_the_log_opens_nothing_while_a_restart_checks(tmp_path: Path) -> None:
    """A subscriber's ``SubscriberAdded`` edited while the daemon was down to carry the hash of
    another key (one row, the chain left): a restart reads the keys from the log at once and
    serves keyed routes while its check at start runs (held stopped here; 15-40 s at 10^6
    events). The forged key read the feed (embargoed results included) for as long as that
    check took, restart after restart, though the tree held every event and could have told
    the row changed. Now the keys' events are compared with the tree's leaves as they are
    read: a changed one opens nothing (503) and ``/healthz`` names it at once."""
    s, _, _ = _site(tmp_path)
    with serving(s):
        honest = anyio.run(_subscribe, s.db)
        head = s.head()
        _poll(lambda: any(size >= head for _, size in s.checkpoints()), 30, "a checkpoint of the key")
        assert _get_auth(s.url + "/v1/feed", bearer(honest)) is not None
    forged = new_key()
    con = sqlite3.connect(s.db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER events_no_update")
        [(seq, data)] = con.execute("SELECT seq, data FROM events WHERE type = 'SubscriberAdded'").fetchall()
        edited = data.replace(hash_key(honest), hash_key(forged)).replace(
            key_prefix(honest), key_prefix(forged)
        )
        con.execute("UPDATE events SET data = ? WHERE seq = ?", (edited, seq))
    finally:
        con.close()
    proc = s.serve()
    try:
        check = _caught_child(proc.pid, "rollwatch.integrity.scrub", 60)
        try:
            r = _poll(
                lambda: (
                    (x := _get_auth(s.url + "/v1/feed", bearer(forged))) is not None
                    and x.status_code in (200, 401, 503)
                    and x
                ),
                30,
                "an answer to the forged key while the check at start is held",
            )
            assert isinstance(r, httpx.Response)
            assert r.status_code == 503, r.text[:500]
            h = s.healthz()
            assert h is not None
            assert h.json().get("first_bad_seq") == seq, h.text
        finally:
            os.kill(check, signal.SIGCONT)
    finally:
        _stop(proc)
