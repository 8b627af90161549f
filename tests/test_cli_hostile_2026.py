"""The command line as an operator having a bad day drives it: closed or broken standard
streams and the like. One line and a stated exit code, never a traceback."""

from __future__ import annotations

import contextlib
import os
import resource
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import anyio
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


class _Endless(socketserver.StreamRequestHandler):
    """Answers any request with a 200 whose body never ends (a megabyte at a time)."""

    def handle(self) -> None:
        self.rfile.readline()
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(OSError):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
            while True:
                self.wfile.write(chunk)


@pytest.mark.parametrize("path", ["", "/export"])
def test_audit_of_a_server_that_streams_for_ever_fails_without_eating_memory(path: str) -> None:
    """``audit --url`` read each answer whole: a server streaming an endless body took 13.6 GB
    in 61 s before it was killed. Each answer is read up to 64 MiB now: exit 1, one line."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}{path}"
        p = subprocess.run(
            [sys.executable, "-m", "rollwatch", "audit", "--url", url],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),
        )
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, p.stdout + p.stderr
    assert "larger than 67,108,864 bytes" in p.stdout + p.stderr, p.stdout + p.stderr


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "fails"),
    [
        ({"status": "degraded", "reasons": ["1 schedule(s) cannot run"]}, False),
        ({"status": "tampered", "first_bad_seq": 7, "reasons": ["seq 7: changed"]}, True),
        ("not json", True),
    ],
    ids=["degraded", "tampered", "not-json"],
)
async def test_audit_fails_on_a_tampered_service_not_a_degraded_one(body: object, fails: bool) -> None:
    """A service whose ``/healthz`` is 503 ``degraded`` (a schedule that cannot run, a witness's
    refusal) made every outsider's audit fail with "its log is not what it signed"; only a
    ``tampered`` one (or a 503 that says nothing readable) does now."""
    import json

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from rollwatch.errors import AuditFailure
    from rollwatch.integrity.audit import _check_health
    from rollwatch.web.server import HTTPServer

    text = body if isinstance(body, str) else json.dumps(body)

    async def healthz(_: object) -> Response:
        return Response(text, 503, media_type="application/json")

    server = HTTPServer(Starlette(routes=[Route("/healthz", healthz)]), "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            async with httpx.AsyncClient() as client:
                base = f"http://127.0.0.1:{server.port}"
                if fails:
                    with pytest.raises(AuditFailure, match="not what it signed"):
                        await _check_health(client, base)
                else:
                    await _check_health(client, base)
        finally:
            server.stop()
