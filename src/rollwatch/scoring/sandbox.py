"""Sandboxes: one resident zygote per worker slot, in bubblewrap, in unshare, or bare.

Isolation levels, best first (``ScoringSettings.isolation = "auto"`` takes the first
that starts):

``bwrap``
    bubblewrap: new PID, network, IPC, UTS (and cgroup) namespaces; a root file system
    of read-only binds of only what Python needs (``/usr``, ``/lib*``, the
    interpreter's prefix, ``ld.so.cache``), so ``/etc/shadow``, ``/root``, ``/home``,
    the event log and the credentials do not exist in there; fresh ``/proc`` and
    ``/dev``; size- and inode-capped private tmpfs on ``/tmp``, ``/var/tmp`` and
    ``/dev/shm`` (the zygote mounts the capped ones: bwrap cannot set ``nr_inodes``);
    the root itself remounted read-only, so without root too nothing outside those
    takes a write; ``--die-with-parent``. As root, the zygote keeps only the
    capabilities it needs to drop each sample to its slot's uid; without root it
    drops the one it borrowed for the tmpfs mounts before it serves.
``unshare``
    util-linux ``unshare`` makes the same namespaces and the zygote builds the same
    file system itself (bind mounts, pivot_root), as root only. ``setpriv
    --pdeathsig`` and ``--kill-child`` tie it to the daemon.
``none``
    No namespaces: rlimits, the slot's uid (as root) and a process-tree kill. Never
    chosen by "auto": only when written out, with ``require_isolation = false``, and
    then a WARNING at every start.

In every mode each sample runs under the seccomp filter of ``inside/seccomp.py``,
and, where a cgroup v2 can be made, the whole sandbox in a cgroup of its own that
counts memory and processes for the sample as a whole (``cgroup.py``).

Why the slot's own uid (``uid_base`` + slot, the pool's range from ``uids.py``): as
root, RLIMIT_NPROC is not enforced, and a root process could read whatever the
sandbox shows; a uid of its own per slot also keeps one slot's fork bomb from
starving another, and a range per pool keeps one pool's from starving another
pool's. Without root, bubblewrap maps the daemon's uid into a user namespace
instead, and RLIMIT_NPROC counts per namespace.

Everything else (limits, timeouts, killing, the verdict channel) happens in the
zygote: see ``inside/zygote.py``.
"""

# The paths under /tmp here are the sandbox's own private tmpfs, not the host's (S108);
# the slot folders of isolation "none" must be traversable by the slot's uid (S103).
# ruff: noqa: S103, S108

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, ClassVar

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from rollwatch.errors import SandboxError
from rollwatch.log import get_logger
from rollwatch.scoring.base import SampleRequest, SampleResult, Sandbox, ScoringSettings
from rollwatch.scoring.cgroup import SlotCgroup, cgroups
from rollwatch.scoring.inside import seccomp
from rollwatch.scoring.uids import JUDGE_UID_OFFSET

log = get_logger(__name__)

ZYGOTE = Path(__file__).parent / "inside" / "zygote.py"
ONESHOT = Path(__file__).parent / "inside" / "oneshot.py"
SECCOMP = Path(__file__).parent / "inside" / "seccomp.py"
_ZYGOTE_IN_SANDBOX = "/opt/rollwatch/zygote.py"
_SECCOMP_IN_SANDBOX = "/opt/rollwatch/seccomp.py"  # the zygote loads it from its own folder
TMP_INODES = 16384
"""Files (inodes) each private tmpfs holds: a cap on the kernel memory empty files take."""
_BACKSTOP_S = 10.0
_RAW_MAX = 1 << 30
"""Largest raw part (a sample's stdout) a response may announce: more means the zygote is not itself."""
"""Beyond a sample's own timeout, how long the host waits for the zygote's answer."""

# The environment of everything in the sandbox: nothing of the daemon's.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
# What the zygote needs (as root, in bwrap) to set each sample's uid, give it a new
# IPC namespace, kill what it leaves behind and wipe its files; the samples have none.
_ZYGOTE_CAPS = (
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_KILL",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_SYS_ADMIN",
)


def zygote_command(zygote: str, config: dict[str, Any]) -> list[str]:
    """argv (after the sandbox's own) that runs the zygote script ``zygote`` with ``config``.

    The script is compiled by ``compile()`` from a one-line ``-c`` program rather than
    run as ``python zygote.py``: Python keeps a script's syntax tree allocated for as
    long as the script runs, and the zygote runs for ever, so megabytes of it would sit
    in the page tables that every fork copies and every sample's exit tears down.
    """
    return [
        sandbox_python(),
        "-I",
        "-B",
        "-c",
        _ZYGOTE_LAUNCHER,
        zygote,
        json.dumps(config, separators=(",", ":")),
    ]


_ZYGOTE_LAUNCHER = (
    "import sys; sys.modules['__main__'].__file__ = sys.argv[1]; "
    "exec(compile(open(sys.argv[1], 'rb').read(), sys.argv.pop(1), 'exec'))"
)


def privileged() -> bool:
    """Whether we run as root (samples then get a uid of their own)."""
    return os.geteuid() == 0


def sandbox_python() -> str:
    """The interpreter the daemon itself runs on (not the venv's launcher): same version, same stdlib."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def fs_plan(settings: ScoringSettings) -> list[list[Any]]:
    """The sandbox's file system, as steps both bwrap and the zygote's own setup follow."""
    plan: list[list[Any]] = [["ro-bind", "/usr", "/usr"]]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            plan.append(["symlink", os.readlink(top), top])
        elif os.path.isdir(top):
            plan.append(["ro-bind", top, top])
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"):
        if os.path.exists(f):
            plan.append(["ro-bind", f, f])
    bound = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")
    for path in sorted(
        {os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(sandbox_python()))}
    ):
        if not (path + "/").startswith(bound):
            # Its parents must be traversable by the sample's uid (bwrap would make them
            # 0700): the interpreter may live under /root (pyenv).
            parents = Path(path).parents
            for parent in reversed(parents[:-1] if len(parents) > 1 else []):
                plan.append(["dir", str(parent)])
            plan.append(["ro-bind", path, path])
    size = settings.tmp_size_mb * 1024 * 1024
    plan += [
        ["proc", "/proc"],
        ["dev", "/dev"],
        ["mqueue", "/dev/mqueue"],
        ["tmpfs", "/tmp", size],
        ["tmpfs", "/var/tmp", size],
        ["tmpfs", "/dev/shm", size],
    ]
    # Dedupe while keeping order (base_prefix and the executable's prefix are often one).
    seen: set[str] = set()
    out = []
    for step in plan:
        key = json.dumps(step)
        if key not in seen:
            seen.add(key)
            out.append(step)
    return out


def oom_first(argv: list[str]) -> list[str]:
    """``argv`` started as the kernel's first choice when memory runs out (``oom_score_adj``
    1000), for it and everything it starts, which cannot lower it again.

    Without a memory cgroup the processes of one sample together may hold far more than
    ``memory_mb`` (each process has its own limit), enough to exhaust the host's memory:
    the OOM killer then kills the largest process of the host, which was as likely the
    daemon as the sample. Set by a shell that has the daemon's CAP_SYS_RESOURCE (as root),
    the value is also the floor every descendant inherits; without root, a sample may lower
    it back to the daemon's own.
    """
    return ["/bin/sh", "-c", '{ echo 1000 > /proc/self/oom_score_adj; } 2>/dev/null; exec "$@"', "sh", *argv]


def slot_cpu(index: int) -> int | None:
    """The CPU the sandbox of slot ``index`` (its uid where it has one, so that pools on one
    host spread) is pinned to: one of this process's, in turn; None with only one.

    Without it a sample of 40 busy processes, each in a session of its own (the scheduler
    shares the CPU by session), took the CPU from the samples of every other slot, and an
    honest answer there timed out. Pinned, and unable to change it (seccomp), a sample
    competes for its own slot's CPU only.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return allowed[index % len(allowed)] if len(allowed) > 1 else None


def shown_to_samples(path: str | os.PathLike[str], plan: list[list[Any]]) -> str | None:
    """The folder of the sandbox's view (``plan``, see ``fs_plan``) through which every
    sample can read ``path``, if there is one."""
    real = os.path.realpath(path)
    for step in plan:
        if step[0] == "ro-bind":
            src = os.path.realpath(step[1])
            if real == src or real.startswith(src.rstrip("/") + "/"):
                return str(step[1])
    return None


class ZygoteSandbox(Sandbox):
    """A zygote serving one slot; subclasses say how it is isolated."""

    isolation: ClassVar[str] = ""

    def __init__(self, settings: ScoringSettings, slot: int) -> None:
        self.settings = settings
        self.slot = slot
        self.uid = settings.uid_base + slot if privileged() else None
        self.judge_uid = self.uid + JUDGE_UID_OFFSET if self.uid is not None else None
        self.hello: dict[str, Any] = {}
        self.restarts = 0
        self._proc: Process | None = None
        self._rx: BufferedByteReceiveStream | None = None
        self._errors: IO[bytes] | None = None
        self._lock = anyio.Lock()
        self._host_dir: str | None = None
        self._cgroup: SlotCgroup | None = None

    # -- what subclasses define -----------------------------------------------------------

    def launcher(self, zygote: str, config: dict[str, Any]) -> list[str]:
        """argv that starts ``zygote`` with ``config`` inside this kind of sandbox."""
        raise NotImplementedError

    def zygote_config(self, *, oneshot: bool = False) -> dict[str, Any]:
        """What the zygote is told at start (see ``inside/zygote.py``)."""
        return {
            "uid": self.uid,
            "gid": self.uid,
            "judge_uid": self.judge_uid,
            "kill": "namespace",
            "workdir": "/tmp/work",
            # Between samples: files, and POSIX message queues (SysV IPC: see inside/zygote.py).
            "wipe": ["/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue"],
            "env": SANDBOX_ENV,
            "preload": not oneshot,
            "setup": None,
            "seccomp": seccomp.supported(),
            "cpu": slot_cpu(self.uid if self.uid is not None else self.slot),
        }

    # -- the Sandbox interface ------------------------------------------------------------

    def argv(self, *, oneshot: bool = False) -> list[str]:
        return oom_first(self.launcher(str(ZYGOTE), self.zygote_config(oneshot=oneshot)))

    def oneshot_argv(self) -> list[str]:
        argv = self.argv(oneshot=True)
        # A command checker's runs of the candidate count with the slot's sample.
        return self._cgroup.argv(argv) if self._cgroup is not None else argv

    @property
    def pid(self) -> int | None:
        """The host pid of the sandbox's outermost process, while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self._proc is not None:
            return
        argv = self.argv()
        if self.settings.cgroups:
            # A cgroup of its own, joined before bwrap or unshare starts: the whole sandbox
            # counts. The same one across restarts: a command checker's helper names it.
            s, name = self.settings, self._cgroup.path.name if self._cgroup is not None else None
            self._cgroup = await anyio.to_thread.run_sync(
                lambda: cgroups().new_slot(s.memory_mb, s.processes, name)
            )
            if self._cgroup is not None:
                argv = self._cgroup.argv(argv)
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _kill)
        try:
            self._proc = await anyio.open_process(
                argv,
                stdin=-1,
                stdout=-1,
                stderr=self._errors,
                env=dict(SANDBOX_ENV),
                start_new_session=True,
            )
        except OSError as e:
            raise SandboxError(f"{self.isolation} sandbox: cannot start {argv[0]}: {e}") from None
        assert self._proc.stdout is not None
        self._rx = BufferedByteReceiveStream(self._proc.stdout)
        try:
            with anyio.fail_after(self.settings.start_timeout):
                self.hello = await self._recv()
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError) as e:
            why = self._stderr_tail() or type(e).__name__
            await self._kill()
            raise SandboxError(f"the {self.isolation} sandbox did not start: {why}") from None
        except BaseException:
            await self._kill()
            raise
        log.debug(
            "sandbox_started", isolation=self.isolation, slot=self.slot, pid=self._proc.pid, uid=self.uid
        )

    async def run(self, request: SampleRequest) -> SampleResult:
        async with self._lock:
            wire = request.to_wire()
            for attempt in (1, 2):
                await self.start()
                assert self._proc is not None
                assert self._proc.stdin is not None
                starved_before = self._starved_us()
                try:
                    with anyio.fail_after(request.timeout + _BACKSTOP_S):
                        await self._proc.stdin.send(wire)
                        resp = await self._recv()
                        sizes = resp.get("raw") or [0, 0, 0]
                        if type(sizes) is not list or len(sizes) != 3:
                            raise ValueError("a response without its three raw parts")
                        raw = [await self._recv_raw(n) for n in sizes]
                except (
                    anyio.EndOfStream,
                    anyio.IncompleteRead,
                    anyio.BrokenResourceError,
                    OSError,
                    ValueError,  # a frame that does not parse: the zygote is not itself any more
                    RecursionError,
                ):
                    why = self._stderr_tail()
                    await self._kill()
                    self.restarts += 1
                    log.warning(
                        "sandbox_lost", isolation=self.isolation, slot=self.slot, attempt=attempt, stderr=why
                    )
                    if attempt == 2:
                        return SampleResult(outcome="lost", stderr=why)
                    continue
                except TimeoutError:
                    # The zygote itself did not answer in time: it is stuck, so it goes.
                    starved = self._starved_ms(starved_before)
                    await self._kill()
                    self.restarts += 1
                    log.warning("sandbox_unresponsive", isolation=self.isolation, slot=self.slot)
                    return SampleResult(
                        outcome="timeout",
                        wall_ms=(request.timeout + _BACKSTOP_S) * 1000,
                        cpu_starved_ms=starved,
                    )
                except BaseException:
                    # Cancelled mid-sample: the zygote's state is unknown; start afresh next time.
                    await self._kill()
                    raise
                # --- issue 20: every answer ends with a verdict ---
                if resp.get("outcome") == "error" or resp.get("restart"):
                    # The zygote failed on this sample, or could not clean up after it: the
                    # sample fails with the reason and the slot starts afresh next time.
                    await self._kill()
                    self.restarts += 1
                    log.warning(
                        "sandbox_restarted",
                        isolation=self.isolation,
                        slot=self.slot,
                        error=str(resp.get("error") or resp.get("restart"))[:300],
                        traceback=str(resp.get("traceback") or "")[-2000:],
                    )
                result = SampleResult.from_wire(resp, *raw)
                starved = self._starved_ms(starved_before)
                return replace(result, cpu_starved_ms=starved) if starved is not None else result
                # --- end issue 20 ---
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            proc = self._proc
            if proc is not None and proc.stdin is not None:
                # EOF on its control pipe: the zygote kills what is left and exits.
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await proc.stdin.aclose()
                with anyio.move_on_after(5):
                    await proc.wait()
            await self._kill()
            if self._cgroup is not None:
                await anyio.to_thread.run_sync(self._cgroup.remove)
                self._cgroup = None
            if self._host_dir is not None:
                shutil.rmtree(self._host_dir, ignore_errors=True)
                self._host_dir = None

    # -- plumbing -------------------------------------------------------------------------

    async def _recv(self) -> dict[str, Any]:
        assert self._rx is not None
        (n,) = struct.unpack(">I", await self._rx.receive_exactly(4))
        result: dict[str, Any] = json.loads(await self._rx.receive_exactly(n))
        return result

    async def _recv_raw(self, n: object) -> bytes:
        """``n`` raw bytes after a response frame (stdout, stderr, the verdict channel)."""
        assert self._rx is not None
        if type(n) is not int or not 0 <= n <= _RAW_MAX:
            raise ValueError(f"the zygote announced {n!r} raw bytes")
        return await self._rx.receive_exactly(n) if n else b""

    def _starved_us(self) -> int | None:
        """The slot cgroup's CPU starvation so far (``SlotCgroup.cpu_starved_us``), if known."""
        return self._cgroup.cpu_starved_us() if self._cgroup is not None else None

    def _starved_ms(self, before: int | None) -> float | None:
        """How long since ``before`` the sandbox's ready work waited while its CPU ran
        processes outside it: a sample's timeout is then the host's doing, not the model's."""
        after = self._starved_us()
        if before is None or after is None:
            return None
        return round(max(0, after - before) / 1000, 3)

    def _stderr_tail(self) -> str:
        if self._errors is None:
            return ""
        try:
            self._errors.seek(0, os.SEEK_END)
            size = self._errors.tell()
            self._errors.seek(max(0, size - 4000))
            return self._errors.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    async def _kill(self) -> None:
        proc, self._proc, self._rx = self._proc, None, None
        with anyio.CancelScope(shield=True):
            if proc is not None:
                if proc.returncode is None:
                    # The whole session: bwrap, unshare or the bare zygote, and
                    # (isolation "none") the samples that did not leave it.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                with anyio.move_on_after(5):
                    await proc.wait()
                await proc.aclose()
            if self._cgroup is not None:
                # Whatever the sandbox left, wherever it moved, dies with the cgroup's members.
                await anyio.to_thread.run_sync(self._cgroup.empty)
            if self._errors is not None:
                self._errors.close()
                self._errors = None


def _reset_traces(cfg: dict[str, Any], settings: ScoringSettings) -> dict[str, Any]:
    """As root, in namespaces: each sample gets the same PIDs, fresh tmpfs mounts and a /proc
    of its own processes, so that nothing a sample counts up (forks, files, the zygote's
    work) is there for the next one to read (see ``inside/zygote.py``, rollwatch:traces)."""
    if privileged():
        cfg["reset_traces"] = True
        cfg["fresh_tmpfs"] = [[s[1], s[2], TMP_INODES] for s in fs_plan(settings) if s[0] == "tmpfs"]
    return cfg


class BwrapSandbox(ZygoteSandbox):
    """The zygote in bubblewrap."""

    isolation: ClassVar[str] = "bwrap"

    @staticmethod
    def available() -> bool:
        return shutil.which("bwrap") is not None

    def zygote_config(self, *, oneshot: bool = False) -> dict[str, Any]:
        cfg = super().zygote_config(oneshot=oneshot)
        cfg["remount_tmpfs"] = [[s[1], s[2], TMP_INODES] for s in fs_plan(self.settings) if s[0] == "tmpfs"]
        cfg["drop_caps"] = not privileged()
        return _reset_traces(cfg, self.settings)

    def launcher(self, zygote: str, config: dict[str, Any]) -> list[str]:
        bwrap = shutil.which("bwrap") or "bwrap"
        args = [
            bwrap,
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            # The zygote itself is PID 1 (it reaps everything already): no bwrap init in
            # there, which without root shares the samples' uid and is dumpable, so a
            # sample could write into its memory through /proc/1/mem and, from it, stop
            # the zygote. Signals from inside the namespace do not reach its PID 1 either.
            "--as-pid-1",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "sandbox",
        ]
        if privileged():
            args += ["--cap-drop", "ALL"]
            for cap in _ZYGOTE_CAPS:
                args += ["--cap-add", cap]
        else:
            # CAP_SYS_ADMIN in the sandbox's user namespace, to remount the tmpfs mounts
            # with an inode cap; the zygote drops it before it serves (bound_tmpfs).
            args += ["--unshare-user", "--cap-add", "CAP_SYS_ADMIN"]
        for step in fs_plan(self.settings):
            kind = step[0]
            if kind == "ro-bind":
                args += ["--ro-bind", step[1], step[2]]
            elif kind == "symlink":
                args += ["--symlink", step[1], step[2]]
            elif kind == "proc":
                args += ["--proc", step[1]]
            elif kind == "dev":
                args += ["--dev", step[1]]
            elif kind == "mqueue":
                args += ["--mqueue", step[1]]
            elif kind == "tmpfs":
                args += ["--size", str(step[2]), "--tmpfs", step[1]]
            elif kind == "dir":
                args += ["--perms", "0755", "--dir", step[1]]
        args += [
            "--ro-bind",
            str(SECCOMP),
            _SECCOMP_IN_SANDBOX,
            "--ro-bind",
            zygote,
            _ZYGOTE_IN_SANDBOX,
            # Last, once every mount point exists: the root itself (a tmpfs bwrap made,
            # writable by the daemon's uid without root) read-only. Only the private
            # tmpfs mounts take writes, and the zygote wipes them after each sample.
            "--remount-ro",
            "/",
            "--chdir",
            "/tmp",
            "--",
            *zygote_command(_ZYGOTE_IN_SANDBOX, config),
        ]
        return args


class UnshareSandbox(ZygoteSandbox):
    """The zygote as PID 1 of namespaces made by ``unshare``; it builds its own root."""

    isolation: ClassVar[str] = "unshare"

    @staticmethod
    def available() -> bool:
        return privileged() and shutil.which("unshare") is not None

    def launcher(self, zygote: str, config: dict[str, Any]) -> list[str]:
        args: list[str] = []
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # unshare has no --die-with-parent: make it die with the daemon.
            args += [setpriv, "--pdeathsig", "KILL", "--"]
        args += [
            shutil.which("unshare") or "unshare",
            "--mount",
            "--net",
            "--pid",
            "--ipc",
            "--uts",
            "--cgroup",  # its cgroup (the slot's, when there is one) becomes the samples' /
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "--",
            *zygote_command(zygote, config),
        ]
        return args

    def zygote_config(self, *, oneshot: bool = False) -> dict[str, Any]:
        cfg = super().zygote_config(oneshot=oneshot)
        cfg["setup"] = fs_plan(self.settings)
        return _reset_traces(cfg, self.settings)


class UnisolatedSandbox(ZygoteSandbox):
    """The zygote without namespaces: limits, the slot's uid (as root), a tree kill."""

    isolation: ClassVar[str] = "none"
    _warned = False

    @staticmethod
    def available() -> bool:
        return True

    def launcher(self, zygote: str, config: dict[str, Any]) -> list[str]:
        return zygote_command(zygote, config)

    def zygote_config(self, *, oneshot: bool = False) -> dict[str, Any]:
        cfg = super().zygote_config(oneshot=oneshot)
        if self._host_dir is None:
            self._host_dir = tempfile.mkdtemp(prefix=f"rollwatch-slot{self.slot}-")
            os.chmod(self._host_dir, 0o711)
        base = tempfile.mkdtemp(dir=self._host_dir) if oneshot else self._host_dir
        os.chmod(base, 0o711)
        cfg.update(
            kill="tree" if self.uid is None else "uid",
            workdir=base + "/work",
            wipe=[base],
            # Without a mount namespace the stdlib may be unreadable to the slot's uid
            # (pyenv under /root): what is imported before the uid drop still works.
            preload=True,
        )
        return cfg

    async def start(self) -> None:
        if self._proc is None and self.slot == 0 and not self._warned:
            # At every start, in the operator's face: this was asked for, and it is not safe.
            self._warned = True
            log.warning(
                "scoring_unisolated",
                isolation=self.isolation,
                hint='samples share the host\'s file system and network (scoring.isolation = "none")',
            )
        if self._proc is None and self.uid is not None and self.slot == 0:
            hidden = await anyio.to_thread.run_sync(_unreadable_parent, sys.base_prefix)
            if hidden:
                log.warning(
                    "sandbox_stdlib_unreadable",
                    isolation=self.isolation,
                    path=hidden,
                    hint="samples can import only the preloaded modules; use bwrap, or a Python under /usr",
                )
        await super().start()


def _unreadable_parent(path: str) -> str | None:
    """The first folder of ``path`` that others cannot traverse, if any."""
    p = Path(os.path.realpath(path))
    for d in [*reversed(p.parents), p]:
        try:
            if not os.stat(d).st_mode & 0o001:
                return str(d)
        except OSError:
            return str(d)
    return None


SANDBOXES: dict[str, type[ZygoteSandbox]] = {
    "bwrap": BwrapSandbox,
    "unshare": UnshareSandbox,
    "none": UnisolatedSandbox,
}


def isolation_candidates(settings: ScoringSettings) -> list[str]:
    """The isolation levels to try, best first: "auto" never ends in "none" (it must be written out)."""
    if settings.isolation != "auto":
        return [settings.isolation]
    return [name for name in ("bwrap", "unshare") if SANDBOXES[name].available()]  # type: ignore[attr-defined]


def missing_isolation() -> str:
    """Why no namespace sandbox is available here, naming the missing tools."""
    why = []
    if shutil.which("bwrap") is None:
        why.append("bwrap (bubblewrap) is not on PATH")
    if shutil.which("unshare") is None:
        why.append("unshare (util-linux) is not on PATH")
    elif not privileged():
        why.append("unshare needs root")
    return "; ".join(why) or "no namespace sandbox is available here"
