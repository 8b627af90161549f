"""Sandboxed execution: a pool of zygotes, one per worker slot, each in its own sandbox.

Isolation levels, best first:

* ``bwrap``: bubblewrap with every namespace unshared (no network at all, not even the
  host's loopback), a read-only ``/usr``, a private ``/tmp`` and ``/dev``, no ``/etc``
  (so no ``/etc/shadow``), an empty environment, ``--die-with-parent``, and the
  zygote as PID 1 of its PID namespace.
* ``none``: no namespaces; rlimits and a process group per job only. Refused when
  ``scoring.require_isolation`` is set.

Either way each slot's zygote runs as a uid of its own (60000 + slot) when we are root:
as root RLIMIT_NPROC is not enforced and files readable by root would be readable.
Limits (CPU, address space, file size, open files, processes) and the wall-clock
timeout apply to every job's child; the timeout is enforced from outside the job
(by the zygote, and around the zygote by us), never by the job's own signals.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from rollwatch.errors import IsolationUnavailable, SandboxError
from rollwatch.log import get_logger

log = get_logger(__name__)

ZYGOTE_SOURCE = (Path(__file__).with_name("zygote.py")).read_text()
_BASE_UID = 60000


@dataclass(frozen=True)
class Limits:
    """Per-job limits."""

    timeout: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1024 * 1024 * 1024
    out_cap: int = 1 << 20
    nproc: int = 32


def _sandbox_python() -> str:
    """An interpreter readable by an unprivileged uid (pyenv under /root is not)."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(cand, os.X_OK):
            return cand
    return sys.executable


def detect_isolation() -> str:
    """The best isolation this machine offers: bwrap or none."""
    if shutil.which("bwrap") is None:
        return "none"
    return "bwrap"


class Zygote:
    """One sandboxed interpreter serving jobs one at a time."""

    def __init__(self, slot: int, isolation: str) -> None:
        self.slot = slot
        self.isolation = isolation
        self.proc: Process | None = None
        self.lock = anyio.Lock()
        self.uid = _BASE_UID + slot if os.geteuid() == 0 else None
        self.python = _sandbox_python()

    def _argv(self) -> list[str]:
        py = [self.python, "-I", "-S", "-c", ZYGOTE_SOURCE]
        if self.isolation == "none":
            return py
        args = [
            "bwrap", "--unshare-all", "--die-with-parent", "--as-pid-1", "--new-session",
            "--ro-bind", "/usr", "/usr",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--clearenv", "--setenv", "RW_WORK", "/tmp/job", "--setenv", "PATH", "/usr/bin:/bin",
            "--chdir", "/tmp", "--hostname", "sandbox",
        ]
        for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")):
            if os.path.islink(link):
                args += ["--symlink", target, link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        return [*args, *py]

    async def start(self) -> None:
        env = {"RW_WORK": f"/tmp/rw-job-{self.slot}", "PATH": "/usr/bin:/bin"}
        if self.uid is not None and self.isolation == "none":
            env["RW_OWN_UID"] = "1"
        kw: dict[str, Any] = {}
        if self.uid is not None:
            kw.update(user=self.uid, group=self.uid, extra_groups=[])
        self.proc = await anyio.open_process(self._argv(), env=env, cwd="/tmp", start_new_session=True, **kw)
        hello = await self._recv(10.0)
        if not hello.get("ready"):
            raise SandboxError(f"the sandbox did not start: {hello}")

    async def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        data = json.dumps(obj).encode()
        await self.proc.stdin.send(struct.pack(">I", len(data)) + data)

    async def _recv(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        with anyio.fail_after(timeout):
            need = 4
            while len(buf) < need:
                try:
                    buf += await self.proc.stdout.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    err = b""
                    if self.proc.stderr is not None:
                        with anyio.move_on_after(0.5):
                            try:
                                err = await self.proc.stderr.receive(4096)
                            except (anyio.EndOfStream, anyio.BrokenResourceError):
                                pass
                    raise SandboxError(f"the sandbox exited: {err.decode(errors='replace')[-500:]}") from None
                if need == 4 and len(buf) >= 4:
                    need = 4 + struct.unpack(">I", buf[:4])[0]
        return json.loads(buf[4:need])  # type: ignore[no-any-return]

    async def run(self, program: str, stdin: str, limits: Limits) -> dict[str, Any]:
        """Run ``program`` as ``__main__`` with ``stdin``; the zygote's reply."""
        nonce = secrets.token_hex(16)
        job = {
            "program": program, "stdin": stdin, "timeout": limits.timeout, "cpu": limits.cpu_s,
            "mem": limits.memory_bytes, "out_cap": limits.out_cap, "nproc": limits.nproc, "nonce": nonce,
        }
        async with self.lock:
            for attempt in (1, 2):
                try:
                    if self.proc is None or self.proc.returncode is not None:
                        await self.start()
                    await self._send(job)
                    # The zygote enforces the timeout; this outer bound catches a stuck zygote.
                    return await self._recv(limits.timeout + 10.0)
                except (SandboxError, TimeoutError, anyio.BrokenResourceError, OSError) as e:
                    await self.stop()
                    if attempt == 2:
                        raise SandboxError(f"sandbox slot {self.slot} failed twice: {e}") from e
                    log.warning("sandbox_restart", slot=self.slot, error=str(e))
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            with anyio.move_on_after(5):
                await proc.wait()
            await proc.aclose()


class SandboxPool:
    """``workers`` zygotes; a job takes a free one."""

    def __init__(self, workers: int, *, require_isolation: bool = False, isolation: str | None = None) -> None:
        self.isolation = isolation or detect_isolation()
        if require_isolation and self.isolation == "none":
            raise IsolationUnavailable(
                "scoring.require_isolation is set but bubblewrap is not installed "
                "(apt-get install -y bubblewrap); refusing to score"
            )
        self.workers = workers
        self._zygotes = [Zygote(i, self.isolation) for i in range(workers)]
        self._free: list[Zygote] = list(self._zygotes)
        self._sem = anyio.Semaphore(workers)

    async def __aenter__(self) -> SandboxPool:
        if self.isolation == "bwrap":
            # Fail early and clearly when bwrap cannot build its sandbox here (no user
            # namespaces, a seccomp policy...): fall back, or refuse when required.
            try:
                await self._zygotes[0].start()
            except (SandboxError, OSError) as e:
                log.warning("sandbox_bwrap_unusable", error=str(e))
                raise IsolationUnavailable(f"bubblewrap cannot create a sandbox here: {e}") from e
        return self

    async def __aexit__(self, *exc: object) -> None:
        for z in self._zygotes:
            await z.stop()

    async def run(self, program: str, stdin: str, limits: Limits) -> dict[str, Any]:
        async with self._sem:
            z = self._free.pop()
            try:
                return await z.run(program, stdin, limits)
            finally:
                self._free.append(z)
