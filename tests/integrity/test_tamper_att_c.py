"""Tampering tried by helper att-c: edits of the log file not tried elsewhere in this folder.

Each test performs one concrete edit on a real SQLite file (a copy of a log a real daemon
signed, see ``conftest.signed_log``) and checks that ``rollwatch verify`` exits 1 naming
what is wrong, without a traceback.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.helpers import rollwatch
from tests.integrity.served import Site
from tests.integrity.test_forged_rows import append_raw


def _verify(s: Site, *extra: str) -> tuple[int, str]:
    r = rollwatch("--config", str(s.config), "verify", *extra, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr


def test_data_nested_past_the_parsers_depth_is_named(stopped_site: Site) -> None:
    """A row appended around rollwatch, chain hash right, whose data is JSON nested 100,000
    deep (rollwatch never writes it: its events are flat objects)."""
    s = stopped_site
    seq = append_raw(s, "RolloutScored", _deep())
    code, out = _verify(s)
    assert code == 1, out
    assert f"FAILED at seq {seq}:" in out, out


def _deep() -> str:
    return '{"a":' * 100_000 + "1" + "}" * 100_000


def test_a_checkpoint_row_nested_past_the_parsers_depth_is_named(stopped_site: Site) -> None:
    """The last CheckpointSigned row's data replaced by JSON nested 100,000 deep (the
    checkpoint rows are read first, each parsed)."""
    s = stopped_site
    con = sqlite3.connect(s.db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        [seq] = con.execute("SELECT MAX(seq) FROM events WHERE type = 'CheckpointSigned'").fetchone()
        con.execute("UPDATE events SET data = ? WHERE seq = ?", (_deep(), seq))
    finally:
        con.close()
    code, out = _verify(s)
    assert code == 1, out
    assert f"FAILED at seq {seq}:" in out, out
