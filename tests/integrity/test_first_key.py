"""A daemon stopped between making its checkpoint key and its first checkpoint.

A key file beside a non-empty log with no checkpoint anywhere means "this log was
replaced" (the key signed another history): the checkpointer refuses to sign. A key that
has never signed must not count: a first start on a log that already holds events (runs
made with `rollwatch run`, a copied log) checks the whole log before its first checkpoint,
which takes a while on a big one, and a stop meanwhile made the next start call its own
log tampered with, for good.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.test_ctrl_c import _children, _free_port, _log_with_events


def _start(config: Path, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    with (tmp_path / name).open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "serve", "--config", str(config)],
            cwd=tmp_path,
            stderr=err,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )


def _scrub(pid: int) -> int | None:
    for child in _children(pid):
        with contextlib.suppress(FileNotFoundError):
            if b"rollwatch.integrity.scrub" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def _healthz(port: int) -> tuple[int, dict[str, object]] | None:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except httpx.HTTPError:
        return None
    return r.status_code, r.json()


def test_a_stop_before_the_first_checkpoint_is_not_tampering(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "rollwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\n[server]\nlisten = "127.0.0.1:{port}"\n'
    )
    _log_with_events(tmp_path / "events.db")
    first = _start(config, tmp_path, "first.log")
    scrub = None
    try:
        # The scrub at start runs before the first checkpoint: held stopped, it keeps the
        # daemon between its new key and its first signature, where it is then killed.
        deadline = time.monotonic() + 60
        while (scrub := _scrub(first.pid)) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no scrub at start"
            time.sleep(0.005)
        os.kill(scrub, signal.SIGSTOP)
        time.sleep(0.5)  # the moment of the kill is the input under test: anything but signed
    finally:
        first.kill()
        first.wait()
        # Stopped before it asked to die with its parent, it would outlive the test.
        if scrub is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(scrub, signal.SIGKILL)
    assert "checkpoint_signed" not in (tmp_path / "first.log").read_text()

    second = _start(config, tmp_path, "second.log")
    try:
        deadline = time.monotonic() + 60
        while "checkpoint_signed" not in (log := (tmp_path / "second.log").read_text()):
            assert "log_tampered" not in log, log
            assert second.poll() is None, log
            assert time.monotonic() < deadline, "no checkpoint signed:\n" + log
            time.sleep(0.05)
        health = _healthz(port)
        assert health is not None
        assert health[0] == 200, health
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    signed = [json.loads(line) for line in log.splitlines() if '"checkpoint_signed"' in line]
    assert signed
    assert signed[0]["size"] >= 200
