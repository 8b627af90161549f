"""The README's Backups section, followed literally: a backup taken while the daemon writes,
restored into a fresh folder; and the ways an operator gets it wrong (the state files
copied after the log, a restore without the key, a plain copy of the live WAL file).

Every case runs the real ``rollwatch`` and the ``sqlite3`` shell on a log a daemon signed.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import anyio
import pytest

from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.integrity.conftest import _site_config, append_n
from tests.integrity.served import Site, _poll, _stop, serving

STATE_FILES = ("checkpoint.key", "origin", "checkpoint.last")
README = Path(__file__).resolve().parents[2] / "README.md"


def _sqlite3_shell() -> str:
    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.skip("the sqlite3 shell is not installed (make system installs it)")
    return shell


def _online_backup(db: Path, dest: Path) -> None:
    """The README's command: ``sqlite3 DB ".backup 'DEST'"``."""
    p = subprocess.run(
        [_sqlite3_shell(), str(db), f".backup '{dest}'"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr


def _rows(db: Path, upto: int | None = None) -> list[tuple[int, str]]:
    con = sqlite3.connect(db)
    try:
        sql = (
            "SELECT seq, hash FROM events" + (" WHERE seq <= ?" if upto is not None else "") + " ORDER BY seq"
        )
        return list(con.execute(sql, () if upto is None else (upto,)))
    finally:
        con.close()


class _Writer:
    """Another process's appends, going on until stopped (a run's, as far as the log can tell)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.stop = threading.Event()
        self.appended = 0
        self.thread = threading.Thread(target=lambda: anyio.run(self._fill), daemon=True)

    async def _fill(self) -> None:
        async with SQLiteEventStore(self.db) as store:
            while not self.stop.is_set():
                await append_n(store, 3, tag=f"w{self.appended}")
                self.appended += 3
                await anyio.sleep(0.01)

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _copy_state(state: Path, backup: Path) -> None:
    """The key, ``origin`` (made only when ``integrity.origin`` is not set) and ``checkpoint.last``."""
    for name in STATE_FILES:
        if name != "origin" or (state / name).exists():
            shutil.copy2(state / name, backup / name)


def _readme_backup(state: Path, backup: Path) -> subprocess.CompletedProcess[str]:
    """The README's backup lines, run by bash as written, with its two paths replaced."""
    section = README.read_text(encoding="utf-8").split("### Backups", 1)[1]
    lines = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "/backup/$(date +%F)" in lines
    assert "cd /var/lib/rollwatch" in lines
    script = lines.replace("/backup/$(date +%F)", str(backup)).replace("cd /var/lib/rollwatch", f"cd {state}")
    path = f"{Path(_sqlite3_shell()).parent}:/usr/bin:/bin"
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env={"PATH": path}
    )


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "before-the-first-checkpoint"])
def test_the_readme_backup_lines_run_as_written(stopped_site: Site, tmp_path: Path, signed: bool) -> None:
    """The Backups section's shell lines, run as written: every state file there is, then the
    log. Before the daemon's first checkpoint there is no ``checkpoint.last``: the README's
    ``cp -p checkpoint.key* checkpoint.last … && { … origin … }`` failed there, and the ``&&``
    skipped ``origin``, without which the restored log's checkpoints name another origin."""
    s = stopped_site
    if not signed:
        (s.dir / "checkpoint.last").unlink()
    r = _readme_backup(s.dir, tmp_path / "backup")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    wanted = {n for n in STATE_FILES if (s.dir / n).exists()} | {"events.db"}
    assert "checkpoint.key" in wanted
    assert {p.name for p in (tmp_path / "backup").iterdir()} == wanted
    for name in wanted - {"events.db"}:
        assert (tmp_path / "backup" / name).read_bytes() == (s.dir / name).read_bytes()
    assert _rows(tmp_path / "backup" / "events.db") == _rows(s.db)


def _backup_while_writing(s: Site, backup: Path, *, state_first: bool) -> int:
    """The README's backup of a live daemon's state while events are appended and
    checkpoints signed (every 5 events or second). ``state_first``: the state files are
    copied before the log, as the README says; else after, once a checkpoint beyond the
    backup's head has been signed. The head the backup holds."""
    backup.mkdir()
    with serving(s), _Writer(s.db) as writer:
        _poll(lambda: writer.appended >= 30, 60, "appends under way")
        if state_first:
            _copy_state(s.dir, backup)
        _online_backup(s.db, backup / "events.db")
        held = _rows(backup / "events.db")[-1][0]
        if not state_first:
            _poll(lambda: any(size > held for _, size in s.checkpoints()), 60, "a checkpoint past the backup")
            _copy_state(s.dir, backup)
        _poll(lambda: s.head() > held + 10, 60, "appends after the backup")
    return held


def _restored(backup: Path, into: Path) -> Site:
    """The backup copied into an empty folder and a config naming it."""
    into.mkdir()
    for f in backup.iterdir():
        shutil.copy2(f, into / f.name)
    return _site_config(into)


def test_a_backup_taken_while_the_daemon_writes_restores_into_a_fresh_folder(
    stopped_site: Site, tmp_path: Path
) -> None:
    """The state files first, then ``sqlite3 .backup``, while another process appends and the
    daemon signs: restored into an empty folder, ``verify`` passes, ``serve`` starts (past its
    integrity check at start) and serves every event the backup holds, unchanged; it then
    signs on from there and stops cleanly."""
    s = stopped_site
    held = _backup_while_writing(s, tmp_path / "backup", state_first=True)
    r = _restored(tmp_path / "backup", tmp_path / "restored")
    assert _rows(r.db) == _rows(s.db, upto=held)

    v = rollwatch("--config", str(r.config), "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    assert f"ok: {held} events" in v.stdout
    with serving(r) as proc:
        # Events after the backup's: the daemon signs on from there. (Waiting for a checkpoint
        # of the backup's head alone could wait for ever: when the backup ends with a
        # CheckpointSigned, nothing but checkpoints is new, and no signer signs that.)
        async def more() -> None:
            async with SQLiteEventStore(r.db) as store:
                await append_n(store, 5, tag="after")

        anyio.run(more)
        _poll(
            lambda: any(size >= held + 5 for _, size in r.checkpoints()),
            30,
            "a checkpoint of the restored log",
        )
        health = r.healthz()
        assert health is not None
        assert health.status_code == 200, health.text
    err = _stop(proc)
    assert proc.returncode == 0, err
    assert "log_tampered" not in err
    assert _rows(r.db, upto=held) == _rows(s.db, upto=held)
    assert rollwatch("--config", str(r.config), "verify").returncode == 0


def test_state_files_copied_after_the_log_make_the_restore_look_truncated(
    stopped_site: Site, tmp_path: Path
) -> None:
    """The order the README now warns against: ``checkpoint.last`` copied after the log's
    backup, once the daemon signed past it, names events the restored log lacks; ``verify``
    and ``serve`` refuse it as events removed (which is what a truncation looks like)."""
    s = stopped_site
    held = _backup_while_writing(s, tmp_path / "backup", state_first=False)
    r = _restored(tmp_path / "backup", tmp_path / "restored")
    v = rollwatch("--config", str(r.config), "verify")
    assert v.returncode == 1, v.stdout + v.stderr
    assert f"but the log holds only {held}: events were removed" in v.stderr, v.stderr


def test_a_restore_without_the_key_is_named_not_called_tampering(stopped_site: Site, tmp_path: Path) -> None:
    """The log alone restored (no ``checkpoint.key``): ``serve`` refuses, exit 2, naming the
    missing key and where to put it, and makes no key of its own. Before, it made a new key and
    called the log's first checkpoint a forgery ("integrity check failed", exit 1)."""
    s = stopped_site
    backup = tmp_path / "backup"
    backup.mkdir()
    _online_backup(s.db, backup / "events.db")
    r = _restored(backup, tmp_path / "restored")
    proc = r.serve()
    try:
        proc.wait(timeout=60)
    finally:
        err = _stop(proc)
    assert proc.returncode == 2, err
    assert f"there is no checkpoint key at {r.dir / 'checkpoint.key'}" in err, err
    assert "put back the key that signed them" in err
    assert "integrity check failed" not in err
    assert "Traceback" not in err
    assert not (r.dir / "checkpoint.key").exists()
    assert not (r.dir / "checkpoint.key.pending").exists()
    assert _rows(r.db) == _rows(s.db)


def _damage(db: Path) -> None:
    """A page in the middle of the file overwritten, as a copy torn by a WAL checkpoint
    running under ``cp`` leaves one."""
    size = db.stat().st_size
    page = 4096
    assert size >= 8 * page, size
    with open(db, "r+b") as f:
        f.seek((size // page // 2) * page + 64)
        f.write(b"\xff" * 2048)


@pytest.mark.parametrize(
    "command", [["verify"], ["rebuild"], ["report"], ["events", "tail", "--type", "SchedulePaused"]]
)
def test_a_damaged_log_is_named_by_every_command(stopped_site: Site, command: list[str]) -> None:
    """A log file with a damaged page (what a plain ``cp`` of a live WAL database can give):
    one line naming the log file as damaged and the way back, exit 1. Before, ``verify``
    printed a traceback, and ``rebuild`` and ``report`` blamed the projections file."""
    s = stopped_site

    async def grow() -> None:
        async with SQLiteEventStore(s.db) as store:
            await append_n(store, 600, per_call=50, tag="big")

    anyio.run(grow)
    for name in ("merkle.db", "events.projections.db"):
        (s.dir / name).unlink(missing_ok=True)
    con = sqlite3.connect(s.db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    _damage(s.db)
    p = rollwatch("--config", str(s.config), *command)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert f"error: the event log {s.db} is damaged" in p.stderr, p.stderr
    assert "SQLite's online backup" in p.stderr


def test_serve_names_a_damaged_log(stopped_site: Site) -> None:
    """``serve`` on a damaged log stops naming the log file (before: "the Merkle tree worker
    failed: DatabaseError: database disk image is malformed")."""
    s = stopped_site

    async def grow() -> None:
        async with SQLiteEventStore(s.db) as store:
            await append_n(store, 600, per_call=50, tag="big")

    anyio.run(grow)
    (s.dir / "merkle.db").unlink()
    con = sqlite3.connect(s.db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    _damage(s.db)
    proc = s.serve()
    try:
        proc.wait(timeout=60)
    finally:
        err = _stop(proc)
    assert proc.returncode == 1, err
    assert f"the event log {s.db} is damaged" in err.splitlines()[-1], err[-2000:]
    assert "Traceback" not in err


def test_a_log_moved_to_postgresql_serves_with_its_key_outside_systemd(
    stopped_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving to PostgreSQL as the README says, from a shell (no ``$STATE_DIRECTORY``): the
    PostgreSQL log's state folder is ``var/pg-HOST-PORT-DB/``, not the SQLite log's. ``migrate``
    copies the checkpoint key, ``origin`` and ``checkpoint.last`` there, and ``serve`` on the
    migrated log starts and signs on with the log's key. Before, ``serve`` made a new key and
    stopped (exit 2, "signed by another key than this node's"), and the witness file that
    catches a rollback stayed behind."""
    from tests.pg import scratch_database

    s = stopped_site
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)

    async def main() -> None:
        async with scratch_database() as url:
            m = await anyio.to_thread.run_sync(
                lambda: rollwatch("--config", str(s.config), "migrate", "--to", url)
            )
            assert m.returncode == 0, m.stderr
            assert "checkpoint.key" in m.stdout, m.stdout
            assert "checkpoint.last" in m.stdout, m.stdout
            pg = s.dir / "pg.toml"
            pg.write_text(s.config.read_text().replace(f"sqlite:{s.db}", url))
            assert url in pg.read_text()
            site = Site(s.dir, pg, s.url)

            def serve() -> str:
                with serving(site) as proc:
                    pass
                return _stop(proc)

            err = await anyio.to_thread.run_sync(serve)
            assert "another key" not in err, err[-3000:]
            assert "log_tampered" not in err, err[-3000:]
            state = next((work / "var").iterdir())
            assert (state / "checkpoint.key").read_bytes() == (s.dir / "checkpoint.key").read_bytes()
            assert not (state / "checkpoint.key.pending").exists()

    anyio.run(main)


def test_a_backup_on_a_read_only_mount_verifies_where_it_is(stopped_site: Site, tmp_path: Path) -> None:
    """A backup verified where it is kept, a read-only mount (a snapshot, a backup disk):
    ``verify`` and ``events tail`` read it. Before, SQLite could not make the WAL file's
    ``-shm`` beside it: "cannot read the event log …: unable to open database file", exit 1."""
    s = stopped_site
    backup = tmp_path / "backup"
    backup.mkdir()
    _copy_state(s.dir, backup)
    _online_backup(s.db, backup / "events.db")
    ro = tmp_path / "ro"
    ro.mkdir()
    bind = subprocess.run(["mount", "--bind", str(backup), str(ro)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here (root and mount(2) needed): {bind.stderr.strip()}")
    try:
        remount = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True, text=True, check=False
        )
        assert remount.returncode == 0, remount.stderr
        with pytest.raises(OSError, match="Read-only file system"):
            (ro / "probe").write_text("")
        cfg = tmp_path / "ro.toml"
        cfg.write_text(s.config.read_text().replace(f"sqlite:{s.db}", f"sqlite:{ro / 'events.db'}"))
        v = rollwatch("--config", str(cfg), "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        assert f"ok: {s.head()} events" in v.stdout
        assert "signatures valid" in v.stdout, v.stdout
        assert " 0 signatures valid" not in v.stdout, v.stdout
        t = rollwatch("--config", str(cfg), "events", "tail", "--json")
        assert t.returncode == 0, t.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    # A plain copy with its write-ahead log: read as immutable, the log would lack what the
    # WAL holds; refused, saying why.
    plain = tmp_path / "plain"
    plain.mkdir()
    con = sqlite3.connect(backup / "events.db", isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute("CREATE TABLE scratch (x)")
        for name in ("events.db", "events.db-wal"):
            shutil.copy2(backup / name, plain / name)
    finally:
        con.close()
    assert (plain / "events.db-wal").stat().st_size > 0
    subprocess.run(["mount", "--bind", str(plain), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        v = rollwatch("--config", str(cfg), "verify")
        assert v.returncode == 1, v.stdout + v.stderr
        assert "on a read-only file system with a write-ahead log beside it" in v.stderr, v.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    (backup / "events.db-wal").unlink(missing_ok=True)
    (backup / "events.db-shm").unlink(missing_ok=True)
    assert sorted(p.name for p in backup.iterdir()) == sorted(
        ["events.db", *(n for n in STATE_FILES if (s.dir / n).exists())]
    )
