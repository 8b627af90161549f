"""Configuration: every kind of mistake gives exit code 2 and names the key path."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from rollwatch.config import load_config, parse_duration
from tests.helpers import make_log, rollwatch

BASE = """
[[problem_sets]]
name = "favorites"
path = "config/problems"

[[providers]]
name = "reference"
kind = "reference"

[[providers]]
name = "openai"
kind = "openai"
api_key_env = "OPENAI_API_KEY"

[[schedules]]
name = "daily"
provider = "openai"
models = ["gpt-5"]
problem_set = "favorites"
every = "24h"
"""


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("500ms", 0.5),
            ("30s", 30),
            ("10m", 600),
            ("6h", 21600),
            ("90d", 7776000),
            ("1.5h", 5400),
            (12, 12),
        ],
    )
    def test_parses_units(self, text: str | int, seconds: float) -> None:
        """Durations parse from milliseconds to days."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["10", "ten minutes", "5y", "-3s", "", True])
    def test_rejects_nonsense(self, text: object) -> None:
        """Anything without a known unit is refused with a hint."""
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)


def test_bundled_config_is_valid() -> None:
    """config/rollwatch.toml, the one `make run` uses, validates."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "rollwatch.toml")
    assert any(p.kind == "reference" for p in cfg.providers)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            BASE.replace('kind = "openai"', 'kind = "opena"'),
            "providers[1].kind: 'opena' is not one of 'openai', 'anthropic', 'gemini', 'reference'",
            id="bad-literal",
        ),
        pytest.param(
            BASE + '\n[server]\nlisten = "localhost"\n',
            "server.listen: 'localhost': expected HOST:PORT",
            id="bad-listen",
        ),
        pytest.param(
            BASE + '\n[publication]\nembargo = "3 months"\n',
            "publication.embargo: '3 months' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            BASE + '\n[publication]\nembarg = "90d"\n', "publication.embarg: unknown key", id="unknown-key"
        ),
        pytest.param(
            BASE.replace('every = "24h"', 'every = "24h"\ncron = "0 3 * * *"'),
            "schedules[0]: set exactly one of every",
            id="every-and-cron",
        ),
        pytest.param(
            BASE.replace('every = "24h"', 'cron = "99 3 * * *"'),
            "schedules[0].cron: '99 3 * * *' is not a crontab",
            id="bad-cron",
        ),
        pytest.param(
            BASE.replace('every = "24h"', 'cron = "0 3 30 2 *"'),
            "schedules[0].cron: '0 3 30 2 *' never fires: no month has that day",
            id="cron-never-fires",
        ),
        pytest.param(
            BASE.replace('every = "24h"', 'cron = "0 3 * * 8"'),
            "schedules[0].cron: '0 3 * * 8' is not a crontab expression (min hour day month dow): '8' is not"
            " a day of the week",
            id="cron-no-such-weekday",
        ),
        pytest.param(
            BASE.replace('provider = "openai"', 'provider = "openia"'),
            "schedules[0].provider: 'openia' is not one of reference, openai",
            id="dangling-provider",
        ),
        pytest.param(
            BASE.replace('name = "openai"', 'name = "reference"'),
            "providers[1].name: 'reference' is defined twice",
            id="duplicate-name",
        ),
        pytest.param(
            BASE.replace('models = ["gpt-5"]', "models = []"), "schedules[0].models", id="empty-models"
        ),
        pytest.param(
            BASE.replace('every = "24h"', 'every = "24h"\nrollouts = 0'),
            "schedules[0].rollouts",
            id="zero-rollouts",
        ),
        pytest.param(BASE + '\n[store]\nurl = "mysql://x"\n', "store.url: 'mysql://x'", id="bad-store"),
        pytest.param(BASE + "\n[[providers]\n", "not valid TOML", id="bad-toml"),
        pytest.param(
            BASE.replace('every = "24h"', 'every = "24h"\ntimezone = "Mars/Olympus"'),
            "schedules[0].timezone: 'Mars/Olympus' is not an IANA time zone",
            id="bad-tz",
        ),
        pytest.param(BASE + '\n[scoring]\nworkers = "many"\n', "scoring.workers", id="bad-type"),
        pytest.param(
            BASE.replace('kind = "reference"', 'kind = "reference"\nbatch = true'),
            "providers[0]: batch = true needs a provider with a batch API (openai, anthropic, gemini)",
            id="batch-on-reference",
        ),
        pytest.param(
            BASE.replace('provider = "openai"', 'provider = "reference"\nbatch = true'),
            "schedules[0].batch: provider 'reference' is of kind 'reference', which has no batch API",
            id="batch-schedule-on-reference",
        ),
        pytest.param(
            BASE.replace(
                'api_key_env = "OPENAI_API_KEY"', 'api_key_env = "OPENAI_API_KEY"\nbatch_max_requests = 0'
            ),
            "providers[1].batch_max_requests",
            id="batch-max-requests",
        ),
        pytest.param(
            BASE + '\n[scoring]\nisolation = "none"\n',
            'scoring: isolation = "none" needs require_isolation = false as well',
            id="isolation-none-with-the-interlock-on",
        ),
        pytest.param('node = ""\n' + BASE, "node: ", id="empty-node"),
        pytest.param('node = "a\\nb"\n' + BASE, "node: ", id="node-with-a-newline"),
        pytest.param(
            BASE + '\n[store]\nprojections = "var/events.db"\n',
            "store.projections: 'var/events.db' would be the read models' file and the event log too (store.url)",
            id="projections-on-the-log",
        ),
        pytest.param(
            BASE + '\n[store]\nurl = "sqlite:var/merkle.db"\n',
            "store.url: 'var/merkle.db' would be the event log and the Merkle tree's file too "
            "(integrity.tree, by default)",
            id="log-where-the-tree-goes",
        ),
        pytest.param(
            BASE + '\n[integrity]\nkey_file = "var/events.db"\n',
            "integrity.key_file: 'var/events.db' would be the checkpoint key and the event log too (store.url)",
            id="key-file-on-the-log",
        ),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path, change: str, expected: str) -> None:
    """Each kind of bad configuration: exit code 2, the file, the key path, what is allowed."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(change)
    res = rollwatch("--config", str(cfg), "verify")
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(cfg) in res.stderr
    assert expected in res.stderr
    assert "Traceback" not in res.stderr


def test_rebuild_with_the_projections_on_the_log_loses_nothing(tmp_path: Path) -> None:
    """``store.projections`` naming the log's own file is a config error before anything
    opens it. Before, ``rollwatch rebuild`` replaced the log with a link to the new read
    models and said ``rebuilt 9 projections``, exit 0: every event was gone."""
    log = make_log(tmp_path / "events.db")
    before = log.read_bytes()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{log}"\nprojections = "{log}"\n')
    res = rollwatch("--config", str(cfg), "rebuild")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"error: {cfg}: invalid configuration:" in res.stderr
    assert "store.projections:" in res.stderr
    assert not log.is_symlink()
    assert log.read_bytes() == before


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    """Validation covers the whole file: two mistakes, two lines."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BASE.replace('kind = "openai"', 'kind = "x"') + '\n[server]\nlisten = "nope"\n')
    res = rollwatch("--config", str(cfg), "verify")
    assert res.returncode == 2
    assert "providers[1].kind" in res.stderr
    assert "server.listen" in res.stderr


def test_logs_are_json_lines_off_a_terminal(tmp_path: Path) -> None:
    """Off a terminal every log line is one JSON object with an event name and level."""
    cfg = tmp_path / "ok.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path}/e.db"\n')
    make_log(tmp_path / "e.db")
    res = rollwatch("--config", str(cfg), "--log-level", "debug", "rebuild")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert any(json.loads(ln)["event"] == "projections_rebuilt" for ln in lines)
    for ln in lines:
        obj = json.loads(ln)
        assert {"event", "level", "timestamp"} <= obj.keys()


def test_library_logs_come_out_as_the_same_json_lines() -> None:
    """Off a terminal, what httpx, apscheduler and uvicorn log through the standard library
    comes out as rollwatch's own lines do: one JSON object each with ``event``, ``level``, a
    UTC ISO ``timestamp`` and the ``logger`` that wrote it; context keys such as ``run_id``
    stay keys of their own. uvicorn's INFO lines (its server's start and stop, a process id
    in the message) are left out: the daemon logs both under stable event names."""
    code = (
        "import logging, sys\n"
        "from rollwatch.log import configure_logging, get_logger\n"
        "configure_logging('info')\n"
        "logging.getLogger('httpx').warning('pool %s full', 'p')\n"
        "logging.getLogger('apscheduler.scheduler').error('job missed')\n"
        "logging.getLogger('uvicorn.error').error('socket closed')\n"
        "logging.getLogger('uvicorn.error').info('Finished server process [%d]', 7,"
        " extra={'color_message': 'Finished server process [\\x1b[36m%d\\x1b[0m]'})\n"
        "logging.getLogger('uvicorn.error').warning('Invalid HTTP request received from %d.', 7,"
        " extra={'color_message': 'Invalid HTTP request received from \\x1b[36m%d\\x1b[0m.'})\n"
        "get_logger('rollwatch.runs').info('run_started', run_id='r1')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(ln) for ln in res.stderr.splitlines() if ln.strip()]
    assert [(o["logger"], o["event"], o["level"]) for o in lines] == [
        ("httpx", "pool p full", "warning"),
        ("apscheduler.scheduler", "job missed", "error"),
        ("uvicorn.error", "socket closed", "error"),
        ("uvicorn.error", "Invalid HTTP request received from 7.", "warning"),
        ("rollwatch.runs", "run_started", "info"),
    ]
    assert lines[-1]["run_id"] == "r1"
    # uvicorn's copy of a message in terminal colours is not a key of the JSON line.
    assert all("color_message" not in o and "\x1b" not in json.dumps(o) for o in lines), lines
    for o in lines:
        assert o["timestamp"].endswith("Z"), o
        assert datetime.fromisoformat(o["timestamp"]).utcoffset() == timedelta(0)


def test_a_logged_traceback_carries_no_local_values() -> None:
    """A crash logged with its traceback (``run_crashed``, ``problems_reload_failed``,
    ``scorer_error``, ``http_unhandled_error``) showed every frame's local variables in the
    JSON log (structlog's ``dict_tracebacks`` shows them by default): a run crashed by a
    provider's answer logged the API key (``key``, and the ``authorization`` header in
    ``headers``, of the provider client's frames), and the store URL, a PostgreSQL password
    in it, sat in the config objects' reprs. The traceback keeps the frames, without values."""
    code = (
        "from rollwatch.log import configure_logging, get_logger\n"
        "configure_logging('info')\n"
        "def send(key, url):\n"
        "    headers = {'authorization': 'Bearer ' + key}\n"
        "    raise ValueError('Out of range float values are not JSON compliant')\n"
        "try:\n"
        "    send('sk-live-LEAKME-0123456789', 'postgresql://rw:PGLEAK@db/rw')\n"
        "except ValueError:\n"
        "    get_logger('rollwatch.daemon').exception('run_crashed', run_id='r1')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    (line,) = [json.loads(ln) for ln in res.stderr.splitlines() if ln.strip()]
    assert line["event"] == "run_crashed"
    (exc,) = line["exception"]
    assert exc["exc_type"] == "ValueError"
    assert [f["name"] for f in exc["frames"]] == ["<module>", "send"]
    assert "LEAKME" not in res.stderr
    assert "PGLEAK" not in res.stderr
