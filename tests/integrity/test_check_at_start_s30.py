"""The check at start, session 30: each event's content (and what no hash covers) checked in
a second process beside the hashing, as ``verify`` does; and begun after a build of the
read models from the whole log, not beside it.

Each finding must still be named, by seq, whichever process finds it: the earlier of two
bad rows of different kinds, an edited stream version (no hash covers it), a row no
rollwatch writes under a chain recomputed around it. A held build must not hold the check
for good (``tests/test_ctrl_c.py`` holds the build's second process and waits for a signed
checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from rollwatch.errors import IntegrityError
from rollwatch.integrity.scrub import ScrubTarget, scrub_pass
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import append_n, rewrite_event, run_sql
from tests.integrity.test_first_key import _start


async def _log(tmp_path: Path, n: int = 300) -> ScrubTarget:
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store, MerkleTree(tmp_path / "merkle.db") as tree:
        await append_n(store, n, per_call=50)
        await tree.catch_up(store)  # type: ignore[arg-type]
    return ScrubTarget(f"sqlite:{db}", tmp_path / "merkle.db", None, None, background=False)


def _drop_triggers(db: Path) -> None:
    run_sql(db, "DROP TRIGGER IF EXISTS events_no_update", "DROP TRIGGER IF EXISTS events_no_delete")


def _foreign(db: Path, seq: int) -> None:
    """Event ``seq``'s data made a JSON array, the chain recomputed around it (the hashing
    alone finds nothing; the leaf differs from the tree's, so the tree is left out)."""
    rewrite_event(db, seq, "[1,2]")


def _break_hash(db: Path, seq: int) -> None:
    _drop_triggers(db)
    run_sql(db, f"UPDATE events SET hash = '{'0' * 64}' WHERE seq = {seq}")


@pytest.mark.anyio
@pytest.mark.parametrize("first", ["content", "chain"])
async def test_the_earlier_finding_is_named_whichever_process_finds_it(tmp_path: Path, first: str) -> None:
    target = await _log(tmp_path)
    db = tmp_path / "events.db"
    # Without the tree: its leaves would name the recomputed row in the hashing process too.
    target = ScrubTarget(target.store_url, tmp_path / "absent.db", None, None, background=False)
    if first == "content":
        _foreign(db, 40)
        _break_hash(db, 200)
        bad, why = 40, "not an object"
    else:
        _break_hash(db, 40)
        _foreign(db, 200)
        bad, why = 40, "its hash does not match"
    with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
        await scrub_pass(target)
    assert found.value.seq == bad, found.value
    assert why in found.value.reason


@pytest.mark.anyio
async def test_a_row_no_rollwatch_writes_is_named_at_start(tmp_path: Path) -> None:
    """Only the content process looks at the data's form: the chain recomputed, no tree."""
    target = await _log(tmp_path)
    target = ScrubTarget(target.store_url, tmp_path / "absent.db", None, None, background=False)
    data = json.dumps({"note": "", "schedule": "e1"}, indent=1)  # spaces: not canonical
    rewrite_event(tmp_path / "events.db", 123, data)
    with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
        await scrub_pass(target)
    assert found.value.seq == 123
    assert "canonical JSON form" in found.value.reason


@pytest.mark.anyio
async def test_an_edited_stream_version_is_named_at_start(tmp_path: Path) -> None:
    """No hash covers a stream's version numbers: the content process checks them."""
    target = await _log(tmp_path)
    db = tmp_path / "events.db"
    _drop_triggers(db)
    run_sql(db, "UPDATE events SET version = version + 1000 WHERE seq = 12")
    with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
        await scrub_pass(target)
    assert found.value.seq == 12, found.value


@pytest.mark.anyio
async def test_a_clean_log_passes_with_its_count(tmp_path: Path) -> None:
    target = await _log(tmp_path, 250)
    with anyio.fail_after(60):
        events, _ = await scrub_pass(target)
    assert events == 250


@pytest.mark.parametrize("tree", ["current", "deleted"])
def test_a_start_that_builds_the_read_models_checks_the_log_after_the_build(
    tmp_path: Path, tree: str
) -> None:
    """A log long enough to be built beside in two processes, no read models (a release's
    first start). Its tree current: the check at start begins once the read models are built
    (their second process and the check's never run at once). Its tree deleted after a
    checkpoint was signed: the routes wait for the check too, so the two run side by side."""
    from rollwatch.events import SchedulePaused
    from rollwatch.projections import SPLIT_FROM
    from tests.integrity.served import _free_port

    async def fill() -> None:
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            for i in range(0, SPLIT_FROM, 500):
                await store.append(f"s{i}", [SchedulePaused(schedule=f"s{i}", note="x")] * 500)
            # The tree current (a release's first start): the check could begin at once.
            async with MerkleTree(tmp_path / "merkle.db") as tree:
                await tree.catch_up(store)  # type: ignore[arg-type]

    anyio.run(fill)
    config = tmp_path / "rollwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\n[server]\nlisten = "127.0.0.1:{_free_port()}"\n'
    )
    log = tmp_path / "serve.log"
    if tree == "deleted":  # a key that has signed: the tree must be rebuilt and the log checked
        _serve_until(tmp_path, config, tmp_path / "first.log", "checkpoint_signed")
        for f in [*tmp_path.glob("merkle.db*"), *tmp_path.glob("events.projections.db*")]:
            f.unlink()
        shutil.rmtree(tmp_path / "events.projections.gen", ignore_errors=True)
    together = []  # what the check started while the build's second process was held
    proc = _serve(tmp_path, config, log)
    try:
        deadline = time.monotonic() + 90
        while (part := _child(proc.pid, "build_part")) is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.005)
        # Held for 2 s (the daemon lets a build that has not moved for two of its progress
        # reports, 5 s apart, no longer hold the check): unheld, the check began within 0.2 s.
        # Where it runs beside the build, held until the check begins (8 s at most).
        os.kill(part, signal.SIGSTOP)
        try:
            held_until = time.monotonic() + (2 if tree == "current" else 8)
            while time.monotonic() < held_until and not together:
                if (scrub := _child(proc.pid, "rollwatch.integrity.")) is not None:
                    together.append(scrub)
                time.sleep(0.01)
        finally:
            os.kill(part, signal.SIGCONT)
        _wait_logged(proc, log, "daemon_ready", deadline)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "projections_building_beside" in names
    assert proc.returncode == 0
    if tree == "deleted":
        assert together, "the check waited for the build though the routes wait for both"
        return
    current = names.index("projections_current")
    passed = next(i for i, e in enumerate(events) if e["event"] == "scrub_passed" and e.get("at") == "start")
    assert current < passed, names
    assert not together, together


def _serve(tmp_path: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    return _start(config, tmp_path, log.name)


def _wait_logged(proc: subprocess.Popen[bytes], log: Path, event: str, deadline: float) -> None:
    while event not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _serve_until(tmp_path: Path, config: Path, log: Path, event: str) -> None:
    proc = _serve(tmp_path, config, log)
    try:
        _wait_logged(proc, log, event, time.monotonic() + 90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()


def _child(pid: int, name: str) -> int | None:
    """A child of ``pid`` whose command line holds ``name`` (workers start in sessions of
    their own but stay its children), other than the tree's worker."""
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = task.read_text().split()
        except FileNotFoundError:
            continue
        for kid in kids:
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes().decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if name in cmd and "integrity._worker" not in cmd:
                return int(kid)
    return None


# merkle.db's leaves, compared a page at a time as one run of bytes (session 30): an edit of
# one leaf is named at its event; leaves missing below the size the file records (a strip
# deleted, cut short, or rewritten as text) are an edited file, named at the first one
# missing (before, a missing one made the pass one that could not run: the start went on).


def _strip(tmp_path: Path, j: int) -> bytes:
    con = sqlite3.connect(tmp_path / "merkle.db")
    try:
        return bytes(con.execute("SELECT hashes FROM tree_strips WHERE k = ?", (j,)).fetchone()[0])
    finally:
        con.close()


def _set_strip(tmp_path: Path, j: int, value: object) -> None:
    con = sqlite3.connect(tmp_path / "merkle.db", isolation_level=None)
    try:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            con.execute(f'DROP TRIGGER "{name}"')
        if value is None:
            con.execute("DELETE FROM tree_strips WHERE k = ?", (j,))
        else:
            con.execute("UPDATE tree_strips SET hashes = ? WHERE k = ?", (value, j))
    finally:
        con.close()


@pytest.mark.anyio
@pytest.mark.parametrize("index", [0, 9, 63, 64, 200, 299])
async def test_an_edited_leaf_in_the_tree_file_is_named_at_its_event(tmp_path: Path, index: int) -> None:
    target = await _log(tmp_path)
    j, at = divmod(index, 64)
    blob = bytearray(_strip(tmp_path, j))
    blob[at * 32] ^= 1
    _set_strip(tmp_path, j, bytes(blob))
    with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
        await scrub_pass(target)
    assert found.value.seq == index + 1, found.value
    assert "differs from what the Merkle tree absorbed" in found.value.reason


@pytest.mark.anyio
@pytest.mark.parametrize("edit", ["deleted", "cut_short", "text"])
async def test_leaves_missing_from_the_tree_file_are_named(tmp_path: Path, edit: str) -> None:
    target = await _log(tmp_path)
    value: object = {"deleted": None, "cut_short": _strip(tmp_path, 2)[: 10 * 32], "text": "x" * 2048}[edit]
    _set_strip(tmp_path, 2, value)
    with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
        await scrub_pass(target)
    first = 129 + (10 if edit == "cut_short" else 0)
    assert found.value.seq == first, found.value
    assert "merkle.db was edited" in found.value.reason
