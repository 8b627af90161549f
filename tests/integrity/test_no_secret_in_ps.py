"""The store's URL, a PostgreSQL password perhaps, never reaches a command line.

Any user of the machine reads every process's command line (``ps``, /proc/PID/cmdline).
The scrub and ``verify``'s content check run in processes of their own and were given the
store URL as their argument, so a password in it was on show for as long as they ran.
They now read it from their stdin. These tests hold each such process stopped, read its
command line as ``ps`` would, and look for the password there and in the logs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tests.pg import scratch_database
from tests.test_ctrl_c import _children, _free_port

# Trust auth on the test server: the password is sent, never checked.
SECRET = "pw-b7e1c3d9a0-not-for-ps"

pytestmark = pytest.mark.anyio


def _with_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0] if at else "postgres"
    return f"{scheme}://{user}:{SECRET}@{host if at else rest}"


def _held_child(pid: int, module: bytes, proc: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """The child of ``pid`` running ``module``, stopped (SIGSTOP), and its command line."""
    deadline = time.monotonic() + 60
    while True:
        for child in _children(pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if module in cmdline:
                    os.kill(child, signal.SIGSTOP)
                    return child, cmdline
        assert proc.poll() is None, f"exited {proc.returncode} before {module!r} started"
        assert time.monotonic() < deadline, f"no {module!r} started"
        time.sleep(0.002)


def _all_command_lines() -> bytes:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                lines.append((entry / "cmdline").read_bytes())
    return b"\n".join(lines)


# ``rollwatch`` with verify's content check in a process of its own whatever the log's size
# (it is, above SPLIT_ABOVE events; below, verify checks the content itself).
_SPLIT_VERIFY = (
    "import rollwatch.integrity.verify as v; v.SPLIT_ABOVE = -1; from rollwatch.__main__ import main; main()"
)


def _run_holding(
    tmp_path: Path, argv: list[str], module: bytes, *, launch: tuple[str, ...] = ("-m", "rollwatch")
) -> str:
    """Run ``rollwatch argv``; hold its ``module`` child stopped while every command line
    on the machine is read; let it go; return the log (stderr) once it has been stopped."""
    log = tmp_path / f"{argv[0]}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, *launch, "--config", str(tmp_path / "rollwatch.toml"), *argv],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    held = None
    try:
        held, cmdline = _held_child(proc.pid, module, proc)
        assert SECRET.encode() not in cmdline, cmdline
        assert SECRET.encode() not in _all_command_lines()
        os.kill(held, signal.SIGCONT)
        if argv[0] == "serve":
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if held is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(held, signal.SIGKILL)
    return log.read_text()


async def test_the_scrub_and_the_content_check_get_no_password_on_their_command_line(
    tmp_path: Path,
) -> None:
    async with scratch_database() as url:
        (tmp_path / "rollwatch.toml").write_text(
            f'[store]\nurl = "{_with_password(url)}"\n[server]\nlisten = "127.0.0.1:{_free_port()}"\n'
        )
        # serve's scrub at start; then verify's content check, on the log serve began.
        served = await anyio.to_thread.run_sync(
            _run_holding, tmp_path, ["serve"], b"rollwatch.integrity.scrub"
        )
        assert "Traceback" not in served, served
        assert SECRET not in served
        verified = await anyio.to_thread.run_sync(
            functools.partial(
                _run_holding,
                tmp_path,
                ["verify"],
                b"rollwatch.integrity.content",
                launch=("-c", _SPLIT_VERIFY),
            )
        )
        assert "Traceback" not in verified, verified
        assert SECRET not in verified


# A database nobody answers at: every command fails to open the log and says where.
_UNREACHABLE = [
    "postgresql://rw@127.0.0.1:{port}/db?password={secret}",
    "postgresql://127.0.0.1:{port}/db?user=rw&sslmode=disable&password={secret}",
    "postgresql://rw@127.0.0.1:{port}/db?sslpassword={secret}&application_name=x",
    "postgresql://rw@127.0.0.1:{port}/db?PassWord={secret}#frag",
    "postgresql://rw:{secret}@127.0.0.1:{port}/db",
    "postgresql://rw:{secret}@127.0.0.1:{port}/db?application_name=a@b",
    "postgres+asyncpg://rw:{secret}@127.0.0.1:{port}/db",  # a scheme mistyped: a config error
]


def _fails_without_the_secret(tmp_path: Path, url: str, argv: list[str]) -> str:
    """Run ``rollwatch argv`` on a store at ``url``; it must fail in a line without ``SECRET``."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "{url}"\n[server]\nlisten = "127.0.0.1:{_free_port()}"\n')
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode in (1, 2), (argv, p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    assert SECRET not in p.stdout + p.stderr, (url, argv, p.stderr[-2000:])
    return p.stderr


def test_a_password_in_the_store_url_reaches_no_error_message(tmp_path: Path) -> None:
    """libpq (and asyncpg) take a password in the URL's query as well as in its user
    information (``?password=``, ``?sslpassword=``). Every command printed the store URL whole
    in "cannot open the event log at URL", as does ``/healthz``'s "out of reach" reason, to
    anyone: a password given in the query was printed with it. Each message still names the
    host it could not reach; ``serve`` and ``verify`` say it the same way."""
    for template in _UNREACHABLE:
        url = template.format(port=_free_port(), secret=SECRET)
        said = _fails_without_the_secret(tmp_path, url, ["report"])
        if not template.startswith("postgres+"):
            assert "127.0.0.1" in said, said
    url = _UNREACHABLE[1].format(port=_free_port(), secret=SECRET)
    for argv in (["serve"], ["verify"]):
        assert "127.0.0.1" in _fails_without_the_secret(tmp_path, url, argv)
