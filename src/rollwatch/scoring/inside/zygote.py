"""The sandbox's resident interpreter: it forks one child per sample.

This file runs *inside* the sandbox, under the interpreter the daemon itself runs
on, as a plain script (``python -I -B zygote.py CONFIG``): it imports nothing but
the standard library and nothing from rollwatch.

Why a zygote: starting an interpreter costs ~86 ms, a fork of a warm one ~1 ms.
The zygote starts once per worker slot, imports the modules solutions usually
need, freezes its heap (``gc.freeze``), and once and for all clears its
environment, sets ``no_new_privs`` and makes itself non-dumpable. Then it serves
requests from the host, one at a time, each in a fresh child:

* The child drops everything before it runs a byte of candidate code: rlimits
  (address space, CPU, processes, file size, open files, no core dumps), the
  slot's unprivileged uid/gid with no supplementary groups (as root: with it every
  capability), a session of its own. The candidate can neither signal nor trace
  the zygote, nor see the host (own PID, network, mount, IPC and UTS namespaces).
  Little else happens in the child on purpose: every object it touches is a page
  copied after the fork, and that, not the fork, is what a sample costs.
* The deadline is enforced from here, outside the candidate: at the deadline, or
  as soon as the child itself exits, the zygote kills *every* other process of the
  sandbox (``kill(-1, SIGKILL)`` inside the PID namespace reaches all of them,
  whatever session or process group they moved to) and reaps them; it is a child
  subreaper, so orphans come back to it. A program that catches SIGALRM or
  ``BaseException`` cannot outlive its deadline. (Without a PID namespace: a
  ``kill(-1)`` sent as the slot's uid, else a walk of the process tree.)
* Output is read with byte caps; exceeding one kills the sample ("output limit"),
  so 1 GB of prints costs no memory.
* The verdict of a python-function sample is a line tagged with a fresh random
  nonce, written by the harness on a private pipe only *after* ``check()``
  returned. An ``os._exit(0)`` before the tests, an exit status, or anything the
  candidate prints proves nothing. Return values cross into the tests only as
  plain data (a ``marshal`` round trip), so an object whose ``__eq__`` always
  says True never reaches an assertion. The tests run in their own namespace over
  the builtins as they were before the candidate ran, and the modules they import
  must come back unchanged (no rebound ``random.randint``), with no trace function
  left. (The nonce lives in the same address space as the candidate: this stops
  accidental and lazy reward hacks, not a program written to dig through the
  harness's frames for it.)
* Between samples the private ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
  ``/dev/mqueue`` are emptied and SysV IPC objects removed.

Protocol: frames of a 4-byte big-endian length and a UTF-8 JSON object, requests
on fd 0 and responses on fd 1. EOF on fd 0 means the host is gone: kill
everything and exit. With a ``setup`` plan in its config (the ``unshare``
backend) the zygote first builds the sandbox's file system itself, as bubblewrap
would.
"""

# This is the harness itself: it exec()s candidate code on purpose (S102), names the
# sandbox's own /tmp (S108) and opens its private folders to the sample's uid (S103).
# ruff: noqa: S102, S103, S108

from __future__ import annotations

import base64
import builtins
import contextlib
import ctypes
import errno
import fcntl
import json
import linecache
import marshal
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from types import CodeType
from typing import Any

Json = dict[str, Any]

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}

VERDICT_FD = 3
SAFE_BUILTINS: Json = {}
_exit = os._exit
_IMPORTS = re.compile(r"^[ \t]*(?:from|import)[ \t]+([A-Za-z_]\w*)", re.M)
STDERR_KEEP = 8192
STDOUT_HEAD = 4096
VERDICT_KEEP = 65536

# Modules solutions commonly import: imported once here, shared by every child.
PRELOAD = [
    "array",
    "bisect",
    "cmath",
    "collections",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "io",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "traceback",
    "typing",
    "marshal",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


# -- rollwatch:seccomp begin (sandbox kernel surface; see inside/seccomp.py) ----------------
def _load_seccomp() -> Any:
    """inside/seccomp.py, by path: loaded now, while the host's copy is still reachable (unshare)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp.py")
    spec = importlib.util.spec_from_file_location("_rollwatch_seccomp", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_seccomp = _load_seccomp()
SECCOMP: Any = None  # the sample filter, made ready in main() before the first fork
# -- rollwatch:seccomp end -------------------------------------------------------------------


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


# -- framing -------------------------------------------------------------------------------


def read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None on EOF before the first byte."""
    chunks = []
    got = 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            if got == 0:
                return None
            raise EOFError("truncated frame")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_frame(fd: int) -> Json | None:
    head = read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = read_exact(fd, n)
    if body is None:
        raise EOFError("truncated frame")
    obj: Json = json.loads(body)
    return obj


def write_frame(fd: int, obj: Json) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    data = struct.pack(">I", len(body)) + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- building the file system (unshare backend) --------------------------------------------


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            src.encode() if src else None,
            dst.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {dst}",
    )


def _mountpoint(path: str, like: str) -> None:
    if os.path.isdir(like):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            with open(path, "w"):
                pass


def setup_root(plan: list[list[Any]]) -> None:
    """Build a fresh root from ``plan`` (the same list bwrap's arguments come from) and pivot into it.

    We are PID 1 of new mount, PID, network, IPC and UTS namespaces, as root.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    new = "/tmp"  # a tmpfs over the host's /tmp, in our mount namespace only
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    late = []
    for step in plan:
        kind = step[0]
        if kind == "ro-bind":
            src, dst = step[1], new + step[2]
            _mountpoint(dst, src)
            _mount(src, dst, None, MS_BIND | MS_REC)
            _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        elif kind == "dir":
            os.makedirs(new + step[1], mode=0o755, exist_ok=True)
            os.chmod(new + step[1], 0o755)
        elif kind == "symlink":
            os.makedirs(os.path.dirname(new + step[2]), exist_ok=True)
            os.symlink(step[1], new + step[2])
        elif kind == "dev":
            dev = new + step[1]
            os.makedirs(dev, exist_ok=True)
            _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
            for node in ("null", "zero", "full", "random", "urandom", "tty"):
                if os.path.exists("/dev/" + node):
                    _mountpoint(f"{dev}/{node}", "/dev/" + node)
                    _mount("/dev/" + node, f"{dev}/{node}", None, MS_BIND)
            for name, target in (
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
            ):
                os.symlink(target, f"{dev}/{name}")
            os.mkdir(dev + "/shm")
        elif kind == "proc":
            os.makedirs(new + step[1], exist_ok=True)
            _mount("proc", new + step[1], "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "mqueue":
            os.makedirs(new + step[1], exist_ok=True)
            _mount("mqueue", new + step[1], "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "tmpfs":
            late.append(step)
        else:
            raise ValueError(f"unknown file system step {kind!r}")
    for _, path, size in late:
        os.makedirs(new + path, exist_ok=True)
        _mount("tmpfs", new + path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size},nr_inodes=16384")
    old = new + "/.oldroot"
    os.mkdir(old)
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is not None and _libc.syscall(nr, new.encode(), old.encode()) == 0:
        os.chdir("/")
        _check(_libc.umount2(b"/.oldroot", MNT_DETACH), "umount old root")
        os.rmdir("/.oldroot")
    else:  # no pivot_root here: chroot is enough, the candidate never holds CAP_SYS_CHROOT
        os.chdir(new)
        os.chroot(".")
        os.rmdir("/.oldroot")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    try:
        _libc.sethostname(b"sandbox", 7)
        # Loopback up, as bwrap leaves it: programs may talk to themselves, never to the host.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ifr = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, ifr))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))  # SIOCSIFFLAGS |= IFF_UP
        s.close()
    except OSError:
        pass


# -- rollwatch:tmpfs begin (bwrap's tmpfs has no inode cap; see sandbox.py) ---------------------
def bound_tmpfs(cfg: Json) -> None:
    """Cover bwrap's private tmpfs mounts with ones that cap files; then give up the capability it took.

    bwrap can set a tmpfs's size but not its ``nr_inodes``: without one, a sample
    could fill kernel memory with empty files that the size does not count. A
    remount is refused in bwrap's mount namespace without root, so the new mounts
    go on top, in a mount namespace of our own.
    """
    plan = cfg.get("remount_tmpfs") or []
    if not plan:
        return
    _check(_libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for path, size, inodes in plan:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size},nr_inodes={inodes}")
    if cfg.get("drop_caps"):
        # Without root, CAP_SYS_ADMIN (in our user namespace) was lent for the remount
        # only: the samples are forked from us and must not inherit it.
        header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        _check(_libc.capset(header, bytes(24)), "capset")


# -- rollwatch:tmpfs end -------------------------------------------------------------------------


# -- one sample -----------------------------------------------------------------------------


def _limits(lim: Json) -> None:
    mb = 1024 * 1024
    pairs = [
        (resource.RLIMIT_AS, lim["memory_mb"] * mb),
        (resource.RLIMIT_CPU, lim["cpu_s"]),
        (resource.RLIMIT_NPROC, lim["processes"]),
        (resource.RLIMIT_FSIZE, lim["file_size_mb"] * mb),
        (resource.RLIMIT_NOFILE, lim["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ]
    for which, soft in pairs:
        hard = soft + 1 if which == resource.RLIMIT_CPU else soft
        resource.setrlimit(which, (soft, hard))


def _enter_child(cfg: Json, req: Json, stdin_fd: int, out_w: int, err_w: int, ver_w: int) -> None:
    """Everything between fork and the first byte of candidate code.

    Kept to the bone: every object this touches is a page copied after the fork.
    What can be done once (the environment, no_new_privs, the standard streams) was
    done by the zygote before it forked.
    """
    if cfg["kill"] != "namespace":
        # No PID namespace to take the sample down with the zygote: a death signal.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (stdin_fd, out_w, err_w, ver_w)]
    for fd, target in zip(high, (0, 1, 2, VERDICT_FD), strict=True):
        os.dup2(fd, target)
    os.closerange(VERDICT_FD + 1, 1 << 20)
    # Signal dispositions are the zygote's, which are a fresh interpreter's: it sets none.
    os.chdir(cfg["workdir"])
    _limits(req["limits"])
    uid, gid = cfg.get("uid"), cfg.get("gid")
    if uid is not None:
        assert gid is not None
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # every capability is gone with root
    if SECCOMP is not None:  # rollwatch:seccomp: after the uid drop, before any candidate code
        SECCOMP.install()
    # sys.stdin/stdout/stderr are the zygote's objects over fds 0, 1 and 2, never used
    # by it (its protocol runs on duplicates): they now read and write the sample's pipes.
    sys.argv = ["solution.py"]


def _describe(e: BaseException) -> str:
    try:
        msg = str(e)
    except BaseException:  # a candidate-made exception whose __str__ raises
        msg = "<unprintable>"
    name = type(e).__name__
    msg = msg.strip().splitlines()[0][:300] if msg.strip() else ""
    return f"{name}: {msg}" if msg else name


def _kind(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, OSError) and e.errno == errno.EFBIG:
        return "file_size"  # Python ignores SIGXFSZ: past RLIMIT_FSIZE a write raises EFBIG
    if isinstance(e, SystemExit):
        return "exit"
    return "exception"


_LIMIT_REASONS = {"memory": "memory", "file_size": "file size limit"}


def _test_line(e: BaseException, filename: str) -> tuple[int, str] | None:
    """The innermost line of ``filename`` in ``e``'s traceback: where a test failed."""
    import linecache
    import traceback

    found = None
    for fs in traceback.extract_tb(e.__traceback__):
        if fs.filename == filename:
            found = (fs.lineno or 0, (fs.line or linecache.getline(filename, fs.lineno or 0)).strip())
    return found


class Unverifiable(BaseException):
    """A candidate's return value that is not plain data (raised into the tests)."""


def _run_function(req: Json, nonce: str) -> int:
    """HumanEval semantics: the prompt, the candidate, the tests, ``check(entry_point)``.

    Once the candidate has run, the builtins module is whatever it made of it: until
    they are restored, the harness uses no builtin name (only what it captured before,
    dict methods and operators), so a rebound ``isinstance`` or ``len`` cannot steer it.
    """
    write = os.write
    dumps, loads = marshal.dumps, marshal.loads
    gettrace, getprofile = sys.gettrace, sys.getprofile
    sysmods = sys.modules
    safe_builtins = SAFE_BUILTINS  # the zygote's snapshot, taken before any candidate ran
    restore_builtins = vars(builtins).update
    prelude = req.get("prelude") or ""
    # The modules the tests import: the candidate must not rebind any of their names
    # (say random.randint) to bend the tests its way. Only those: copying every module's
    # dict would touch (and copy-on-write) half the zygote's heap. The tests' bare
    # builtins are the snapshot, whatever the candidate does to the module.
    imported = set(_IMPORTS.findall(req["tests"] + "\n" + prelude))
    watched = [
        (name, sysmods[name], dict(vars(sysmods[name])))
        for name in imported
        if name in sysmods and name not in ("sys", "__main__", "builtins")
    ]
    if "builtins" in imported:
        watched.append(("builtins", builtins, safe_builtins))

    def tampered() -> str | None:
        for name, m, before in watched:
            if sysmods.get(name) is not m:
                return "module " + str(name) + " was replaced"
            now = m.__dict__
            for key, value in before.items():
                if now.get(key, now) is not value:
                    return str(name) + "." + str(key) + " was rebound"
        if gettrace() is not None or getprofile() is not None:
            return "a trace or profile function was left installed"
        return None

    def report(obj: Json) -> None:
        restore_builtins(safe_builtins)
        write(VERDICT_FD, (nonce + " " + json.dumps(obj) + "\n").encode())

    sources: dict[str, str] = {}

    def source(name: str, text: str) -> CodeType:
        sources[name] = text
        return compile(text, name, "exec", dont_inherit=True, optimize=0)

    def lines_for_tracebacks() -> None:
        for name, text in sources.items():
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)

    try:
        prelude_code = source("prompt.py", prelude)
        tests_code = source("tests.py", req["tests"])
    except SyntaxError as e:
        report({"ok": False, "kind": "harness", "reason": f"the problem's tests do not compile: {e}"})
        return 2
    try:
        cand_code = source("solution.py", req["code"])
    except (SyntaxError, ValueError) as e:
        lineno = getattr(e, "lineno", None)
        line = f" (line {lineno})" if lineno else ""
        report({"ok": False, "kind": "syntax", "reason": f"syntax error: {getattr(e, 'msg', e)}{line}"})
        return 1

    violations: list[object] = []

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        def candidate(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            try:
                return loads(dumps(result))
            except (ValueError, TypeError, RecursionError):
                violations.append(result.__class__)
                raise Unverifiable("returned a value that is not plain data") from None

        return candidate

    entry = req["entry_point"]
    stage = "candidate"
    try:
        ns: Json = {"__name__": "__candidate__", "__builtins__": builtins}
        exec(prelude_code, ns)
        exec(cand_code, ns)
        fn = ns.get(entry)
        if fn is None or not hasattr(fn, "__call__"):  # noqa: B004 (callable() may be rebound)
            report({"ok": False, "kind": "entry_point", "reason": f"entry point {entry!r} is not defined"})
            return 1
        stage = "tests"
        candidate = guard(fn)
        tns: Json = {"__name__": "__tests__", "__builtins__": safe_builtins}
        exec(prelude_code, tns)
        # HumanEval's tests may call the entry point by its name, not only as `candidate`.
        tns[entry] = candidate
        exec(tests_code, tns)
        tns["check"](candidate)
    except BaseException as e:
        restore_builtins(safe_builtins)
        if violations:
            report(_unverifiable(violations[0]))
            return 1
        lines_for_tracebacks()
        kind = _kind(e)
        where = _test_line(e, "tests.py") if stage == "tests" else None
        reason = _LIMIT_REASONS.get(kind) or f"exception: {_describe(e)}"
        if kind == "exit":
            reason = f"exited before the tests finished (SystemExit {getattr(e, 'code', None)!r})"
        detail = {"ok": False, "kind": kind, "reason": reason, "stage": stage}
        if where:
            detail["test_line"] = where[0]
            detail["test_source"] = where[1][:300]
        with contextlib.suppress(BaseException):  # stderr may be closed by the candidate
            import traceback

            sys.stderr.write("".join(traceback.format_exception(e)[-20:]))
            sys.stderr.flush()
        report(detail)
        return 1
    if violations:
        report(_unverifiable(violations[0]))
        return 1
    what = tampered()
    if what is not None:
        report({"ok": False, "kind": "tampered", "reason": "tampered with the standard library: " + what})
        return 1
    write(VERDICT_FD, (nonce + ' {"ok":true}\n').encode())
    return 0


def _unverifiable(cls: object) -> Json:
    name = getattr(cls, "__qualname__", "?")
    return {"ok": False, "kind": "unverifiable", "reason": f"unverifiable return value: {name}"}


def _run_program(req: Json, nonce: str) -> int:
    """A script run as ``__main__``, stdin to stdout, as ``python3 solution.py`` would."""
    import traceback

    write = os.write

    def report(obj: Json) -> None:
        write(VERDICT_FD, (nonce + " " + json.dumps(obj) + "\n").encode())

    text = req["code"]
    path = os.path.join(os.getcwd(), "solution.py")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass
    try:
        code = compile(text, path, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError) as e:
        traceback.print_exception(e, limit=0)
        lineno = getattr(e, "lineno", None)
        line = f" (line {lineno})" if lineno else ""
        report({"kind": "syntax", "reason": f"syntax error: {getattr(e, 'msg', e)}{line}"})
        return 1
    status = 0
    try:
        exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": builtins})
    except SystemExit as e:
        c = e.code
        if c is None:
            status = 0
        elif isinstance(c, int):
            status = c & 0xFF
        else:
            with contextlib.suppress(BaseException):
                print(c, file=sys.stderr)
            status = 1
    except BaseException as e:
        linecache.cache[path] = (len(text), None, text.splitlines(True), path)
        with contextlib.suppress(BaseException):
            traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None)
        kind = _kind(e)
        report({"kind": kind, "reason": _LIMIT_REASONS.get(kind) or f"exception: {_describe(e)}"})
        status = 1
    try:
        sys.stdout.flush()
    except BaseException:
        status = status or 120
    with contextlib.suppress(BaseException):
        sys.stderr.flush()
    return status


def _child(cfg: Json, req: Json, fds: tuple[int, int, int, int], nonce: str) -> None:
    status = 70
    try:
        _enter_child(cfg, req, *fds)
        status = _run_function(req, nonce) if req["mode"] == "function" else _run_program(req, nonce)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            os.write(2, f"sandbox child: {_describe(e)}\n".encode())
    finally:
        _exit(status)  # captured at import: the candidate may rebind os._exit


class Zygote:
    def __init__(self, cfg: Json, ctl_in: int, ctl_out: int) -> None:
        self.cfg = cfg
        self.ctl_in = ctl_in
        self.ctl_out = ctl_out
        self.kill_mode = cfg["kill"]

    # -- killing and reaping ------------------------------------------------------------

    def _descendants(self) -> list[int]:
        """Live (not zombie) processes below this one, from /proc."""
        me = os.getpid()
        parent: dict[int, int] = {}
        live: set[int] = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        data = f.read()
                    fields = data[data.rindex(b")") + 2 :].split()
                    parent[int(name)] = int(fields[1])
                    if fields[0] not in (b"Z", b"X"):
                        live.add(int(name))
                except (OSError, ValueError):
                    continue
        out = []
        for pid in live:
            p, hops = pid, 0
            while p in parent and hops < 4096:
                p = parent[p]
                hops += 1
                if p == me:
                    out.append(pid)
                    break
        return out

    def kill_all(self) -> None:
        """SIGKILL every process this zygote's samples started, wherever they moved."""
        if self.kill_mode == "namespace":
            # Inside our own PID namespace every process but init and us is the sample's.
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            return
        if self.kill_mode == "uid":
            # No PID namespace, but the samples run as a uid of their own: a process of
            # that uid sending kill(-1) reaches every one of them (and nothing else), in
            # one atomic sweep that a fork bomb cannot outrun.
            uid = self.cfg["uid"]
            pid = os.fork()
            if pid == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            return
        for _ in range(100):
            pids = self._descendants()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def reap_all(self, child: int) -> tuple[int | None, resource.struct_rusage | None]:
        """Wait for every child (orphans come to us: we are a subreaper); the sample's status."""
        status = usage = None
        while True:
            try:
                pid, st, ru = os.wait4(-1, 0)
            except ChildProcessError:
                return status, usage
            except InterruptedError:
                continue
            if pid == child:
                status, usage = st, ru
            elif self.kill_mode == "tree":
                self.kill_all()

    def wipe_ipc(self) -> None:
        """Remove the SysV IPC objects a sample left in the sandbox's IPC namespace."""
        for kind in ("shm", "msg", "sem"):
            try:
                with open(f"/proc/sysvipc/{kind}") as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                ident = int(row.split()[1])
                if kind == "shm":
                    _libc.shmctl(ident, 0, None)  # IPC_RMID
                elif kind == "msg":
                    _libc.msgctl(ident, 0, None)
                else:
                    _libc.semctl(ident, 0, 0)

    def wipe(self) -> None:
        """Empty the private temporary folders (and IPC) for the next sample."""
        if self.kill_mode != "tree" and self.kill_mode != "uid":
            self.wipe_ipc()

        def fix(func, path, _exc):  # type: ignore[no-untyped-def]
            try:
                os.chmod(os.path.dirname(path), 0o700)
                os.chmod(path, 0o700)
                func(path)
            except OSError:
                pass

        for d in self.cfg["wipe"]:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, onerror=fix)
                    else:
                        os.unlink(e.path)
                except OSError:
                    pass

    # -- one request --------------------------------------------------------------------

    def run(self, req: Json) -> Json:
        cfg = self.cfg
        work = cfg["workdir"]
        os.makedirs(work, mode=0o700, exist_ok=True)
        if cfg.get("uid") is not None:
            os.chown(work, cfg["uid"], cfg["gid"])
        stdin_data = req.get("stdin")
        if stdin_data is None:
            stdin_fd = os.open("/dev/null", os.O_RDONLY)
        else:
            stdin_fd = os.memfd_create("stdin", 0)
            data = base64.b64decode(stdin_data)
            view = memoryview(data)
            while view:
                view = view[os.write(stdin_fd, view) :]
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ver_r, ver_w = os.pipe()
        nonce = os.urandom(16).hex()
        limit = int(req["output_limit"])
        keep_stdout = bool(req.get("keep_stdout"))
        timeout = float(req["timeout"])

        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            os.close(err_r)
            os.close(ver_r)
            _child(cfg, req, (stdin_fd, out_w, err_w, ver_w), nonce)
        for fd in (stdin_fd, out_w, err_w, ver_w):
            os.close(fd)
        pidfd = os.pidfd_open(pid)

        stdout = bytearray()
        stdout_total = 0
        stderr = bytearray()
        stderr_total = 0
        verdict = bytearray()
        outcome = None  # "timeout" | "output_limit" | None (exited)
        host_gone = False
        poller = select.poll()
        for fd in (out_r, err_r, ver_r):
            poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        poller.register(self.ctl_in, select.POLLIN)
        open_fds = {out_r, err_r, ver_r}
        deadline = started + timeout

        def take(fd: int) -> bool:
            """Read what ``fd`` has; False at EOF (or, once every writer is dead, when empty)."""
            nonlocal stdout_total, stderr_total
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return False
            if not data:
                return False
            if fd == out_r:
                stdout_total += len(data)
                room = (limit if keep_stdout else STDOUT_HEAD) - len(stdout)
                if room > 0:
                    stdout.extend(data[:room])
            elif fd == err_r:
                stderr_total += len(data)
                stderr.extend(data)
                if len(stderr) > 2 * STDERR_KEEP:
                    del stderr[:-STDERR_KEEP]
            elif len(verdict) < VERDICT_KEEP:
                verdict.extend(data)
            return True

        exited = False
        while not exited and outcome is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = "timeout"
                break
            for fd, ev in poller.poll(max(1, int(remaining * 1000) + 1)):
                if fd == pidfd:
                    exited = True
                elif fd == self.ctl_in:
                    host_gone = True
                    outcome = "host_gone"
                elif (
                    fd in open_fds and ev & (select.POLLIN | select.POLLHUP | select.POLLERR) and not take(fd)
                ):
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if stdout_total > limit or stderr_total > limit:
                outcome = "output_limit"

        # The sample is over: whatever it left behind dies now, then the pipes drain.
        self.kill_all()
        status, usage = self.reap_all(pid)
        os.close(pidfd)
        for fd in (out_r, err_r, ver_r):
            os.set_blocking(fd, False)
            while fd in open_fds:
                try:
                    if not take(fd):
                        open_fds.discard(fd)
                except OSError:
                    open_fds.discard(fd)
            os.close(fd)
        wall = time.monotonic() - started
        self.wipe()
        if host_gone:
            raise SystemExit(0)

        resp: Json = {
            "outcome": outcome or "exited",
            "wall_ms": round(wall * 1000, 3),
            "stdout": base64.b64encode(bytes(stdout)).decode(),
            "stdout_bytes": stdout_total,
            "stderr": bytes(stderr[-STDERR_KEEP:]).decode("utf-8", "replace"),
            "stderr_bytes": stderr_total,
            "verdict": None,
            "verdict_forged": False,
        }
        if status is not None:
            if os.WIFSIGNALED(status):
                resp["signal"] = os.WTERMSIG(status)
            else:
                resp["exit_code"] = os.WEXITSTATUS(status)
        if usage is not None:
            resp["cpu_ms"] = round((usage.ru_utime + usage.ru_stime) * 1000, 3)
            resp["maxrss_kb"] = usage.ru_maxrss
        # The harness writes exactly one tagged line. Anything else on the channel is
        # noted; more than one tagged line means someone else had the nonce: no verdict.
        authentic = []
        for line in bytes(verdict).decode("utf-8", "replace").splitlines():
            tag, _, body = line.partition(" ")
            if tag == nonce:
                authentic.append(body)
            else:
                resp["verdict_forged"] = True
        if len(authentic) == 1:
            try:
                resp["verdict"] = json.loads(authentic[0])
            except ValueError:
                resp["verdict_forged"] = True
        elif authentic:
            resp["verdict_forged"] = True
        return resp

    def serve(self) -> None:
        while True:
            req = read_frame(self.ctl_in)
            if req is None:
                return
            try:
                resp = self.run(req)
            except SystemExit:
                return
            except Exception as e:
                import traceback

                resp = {
                    "outcome": "error",
                    "error": _describe(e),
                    "traceback": traceback.format_exc()[-4000:],
                }
            write_frame(self.ctl_out, resp)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    # The protocol owns fds 0 and 1; anything else that prints goes nowhere.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    if cfg["kill"] != "namespace":
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # no namespace to die with: die with the host
        if os.getppid() == 1:
            raise SystemExit(1)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    # Not ptrace-able, its /proc/PID/mem and fds closed to everyone else: without root
    # the samples share our uid, and must not reach into the zygote.
    prctl(PR_SET_DUMPABLE, 0)
    if cfg.get("setup"):
        setup_root(cfg["setup"])
    bound_tmpfs(cfg)  # rollwatch:tmpfs
    # Once for every sample: an empty environment, and no privilege from any exec.
    os.environ.clear()
    os.environ.update(cfg["env"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if cfg.get("seccomp", True):  # rollwatch:seccomp
        global SECCOMP
        SECCOMP = _seccomp.Installer(_seccomp.build(_seccomp.protected_here()))
    for d in cfg["wipe"]:
        with contextlib.suppress(OSError):
            os.chmod(d, 0o1777)  # bwrap makes its tmpfs 0755: the sample's uid must write there
    import builtins
    import gc

    if cfg.get("preload", True):
        import importlib

        for name in PRELOAD:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    global SAFE_BUILTINS
    SAFE_BUILTINS = dict(vars(builtins))
    if cfg.get("preload", True):
        gc.collect()
        gc.freeze()  # the children's heaps stay shared: no copy-on-write by the collector
    hello = {
        "hello": 1,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "python": sys.version.split()[0],
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
    }
    write_frame(ctl_out, hello)
    z = Zygote(cfg, ctl_in, ctl_out)
    try:
        z.serve()
    finally:
        z.kill_all()
        try:
            while True:
                os.wait()
        except ChildProcessError:
            pass


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
