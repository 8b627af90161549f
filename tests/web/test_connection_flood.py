"""A flood of idle connections against a real daemon.

Every open connection holds a file descriptor. Before, a few hundred connections that never
finished their request (each cut only after ``server.request_head_timeout``) took every
descriptor the process may open: the scrub could not start its process ("Too many open
files") and the daemon exited 1, after logging an ERROR for every refused accept. Now the
server keeps its connections to a share of the open-file limit, closing the one that has
waited longest for its request when a new one comes.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integrity.served import _poll, _stop
from tests.test_daemon import free_port

LIMIT = 512  # the daemon's open-file limit, soft and hard
FLOOD = 700


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def test_idle_connections_past_the_open_file_limit_take_nothing_down(tmp_path: Path) -> None:
    """700 connections that send half a request, against a daemon that may open 512 files and
    starts a scrub process every 500 ms: a new client is still answered while they are held,
    the daemon keeps running and stops cleanly, nothing ran out of descriptors, and the
    flood is one WARNING, not a line per connection."""
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        '[integrity]\nscrub_interval = "500ms"\n'
    )
    url = f"http://127.0.0.1:{port}"
    err = tmp_path / "serve.err"
    with err.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            preexec_fn=_limited,
        )
    flood: list[socket.socket] = []
    try:
        _poll(lambda: "scrub_passed" in err.read_text(), 60, "the daemon's first scrub")
        for _ in range(FLOOD):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"GET /public/ HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            flood.append(c)
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        scrubs = err.read_text().count("scrub_passed")
        _poll(lambda: err.read_text().count("scrub_passed") >= scrubs + 2, 30, "two scrubs during the flood")
        assert proc.poll() is None, err.read_text()[-2000:]
    finally:
        for c in flood:
            c.close()
        _stop(proc)
    text = err.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "Too many open files" not in text
    assert "out of system resource" not in text
    assert 1 <= text.count("http_connections_full") <= 2, text.count("http_connections_full")  # one per 10 s
    assert "Traceback" not in text


def test_the_limits_leave_room_below_the_open_file_limit() -> None:
    """The server's share of descriptors (its connections and the backlog asyncio accepts
    at once) is at most half the limit, whatever the limit."""
    from rollwatch.web.server import connection_limits

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit in (64, 256, 1024, 4096, 65536):
            if limit > hard:
                continue
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            conns, backlog = connection_limits()
            assert conns + backlog <= max(limit // 2, 32), (limit, conns, backlog)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_scrub_that_cannot_start_its_process_is_tried_again(tmp_path: Path) -> None:
    """The daemon's open-file limit lowered under it (``prlimit``) to what it holds: the scrub
    cannot start its process. That is no finding: one ``scrub_failed`` WARNING a pass, and
    the next pass once the limit is back passes (before, the daemon exited 1)."""
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        '[integrity]\nscrub_interval = "500ms"\n'
    )
    err = tmp_path / "serve.err"
    with err.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        _poll(lambda: "scrub_passed" in err.read_text(), 60, "the daemon's first scrub")
        limits = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        held = len(list(Path(f"/proc/{proc.pid}/fd").iterdir()))
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (held, limits[1]))
        try:
            _poll(lambda: "scrub_failed" in err.read_text() or proc.poll() is not None, 30, "a scrub to fail")
        finally:
            if proc.poll() is None:
                resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, limits)
        assert proc.poll() is None, err.read_text()[-2000:]
        passed = err.read_text().count("scrub_passed")
        _poll(lambda: err.read_text().count("scrub_passed") > passed, 30, "a scrub to pass again")
    finally:
        _stop(proc)
    assert proc.returncode == 0, err.read_text()[-2000:]
    assert "Traceback" not in err.read_text()
