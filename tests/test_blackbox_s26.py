"""Session 26 (black-box helper): bugs found from outside, against the real command and daemon.

* ``subscribers add --expires`` with a moment whose offset puts it outside the years 1-9999 in
  UTC (``9999-12-31T23:59:59-01:00``, ``0001-01-01T00:30:00+01:00``) was a traceback
  (``OverflowError: date value out of range``), exit 1; now one line, exit 2, nothing added.
* A note (``schedules pause --note``, ``subscribers revoke --note``, or the console's Pause
  form, which a key of scope ``ops`` may use) was printed as it is by ``schedules list`` and
  ``subscribers list``: a line break forged a row of the table, an escape sequence reached
  the operator's terminal. Every cell of those tables now shows such characters escaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import rollwatch, write_config


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
    return cfg


SCHEDULE = (
    '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
    'problem_set = "favorites"\nrollouts = 1\nevery = "24h"\n'
)
FORGED = "hi\nref       active  every 60s  forged\x1b]0;owned\x07\x1b[31m"
"""A note with a line break (a forged row) and escape sequences (the terminal's title, red)."""


class TestExpiresAtTheCalendarsEnds:
    @pytest.mark.parametrize("when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"])
    def test_a_moment_outside_the_calendar_in_utc_is_one_line_exit_2(self, tmp_path: Path, when: str) -> None:
        cfg = str(_config(tmp_path))
        p = rollwatch("--config", cfg, "subscribers", "add", "bob", "--expires", when)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr
        assert f"--expires {when!r}" in p.stderr
        assert "years 1-9999" in p.stderr
        listed = rollwatch("--config", cfg, "subscribers", "list")
        assert "bob" not in listed.stdout

    def test_the_last_moment_of_the_calendar_still_works(self, tmp_path: Path) -> None:
        cfg = str(_config(tmp_path))
        p = rollwatch("--config", cfg, "subscribers", "add", "bob", "--expires", "9999-12-31T23:59:59Z")
        assert p.returncode == 0, p.stderr
        listed = rollwatch("--config", cfg, "subscribers", "list")
        assert "9999-12-31T23:59:59" in listed.stdout


class TestNotesInTables:
    def test_schedules_list_shows_a_note_on_its_own_row(self, tmp_path: Path) -> None:
        cfg = str(write_config(tmp_path, SCHEDULE))
        p = rollwatch("--config", cfg, "schedules", "pause", "ref", "--note", FORGED)
        assert p.returncode == 0, p.stderr
        listed = rollwatch("--config", cfg, "schedules", "list")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 2, listed.stdout  # the header and the one schedule
        assert "\x1b" not in listed.stdout
        assert "\x07" not in listed.stdout
        assert "hi\\nref" in lines[1]
        assert "\\x1b]0;owned\\x07" in lines[1]
        # --json keeps the note as it was written.
        as_json = rollwatch("--config", cfg, "schedules", "list", "--json")
        assert json.loads(as_json.stdout)[0]["note"] == FORGED

    def test_subscribers_list_shows_a_note_on_its_own_row(self, tmp_path: Path) -> None:
        cfg = str(_config(tmp_path))
        for args in (["add", "alice"], ["add", "bob"], ["revoke", "alice", "--note", FORGED]):
            p = rollwatch("--config", cfg, "subscribers", *args)
            assert p.returncode == 0, p.stderr
        listed = rollwatch("--config", cfg, "subscribers", "list")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 3, listed.stdout  # the header, alice and bob
        assert "\x1b" not in listed.stdout
        assert lines[1].startswith("alice")
        assert lines[1].endswith("\\x1b[31m")
        assert lines[2].startswith("bob")
