"""The command line as an operator having a bad day drives it: closed or broken standard
streams and the like. One line and a stated exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_log, rollwatch, write_config


def _without_stdout(*args: str) -> subprocess.CompletedProcess[str]:
    """``rollwatch ARGS >&-``: the process starts with descriptor 1 closed."""
    return subprocess.run(
        [sys.executable, "-m", "rollwatch", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=lambda: os.close(1),
    )


@pytest.mark.parametrize("command", [["problems", "list"], ["report"], ["schedules", "list"]])
def test_a_closed_stdout_is_one_line_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path)
    make_log(tmp_path / "events.db")
    r = _without_stdout(*command, "--config", str(config), "--log-level", "error")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == "error: cannot use standard output: it was closed when the command started"


@pytest.mark.parametrize("command", [["problems", "list"], ["verify"]])
def test_a_reader_gone_is_sigpipes_status_not_a_failed_check(tmp_path: Path, command: list[str]) -> None:
    """``rollwatch verify | true``: exit 1 is "a check failed" (SPEC §2), which a pipeline
    under ``set -o pipefail`` took for a tampered log. It is 141 (128 + SIGPIPE), silently."""
    config = write_config(tmp_path)
    make_log(tmp_path / "events.db")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before the first line
    try:
        r = subprocess.run(
            [sys.executable, "-m", "rollwatch", *command, "--config", str(config), "--log-level", "error"],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert r.returncode == 141, r.stderr
    assert r.stderr == ""


def _vkey() -> str:
    """A log's verifier key (C2SP signed-note, Ed25519) for ``witness serve --log``."""
    import base64
    import hashlib

    public = bytes(range(32))
    name = "example.org/log"
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4].hex()
    encoded = base64.b64encode(b"\x01" + public).decode()
    return f"{name}+{key_id}+{encoded}"


def test_witness_on_a_busy_port_names_its_listen_option(tmp_path: Path) -> None:
    """The witness has no config key server.listen: its address is --listen, and the message says so."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = rollwatch(
            "witness", "serve", "--listen", f"127.0.0.1:{port}", "--key", str(tmp_path / "w.key"),
            "--log", _vkey(), timeout=30,
        )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    assert f"127.0.0.1:{port} is already in use" in r.stderr
    assert "set --listen to another address" in r.stderr
    assert "server.listen" not in r.stderr
