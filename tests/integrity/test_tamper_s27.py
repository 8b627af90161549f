"""Session 27's attacks by someone holding the database files (helper s27-leak); each test
here that names a fix failed before it."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable

import pytest

from tests.helpers import rollwatch
from tests.integrity.served import Site, unhealthy
from tests.integrity.test_tamper import refused_start


def tree_rows(s: Site) -> list[tuple[int, int, str, str]]:
    con = sqlite3.connect(s.dir / "merkle.db")
    try:
        return con.execute("SELECT seq, size, root, note FROM tree_checkpoints ORDER BY seq").fetchall()
    finally:
        con.close()


def tree_sql(s: Site, statement: str, params: tuple[object, ...] = ()) -> None:
    con = sqlite3.connect(s.dir / "merkle.db", isolation_level=None)
    try:
        con.execute(statement, params)
    finally:
        con.close()


# --- merkle.db's own copy of the checkpoints ---------------------------------------------------------
# The tree keeps each CheckpointSigned event it absorbs in `tree_checkpoints`; the latest row is what
# /checkpoint and /public/checkpoint serve and what the proofs and hash tiles are cut at. Nothing
# compared those rows with the log: `verify` and the scrub passed an edited one, a live daemon served
# it, and a restart refused blaming "the CheckpointSigned event at seq N" (the log's, untouched).


def forged_note(s: Site) -> int:
    """The latest recorded checkpoint's signature changed (the log's event left as it is)."""
    seq, _, _, note = tree_rows(s)[-1]
    body, _, sig = note.rstrip("\n").rpartition("\n")
    name, _, value = sig.rpartition(" ")
    forged = value[:8] + ("A" if value[8] != "A" else "B") + value[9:]
    tree_sql(s, "UPDATE tree_checkpoints SET note = ? WHERE seq = ?", (f"{body}\n{name} {forged}\n", seq))
    return seq


def row_added(s: Site) -> int:
    """A row claiming a checkpoint past the log's head, with the latest real note: the public
    routes would cut proofs and tiles at its size."""
    seq, size, root, note = tree_rows(s)[-1]
    tree_sql(s, "INSERT INTO tree_checkpoints VALUES (?, ?, ?, ?)", (seq + 1000, size + 1, root, note))
    return seq + 1000


def _row_deleted(s: Site) -> int:
    """The latest recorded checkpoint removed: nothing public says it was ever signed."""
    seq = tree_rows(s)[-1][0]
    tree_sql(s, "DELETE FROM tree_checkpoints WHERE seq = ?", (seq,))
    return seq


TREE_EDITS = [forged_note, row_added, _row_deleted]


@pytest.mark.parametrize("edit", TREE_EDITS, ids=lambda f: f.__name__.strip("_"))
def test_verify_names_an_edited_checkpoint_record_in_the_tree(
    stopped_site: Site, edit: Callable[[Site], int]
) -> None:
    """Fixed: `verify` passed each of these."""
    s = stopped_site
    seq = edit(s)
    v = rollwatch("--config", str(s.config), "verify")
    assert v.returncode == 1, v.stdout + v.stderr
    assert f"FAILED at seq {seq}: the Merkle tree's record of the checkpoint at seq {seq}" in v.stderr, (
        v.stderr
    )
    assert "merkle.db was edited" in v.stderr, v.stderr


def test_a_restart_names_the_tree_not_the_log(stopped_site: Site) -> None:
    """Fixed: the restart refused, but saying the log's event was not valid."""
    s = stopped_site
    seq = forged_note(s)
    err = refused_start(s)
    assert f"integrity check failed at seq {seq}: the Merkle tree's record of the checkpoint" in err, err[
        -2000:
    ]


def test_a_live_daemon_finds_the_record_edited_under_it(site: tuple[Site, subprocess.Popen[str]]) -> None:
    """Fixed: edited under a live daemon of a quiet log, the forged note was served at
    /public/checkpoint with /healthz ok, pass after pass."""
    s, _ = site
    seq = forged_note(s)
    r = unhealthy(s.url, "the scrub to find the edited record")
    body = r.json()
    assert body["status"] == "tampered", body
    assert body["first_bad_seq"] == seq, body
    assert any("merkle.db was edited" in why for why in body["reasons"]), body
