"""Session 26 (black-box helper): bugs found from outside, against the real command and daemon.

* ``subscribers add --expires`` with a moment whose offset puts it outside the years 1-9999 in
  UTC (``9999-12-31T23:59:59-01:00``, ``0001-01-01T00:30:00+01:00``) was a traceback
  (``OverflowError: date value out of range``), exit 1; now one line, exit 2, nothing added.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import rollwatch


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
    return cfg


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
