"""``python -m rollwatch ARGS`` in a process forked from one that has imported it already.

The suite runs the real command hundreds of times; a fresh Python spent most of each run
(about 0.2 s of CPU) starting and importing, and the suite's CPU, not its waiting, is what
keeps it from ten minutes on two cores. Like :mod:`multiprocessing`'s forkserver, one
server per test process imports the command-line modules once, and forks a child per
command: the child is a process of its own that takes the caller's arguments, environment,
working folder, umask and standard streams (files here), then runs ``rollwatch``'s ``main``
and exits as a fresh process would (``atexit`` handlers, streams flushed, its exit status).

What a fork cannot stand in for, a fresh ``python -m rollwatch`` still runs: a call made
while another is running (from a thread), an environment whose Python or locale variables
differ from the server's (they act while Python starts), and tests about the start itself
(Ctrl-C while modules load, which modules a command loads, what ``ps`` shows), which start
their own subprocesses.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_SERVER = r"""
import importlib, json, os, sys
# What most commands import; each child imports the rest of what its command needs.
for name in sys.argv[2:]:
    importlib.import_module(name)
ctl_in = os.fdopen(os.dup(0), "rb", buffering=0)
ctl_out = os.fdopen(int(sys.argv[1]), "wb", buffering=0)
os.dup2(os.open(os.devnull, os.O_RDWR), 0)
while True:
    line = b""
    while not line.endswith(b"\n"):
        got = ctl_in.read(1)
        if not got:
            sys.exit(0)  # the test process is gone
        line += got
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        break
    ctl_out.write(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    ctl_out.write(f"{os.waitstatus_to_exitcode(status)}\n".encode())
# The child: the caller's process, from here on.
ctl_in.close()
ctl_out.close()
os.environ.clear()
os.environ.update(req["env"])
os.chdir(req["cwd"])
os.umask(req["umask"])
for fd, (path, mode) in enumerate(req["streams"]):
    f = os.open(path, mode)
    os.dup2(f, fd)
    os.close(f)
sys.argv = ["-m", *req["args"]]
import runpy
runpy.run_module("rollwatch", run_name="__main__", alter_sys=True)  # as ``python -m`` does
"""

_PRELOAD = [
    "rollwatch.cli",
    "rollwatch.cli._common",
    "rollwatch.config",
    "rollwatch.store",
    "rollwatch.store.sqlite",
    "rollwatch.readmodels",
    "rollwatch.integrity.audit",
    "rollwatch.integrity.verify",
    "rollwatch.problems",
    "httpx",
]

_STARTUP_VARS = ("PYTHON", "LC_", "LANG")
"""Variables that act while Python starts: a call that sets them otherwise runs afresh."""


class _Server:
    def __init__(self) -> None:
        self.env = dict(os.environ)
        ctl_r, ctl_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(ctl_w), *_PRELOAD],
            stdin=subprocess.PIPE,
            pass_fds=(ctl_w,),
            stdout=subprocess.DEVNULL,
        )
        os.close(ctl_w)
        self.replies = os.fdopen(ctl_r, "rb", buffering=0)
        self.lock = threading.Lock()

    def fits(self, env: dict[str, str]) -> bool:
        def startup(e: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in e.items() if k.startswith(_STARTUP_VARS)}

        return self.proc.poll() is None and startup(env) == startup(self.env)

    def _reply(self, deadline: float | None) -> str | None:
        line = b""
        while not line.endswith(b"\n"):
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([self.replies], [], [], wait)[0]:
                    return None
            got = self.replies.read(1)
            if not got:
                raise RuntimeError("the fork server died")
            line += got
        return line.decode().strip()

    def run(
        self, args: list[str], env: dict[str, str], timeout: float | None, input: str | None
    ) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(prefix="rw-fork-") as tmp:
            d = Path(tmp)
            stdin = d / "in"
            if input is not None:
                stdin.write_text(input)
            out, err = d / "out", d / "err"
            write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            mask = os.umask(0)
            os.umask(mask)
            req = {
                "args": args,
                "env": env,
                "cwd": os.getcwd(),
                "umask": mask,
                "streams": [
                    (str(stdin) if input is not None else os.devnull, os.O_RDONLY),
                    (str(out), write),
                    (str(err), write),
                ],
            }
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
            pid = int(self._reply(None) or 0)
            deadline = None if timeout is None else time.monotonic() + timeout
            code = self._reply(deadline)
            if code is None:
                os.kill(pid, signal.SIGKILL)
                self._reply(None)
                raise subprocess.TimeoutExpired(
                    ["rollwatch", *args], timeout or 0, out.read_bytes(), err.read_bytes()
                )
            return subprocess.CompletedProcess(
                [sys.executable, "-m", "rollwatch", *args],
                int(code),
                out.read_text(errors="replace"),
                err.read_text(errors="replace"),
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.replies.close()


_server: _Server | None = None
_server_pid = -1
_start_lock = threading.Lock()


def run(
    args: list[str], env: dict[str, str], timeout: float | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str] | None:
    """The command's result, run in a forked child; None where it must run afresh (a
    call beside another, an environment the server was not started with)."""
    global _server, _server_pid
    if os.environ.get("ROLLWATCH_TEST_FRESH"):  # every command afresh, as before
        return None
    with _start_lock:
        if _server is None or _server_pid != os.getpid():
            _server = _Server()
            _server_pid = os.getpid()
            atexit.register(_server.close)
        server = _server
    if not server.fits(env) or not server.lock.acquire(blocking=False):
        return None
    try:
        return server.run(args, env, timeout, input)
    finally:
        server.lock.release()
