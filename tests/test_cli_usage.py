"""Commands as a user runs them on a real SQLite log: `events tail`, and `audit`'s bad usage."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio

from rollwatch.events import SchedulePaused, SubscriberRevoked
from rollwatch.store.sqlite import SQLiteEventStore


def _log(tmp_path: Path) -> Path:
    """5 SubscriberRevoked events, then 40 SchedulePaused: the former are not among the last 20."""

    async def build() -> None:
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await store.append("subscriber-x", [SubscriberRevoked(name=f"s{i}") for i in range(5)])
            await store.append("schedule-s", [SchedulePaused(schedule="s", note=str(i)) for i in range(40)])

    anyio.run(build)
    config = tmp_path / "rollwatch.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\n')
    return config


def _tail(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollwatch", "events", "tail", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestTail:
    def test_type_shows_the_last_events_of_that_type(self, tmp_path: Path) -> None:
        """--type T prints the last 20 events of type T, however far back they are."""
        p = _tail(_log(tmp_path), "--type", "SubscriberRevoked")
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert len(lines) == 5
        assert all("SubscriberRevoked" in line for line in lines)

    def test_without_type_the_last_20(self, tmp_path: Path) -> None:
        """With no filter, the last 20 events of the log, oldest first."""
        p = _tail(_log(tmp_path))
        assert p.returncode == 0, p.stderr
        seqs = [int(line.split()[0]) for line in p.stdout.splitlines()]
        assert seqs == list(range(26, 46))

    def test_an_unknown_type_is_bad_usage_naming_the_known_ones(self, tmp_path: Path) -> None:
        """A mistyped type exits 2 and lists the types there are, instead of printing nothing."""
        p = _tail(_log(tmp_path), "--type", "RolloutScord")
        assert p.returncode == 2
        assert "RolloutScord" in p.stderr
        assert "RolloutScored" in p.stderr
        assert "Traceback" not in p.stderr


def test_audit_with_a_url_without_scheme_is_bad_usage(tmp_path: Path) -> None:
    """``audit --url host:8080`` (no scheme) exits 2 naming the URL, not 1 as a failed check."""
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "audit", "--url", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert p.returncode == 2, p.stderr
    assert "127.0.0.1:9" in p.stderr
    assert "Traceback" not in p.stderr


def _reading(tmp_path: Path) -> list[list[str]]:
    """The commands that only read the log."""
    return [
        ["events", "tail"],
        ["report"],
        ["schedules", "list"],
        ["subscribers", "list"],
        ["publish", "export", str(tmp_path / "out")],
        ["rebuild"],
        ["verify"],
    ]


def _each(
    cfg: Path, commands: list[list[str]]
) -> Iterator[tuple[list[str], subprocess.CompletedProcess[str]]]:
    """Each command run with ``cfg``, in turn, with what it did."""
    for args in commands:
        yield (
            args,
            subprocess.run(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), *args],
                capture_output=True,
                text=True,
            ),
        )


def test_commands_that_read_the_log_never_create_it(tmp_path: Path) -> None:
    """A mistyped store path: every command that reads the log exits 2 naming it, and nothing is created."""
    cfg = tmp_path / "rw.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "typo" / "events.db"}"\n')
    for args, r in _each(cfg, [*_reading(tmp_path), ["subscribers", "revoke", "bob"], ["key", "rotate"]]):
        assert r.returncode == 2, (args, r.stderr)
        assert f"there is no event log at {tmp_path / 'typo' / 'events.db'}" in r.stderr, args
        assert "Traceback" not in r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rw.toml"], args


def test_commands_that_only_read_leave_an_empty_file_empty(tmp_path: Path) -> None:
    """A store path naming an empty file (made by `touch`, or a copy that failed): every
    command that only reads the log exits 1 saying it is not a log, and leaves it empty
    (it used to write an empty log's tables into it, and report on nothing)."""
    db = tmp_path / "events.db"
    db.write_bytes(b"")
    cfg = tmp_path / "rw.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{db}"\nprojections = "{tmp_path / "p.db"}"\n')
    for args, r in _each(cfg, _reading(tmp_path)):
        assert r.returncode == 1, (args, r.stderr)
        assert f"{db} is not a rollwatch event log (an empty file)" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert db.stat().st_size == 0, args
        assert not Path(f"{db}-wal").exists(), args


def test_each_command_loads_only_what_it_needs() -> None:
    """Every command name resolves to its command; `events tail --help` does not import the
    web server, the sandbox or the templates (a command's module loads when it runs)."""
    code = """
import sys, click
from rollwatch.cli import COMMANDS, cli
from click.testing import CliRunner
result = CliRunner().invoke(cli, ["events", "tail", "--help"])
assert result.exit_code == 0, result.output
heavy = sorted(m for m in ("jinja2", "uvicorn", "starlette", "rollwatch.scoring", "rollwatch.web") if m in sys.modules)
assert not heavy, heavy
ctx = click.Context(cli)
for name in COMMANDS:
    assert cli.get_command(ctx, name).name == name
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr
