"""SIGHUP (a reload) while the daemon starts.

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
from pathlib import Path

from tests.test_daemon import daemon_toml, wait_until


def test_sighups_while_the_daemon_starts_neither_end_it_nor_are_lost(tmp_path: Path) -> None:
    """SIGHUP every 20 ms from the moment the daemon listens until it is ready: it stays
    up, becomes ready, reloads its problems once started, and still stops cleanly on
    SIGTERM. Before, the first SIGHUP ended it (signal 1, nothing logged)."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(daemon_toml(tmp_path))
    err_path = tmp_path / "serve.err"

    def events() -> list[str]:
        lines = err_path.read_text(errors="replace").splitlines()
        return [str(json.loads(ln).get("event")) for ln in lines if ln.startswith("{")]

    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: "daemon_listening" in events() or proc.poll() is not None, 60, "listening")
        sent = 0
        deadline = time.monotonic() + 60
        while "daemon_ready" not in events():
            assert proc.poll() is None, f"exit {proc.returncode} after {sent} SIGHUPs: {err_path.read_text()}"
            assert time.monotonic() < deadline, "not ready within 60 s"
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.02)  # a signal every 20 ms: the rate is the test, not a wait for an event
        assert sent >= 1
        wait_until(lambda: "problems_reloaded" in events() or proc.poll() is not None, 30, "the reload")
        assert proc.poll() is None, err_path.read_text()
        names = events()
        assert names.index("daemon_ready") < len(names) - 1 - names[::-1].index("problems_reloaded")
        # Once ready, a SIGHUP reloads again.
        before = names.count("problems_reloaded")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: events().count("problems_reloaded") > before, 30, "the second reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, err_path.read_text()
        assert "Traceback" not in err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_sighup_after_the_daemon_stopped_watching_does_not_end_it_with_signal_1(tmp_path: Path) -> None:
    """SIGHUPs sent during a stop (the receiver closes before the process ends): exit 0,
    not death by signal 1."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(daemon_toml(tmp_path))
    err_path = tmp_path / "serve.err"

    def events() -> list[str]:
        lines = err_path.read_text(errors="replace").splitlines()
        return [str(json.loads(ln).get("event")) for ln in lines if ln.startswith("{")]

    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: "daemon_ready" in events() or proc.poll() is not None, 60, "ready")
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None:
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)  # a signal every 10 ms until it has exited
        assert proc.returncode == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
        deadline = time.monotonic() + 60
        while not _caught(proc.pid, signal.SIGTERM):
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, "SIGTERM never caught"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, err_path.read_text()
        text = err_path.read_text()
        lines = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
        [asked] = [o for o in lines if o["event"] == "shutdown_requested"]
        assert asked["signal"] == "SIGTERM", asked
        assert asked.get("while_starting") is True, asked
        assert "daemon_stopped" in [o["event"] for o in lines], lines[-3:]
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
