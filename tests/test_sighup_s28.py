"""SIGHUP (a reload) and SIGTERM (a stop) while the daemon starts or stops.

A cluster test failed in CI: both nodes got SIGHUP once a run had finished, and the node
still starting never said it left the check to the leader. A SIGHUP before the daemon
watched its problems met the signal's default action, which ends the process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.test_daemon import daemon_toml, wait_until


@dataclass
class Serving:
    """A ``rollwatch serve`` subprocess and its stderr (JSON log lines)."""

    proc: subprocess.Popen[bytes]
    err: Path

    def lines(self) -> list[dict[str, object]]:
        text = self.err.read_text(errors="replace")
        return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]

    def events(self) -> list[str]:
        return [str(o.get("event")) for o in self.lines()]


@contextmanager
def serving(tmp_path: Path) -> Iterator[Serving]:
    """``serve`` on a fresh log in ``tmp_path``; killed on exit if still running."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(daemon_toml(tmp_path))
    err_path = tmp_path / "serve.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        yield Serving(proc, err_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sighups_while_the_daemon_starts_neither_end_it_nor_are_lost(tmp_path: Path) -> None:
    """SIGHUP every 20 ms from the moment the daemon listens until it is ready: it stays
    up, becomes ready, reloads its problems once started, and still stops cleanly on
    SIGTERM. Before, the first SIGHUP ended it (signal 1, nothing logged)."""
    with serving(tmp_path) as s:
        proc, events = s.proc, s.events
        wait_until(lambda: "daemon_listening" in events() or proc.poll() is not None, 60, "listening")
        sent = 0
        deadline = time.monotonic() + 60
        while "daemon_ready" not in events():
            assert proc.poll() is None, f"exit {proc.returncode} after {sent} SIGHUPs: {s.err.read_text()}"
            assert time.monotonic() < deadline, "not ready within 60 s"
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.02)  # a signal every 20 ms: the rate is the test, not a wait for an event
        assert sent >= 1
        wait_until(lambda: "problems_reloaded" in events() or proc.poll() is not None, 30, "the reload")
        assert proc.poll() is None, s.err.read_text()
        names = events()
        assert names.index("daemon_ready") < len(names) - 1 - names[::-1].index("problems_reloaded")
        # Once ready, a SIGHUP reloads again.
        before = names.count("problems_reloaded")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: events().count("problems_reloaded") > before, 30, "the second reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, s.err.read_text()
        assert "Traceback" not in s.err.read_text()


def test_a_sighup_after_the_daemon_stopped_watching_does_not_end_it_with_signal_1(tmp_path: Path) -> None:
    """SIGHUPs sent during a stop (the receiver closes before the process ends): exit 0,
    not death by signal 1."""
    with serving(tmp_path) as s:
        proc = s.proc
        wait_until(lambda: "daemon_ready" in s.events() or proc.poll() is not None, 60, "ready")
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None:
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)  # a signal every 10 ms until it has exited
        assert proc.returncode == 0, s.err.read_text()


def _caught(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its ``SigCgt`` mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask & (1 << (signum - 1)))


def test_a_sigterm_while_the_daemon_starts_stops_it_cleanly(tmp_path: Path) -> None:
    """SIGTERM at the first moment `serve` catches it (polled from /proc: its handler is
    there), long before the daemon listens: exit 0, `shutdown_requested` said (while
    starting), `daemon_stopped`, no traceback. Before, the signal's default action ended
    the process (exit by signal 15) until the daemon's own receiver was open."""
    with serving(tmp_path) as s:
        proc = s.proc
        deadline = time.monotonic() + 60
        while not _caught(proc.pid, signal.SIGTERM):
            assert proc.poll() is None, s.err.read_text()
            assert time.monotonic() < deadline, "SIGTERM never caught"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, s.err.read_text()
        lines = s.lines()
        [asked] = [o for o in lines if o["event"] == "shutdown_requested"]
        assert asked["signal"] == "SIGTERM", asked
        assert asked.get("while_starting") is True, asked
        assert "daemon_stopped" in [o["event"] for o in lines], lines[-3:]
        assert "Traceback" not in s.err.read_text()
