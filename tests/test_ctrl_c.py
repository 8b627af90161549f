"""Ctrl-C on a terminal: the signal reaches every process of the group, workers included."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ctrl_c_stops_serve_cleanly_with_no_traceback(tmp_path: Path) -> None:
    """SIGINT sent to serve's whole process group (what a terminal's Ctrl-C does) stops
    it with exit 0, and no process of the group (the Merkle and scrub workers among them)
    prints a traceback."""
    port = _free_port()
    config = tmp_path / "rollwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        '[integrity]\nscrub_interval = "1s"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "serve", "--config", str(config)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not become healthy"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
