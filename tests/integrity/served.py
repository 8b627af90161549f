"""A real ``rollwatch serve`` over a log of appended events, for the attacks of this folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

EVENTS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unhealthy(url: str, what: str, timeout: float = 30) -> httpx.Response:
    """The daemon at ``url``'s first ``/healthz`` answer of 503 (a finding), within ``timeout``."""
    got = _poll(
        lambda: (r := httpx.get(url + "/healthz", timeout=10)).status_code == 503 and r, timeout, what
    )
    assert isinstance(got, httpx.Response)
    return got


@dataclass
class Site:
    """A served log's files and address."""

    dir: Path
    config: Path
    url: str

    @property
    def db(self) -> Path:
        return self.dir / "events.db"

    def checkpoints(self) -> list[tuple[int, int]]:
        """(seq, size) of every CheckpointSigned event in the log."""
        con = sqlite3.connect(self.db)
        try:
            rows = con.execute("SELECT seq, data FROM events WHERE type = 'CheckpointSigned' ORDER BY seq")
            return [(seq, json.loads(data)["size"]) for seq, data in rows]
        finally:
            con.close()

    def head(self) -> int:
        con = sqlite3.connect(self.db)
        try:
            return int(con.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0)
        finally:
            con.close()

    def serve(self, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(self.config), "serve", "--grace", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )

    def healthz(self) -> httpx.Response | None:
        try:
            return httpx.get(self.url + "/healthz", timeout=2)
        except httpx.HTTPError:
            return None


@contextmanager
def serving(site: Site, timeout: float = 60) -> Iterator[subprocess.Popen[str]]:
    """``rollwatch serve`` on ``site``, past its start when this enters (it said sd_notify
    ``STATUS=serving``: the integrity check at start passed, the signer and the scrub run;
    /healthz answers 200 earlier, while the read models build, so it cannot tell); stopped
    when it exits. The notify socket lives as long as the daemon."""
    with (
        tempfile.TemporaryDirectory(prefix="rw-notify-") as d,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = str(Path(d) / "notify.sock")
        sock.bind(path)
        proc = site.serve({"NOTIFY_SOCKET": path})
        try:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or proc.poll() is not None:
                    raise AssertionError(f"the daemon did not get past its start: {_stop(proc)[-3000:]}")
                sock.settimeout(min(left, 1.0))
                try:
                    if "STATUS=serving" in sock.recv(4096).decode():
                        break
                except TimeoutError:
                    continue
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, wait, and return its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def stall_signer(site: Site, immutable: list[Path], tag: str) -> None:
    """Make ``site``'s folder immutable (``chattr +i``: nothing created or renamed in it,
    root included; the test is skipped where that is not supported), note it in
    ``immutable`` for the test's fixture to undo, and append 12 events: the signer then has
    something to sign and cannot write its witness file."""
    import anyio
    import pytest

    from rollwatch.store.sqlite import SQLiteEventStore
    from tests.integrity.conftest import append_n

    made = subprocess.run(["chattr", "+i", str(site.dir)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {made.stderr.strip()}")
    immutable.append(site.dir)

    async def more() -> None:
        async with SQLiteEventStore(site.db) as store:
            await append_n(store, 12, tag=tag)

    anyio.run(more)
