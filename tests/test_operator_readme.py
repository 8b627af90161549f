"""The README's Configuration and Upgrades sections, as an operator who has only the README
follows them: each case runs the real ``rollwatch`` on a real SQLite log."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import anyio
import pytest

from rollwatch.events import RolloutScored, SchedulePaused
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import make_log, rollwatch, write_config


def _lines(proc: subprocess.CompletedProcess[str], code: int) -> list[str]:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line and not line.startswith("{")]


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("[::1", "an IPv6 address in brackets"),
        ("256.1.1.1:8080", "'256.1.1.1' is not an IPv4 address"),
        ("::1:8080", "an IPv6 address goes in brackets"),
        ("http://127.0.0.1:8080", "without a scheme or a path"),
        ("a b:8080", "'a b' is not a host name or IP address"),
    ],
)
def test_a_listen_address_no_url_can_carry_is_a_config_error(tmp_path: Path, listen: str, why: str) -> None:
    """``server.listen`` is what links are made of (``http://HOST:PORT``): a host no URL can
    carry is a config error naming the key, exit 2, before anything starts. Before, "[::1" and
    "256.1.1.1" were an httpx traceback in every command that reads the config's URL
    (``schedules list``), and the others passed the check and failed at ``serve`` only."""
    config = write_config(tmp_path, f'[server]\nlisten = "{listen}"\n')
    make_log(tmp_path / "events.db")
    lines = _lines(rollwatch("--config", str(config), "schedules", "list"), 2)
    assert lines[0] == f"error: {config}: invalid configuration:", lines
    assert any(line.strip().startswith("server.listen:") and why in line for line in lines), lines


@pytest.mark.parametrize(
    "listen", ["[::1]:8080", "localhost:8080", "0.0.0.0:0", "rollwatch-1.example.org:80"]
)
def test_listen_addresses_that_work_still_pass(tmp_path: Path, listen: str) -> None:
    config = write_config(tmp_path, f'[server]\nlisten = "{listen}"\n')
    make_log(tmp_path / "events.db")
    _lines(rollwatch("--config", str(config), "schedules", "list"), 0)


def test_witness_listen_is_checked_the_same_way(tmp_path: Path) -> None:
    p = rollwatch("witness", "serve", "--listen", "[::1", "--log", "x", "--key", str(tmp_path / "w.key"))
    lines = _lines(p, 2)
    assert lines == [
        "error: --listen '[::1': an IPv6 address in brackets, e.g. [::1]:8080, needs a valid address inside them"
    ]


@dataclass(frozen=True, kw_only=True)
class _ScoredNext(RolloutScored, register=False):
    """``RolloutScored`` as the next version of rollwatch writes it (a schema this one lacks)."""

    SCHEMA: ClassVar[int] = RolloutScored.SCHEMA + 1


def _log_a_newer_rollwatch_wrote(db: Path) -> int:
    """A log some events long whose last event a newer rollwatch wrote; its head."""

    async def write() -> int:
        async with SQLiteEventStore(db) as store:
            await store.append("schedule-s", [SchedulePaused(schedule="s")])
            (rec,) = await store.append(
                "rollout-x", [_ScoredNext(rollout_id="x", passed=True, score=1.0, scorer="python-function")]
            )
            return rec.seq

    return anyio.run(write)


def test_serve_refuses_a_log_a_newer_rollwatch_wrote(tmp_path: Path) -> None:
    """A downgrade (the Upgrades steps run backwards, or an old node on a shared log): ``serve``
    stops, exit 2 (which the shipped unit does not restart: no retry reads the log), naming the
    event and that rollwatch must be upgraded, and appends nothing.
    Before, it retried building its read models forever (a WARNING every 30 s) while
    ``/healthz`` said 200 ok and every other route 503."""
    config = write_config(tmp_path)
    head = _log_a_newer_rollwatch_wrote(tmp_path / "events.db")
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = _lines(p, 2)
    assert lines[-1] == (
        f"error: event {head}: RolloutScored schema {_ScoredNext.SCHEMA} is newer than this version "
        f"reads ({RolloutScored.SCHEMA}); upgrade rollwatch"
    ), lines
    con = sqlite3.connect(tmp_path / "events.db")
    try:
        assert con.execute("SELECT MAX(seq) FROM events").fetchone()[0] == head
    finally:
        con.close()


def _schema_raised_by_hand(db: Path) -> int:
    """A log whose event 2's schema column was raised by hand (hash not recomputed): it
    reads as a newer release's event. That event's seq."""

    async def write() -> int:
        async with SQLiteEventStore(db) as store:
            await store.append("schedule-s", [SchedulePaused(schedule="s")])
            (rec,) = await store.append(
                "rollout-x",
                [RolloutScored(rollout_id="x", passed=False, score=0.0, scorer="python-function")],
            )
            await store.append("schedule-s", [SchedulePaused(schedule="s")])
            return rec.seq

    seq = anyio.run(write)
    con = sqlite3.connect(db)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")  # as someone holding the file may
        con.execute("UPDATE events SET schema = 99 WHERE seq = ?", (seq,))
        con.commit()
    finally:
        con.close()
    return seq


@pytest.mark.parametrize("command", [["serve"], ["report"], ["rebuild"]])
def test_a_schema_raised_by_hand_is_tampering_not_a_newer_release(tmp_path: Path, command: list[str]) -> None:
    """Someone holding the file raises an event's schema column: every command that reads it
    names the edit (exit 1, the integrity check's words), not "upgrade rollwatch" (exit 2,
    which sent the operator to install a release that does not exist, and which the unit
    does not restart). Before, ``serve`` stopped on the read models' "schema 99 is newer"
    before its integrity check at start could name the row."""
    config = write_config(tmp_path)
    seq = _schema_raised_by_hand(tmp_path / "events.db")
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(config), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = _lines(p, 1)
    assert lines[-1].startswith(f"error: event log integrity check failed at seq {seq}: "), lines
    assert "edited" in lines[-1], lines
    assert "upgrade" not in lines[-1], lines


@pytest.mark.parametrize("command", [["report"], ["rebuild"], ["schedules", "list"]])
def test_commands_refuse_a_log_a_newer_rollwatch_wrote(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path)
    head = _log_a_newer_rollwatch_wrote(tmp_path / "events.db")
    lines = _lines(rollwatch("--config", str(config), *command), 2)
    assert lines[-1].startswith(f"error: event {head}: RolloutScored schema"), lines
    assert lines[-1].endswith("upgrade rollwatch"), lines
