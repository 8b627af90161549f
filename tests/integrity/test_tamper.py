"""Tampering with the log by someone who holds the database file, tried from outside.

Every attack runs against a log a real ``rollwatch serve`` built and signed (events
appended by another process, checkpoints every 5 events, the witness file): built once
per test worker, then stopped, and copied with all its files for each test, so that
every test attacks its own copy. Each attack is checked four ways: (a) a live daemon
(restarted on the copy) stops signing and ``/healthz`` says why within the scrub
interval, and ``rollwatch audit --keep`` fails; (b) a restarted daemon
refuses to start, naming the first bad seq; (c) ``rollwatch verify --checkpoint``
exits 1 naming it. Real SQLite files, real subprocesses, real loopback HTTP.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rollwatch.events import GENESIS, canonical_bytes, chain_hash
from tests.helpers import rollwatch
from tests.integrity.conftest import delete_events, rewrite_event
from tests.integrity.served import EVENTS, Site, _poll, _stop

# --- the attacks ---------------------------------------------------------------------------------


def _sql(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        con.execute("DROP TRIGGER IF EXISTS events_no_delete")
        con.execute("BEGIN IMMEDIATE")
        for sql, args in statements:
            con.execute(sql, args)
        con.execute("COMMIT")
    finally:
        con.close()


def _recompute_chain(db: Path) -> None:
    """Recompute every hash, as an attacker hiding a change from the chain would."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        prev = GENESIS
        con.execute("BEGIN IMMEDIATE")
        for seq, eid, stream, typ, schema, at, data in con.execute(
            "SELECT seq, id, stream, type, schema, at, data FROM events ORDER BY seq"
        ).fetchall():
            prev = chain_hash(
                prev,
                canonical_bytes(
                    seq=seq, id=eid, stream=stream, type=typ, schema=schema, at=at, data_json=data
                ),
            )
            con.execute("UPDATE events SET hash = ? WHERE seq = ?", (prev.hex(), seq))
        con.execute("COMMIT")
    finally:
        con.close()


def _paused_from(site: Site, seq: int) -> int:
    """The first appended (SchedulePaused) event at or after ``seq``: its data is ours to change."""
    con = sqlite3.connect(site.db)
    try:
        row = con.execute(
            "SELECT MIN(seq) FROM events WHERE seq >= ? AND type = 'SchedulePaused'", (seq,)
        ).fetchone()
        return int(row[0])
    finally:
        con.close()


def rewrite_old(site: Site) -> int:
    seq = _paused_from(site, 10)
    rewrite_event(site.db, seq, '{"note":"","schedule":"rewritten"}')
    return seq


def rewrite_first(site: Site) -> int:
    """Event 1 edited, every later hash recomputed. The tree and the witness file record the
    hash of the log's event 1 to tell another log's state from this log's: they were set
    aside as another log's (a WARNING), unread, and the finding named a checkpoint's seq."""
    con = sqlite3.connect(site.db)
    try:
        [data] = con.execute("SELECT data FROM events WHERE seq = 1").fetchone()
    finally:
        con.close()
    rewrite_event(site.db, 1, data.replace('"schedule":"e', '"schedule":"x'))
    return 1


def delete_row(site: Site) -> int:
    delete_events(site.db, "seq = 10")
    return 10


def swap_rows(site: Site) -> int:
    _sql(
        site.db,
        ("UPDATE events SET seq = -1 WHERE seq = 10", ()),
        ("UPDATE events SET seq = 10 WHERE seq = 11", ()),
        ("UPDATE events SET seq = 11 WHERE seq = -1", ()),
    )
    return 10


def flip_byte(site: Site) -> int:
    # One byte of the data in the middle of the log (the JSON still valid), the chain left as it was.
    seq = _paused_from(site, EVENTS // 2)
    _sql(
        site.db,
        (
            'UPDATE events SET data = replace(data, \'"schedule":"e\', \'"schedule":"f\') WHERE seq = ?',
            (seq,),
        ),
    )
    return seq


def change_time(site: Site) -> int:
    _sql(site.db, ("UPDATE events SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 12", ()))
    _recompute_chain(site.db)
    return 12


def append_forged(site: Site) -> int:
    head = site.head()
    row = (
        head + 1,
        str(uuid.uuid4()),
        "s-forged",
        1,
        "SchedulePaused",
        1,
        "2026-11-30T00:00:00.000000Z",
        '{"note":"","schedule":"forged"}',
        "ab" * 32,
    )
    _sql(site.db, ("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", row))
    return head + 1


def truncate(site: Site) -> int:
    """The log's tail deleted, every other file left as it was (the tree still holds it)."""
    delete_events(site.db, "seq > 20")
    return 21


def truncate_and_drop_tree(site: Site) -> int:
    delete_events(site.db, "seq > 20")
    (site.dir / "merkle.db").unlink()
    return 21


def edit_tree_node(site: Site) -> int:
    """One interior node of ``merkle.db`` (level 1, over events 7 and 8) changed, the log
    untouched: every proof through it (inclusion, consistency, to witnesses) is wrong. The
    checks compared the stored leaves with the log and the roots the log derives, never the
    stored nodes between them: nothing noticed it."""
    con = sqlite3.connect(site.dir / "merkle.db", isolation_level=None)
    try:
        k = 1 << 40  # level 1, strip 0
        [blob] = con.execute("SELECT hashes FROM tree_strips WHERE k = ?", (k,)).fetchone()
        edited = bytearray(blob)
        edited[3 * 32] ^= 1  # node (1, 3): leaves 6 and 7, events 7 and 8
        con.execute("UPDATE tree_strips SET hashes = ? WHERE k = ?", (bytes(edited), k))
    finally:
        con.close()
    return 7


def new_history(site: Site) -> int:
    """Truncate, delete the tree, the witness and the projections, and write a new history of 5 events."""
    rows = []
    prev = GENESIS
    for seq in range(1, 6):
        eid, stream, at, data = (
            str(uuid.uuid4()),
            f"s-new-{seq}",
            "2026-11-30T00:00:00.000000Z",
            (f'{{"note":"","schedule":"new{seq}"}}'),
        )
        prev = chain_hash(
            prev,
            canonical_bytes(
                seq=seq, id=eid, stream=stream, type="SchedulePaused", schema=1, at=at, data_json=data
            ),
        )
        rows.append((seq, eid, stream, 1, "SchedulePaused", 1, at, data, prev.hex()))
    _sql(
        site.db,
        ("DELETE FROM events", ()),
        *[("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", r) for r in rows],
    )
    for name in ("merkle.db", "checkpoint.last", "events.projections.db"):
        (site.dir / name).unlink(missing_ok=True)
    return 6


ATTACKS = [
    rewrite_old,
    rewrite_first,
    delete_row,
    swap_rows,
    flip_byte,
    change_time,
    append_forged,
    truncate,
    truncate_and_drop_tree,
    edit_tree_node,
    new_history,
]


# --- (a) the live daemon, and (d) the audit --------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
def test_the_live_daemon_stops_signing_and_says_why(
    site: tuple[Site, subprocess.Popen[str]], attack: Callable[[Site], int]
) -> None:
    """Within the scrub interval /healthz is 503 naming the first bad seq; no checkpoint is signed after
    (not even at shutdown); what was public is still served; `audit --keep` fails; one ERROR is logged."""
    s, proc = site
    signed_before = s.checkpoints()
    bad = attack(s)
    r = _poll(
        lambda: (h := s.healthz()) is not None and h.status_code == 503 and h, 20, "/healthz to turn 503"
    )
    assert isinstance(r, httpx.Response)
    assert r.json()["status"] == "tampered"
    # The tree follower or the signer may see it first (at the tail); a scrub pass
    # then names the first bad seq.
    r = _poll(
        lambda: (h := s.healthz()) is not None and h.json().get("first_bad_seq") == bad and h,
        20,
        f"/healthz to name seq {bad}",
    )
    assert isinstance(r, httpx.Response)
    body = r.json()
    assert r.status_code == 503
    assert any(f"seq {bad}:" in reason for reason in body["reasons"]), body
    # What was public stays served.
    assert httpx.get(s.url + "/public/checkpoint").status_code == 200
    audit = rollwatch("audit", "--url", s.url, "--keep", str(s.dir / "audit.json"))
    assert audit.returncode == 1
    assert "FAILED health" in audit.stderr
    assert f"seq {bad}" in audit.stderr

    err = _stop(proc)
    assert proc.returncode == 0, err
    after = [c for c in s.checkpoints() if c not in signed_before]
    assert after == [], "a checkpoint was signed after the log was changed"
    errors = [line for line in err.splitlines() if "log_tampered" in line]
    assert len(errors) == 1, err
    assert json.loads(errors[0])["seq"] == bad
    assert json.loads(errors[0])["level"] == "error"


# --- (b) a restart ----------------------------------------------------------------------------------


def refused_start(s: Site) -> str:
    """Start a daemon on the site, which must exit 1 by itself; its stderr."""
    again = s.serve()
    try:
        again.wait(timeout=60)
    finally:
        err = _stop(again)
    assert again.returncode == 1, err
    return err


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
def test_a_restarted_daemon_refuses_naming_the_seq(stopped_site: Site, attack: Callable[[Site], int]) -> None:
    """Changed while the daemon was down: the next start refuses before appending anything, naming the first bad seq."""
    s = stopped_site
    bad = attack(s)
    if attack is new_history:
        # Nothing local remembers the old history; the key does: a log with no
        # checkpoint under a key used before is refused as a whole (seq 1).
        bad = 1
    head = s.head()
    err = refused_start(s)
    assert f"integrity check failed at seq {bad}:" in err, err
    assert s.head() == head, "something was appended to the changed log"


# --- (c) verify ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
def test_verify_names_the_seq(stopped_site: Site, attack: Callable[[Site], int]) -> None:
    """`rollwatch verify --checkpoint KEPT` exits 1 naming the first bad seq; it creates nothing."""
    s = stopped_site
    bad = attack(s)
    before = sorted(p.name for p in s.dir.iterdir())
    r = rollwatch("--config", str(s.config), "verify", "--checkpoint", str(s.dir / "kept.note"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAILED at seq {bad}:" in r.stderr, r.stderr
    assert sorted(p.name for p in s.dir.iterdir()) == before
    # Every local record is enough for these: no kept checkpoint needed. A new history
    # is named by the key that signed the old one (a log with no checkpoint anywhere
    # under a key that has signed), as a restart names it: seq 1 (it passed before).
    plain = rollwatch("--config", str(s.config), "verify")
    assert plain.returncode == 1, plain.stdout
    assert f"FAILED at seq {1 if attack is new_history else bad}:" in plain.stderr, plain.stderr


def test_verify_names_a_changed_stream_version(stopped_site: Site) -> None:
    """No hash covers a stream's version (it follows from the order of the log): `verify`
    checks it after its one pass over chain, tree and checkpoints, and names the seq."""
    s = stopped_site
    _sql(s.db, ("UPDATE events SET version = version + 30 WHERE seq = 12", ()))
    r = rollwatch("--config", str(s.config), "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED at seq 12: its stream version does not follow" in r.stderr, r.stderr


def test_verify_passes_an_untouched_log(stopped_site: Site) -> None:
    """The control: the same checks on the untouched log exit 0 (no false alarm), with the kept checkpoint too."""
    s = stopped_site
    r = rollwatch("--config", str(s.config), "verify", "--checkpoint", str(s.dir / "kept.note"))
    assert r.returncode == 0, r.stderr
    again = s.serve()
    try:
        _poll(lambda: (h := s.healthz()) is not None and h.status_code == 200, 60, "the restarted daemon")
    finally:
        err = _stop(again)
    assert again.returncode == 0, err
    assert "log_tampered" not in err


def test_verify_on_a_missing_store_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    """A mistyped store path: exit 2, and no empty database left behind."""
    cfg = tmp_path / "rw.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "nope" / "events.db"}"\n')
    r = rollwatch("--config", str(cfg), "verify")
    assert r.returncode == 2
    assert "no event log" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rw.toml"]


def test_an_online_backup_verifies_apart_from_the_state_folder(stopped_site: Site, tmp_path: Path) -> None:
    """The README's backup: SQLite's online backup of the log (the API the shell's ``.backup``
    uses) into a folder of its own, then ``verify`` with ``store.url`` pointed at the copy
    passes with no tree, witness file or key beside it; the same copy with one row edited
    fails, naming the seq (the copy is checked, not the original)."""
    s = stopped_site
    backup = tmp_path / "backup"
    backup.mkdir()
    copy = backup / "events-copy.db"
    src, dst = sqlite3.connect(s.db), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    cfg = backup / "rollwatch.toml"
    cfg.write_text(s.config.read_text().replace(f"sqlite:{s.db}", f"sqlite:{copy}"))
    assert f"sqlite:{copy}" in cfg.read_text()
    r = rollwatch("--config", str(cfg), "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in backup.iterdir() if not p.name.startswith("events-copy")) == [
        "rollwatch.toml"
    ]
    rewrite_event(copy, 10, '{"note":"","schedule":"rewritten"}', recompute_chain=False)
    r = rollwatch("--config", str(cfg), "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED at seq 10:" in r.stderr, r.stderr


def test_an_emptied_log_file_is_refused(stopped_site: Site) -> None:
    """The log file truncated to nothing, every other file kept: `verify` exits 1 saying
    so (the file left as it was, not made an empty log), and `serve`, which may create a
    log, refuses to take it for one: the tree and the checkpoints remember events it lacks."""
    s = stopped_site
    s.db.write_bytes(b"")
    for extra in ("-wal", "-shm"):
        s.db.with_name(s.db.name + extra).unlink(missing_ok=True)
    r = rollwatch("--config", str(s.config), "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{s.db} is not a rollwatch event log (an empty file)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert s.db.stat().st_size == 0
    err = refused_start(s)
    assert "integrity check failed at seq 1:" in err, err


def _another_log_as_a_wal(directory: Path, events: int) -> bytes:
    """The write-ahead log of another, well-formed rollwatch log of ``events`` events (chain
    hashes right, no checkpoint), every page of it in the WAL: what a stale ``-wal`` left by
    another database holds. SQLite ties a WAL to no database file: beside ours, it is read."""
    from rollwatch.store.sqlite import SCHEMA

    con = sqlite3.connect(directory / "other.db", isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.executescript(SCHEMA)
        prev = GENESIS
        for seq in range(1, events + 1):
            eid, stream = str(uuid.uuid4()), f"s-other-{seq}"
            at, data = "2026-11-30T00:00:00.000000Z", f'{{"note":"","schedule":"o{seq}"}}'
            prev = chain_hash(
                prev,
                canonical_bytes(
                    seq=seq, id=eid, stream=stream, type="SchedulePaused", schema=1, at=at, data_json=data
                ),
            )
            con.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
                (seq, eid, stream, 1, "SchedulePaused", 1, at, data, prev.hex()),
            )
        wal = (directory / "other.db-wal").read_bytes()
    finally:
        con.close()
    return wal


def test_another_logs_wal_beside_the_log_is_named(
    stopped_site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A stale ``events.db-wal`` of another database (a whole other log of 30 events, chain
    right) beside the stopped log: SQLite reads it as the log. `verify` exits 1 naming seq 1,
    and a restart refuses at seq 1. Before, this log's tree and witness file were taken for
    another log's (event 1 differs), left out, and `verify` passed the log replaced."""
    s = stopped_site
    s.db.with_name("events.db-wal").write_bytes(_another_log_as_a_wal(tmp_path_factory.mktemp("other"), 30))
    plain = rollwatch("--config", str(s.config), "verify")
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert "FAILED at seq 1:" in plain.stderr, plain.stderr
    assert s.head() == 30  # what SQLite reads now
    err = refused_start(s)
    assert "integrity check failed at seq 1:" in err, err
    assert "state_of_another_log_set_aside" not in err
    assert (s.dir / "merkle.db").exists()
    assert (s.dir / "checkpoint.last").exists()
