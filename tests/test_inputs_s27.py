"""Bad input left open by session 26's reviews, each a real command or the real function:
a witness key name with an escape, a year before 1000 in a timestamp, a problem tag with a
line break."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rollwatch.events import parse_rfc3339, rfc3339
from tests.helpers import rollwatch
from tests.test_inputs_s26 import _clean, _copy, _edit


@pytest.mark.parametrize(
    "name", ["w\x1b[2Jitness", "w\x00", "w\x7f", "w\x85x"], ids=["esc", "nul", "del", "c1"]
)
def test_a_witness_name_with_a_control_character_is_bad_usage(tmp_path: Path, name: str) -> None:
    """``witness serve --name`` took an ESC (it reached the terminal in the start line, and a
    cosignature under that name is a note line no verifier takes: notes hold no control
    characters). Bad usage now, exit 2, and no key made."""
    from tests.test_cli_hostile_2026 import _vkey

    args = ["--key", str(tmp_path / "w.key"), "--state", str(tmp_path / "state.json"), "--name", name]
    r = rollwatch("witness", "serve", "--listen", "127.0.0.1:0", "--log", _vkey(), *args, timeout=30)
    lines = _clean(r, 2)
    assert lines[-1].startswith("error: --name: "), lines
    assert "no control characters" in lines[-1], lines
    assert "\x1b" not in r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "when",
    [
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 4, tzinfo=UTC),
    ],
)
def test_rfc3339_writes_four_digit_years_and_reads_them_back(when: datetime) -> None:
    """``strftime('%Y')`` wrote year 999 as ``999-01-02T…``, which is no RFC 3339 date
    (``fromisoformat`` refused it back); every year now has four digits, as every year after
    999 always had (the bytes of timestamps in the log are unchanged)."""
    text = rfc3339(when)
    assert text[4] == "-", text
    assert text.endswith("Z"), text
    assert len(text) == 27, text
    assert parse_rfc3339(text) == when


@pytest.mark.parametrize(
    "tag", ["a\nb", "x\x1b[31m", "rtl\u202e", " "], ids=["newline", "esc", "bidi", "blank"]
)
def test_a_problem_tag_with_a_control_character_is_a_problem_error(tmp_path: Path, tag: str) -> None:
    """A tag is shown with its problem in one row; one with a line break, an escape or a bidi
    override forged or turned rows around, as a title did before it was checked."""
    problem, config = _copy(tmp_path, "interval-scheduling")
    toml = problem / "problem.toml"
    _edit(toml, 'tags = ["dynamic-programming", "binary-search"]', f'tags = ["dp", {json.dumps(tag)}]')
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1].startswith(f"error: {toml}: tags: "), lines
    assert "without control characters" in lines[-1]
