"""The config takes each key in the TOML type it names, range-checked, and says so in one line.

Before, pydantic converted what it could: ``require_isolation = "yes"`` was true,
``memory_mb = "2048"`` and ``2048.0`` were 2048, ``cgroups = 1`` was true, a bare number
was a duration in seconds (``embargo = 90`` meant 90 seconds to rollwatch and 90 days to
whoever wrote it), and ``backoff_base = "0s"`` retried a failing provider without a pause.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rollwatch.config import load_config
from rollwatch.errors import ConfigError
from tests.helpers import rollwatch, write_config

PROVIDER = '[[providers]]\nname = "r"\nkind = "reference"\n'
SCHEDULE = (
    '[[schedules]]\nname = "s"\nprovider = "reference"\nmodels = ["reference"]\nproblem_set = "favorites"\n'
)

# The TOML -> the whole problem line it must give (key, value as written, what is expected).
LOOSE = {
    "bool-as-string": (
        '[scoring]\nrequire_isolation = "yes"\n',
        "scoring.require_isolation: 'yes' is not a boolean (true or false, unquoted)",
    ),
    "bool-as-int": (
        "[scoring]\ncgroups = 1\n",
        "scoring.cgroups: 1 is not a boolean (true or false, unquoted)",
    ),
    "int-as-string": (
        '[scoring]\nmemory_mb = "2048"\n',
        "scoring.memory_mb: '2048' is not an integer (unquoted, e.g. 1024)",
    ),
    "int-as-float": (
        "[scoring]\nmemory_mb = 2048.0\n",
        "scoring.memory_mb: 2048.0 is not an integer (unquoted, e.g. 1024)",
    ),
    "int-as-bool": (
        "[integrity]\ncheckpoint_every = true\n",
        "integrity.checkpoint_every: true is not an integer (unquoted, e.g. 1024)",
    ),
    "float-as-string": (
        '[scoring]\ntime_limit_factor = "4"\n',
        "scoring.time_limit_factor: '4' is not a number (unquoted, e.g. 4.0)",
    ),
    "string-as-int": ("[integrity]\norigin = 7\n", "integrity.origin: 7 is not a string (quoted)"),
    "list-as-string": (
        '[server]\ntrusted_peers = "127.0.0.0/8"\n',
        "server.trusted_peers: '127.0.0.0/8' is not a list ([ ... ])",
    ),
    "table-as-int": ("[integrity]\nwitnesses = [3]\n", "integrity.witnesses[0]: 3 is not a table"),
    "optional-bool-as-string": (
        PROVIDER + 'stream = "true"\n',
        "providers[1].stream: 'true' is not a boolean (true or false, unquoted)",
    ),
    "duration-as-number": (
        "[publication]\nembargo = 90\n",
        "publication.embargo: 90 is not a duration: write it as a string with a unit, ms s m h d w (e.g. '90s')",
    ),
    "backoff-zero": (
        PROVIDER + 'backoff_base = "0s"\n',
        "providers[1].backoff_base: '0s': must be more than 0s",
    ),
    "backoff-max-zero": (
        PROVIDER + 'backoff_max = "0ms"\n',
        "providers[1].backoff_max: '0ms': must be more than 0s",
    ),
    "floor-zero": (
        '[scoring]\ntime_limit_floor = "0s"\n',
        "scoring.time_limit_floor: '0s': must be more than 0s",
    ),
    "timeout-too-long": (
        '[server]\nrequest_head_timeout = "301s"\n',
        "server.request_head_timeout: '301s': must be at most 300s",
    ),
    "int-below-range": ("[scoring]\nworkers = 0\n", "scoring.workers: 0: must be at least 1"),
}


@pytest.mark.parametrize("case", LOOSE)
def test_a_key_of_another_type_or_out_of_range_is_named_with_its_value(tmp_path: Path, case: str) -> None:
    """Each loose value is refused with one line: the dotted key, the value as written, what it takes."""
    extra, line = LOOSE[case]
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, extra))
    assert e.value.problems == [line]


def test_every_kind_of_value_still_loads_when_written_as_documented(tmp_path: Path) -> None:
    """Integers where numbers go, booleans, durations with units and optional keys all load."""
    extra = (
        "[scoring]\ntime_limit_factor = 4\nrequire_isolation = true\ncgroups = false\nmemory_mb = 2048\n"
        'time_limit_floor = "500ms"\n[publication]\nembargo = "0s"\n'
        + PROVIDER
        + 'stream = false\nbackoff_base = "10ms"\nbackoff_max = "2m"\nrequests_per_minute = 60\n'
        + '[providers.prices."m"]\ninput = 1\noutput = 2.5\n'
        + SCHEDULE
        + 'every = "1h"\nbudget_usd = 3\n'
    )
    config = load_config(write_config(tmp_path, extra))
    assert config.scoring.time_limit_factor == 4.0
    assert config.scoring.memory_mb == 2048
    assert config.scoring.cgroups is False
    assert config.providers[1].backoff_base == 0.01
    assert config.providers[1].prices["m"].input == 1.0
    assert config.publication.embargo == 0.0


def test_the_shipped_config_loads() -> None:
    """config/rollwatch.toml (what the README tells an operator to copy) passes the strict types."""
    load_config(Path(__file__).resolve().parents[1] / "config" / "rollwatch.toml")


@pytest.mark.parametrize(
    "command",
    [("verify",), ("serve",), ("run", "s"), ("schedules", "list"), ("report",), ("problems", "list")],
)
def test_every_command_that_reads_the_config_refuses_a_loose_value(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Exit 2, one line naming the key, no traceback, before the command does anything."""
    config = write_config(tmp_path, '[scoring]\nrequire_isolation = "yes"\n' + SCHEDULE + 'every = "1h"\n')
    proc = rollwatch(*command, "--config", str(config))
    _one_line(proc, "scoring.require_isolation: 'yes' is not a boolean (true or false, unquoted)")
    assert not (tmp_path / "events.db").exists()


def test_a_config_that_starts_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Notepad writes a UTF-8 BOM unasked; it carries nothing, so it is skipped. Before, the
    file was "not valid TOML (at line 1, column 1)" with nothing to see at line 1."""
    config = write_config(tmp_path, "[scoring]\nmemory_mb = 512\n")
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert load_config(config).scoring.memory_mb == 512


def _one_line(proc: subprocess.CompletedProcess[str], problem: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line and not line.startswith("{")]
    assert lines[0].endswith("invalid configuration:"), lines
    assert lines[1:] == [f"  {problem}"], lines
