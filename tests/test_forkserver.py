"""The tests' fork server runs a command as a fresh ``python -m rollwatch`` would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import forkserver
from tests.helpers import make_log


def fresh(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollwatch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def forked(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = forkserver.run(args, env, timeout)
    assert done is not None, "the fork server declined an ordinary call"
    return done


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["verify", "--config", "/nonexistent/rollwatch.toml"],
        ["report", "--format", "yaml"],
        ["no-such-command"],
    ],
)
def test_output_and_exit_status_are_a_fresh_commands(args: list[str]) -> None:
    env = dict(os.environ)
    a, b = forked(args, env), fresh(args, env)
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


def test_the_callers_environment_and_folder_are_the_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config found through ``$ROLLWATCH_CONFIG``, then through the working folder's
    ``config/rollwatch.toml``; what it appends is there for a fresh command."""
    (tmp_path / "config").mkdir()
    db = make_log(tmp_path / "events.db")
    (tmp_path / "config" / "rollwatch.toml").write_text(f'[store]\nurl = "sqlite:{db}"\n')
    env = {k: v for k, v in os.environ.items() if k != "ROLLWATCH_CONFIG"}
    named = forked(["events", "tail"], {**env, "ROLLWATCH_CONFIG": str(tmp_path / "other.toml")})
    assert named.returncode == 2, named.stderr
    assert "other.toml" in named.stderr
    monkeypatch.chdir(tmp_path)
    found = forked(["events", "tail"], env)
    assert found.returncode == 0, found.stderr
    made = forked(["subscribers", "add", "someone"], env)
    assert made.returncode == 0, made.stderr
    fresh_made = fresh(["subscribers", "list"], env, cwd=tmp_path)
    assert "someone" in fresh_made.stdout, fresh_made.stderr


def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    db = make_log(tmp_path / "events.db")
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{db}"\n')
    t = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        forked(["--config", str(cfg), "events", "tail", "-f"], dict(os.environ), timeout=2)
    assert time.monotonic() - t < 30
    # The server serves the next call (the killed child was reaped).
    assert forked(["--help"], dict(os.environ)).returncode == 0


def test_a_different_python_or_locale_environment_runs_afresh() -> None:
    assert forkserver.run(["--help"], {**os.environ, "PYTHONHASHSEED": "7"}) is None
    assert forkserver.run(["--help"], {**os.environ, "LC_ALL": "C"}) is None
