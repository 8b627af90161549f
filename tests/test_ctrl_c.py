"""Ctrl-C on a terminal: the signal reaches every process of the group, workers included."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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
    proc, _ = _serve(tmp_path, events=0)
    err = _stopped(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


def _stopped(proc: subprocess.Popen[str], sig: int) -> str:
    """``sig`` to ``proc``'s whole process group; its stderr once it exits (killed if it
    does not within a minute)."""
    try:
        os.killpg(proc.pid, sig)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _log_with_events(db: Path, n: int = 200) -> None:
    """A log the Merkle worker and the scrub have something to do with."""
    import anyio

    from rollwatch.events import SchedulePaused
    from rollwatch.store.sqlite import SQLiteEventStore

    async def fill() -> None:
        async with SQLiteEventStore(db) as store:
            for i in range(n):
                await store.append(f"s{i % 7}", [SchedulePaused(schedule=f"s{i}", note="x" * 200)])

    anyio.run(fill)


def _serve(tmp_path: Path, events: int = 200) -> tuple[subprocess.Popen[str], int]:
    """``serve`` on a log of ``events`` events (scrubbed every second), once healthy."""
    port = _free_port()
    config = tmp_path / "rollwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        '[integrity]\nscrub_interval = "1s"\n'
    )
    _log_with_events(tmp_path / "events.db", events)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "serve", "--config", str(config)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
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
    return proc, port


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started (its workers), read from /proc."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def _merkle_worker(pid: int) -> int | None:
    for w in _children(pid):
        with contextlib.suppress(FileNotFoundError):
            if b"rollwatch.integrity._worker" in Path(f"/proc/{w}/cmdline").read_bytes():
                return w
    return None


def _workers_once_merkle_runs(pid: int) -> set[int]:
    """``pid``'s workers, once its Merkle worker is among them (the sandboxes come first)."""
    deadline = time.monotonic() + 30
    while _merkle_worker(pid) is None:
        assert time.monotonic() < deadline, "no Merkle worker started"
        time.sleep(0.05)
    return _children(pid)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_to_the_whole_group_stops_serve_cleanly(tmp_path: Path) -> None:
    """SIGTERM to serve's whole process group (``timeout``, ``kill -- -PGID``, a unit
    without ``KillMode=mixed``) is a clean stop, exit 0: the workers are not in the group.
    Before, the Merkle worker died of it and serve exited 1, "the Merkle tree worker
    exited with status -15"."""
    proc, _ = _serve(tmp_path)
    try:
        workers = _workers_once_merkle_runs(proc.pid)
        # Whether the worker dies before serve has begun to stop is a race (serve lost it
        # when busy, at a million events): what decides it is that the signal cannot
        # reach a worker at all.
        assert all(os.getpgid(w) != proc.pid for w in workers), "a worker is in serve's group"
    finally:
        err = _stopped(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    bad = [line for line in err.splitlines() if line.startswith("error") or '"level": "error"' in line]
    assert not bad, bad
    assert "Traceback" not in err


def test_workers_die_with_a_killed_serve(tmp_path: Path) -> None:
    """serve killed with SIGKILL (nothing of it can clean up): every worker it started ends
    too, none is left running on its own."""
    proc, _ = _serve(tmp_path)
    try:
        workers = _workers_once_merkle_runs(proc.pid)
        proc.kill()
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 30
        while left := {w for w in workers if _alive(w)}:
            assert time.monotonic() < deadline, f"workers left running: {left}"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_during_the_scrub_at_start_stops_serve_at_once(tmp_path: Path) -> None:
    """A stop while the daemon is still starting (the scrub at start reads the whole log,
    40 s at a million events) ends it then, not once the scrub is done: before, serve
    waited for the scrub and its first checkpoint, longer than systemd's stop timeout.
    The scrub is held stopped here (a pass that would never end): serve must exit 0 all
    the same, kill the scrub, and sign nothing over a log it did not finish checking."""
    from tests.integrity.test_first_key import _scrub

    _log_with_events(tmp_path / "events.db")
    err = _stopped_holding(tmp_path, _scrub, wait_for=None)
    assert "checkpoint_signed" not in err
    assert "while_starting" in err


def test_sigterm_while_the_projections_build_stops_serve_at_once(tmp_path: Path) -> None:
    """The same for a build of the projections from scratch (a new release's, or a first
    start on a big log: minutes): its second process held stopped, a SIGTERM once the
    log is checked and signed ends serve all the same, and that process with it."""
    import anyio

    from rollwatch.events import SchedulePaused
    from rollwatch.projections import SPLIT_FROM
    from rollwatch.store.sqlite import SQLiteEventStore

    async def fill() -> None:  # a log long enough for a build in two processes
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            for i in range(0, SPLIT_FROM, 500):
                await store.append(f"s{i}", [SchedulePaused(schedule=f"s{i}", note="x")] * 500)

    def build_part(pid: int) -> int | None:
        for child in _children(pid):
            with contextlib.suppress(FileNotFoundError):
                if b"build_part" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
        return None

    anyio.run(fill)
    _stopped_holding(tmp_path, build_part, wait_for="checkpoint_signed")


def _stopped_holding(tmp_path: Path, find: Callable[[int], int | None], wait_for: str | None) -> str:
    """Start serve on ``tmp_path``'s log, hold the child ``find`` names stopped (SIGSTOP),
    wait for ``wait_for`` in serve's log if given, SIGTERM serve: it must exit 0 within
    30 s with no traceback and the held child must be gone. Serve's log."""
    from tests.integrity.test_first_key import _start

    config = tmp_path / "rollwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\n[server]\nlisten = "127.0.0.1:{_free_port()}"\n'
    )
    # A child found at start is the one at start: the next scrub is hours away.
    proc = _start(config, tmp_path, "serve.log")
    held = None
    try:
        deadline = time.monotonic() + 60
        while (held := find(proc.pid)) is None:
            assert proc.poll() is None
            assert time.monotonic() < deadline, "the child to hold never started"
            time.sleep(0.005)
        os.kill(held, signal.SIGSTOP)
        while wait_for is not None and wait_for not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None
            assert time.monotonic() < deadline, f"no {wait_for}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(held):
            assert time.monotonic() < deadline, "the held child was left running"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if held is not None:  # in a session of its own, stopped: no signal of serve's reaches it
            with contextlib.suppress(ProcessLookupError):
                os.kill(held, signal.SIGKILL)
    err = (tmp_path / "serve.log").read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err
