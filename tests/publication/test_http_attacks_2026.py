"""Session 2026-12 (helper 69): the HTTP surface attacked from outside, against real daemons.

*Clients that never read their answer* (slow read). A client can leave its receive window
shut: with a small receive buffer and a small MSS (both its own socket options), the kernel
takes only some 20 kB of an answer, and the rest waits in the server's own buffer for as
long as the client likes. Before, nothing bounded that wait:

* a connection whose answers piled up (requests pipelined, never read) held its handler in
  uvicorn's ``drain`` for ever; such connections count against the connection bound and
  none of them could be closed for a newcomer, so once they filled it every new client,
  ``/healthz`` included, was closed at once;
* a connection closed with its answer still buffered (``Connection: close``, or the idle
  timeout) kept its descriptor until the client went away, and closing ones were not
  counted at all: 700 of them took every descriptor of a daemon limited to 512 (asyncio
  logged a traceback per refused accept, hundreds of thousands of lines).

Now an answer the client leaves unread for ``server.request_head_timeout`` ends its
connection, and a connection over the bound first drops one of those.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.integrity.served import _poll, _stop
from tests.test_daemon import free_port
from tests.web.test_http import server

LIMIT = 512  # the daemon's open-file limit: at most 192 connections (connection_limits)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


@dataclass
class Limited:
    """A daemon on an empty log, limited to ``LIMIT`` open files."""

    port: int
    proc: subprocess.Popen[str]
    err: Path

    def log(self) -> str:
        return self.err.read_text()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    tmp = tmp_path_factory.mktemp("limited")
    port = free_port()
    cfg = tmp / "rollwatch.toml"
    # The timeout the attacks run into, short: the tests wait for it.
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp / "events.db"}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\nrequest_head_timeout = "2s"\n'
    )
    err = tmp / "serve.err"
    with err.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            text=True,
            preexec_fn=_limited,
        )
    d = Limited(port, proc, err)
    try:
        _poll(lambda: _healthz(port) == 200, 60, "the daemon")
        _poll(lambda: _get(port, "/ops/", {"Host": "127.0.0.1"})[0] == 200, 60, "the console")
        yield d
    finally:
        _stop(proc)
    text = err.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "Too many open files" not in text
    assert "Traceback" not in text


def _healthz(port: int) -> int | None:
    """The status of ``GET /healthz`` on a new connection (None: closed or no answer in 2 s)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None


def _non_reader(port: int, requests: bytes) -> socket.socket:
    """A connection that sends ``requests`` and shuts its receive window: a tiny receive
    buffer and MSS, so the server's kernel takes little of the answers."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 200)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(requests)
    return s


GET = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"  # 24 kB: the largest answer of an empty log
LAST = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class TestClientsThatNeverRead:
    def test_answers_piling_up_unread_do_not_lock_out_new_clients(self, limited: Limited) -> None:
        """More connections than the bound (192), each with 30 requests pipelined and no
        answer read: a new client's ``/healthz`` is answered within a few seconds (before,
        every new connection was closed for as long as the attackers held theirs)."""
        held = [_non_reader(limited.port, GET * 30) for _ in range(200)]
        try:
            started = time.monotonic()
            _poll(lambda: _healthz(limited.port) == 200, 8, "/healthz answered during the flood")
            assert time.monotonic() - started < 8
        finally:
            for s in held:
                s.close()

    def test_connections_closed_with_their_answer_unread_free_their_descriptors(
        self, limited: Limited
    ) -> None:
        """700 connections (past the 512 files the daemon may open) each asking twice, the
        second time with ``Connection: close``, and never reading: ``/healthz`` is answered
        and no descriptor runs out (before: every one was taken, the daemon stopped
        answering and asyncio logged a traceback per refused accept)."""
        held: list[socket.socket] = []
        try:
            for _ in range(700):
                try:
                    held.append(_non_reader(limited.port, GET + LAST))
                except OSError:  # refused or timed out: the daemon is out of descriptors
                    break
            _poll(lambda: _healthz(limited.port) == 200, 8, "/healthz answered during the flood")
            fds = len(list(Path(f"/proc/{limited.proc.pid}/fd").iterdir()))
            assert fds < LIMIT - 64, fds
        finally:
            for s in held:
                s.close()
        assert "Too many open files" not in limited.log()


BIG = 12_000_000  # past what the kernels take (4 MB at most here), so most waits in ours


def _read_slowly(port: int) -> int:
    """GET /big, taking 256 kB at most every 20 ms (a slow link): the bytes received."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
    s.settimeout(5)
    with s:
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = 0
        while chunk := s.recv(1 << 18):
            got += len(chunk)
            time.sleep(0.02)
    return got


@pytest.mark.anyio
async def test_a_slow_reader_of_a_big_answer_gets_all_of_it() -> None:
    """The cut is for clients that take nothing: one that reads a 12 MB answer steadily but
    slowly, for longer than the timeout in all, gets every byte of it."""

    async def big(_: Request) -> Response:
        return Response(b"x" * BIG)

    app = Starlette(routes=[Route("/big", big)])
    async with server(app, head_timeout=0.3) as url:
        port = int(url.rsplit(":", 1)[1])
        started = time.monotonic()
        got = await anyio.to_thread.run_sync(_read_slowly, port)
        assert time.monotonic() - started > 0.6  # the reading outlasted the timeout twice over
    assert got > BIG


def _exchange(port: int, data: bytes) -> bytes:
    """``data`` sent on one connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


class TestRequestSmuggling:
    def test_content_length_and_transfer_encoding_together_are_refused_and_the_connection_closed(
        self, limited: Limited
    ) -> None:
        """A request with both ``Content-Length`` and ``Transfer-Encoding`` is how a request is
        smuggled past a proxy that reads the other one: here the chunked body ends early and a
        second request (the console, which a loopback peer may open) follows on the same
        connection. RFC 9112 6.1: the server must close the connection after answering such a
        request. Before, the daemon answered both (200, then the console page); now one 400
        in the error body, and the connection closed."""
        smuggled = b"GET /ops/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out = _exchange(
            limited.port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
        )
        assert out.count(b"HTTP/1.1 ") == 1, out[:2000]
        assert out.startswith(b"HTTP/1.1 400 "), out[:300]
        assert out.split(b"\r\n\r\n", 1)[1].startswith(b'{"error":"bad_request"'), out[:500]
        assert b"<html" not in out.lower()
        _poll(lambda: "Content-Length and Transfer-Encoding" in limited.log(), 5, "its access line")


class TestDnsRebinding:
    def test_a_loopback_request_for_another_host_name_is_not_the_operators(self, limited: Limited) -> None:
        """DNS rebinding: a page at ``rebind.attacker.example`` whose name is made to resolve to
        127.0.0.1 has the operator's browser fetch the daemon as that name: the request comes
        from loopback, with ``Host: rebind.attacker.example:PORT``, and the page may read the
        answer (same origin to the browser). Before, that was the operator's: the console
        (its form token too), the pass counts in ``/metrics``, every event in the entry
        bundles. Now only a Host the daemon goes by (an IP address, ``localhost``, the host
        of ``server.listen`` or ``server.base_url``, this machine's name) makes a loopback
        peer the operator; any other gets what an outsider gets."""
        port = limited.port
        foreign = {"Host": f"rebind.attacker.example:{port}"}
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}", socket.gethostname()):
            assert _get(port, "/ops/", {"Host": host})[0] == 200, host  # the controls
        status, body = _get(port, "/ops/", foreign)
        assert status == 401, (status, body[:300])
        assert _get(port, "/tile/entries/000.p/1", foreign)[0] == 403
        assert b"rollwatch_events_applied" in _get(port, "/metrics", {"Host": f"localhost:{port}"})[1]
        assert b"rollwatch_events_applied" not in _get(port, "/metrics", foreign)[1]


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET ``path`` with exactly ``headers`` (Host included): status and body."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    out = _exchange(port, f"GET {path} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode())
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), body
