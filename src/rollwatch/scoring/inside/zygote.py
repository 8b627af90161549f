"""The sandbox's resident interpreter: it forks one child per sample.

This file runs *inside* the sandbox, under the interpreter the daemon itself runs
on, as a script (``python -I -B -c LAUNCHER zygote.py CONFIG``: the launcher
compiles it with ``compile()``, see ``sandbox.zygote_command``): it imports nothing
but the standard library and nothing from rollwatch.

Why a zygote: starting an interpreter costs ~86 ms, a fork of a warm one ~1 ms.
The zygote starts once per worker slot, imports the modules solutions usually
need, freezes its heap (``gc.freeze``) and gives the C heap's free pages back (a
fork copies the page tables of every mapped page), and once and for all clears its
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
* A python-function sample runs in two processes: the *candidate* (the prompt and
  the model's code, as the slot's uid) and the *judge* (the prompt and the problem's
  tests, as a second uid, non-dumpable). The tests call the candidate through a
  proxy that carries plain data only over a pair of pipes (arguments in; the return
  value, or the exception's type name and message, out; tagged JSON, checked types,
  bounded depth and size), so no object, module, builtin or trace function of the
  candidate's exists where the tests run, and the judge's frames, memory and fds are
  out of its reach. The verdict is a line tagged with a fresh random nonce that only
  the judge knows, written on a pipe only the judge holds, after ``check()`` returned.
  The sample's end is the judge's reply. The judge is *resident*: forked once per
  slot, it serves sample after sample (its pipes handed over as fds for each), so a
  sample still costs one fork; any sample that leaves a process behind, times out or
  upsets the judge takes the judge down with the sweep, and the next sample forks a
  fresh one (as does every 500th).
* A program sample (stdio, command) is one process; its output is read here and
  judged outside the sandbox. The harness in that process may only report why it
  failed (a syntax error, an exception): nothing it writes can make it pass.
* Between samples the private ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
  ``/dev/mqueue`` are emptied (as root, the tmpfs mounts are replaced by fresh ones) and
  SysV IPC objects removed; as root, each sample's PIDs are the same and /proc shows it
  its own processes only, and a Unix socket left in flight restarts the sandbox, so
  nothing a sample counted up or left is there for the next (rollwatch:traces).

Protocol: frames of a 4-byte big-endian length and a compact JSON object, requests
on fd 0 and responses on fd 1; each request's frame is followed by its code's and its
tests' UTF-8 bytes (``code_bytes``, ``tests_bytes``), which never go into a str or bytes
object here (``read_request``); each response's frame by the sample's stdout, the tail
of its stderr and what its verdict channel carried, raw (``raw``: their sizes), which the
host parses. Every later sample is a fork of this process, freed memory included: what
one sample sent or wrote (its code, its output, a verdict naming a test line) lives here
only in buffers wiped after it. EOF on fd 0 means the host is gone: kill everything
and exit. With a ``setup`` plan in its config (the ``unshare`` backend) the zygote
first builds the sandbox's file system itself, as bubblewrap would.
"""

# This is the harness itself: it exec()s candidate code on purpose (S102), names the
# sandbox's own /tmp (S108) and opens its private folders to the sample's uid (S103).
# ruff: noqa: S102, S103, S108

from __future__ import annotations

import binascii
import builtins
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import json.encoder
import json.scanner
import linecache
import os
import re
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from itertools import repeat
from operator import is_
from types import CodeType
from typing import Any

Json = dict[str, Any]

# The harness's own built-ins. The candidate's code runs in this very process and may
# rebind builtins.len or builtins.isinstance for itself. A function looks built-ins up
# in the dict its module's ``__builtins__`` named when the function was made (see
# ``function.__builtins__``), so every function below, made after this line, uses this
# copy: the channel code that runs between the candidate's calls never sees such a
# rebinding, and the builtins need no swapping around each call. The library code it
# calls on the way is C only (json's scanner and encoder, binascii, struct, os) for
# the same reason: Python code of another module would look up the live built-ins.
HARNESS_BUILTINS: dict[str, Any] = dict(vars(builtins))
globals()["__builtins__"] = HARNESS_BUILTINS

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
PROTECTED: list[int] = []  # what no sample may signal (seccomp.protected_here), set in main()


def protect_judge(pid: int) -> None:
    """The filter of the samples forked from now on also protects the resident judge ``pid``.

    Without root the candidate shares the judge's uid: killing it made the sample's end
    "sandbox error: the judge ended without a verdict" (ours), not the model's failure.
    """
    global SECCOMP
    if SECCOMP is not None:
        SECCOMP = _seccomp.Installer(_seccomp.build([*PROTECTED, pid, -pid]))


# -- rollwatch:seccomp end -------------------------------------------------------------------


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


# -- framing -------------------------------------------------------------------------------


def _not_json(o: object) -> Any:
    raise TypeError(f"{type(o).__name__} is not JSON")


def _json_encoder() -> Callable[[Any], str]:
    """Compact ASCII JSON (as ``json.dumps`` with separators ``,`` and ``:``), in C only.

    ``json.dumps`` itself runs Python code of the json module (over the live built-ins)
    and makes a new C encoder for every call; this one is made once. No circular-reference
    check: what it encodes is the zygote's own data, or what ``to_plain`` built (fresh,
    and bounded in depth).
    """
    make = getattr(json.encoder, "c_make_encoder", None)  # not in the typeshed stubs
    if make is None:  # an interpreter without json's C accelerator
        return json.JSONEncoder(separators=(",", ":")).encode
    encode = make(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    join = "".join
    return lambda obj: join(encode(obj, 0))


def _json_decoder() -> Callable[[str], Any]:
    """``json.loads`` of a str, in C only; stricter in one way: no whitespace around the value."""
    make = getattr(json.scanner, "c_make_scanner", None)
    if make is None:
        return json.loads
    scan = make(json.JSONDecoder())

    def decode(text: str) -> Any:
        try:
            obj, end = scan(text, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("extra data after the JSON value")
        return obj

    return decode


json_encode = _json_encoder()
json_decode = _json_decoder()
_frame_head = struct.Struct(">I")


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


def read_into(fd: int, n: int) -> bytearray:
    """``n`` bytes from ``fd`` straight into a fresh buffer (no bytes object holds them)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            raise EOFError("truncated tests")
        got += k
    view.release()
    return buf


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros, in place."""
    buf[:] = bytes(len(buf))


def read_frame(fd: int) -> Json | None:
    head = read_exact(fd, 4)
    if head is None:
        return None
    (n,) = _frame_head.unpack(head)
    body = read_exact(fd, n)
    if body is None:
        raise EOFError("truncated frame")
    obj: Json = json_decode(body.decode())
    return obj


def read_request(fd: int) -> Json | None:
    """One request from the host: a frame, then ``code_bytes`` bytes of the sample's code,
    then (function mode) ``tests_bytes`` bytes of tests.

    The tests never pass through a str, a bytes object or JSON in this process: they go
    into a buffer of their own (``req["tests"]``, a bytearray), from there into the
    judge's job, and are wiped before the candidate is forked. The candidate's process
    is a fork of this one: any copy of the tests here (live or freed) it could find and
    read, and answer every assertion from the expected values. The code goes the same
    way (``req["code"]``, wiped after the sample): a later sample, forked from here, must
    not find an earlier one's code, nor the reference solution a calibration ran.
    """
    req = read_frame(fd)
    if req is None:
        return None
    for key in ("code", "tests"):
        n = req.get(key + "_bytes")
        if type(n) is int and n >= 0:
            req[key] = read_into(fd, n)
    return req


def source_text(code: bytearray) -> str:
    """A sample's code as text: done in the sample's own process, never in the zygote."""
    return bytes(code).decode("utf-8", "surrogatepass")


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` on ``fd`` (a pipe: usually one write)."""
    n = os.write(fd, data)
    if n < len(data):
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view) :]


def write_frame(fd: int, obj: Json) -> None:
    body = json_encode(obj).encode()
    write_all(fd, _frame_head.pack(len(body)) + body)


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
        # Loopback up, as bwrap leaves it (never the host's; samples may not open IPv4 or
        # IPv6 sockets at all: see inside/seccomp.py).
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


# -- rollwatch:traces begin (nothing a sample counts up is seen by the next) ---------------------
#
# As root in its namespaces the zygote leaves a sample nothing of the samples before it
# to read, not even counts: the PID namespace hands out PIDs in turn and each tmpfs
# numbers its inodes in turn, so a sample that forked or made files N times told the next
# sample N (its own PID, ``os.stat("/tmp/work").st_ino``), and the zygote's and resident
# judge's /proc counters (page faults, context switches, CPU time) grew with what a sample
# made them do. With HumanEval-style tests, which stop calling the candidate at its first
# wrong answer, such a count carried what one wrong answer learnt to the next: a chain of
# them learnt the expected values one rollout at a time and passed
# (tests/scoring/test_hostile_cross.py). Now each sample gets the same PIDs, fresh tmpfs
# mounts, and a /proc that shows it its own processes only.

CANDIDATE_PID = 200
"""The PID every sample's first process gets (the next ones follow it)."""
JUDGE_PID = 100
"""The PID every resident judge gets."""


def pid_setter(cfg: Json) -> int | None:
    """A descriptor on the PID namespace's ``ns_last_pid`` to write before each fork, or None.

    As root only (it takes CAP_SYS_ADMIN over the namespace). bwrap shows /proc/sys
    read-only: the file is then opened through a proc of our own, mounted for that moment.
    """
    if not cfg.get("reset_traces"):
        return None
    try:
        fd = os.open("/proc/sys/kernel/ns_last_pid", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        path = "/tmp/.rollwatch-proc"
        try:
            os.mkdir(path, 0o700)
            try:
                _mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                try:
                    fd = os.open(path + "/sys/kernel/ns_last_pid", os.O_WRONLY | os.O_CLOEXEC)
                finally:
                    _libc.umount2(path.encode(), MNT_DETACH)
            finally:
                os.rmdir(path)
        except OSError as e:
            _lacking("ns_last_pid", e)
            return None
    try:
        os.pwrite(fd, b"%d" % (JUDGE_PID - 1), 0)  # the kernel checks the capability here
    except OSError as e:
        os.close(fd)
        _lacking("ns_last_pid", e)
        return None
    return fd


def _lacking(what: str, e: OSError) -> None:
    """Say on the zygote's stderr (the daemon's log when the sandbox fails) that ``what``
    could not be set: samples may then read what the ones before them counted up."""
    with contextlib.suppress(OSError):
        os.write(
            2,
            f"sandbox: cannot set {what} ({e.strerror}): later samples may see earlier ones' counts\n".encode(),
        )


def hide_other_processes(cfg: Json) -> None:
    """Remount /proc so that a process sees only its own uid's (``hidepid=2``); root (group
    0: the zygote) sees all of them. As root only; the samples' uid is never group 0."""
    if cfg.get("reset_traces"):
        try:
            _mount(None, "/proc", None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2,gid=0")
        except OSError as e:
            _lacking("hidepid", e)


def fresh_tmpfs(path: str, size: int, inodes: int) -> bool:
    """Replace the tmpfs at ``path`` by a new empty one (its inodes numbered from the start
    again); False if that failed (the caller empties it, or restarts the sandbox)."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        return False
    try:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size},nr_inodes={inodes}")
    except OSError:
        return False
    return True


# -- rollwatch:traces end -------------------------------------------------------------------------


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
        if which == resource.RLIMIT_CPU and soft <= 0:
            # The resident judge lives across samples: its CPU seconds would add up. The
            # zygote's deadline bounds every sample it serves.
            continue
        hard = soft + 1 if which == resource.RLIMIT_CPU else soft
        resource.setrlimit(which, (soft, hard))


def _enter_child(cfg: Json, req: Json, fds: list[int], uid: int | None, workdir: str) -> None:
    """Everything between fork and the first byte of the candidate's code or the tests.

    ``fds`` become fds 0, 1, 2, ... in that order and every other fd is closed. Kept
    to the bone: every object this touches is a page copied after the fork. What can
    be done once (the environment, no_new_privs, the standard streams) was done by the
    zygote before it forked.
    """
    if cfg["kill"] != "namespace":
        # No PID namespace to take the sample down with the zygote: a death signal.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(fds), 1 << 20)
    # Signal dispositions are the zygote's, which are a fresh interpreter's: it sets none.
    os.chdir(workdir)
    _limits(req["limits"])
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # every capability is gone with root
    # A change of uid resets this flag to the system's default: set it again, so that
    # neither process can be traced, nor its memory, fds or /proc files read, by the other.
    prctl(PR_SET_DUMPABLE, 0)
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


# -- the channel between the judge and the candidate ---------------------------------------
#
# A python-function sample runs in two processes forked from the zygote: the
# *candidate* (prelude + the model's code, as the slot's uid) and the *judge* (prelude +
# the problem's tests, as a second uid). The tests call the candidate through a proxy
# that sends the arguments over a pipe and reads back the return value or the
# exception's type name and message, as plain data only: JSON arrays tagged with the
# container type. Nothing of the candidate's (no object, no class, no patched module,
# no trace function) exists in the judge; the judge's frames, memory and fds are in
# another process of another uid, non-dumpable. The verdict pipe is the judge's alone.

CHANNEL_MAX = 16 * 1024 * 1024
"""Largest frame either side accepts on the channel (one call, one return value)."""
PLAIN_DEPTH = 100
"""Deepest nesting of a value on the channel."""


class NotPlain(Exception):
    """A value the channel does not carry: an object, a function, too deep or too large."""


_DECIMAL_BITS = 14_000
"""Integers longer than this (about 4,200 decimal digits) cross in hexadecimal (see to_plain)."""
_SURROGATE = re.compile("[\\ud800-\\udfff]")
"""A str with any of these crosses as UTF-8 with surrogatepass (see to_plain)."""


def to_plain(x: Any, depth: int = 0) -> Any:
    """``x`` as JSON-ready tagged data, or NotPlain naming the first type that is not plain data.

    Types are checked exactly (``type(x) is int``), so no subclass with an ``__eq__`` of
    its own crosses. Containers become ``[tag, *items]``: l list, t tuple, s set,
    f frozenset, d dict (``[key, value]`` pairs), b bytes (base64), c complex, i an integer
    too long for JSON's decimal text (Python refuses to write or read more than 4,300
    digits), in hexadecimal, u a str with a surrogate code point in it (UTF-8 with
    surrogatepass, base64: JSON would join an escaped pair into one character).
    """
    t = type(x)
    if t is int and x.bit_length() > _DECIMAL_BITS:
        return ["i", hex(x)]
    if t is str and not x.isascii() and _SURROGATE.search(x) is not None:
        # JSON reads an escaped high and low surrogate back as the one character they
        # encode in UTF-16: "\\ud83d\\ude00" (two code points) arrived as U+1F600.
        return ["u", binascii.b2a_base64(x.encode("utf-8", "surrogatepass"), newline=False).decode()]
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if depth >= PLAIN_DEPTH:
        raise NotPlain(f"nested more than {PLAIN_DEPTH} deep")
    d = depth + 1
    if t is list or t is tuple or t is set or t is frozenset:
        tag = "l" if t is list else "t" if t is tuple else "s" if t is set else "f"
        return [tag, *[to_plain(v, d) for v in x]]
    if t is dict:
        return ["d", *[[to_plain(k, d), to_plain(v, d)] for k, v in x.items()]]
    if t is bytes:
        return ["b", binascii.b2a_base64(x, newline=False).decode()]
    if t is complex:
        return ["c", x.real, x.imag]
    if _numpy_number(x):
        # A number numpy made (numpy.int64, numpy.float64, ...), what a right answer computed
        # with numpy returns: its value as Python's own int, float or complex, checked as
        # any value is. Made here, on the side that sends it (the candidate's, for a return):
        # the other side still reads plain data only. Not numpy.bool_ (``is True`` would hold
        # where it did not), nor arrays.
        return to_plain(x.item(), d)
    raise NotPlain(str(getattr(t, "__qualname__", "?")))


def _numpy_number(x: Any) -> bool:
    np = sys.modules.get("numpy")
    try:
        return np is not None and isinstance(x, (np.integer, np.floating, np.complexfloating))
    except (AttributeError, TypeError):  # a module by that name that is not numpy
        return False


def from_plain(x: Any, depth: int = 0) -> Any:
    """The value ``to_plain`` encoded, built afresh from built-in types; NotPlain if garbled."""
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is not list or not x:
        raise NotPlain("garbled value")
    tag, d = x[0], depth + 1
    if tag == "i" or tag == "u":
        # Scalars: to_plain writes them wherever an int or a str may sit, at the deepest
        # level too (a right answer's 100-deep list of huge ints read as garbled before).
        if len(x) == 2 and type(x[1]) is str:
            try:
                if tag == "u":
                    return binascii.a2b_base64(x[1], strict_mode=True).decode("utf-8", "surrogatepass")
                if x[1].lstrip("-").startswith("0x"):
                    return int(x[1], 16)  # (no digit limit in base 16)
            except ValueError as e:  # bad base64, not UTF-8, not hexadecimal
                raise NotPlain("garbled value") from e
        raise NotPlain("garbled value")
    if depth >= PLAIN_DEPTH:
        raise NotPlain("garbled value")
    try:
        if tag == "l":
            return [from_plain(v, d) for v in x[1:]]
        if tag == "t":
            return tuple([from_plain(v, d) for v in x[1:]])
        if tag == "s":
            return {from_plain(v, d) for v in x[1:]}
        if tag == "f":
            return frozenset([from_plain(v, d) for v in x[1:]])
        if tag == "d":
            out = {}
            for pair in x[1:]:
                if type(pair) is not list or len(pair) != 2:
                    raise NotPlain("garbled value")
                out[from_plain(pair[0], d)] = from_plain(pair[1], d)
            return out
        if tag == "b" and len(x) == 2 and type(x[1]) is str:
            return binascii.a2b_base64(x[1], strict_mode=True)  # base64.b64decode(validate=True)
        if tag == "c" and len(x) == 3 and all(type(v) in (int, float) for v in x[1:]):
            return complex(x[1], x[2])
    except (TypeError, ValueError) as e:  # unhashable keys, bad base64
        raise NotPlain("garbled value") from e
    raise NotPlain("garbled value")


def send_msg(fd: int, msg: list[Any]) -> None:
    """One frame on the channel (4-byte length, ASCII JSON: lone surrogates are escaped)."""
    body = json_encode(msg).encode()
    if len(body) > CHANNEL_MAX:
        raise NotPlain(f"larger than {CHANNEL_MAX >> 20} MiB")
    write_all(fd, _frame_head.pack(len(body)) + body)


def recv_msg(fd: int) -> list[Any] | None:
    """One frame from the channel; None at EOF; NotPlain when it is not a well-formed message."""
    try:
        head = read_exact(fd, 4)
        if head is None:
            return None
        (n,) = _frame_head.unpack(head)
        if n > CHANNEL_MAX:
            raise NotPlain("a frame larger than the channel's limit")
        body = read_exact(fd, n)
    except EOFError:
        return None
    try:
        msg = json_decode((body or b"").decode())
    except (ValueError, RecursionError, MemoryError) as e:
        raise NotPlain("a garbled frame") from e
    if type(msg) is not list or not msg or type(msg[0]) is not str:
        raise NotPlain("a garbled frame")
    return msg


_IMPORTS_B = re.compile(rb"^[ \t]*(?:from|import)[ \t]+([A-Za-z_]\w*)", re.M)


def _mentions(text: bytes | bytearray, name: str) -> bool:
    """Whether ``name`` occurs in ``text`` as a word (a match holds no copy of ``text``)."""
    key = name.encode()
    if key not in text:
        return False
    return re.search(rb"(?<![\w])" + re.escape(key) + rb"(?![\w])", text) is not None


def _watched_modules(tests: bytes | bytearray, prelude: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """The modules the tests import, with the names the tests mention as they are now (before the candidate ran).

    Only names that occur in the tests' text are watched: the tests run in the judge,
    so a rebinding only matters (as a sign of a reward hack) where the tests would
    have looked; and every value read here is a page the candidate's process copies.

    The tests' text is bytes here and never becomes a str or a list of its words: the
    candidate's process is forked from this one, and whatever object was made of the
    tests (freed or not) it could read (see ``read_request``). Each module's own names
    are looked up in the text instead.
    """
    pre = prelude.encode("utf-8", "surrogatepass")
    imported = {m.decode() for m in _IMPORTS_B.findall(tests)} | {m.decode() for m in _IMPORTS_B.findall(pre)}
    if not imported:
        return []
    sysmods = sys.modules

    def names(d: dict[str, Any]) -> dict[str, Any]:
        return {k: d[k] for k in list(d) if type(k) is str and (_mentions(tests, k) or _mentions(pre, k))}

    watched = [
        (name, sysmods[name], names(vars(sysmods[name])))
        for name in imported
        if name in sysmods and name not in ("sys", "__main__", "builtins")
    ]
    if "builtins" in imported:
        watched.append(("builtins", builtins, names(SAFE_BUILTINS)))
    return watched


Watched = list[tuple[str, Any, tuple[str, ...], tuple[Any, ...]]]
_WATCHED: dict[bytes, Watched] = {}
WATCHED_KEEP = 256
"""Problems whose watch lists and compiled preludes the zygote keeps (the candidate's process would redo them)."""


def watched_for(req: Json, tests: bytes | bytearray) -> Watched:
    """``_watched_modules`` as the candidate checks it: names and values apart.

    Made in the zygote before the candidate's fork, and kept per problem (by a digest of
    its tests and prelude, never their text): the zygote never runs a sample's code, so
    its modules are as every candidate finds them.
    """
    prelude = req.get("prelude") or ""
    key = hashlib.sha256(tests).digest() + hashlib.sha256(prelude.encode("utf-8", "surrogatepass")).digest()
    watched = _WATCHED.pop(key, None)
    if watched is None:
        watched = [
            (name, m, tuple(before), tuple(before.values()))
            for name, m, before in _watched_modules(tests, prelude)
        ]
        while len(_WATCHED) >= WATCHED_KEEP:
            del _WATCHED[next(iter(_WATCHED))]
    _WATCHED[key] = watched
    return watched


_PRELUDE_CODE: dict[str, CodeType] = {}


def prelude_code_for(req: Json) -> CodeType | None:
    """The problem's prelude compiled in the zygote, kept per problem; None if it does not compile.

    Only the problem's own text, never the candidate's code, is compiled here (as the
    judge compiles it too). Code objects are immutable, and what a candidate's process
    does to its copy of one stays in that process. None: the candidate's process
    compiles it and reports the error as it would.
    """
    text = req.get("prelude") or ""
    code = _PRELUDE_CODE.pop(text, None)
    if code is None:
        try:
            code = compile(text, "prompt.py", "exec", dont_inherit=True, optimize=0)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        while len(_PRELUDE_CODE) >= WATCHED_KEEP:
            del _PRELUDE_CODE[next(iter(_PRELUDE_CODE))]
    if len(text) <= 1 << 20:
        _PRELUDE_CODE[text] = code
    return code


def _run_candidate(req: Json, watched: Watched, prelude: CodeType | None = None) -> int:
    """The candidate's process: prelude and code, then one call per request of the judge.

    fds: 0 stdin (/dev/null), 1 and 2 the sample's output pipes, 3 calls from the judge,
    4 answers to it. Whatever the candidate does to this process can only change the
    answers it sends; the judge decides what they are worth.

    The harness code here between calls looks up its own built-ins (HARNESS_BUILTINS)
    and calls C code only, so an honest candidate that rebinds a builtin for itself
    still gets its answers across.

    The tamper report (a module the tests import rebound, a trace function left) is
    advisory: it comes from the candidate's own process, so it can only fail a sample,
    never pass one. It catches the lazy reward hack; the split is the real guard.
    """
    # ``watched`` has names and values apart, so that each check is one loop in C: it
    # runs for every answer.
    sysmods = sys.modules
    all_, map_, zip_, same, again = all, map, zip, is_, repeat
    gettrace, getprofile = sys.gettrace, sys.getprofile
    live = vars(builtins)

    def tampered() -> str | None:
        for name, m, keys, values in watched:
            if sysmods.get(name) is not m:
                return "module " + str(name) + " was replaced"
            now = live if m is builtins else m.__dict__
            if all_(map_(same, map_(now.get, keys, again(now)), values)):
                continue
            for key, value in zip_(keys, values):  # which one: only once something changed
                if now.get(key, now) is not value:
                    return str(name) + "." + str(key) + " was rebound"
        if gettrace() is not None or getprofile() is not None:
            return "a trace or profile function was left installed"
        return None

    def answer(msg: list[Any]) -> None:
        send_msg(4, msg)

    sources: dict[str, str] = {}

    def source(name: str, text: str) -> CodeType:
        sources[name] = text
        return compile(text, name, "exec", dont_inherit=True, optimize=0)

    try:
        if prelude is None:
            prelude_code = source("prompt.py", req.get("prelude") or "")
        else:
            sources["prompt.py"] = req.get("prelude") or ""
            prelude_code = prelude
        cand_code = source("solution.py", source_text(req["code"]))
    except (SyntaxError, ValueError) as e:
        lineno = getattr(e, "lineno", None)
        line = f" (line {lineno})" if lineno else ""
        answer(["load", "syntax", f"syntax error: {getattr(e, 'msg', e)}{line}"])
        return 1
    entry = req["entry_point"]
    ns: Json = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(prelude_code, ns)
        exec(cand_code, ns)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            # The traceback module's Python code looks up the live built-ins: the
            # snapshot goes back for it (this process ends right after).
            live.clear()
            live.update(SAFE_BUILTINS)
        for name, text in sources.items():
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        with contextlib.suppress(BaseException):  # stderr may be closed by the candidate
            import traceback

            sys.stderr.write("".join(traceback.format_exception(e)[-20:]))
            sys.stderr.flush()
        kind = _kind(e)
        reason = _LIMIT_REASONS.get(kind) or f"exception: {_describe(e)}"
        if kind == "exit":
            reason = f"exited before the tests finished (SystemExit {getattr(e, 'code', None)!r})"
        answer(["load", kind, reason])
        return 1
    fn = ns.get(entry)
    if fn is None or not callable(fn):
        answer(["load", "entry_point", f"entry point {entry!r} is not defined"])
        return 1
    # No "ready": the first answer (or a "load" failure) says the code loaded. Every
    # answer carries the tamper report as of that moment.
    while True:
        msg = recv_msg(3)
        if msg is None:
            return 0
        if msg[0] == "end":
            answer(["end", tampered()])
            return 0
        args, kwargs = from_plain(msg[1]), from_plain(msg[2])
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            kind = _kind(e)
            if kind == "exit":
                message = f"exited before the tests finished (SystemExit {getattr(e, 'code', None)!r})"
            else:
                # The message as str(e) gives it, up to the 1,000 characters the judge keeps
                # (it was the first line, stripped, of 300: tests comparing str(e) failed).
                try:
                    message = str(e)[:1000]
                except BaseException:  # a candidate-made exception whose __str__ raises
                    message = "<unprintable>"
            # (to_plain: a message with surrogates crosses as they are, as a returned str does)
            # The built-in classes it derives from and its args go too, as plain data; the
            # judge decides what it makes of them (see _rebuilt_exception).
            bases, args = _exception_bases(e), _exception_args(e)
            try:
                answer(["raise", type(e).__name__, to_plain(message), kind, bases, args, tampered()])
            except NotPlain:  # args past the channel's size limit: the message alone
                answer(["raise", type(e).__name__, to_plain(message), kind, bases, None, tampered()])
            continue
        try:
            answer(["return", to_plain(result), tampered()])
        except (NotPlain, ValueError, TypeError, RecursionError, OverflowError) as e:
            name = str(e) if isinstance(e, NotPlain) else type(result).__qualname__
            answer(["unplain", name, tampered()])


_BUILTIN_EXCEPTIONS: dict[type, str] = {
    c: n
    for n, c in vars(builtins).items()
    if isinstance(c, type) and issubclass(c, Exception) and c is not Exception and n[0] != "_"
}
"""Built-in exception classes (``EnvironmentError`` is ``OSError``: the last name wins) by class."""
_BUILTIN_EXCEPTIONS.update({OSError: "OSError"})
_BASES_MAX = 16
_type_mro = type.__dict__["__mro__"].__get__


def _exception_bases(e: BaseException) -> list[str]:
    """The names of the built-in exception classes ``e``'s class derives from, most derived first.

    Read in the candidate's process (the judge checks them: see ``_rebuilt_exception``);
    the class's real MRO, whatever its metaclass says.
    """
    out: list[str] = []
    try:
        for c in _type_mro(type(e)):
            name = _BUILTIN_EXCEPTIONS.get(c)
            if name is not None and len(out) < _BASES_MAX:
                out.append(name)
    except BaseException:  # noqa: S110 (a class whose hash raises: no bases, the name still goes)
        pass
    return out


def _exception_args(e: BaseException) -> Any:
    """``e.args`` as plain data (``to_plain``), or None when they are not plain data."""
    try:
        args = e.args
        if type(args) is not tuple:
            return None
        return to_plain(args)
    except BaseException:  # not plain, too deep, a property that raises: the message alone
        return None


class ChannelBroken(BaseException):
    """The candidate's process left, or sent something that is not a message."""


class CandidateExit(BaseException):
    """The candidate raised SystemExit (or the like) during a call."""


class LimitHit(BaseException):
    """The candidate ran out of memory or file size during a call."""


class Unverifiable(BaseException):
    """The candidate returned a value that is not plain data."""


class HarnessError(BaseException):
    """The tests did something the channel cannot carry (a callable argument)."""


class LoadFailed(BaseException):
    """The candidate's code did not load (syntax, exception, no entry point): ``(kind, reason)``."""


_JUDGE_BASES: dict[str, type] = {
    n: c
    for c, n in _BUILTIN_EXCEPTIONS.items()
    if not issubclass(c, (StopIteration, StopAsyncIteration, BaseExceptionGroup))
}
"""What the judge accepts as a base of a rebuilt exception: built-in subclasses of Exception,
but never StopIteration (see below) or an exception group (its constructor wants more, and
``except*`` would look inside it)."""


def _args_safe(cls: type, args: tuple[Any, ...]) -> bool:
    """Whether the built-in ``cls`` can be made from ``args`` (plain data) as the candidate made it.

    Most built-ins just keep their args. UnicodeError's three subclasses read their
    ``start`` and ``end`` unchecked in ``str()`` (CPython 3.11: a start of -10**12 read far
    outside the object, a SIGSEGV): their fields are checked here. SyntaxError parses a
    tuple of details that tracebacks print: only its message is taken.
    """
    if issubclass(cls, SyntaxError):
        return len(args) <= 1
    kinds: tuple[type, ...]
    if issubclass(cls, UnicodeTranslateError):
        fields, kinds = args, (str, int, int, str)
    elif issubclass(cls, UnicodeDecodeError):
        fields, kinds = args[1:], (bytes, int, int, str)
    elif issubclass(cls, UnicodeEncodeError):
        fields, kinds = args[1:], (str, int, int, str)
    else:
        return True
    if len(fields) != 4 or len(args) - len(fields) != (0 if cls is UnicodeTranslateError else 1):
        return False
    if any(type(v) is not t for v, t in zip(fields, kinds, strict=True)) or (
        len(args) == 5 and type(args[0]) is not str
    ):
        return False
    obj, start, end, _reason = fields
    return bool(0 <= start <= end <= len(obj))


def _rebuilt_exception(
    name: str,
    message: str,
    visible: Json,
    bases: list[str] | None = None,
    args: tuple[Any, ...] | None = None,
) -> Exception:
    """The judge's own exception for the candidate's, by the class's name, with its args and message.

    A class of that name the candidate could see too (``visible``: what the prompt
    defines) or among the built-ins, made from the candidate's ``args`` (plain data) when
    it can be (see ``_args_safe``), else from the message; else a new class of that name
    deriving from the built-in classes in ``bases`` (the candidate's class's, such as
    ValueError for its own ``class BadInput(ValueError)`` or for ``json.JSONDecodeError``;
    only built-in subclasses of Exception are taken: no SystemExit or KeyboardInterrupt
    that would leave the tests' ``except Exception``), whose ``str()`` is the message and
    whose ``args`` are the candidate's. Never a class only the tests define: the candidate
    cannot see those, so naming one is a guess, and tests that catch one as their success
    signal (to leave a loop, say) would pass it. Nothing of the candidate's runs here, and
    everything made is what the candidate could have raised itself with plain data.

    Never StopIteration or StopAsyncIteration (or a subclass): raised from a call inside
    ``map``, ``filter`` or a hand-written ``__next__``, it would end the tests' loop
    early, and ``all(map(lambda x: candidate(x) == want(x), xs))`` would hold for a
    candidate that only raises. It becomes a RuntimeError, as PEP 479 does for generators.
    """
    cls = (visible.get(name) or getattr(builtins, name, None)) if name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, (StopIteration, StopAsyncIteration)):
        return RuntimeError(f"the candidate raised {name}: {message}")
    if isinstance(cls, type) and issubclass(cls, BaseExceptionGroup):
        cls = None
    if cls is KeyError and args is None:
        # str(KeyError(key)) is repr(key): the key itself goes back in (once, not repr'd again).
        if not message:
            return KeyError()
        import ast

        try:
            return KeyError(ast.literal_eval(message))
        except Exception:  # noqa: S110 (not a literal: the message as it came)
            pass
    if isinstance(cls, type) and issubclass(cls, Exception):
        builtin = _BUILTIN_EXCEPTIONS.get(cls) is not None or cls is Exception
        if args is not None and (not builtin or _args_safe(cls, args)):
            try:
                made_from_args: Exception = cls(*args)
                if not builtin or str(made_from_args) == message:
                    return made_from_args
                # What str() shows is not all in the args (an OSError's filename): the
                # built-in made from them, showing the candidate's message.
                shown: Exception = type(name, (cls,), {"__str__": _message_str, "_message": message})(*args)
                return shown
            except Exception:  # noqa: S110 (a prompt's class that wants other args)
                pass
        if args is None or not builtin:
            try:
                return cls(message)
            except Exception:  # noqa: S110 (UnicodeDecodeError wants more than a message)
                pass
        made = _message_class(name, (cls,), message)
        if made is not None:
            return made(message, args)
    chosen = [_JUDGE_BASES[b] for b in (bases or [])[:_BASES_MAX] if type(b) is str and b in _JUDGE_BASES]
    # The most derived ones (KeyError, not LookupError too), in the candidate's order.
    chosen = [c for c in chosen if not any(o is not c and issubclass(o, c) for o in chosen)]
    for tried in (tuple(chosen), tuple(chosen[:1])):
        made = (
            _message_class(name if name.isidentifier() else "CandidateError", tried, message)
            if tried
            else None
        )
        if made is not None:
            return made(message, args)
    plain = _message_class(name if name.isidentifier() else "CandidateError", (Exception,), message)
    assert plain is not None
    return plain(message, args)


def _message_class(name: str, bases: tuple[type, ...], message: str) -> type[Exception] | None:
    """A new class ``name`` deriving from ``bases`` whose instances' ``str()`` is ``message``;
    None if those bases cannot be combined (two built-ins of different layouts)."""
    try:
        return type(name, bases, {"__init__": _message_init, "__str__": _message_str, "_message": message})
    except TypeError:
        return None


def _message_init(self: BaseException, message: str, args: tuple[Any, ...] | None = None) -> None:
    BaseException.__init__(self, *(args if args is not None else (message,)))


def _message_str(self: BaseException) -> str:
    return str(type(self).__dict__.get("_message", ""))


_JUDGE_CODE: dict[tuple[str, str], CodeType] = {}
JUDGE_CODE_KEEP = 1024
"""Compiled preludes and tests the resident judge keeps: a problem is scored many times.

Sized for a whole problem set (HumanEval's 164 problems are 328 entries): with fewer
entries than a run's problems, a run that goes through them in turn never hits."""
JUDGE_CODE_CHARS = 4 * 1024 * 1024
"""At most this much source text behind the cached code objects (the oldest go first):
HumanEval's tests and prompts are 0.15 MiB, and the cache stays far below the judge's
memory limit."""
_judge_code_chars = 0


def _judge_compile(name: str, text: str) -> CodeType:
    """``text`` compiled as ``name``, from the judge's cache when it has seen it before.

    Only the problem's own prelude and tests are compiled here, never the candidate's
    code; code objects are immutable, so one sample's run cannot change the next one's.
    Least recently used entries go first.
    """
    global _judge_code_chars
    key = (name, text)
    code = _JUDGE_CODE.pop(key, None)
    if code is None:
        code = compile(text, name, "exec", dont_inherit=True, optimize=0)
        _judge_code_chars += len(text)
        while _JUDGE_CODE and (len(_JUDGE_CODE) >= JUDGE_CODE_KEEP or _judge_code_chars > JUDGE_CODE_CHARS):
            old = next(iter(_JUDGE_CODE))
            del _JUDGE_CODE[old]
            _judge_code_chars -= len(old[1])
    _JUDGE_CODE[key] = code
    return code


def _run_judge(req: Json, nonce: str) -> int:
    """The judge's process: prelude and tests, ``check(candidate)`` through the channel.

    fds: 0 /dev/null, 1 and 2 the sample's output pipes, 3 the verdict pipe, 4 calls to
    the candidate, 5 its answers. Only this process holds the verdict pipe.
    """
    write = os.write

    def report(obj: Json) -> None:
        write(3, (nonce + " " + json_encode(obj) + "\n").encode())

    def receive() -> list[Any]:
        try:
            msg = recv_msg(5)
        except NotPlain as e:
            raise ChannelBroken(f"the candidate sent {e}") from None
        if msg is None:
            raise ChannelBroken("gone")
        return msg

    def send(msg: list[Any]) -> None:
        try:
            send_msg(4, msg)
        except OSError:
            raise ChannelBroken("gone") from None

    sources: dict[str, str] = {}

    def source(name: str, text: str) -> CodeType:
        sources[name] = text
        return _judge_compile(name, text)

    try:
        prelude_code = source("prompt.py", req.get("prelude") or "")
        tests_code = source("tests.py", req["tests"])
    except SyntaxError as e:
        report({"ok": False, "kind": "harness", "reason": f"the problem's tests do not compile: {e}"})
        return 2
    # This sample's lines for what the tests show while they run (a warning, a traceback they
    # print): the resident judge's linecache held the last failed sample's, and a warning on
    # line 3 of one problem's tests showed line 3 of another's (`assert candidate(12345) == …`).
    for name, text in sources.items():
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)

    tns: Json = {"__name__": "__tests__", "__builtins__": builtins}
    visible: Json = {}  # the prelude's names (the candidate's process has them too), before the tests'

    # The first failure of the channel itself, kept even if the tests swallow it (a bare
    # ``except:`` around a call must not turn an unverifiable answer into a pass).
    sticky: list[BaseException] = []

    def candidate(*args: Any, **kwargs: Any) -> Any:
        try:
            return call_candidate(args, kwargs)
        except (ChannelBroken, Unverifiable, LimitHit, CandidateExit, HarnessError, LoadFailed) as e:
            sticky.append(e)
            raise

    loaded = False
    tamper: Any = None

    def answer() -> list[Any]:
        """The candidate's next message; LoadFailed if its code did not load; notes its tamper report."""
        nonlocal loaded, tamper
        msg = receive()
        if msg[0] == "load" and not loaded:
            if len(msg) != 3:
                raise ChannelBroken("the candidate sent a garbled message")
            kind = msg[1] if msg[1] in _LOAD_KINDS else "exception"
            raise LoadFailed(kind, str(msg[2])[:1000])
        loaded = True
        if tamper is None and type(msg[-1]) is str:
            tamper = msg[-1]
        return msg

    def call_candidate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            call = ["call", to_plain(list(args)), to_plain(kwargs)]
        except (NotPlain, ValueError, TypeError, RecursionError) as e:
            raise HarnessError(
                f"the tests passed the candidate a value the channel cannot carry ({e})"
            ) from None
        try:
            send(call)
        except ChannelBroken:
            # A candidate whose code did not load said why and ended, perhaps before the
            # call went out (the pipe is then broken): its reason is still in the pipe.
            answer()
            raise
        msg = answer()
        tag = msg[0]
        try:
            if tag == "return" and len(msg) == 3:
                return from_plain(msg[1])
        except NotPlain as e:
            raise ChannelBroken(f"the candidate sent a {e}") from None
        if tag == "unplain" and len(msg) == 3:
            raise Unverifiable(str(msg[1])[:200])
        if tag == "raise" and len(msg) == 7:
            text, bases, exc_args = msg[2], msg[4], msg[5]
            try:
                if type(text) is list:  # a message with surrogates (see _run_candidate)
                    text = from_plain(text)
                if exc_args is not None:
                    exc_args = from_plain(exc_args)
            except NotPlain as e:
                raise ChannelBroken(f"the candidate sent a {e}") from None
            if type(exc_args) is not tuple:
                exc_args = None
            if type(bases) is not list:
                bases = None
            name, message, kind = str(msg[1])[:100], str(text)[:1000], msg[3]
            if kind in ("memory", "file_size"):
                raise LimitHit(kind)
            if kind == "exit":
                raise CandidateExit(message)
            raise _rebuilt_exception(name, message, visible, bases, exc_args)
        raise ChannelBroken("the candidate sent a garbled message")

    entry = req["entry_point"]
    failure: BaseException | None = None
    try:
        exec(prelude_code, tns)
        visible.update(tns)
        exec(tests_code, tns)
        # HumanEval's tests may call the entry point by its name, not only as `candidate`.
        tns[entry] = candidate
        tns["check"](candidate)
    except BaseException as e:
        failure = e
    if sticky:
        failure = sticky[0]
    if not loaded and not isinstance(failure, (ChannelBroken, LoadFailed)):
        # The tests never got an answer: the candidate must still show that its code loaded.
        try:
            send(["end"])
            msg = answer()
            if msg[0] != "end" or len(msg) != 2:
                raise ChannelBroken("the candidate sent a garbled message")
        except (ChannelBroken, LoadFailed) as e:
            failure = e
    if isinstance(failure, LoadFailed):
        kind, reason = failure.args
        report({"ok": False, "kind": kind, "reason": reason, "stage": "candidate"})
        return 1
    stage = "tests" if loaded else "candidate"
    if tamper is not None:
        report(
            {
                "ok": False,
                "kind": "tampered",
                "reason": "tampered with the standard library: " + str(tamper)[:300],
            }
        )
        return 1
    if failure is None:
        write(3, (nonce + ' {"ok":true}\n').encode())
        return 0
    err = failure
    if isinstance(err, Unverifiable):
        report({"ok": False, "kind": "unverifiable", "reason": f"unverifiable return value: {err}"})
        return 1
    if isinstance(err, ChannelBroken):
        report({"ok": False, "kind": "gone", "reason": str(err), "stage": stage})
        return JUDGE_GONE
    if isinstance(err, HarnessError):
        report({"ok": False, "kind": "harness", "reason": str(err)})
        return 1
    for name, text in sources.items():
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    kind = err.args[0] if isinstance(err, LimitHit) else _kind(err)
    reason = _LIMIT_REASONS.get(kind) or f"exception: {_describe(err)}"
    if isinstance(err, CandidateExit):
        kind, reason = "exit", str(err)
    detail: Json = {"ok": False, "kind": kind, "reason": reason, "stage": stage}
    where = _test_line(err, "tests.py")
    if where:
        detail["test_line"] = where[0]
        detail["test_source"] = where[1][:300]
    with contextlib.suppress(BaseException):
        import traceback

        sys.stderr.write("".join(traceback.format_exception(err)[-20:]))
        sys.stderr.flush()
    report(detail)
    return 1


JUDGE_GONE = 3
"""The judge's status when the candidate stopped answering: its own end is worth a wait."""
_LOAD_KINDS = ("syntax", "exception", "entry_point", "memory", "file_size", "exit")

JUDGE_CTL_FD = 6
JUDGE_RUNS = 500
"""Samples a resident judge serves before a fresh one is forked (bounds what it accumulates)."""


JUDGE_RETIRE = 0x80
"""Set in the judge's reply byte when it could not put back what a sample's tests changed
(a thread left running, a hard rlimit lowered): the zygote replaces it after the sample."""

_WORD = re.compile(r"[A-Za-z_]\w*")
_RLIMITS = [
    getattr(resource, n)
    for n in (
        "RLIMIT_AS",
        "RLIMIT_CORE",
        "RLIMIT_CPU",
        "RLIMIT_DATA",
        "RLIMIT_FSIZE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_NOFILE",
        "RLIMIT_NPROC",
        "RLIMIT_STACK",
    )
    if hasattr(resource, n)
]
_SYS_ATTRS = (
    "stdin",
    "stdout",
    "stderr",
    "displayhook",
    "excepthook",
    "unraisablehook",
    "breakpointhook",
    "argv",
    "dont_write_bytecode",
    "ps1",
    "ps2",
)


class JudgeState:
    """What a problem's tests may change in the resident judge, as the judge started, put back
    after every sample: one problem's tests must not change another problem's verdict.

    Put back: the decimal contexts, the warnings filters and hooks, the recursion, integer
    digit and switch limits, trace and profile functions, ``sys``'s streams, hooks, ``path``,
    ``meta_path``, ``path_hooks`` and ``modules`` (entries added by a sample are removed, so
    a fake module cannot stay), the built-ins, the environment, the umask, signal handlers,
    the signal mask, interval timers, the collector's settings, the locale, soft rlimits, and
    the names of every module the tests or prelude mention (a patched ``math.sqrt``). The
    module-level ``random`` generator is seeded afresh for each sample. What cannot be put
    back (a thread left running, a hard rlimit lowered, a module the sample imported: numpy,
    imported again, refuses to load twice in a process) retires the judge after the sample.
    Not covered: changes to a class's or object's attributes inside a module (say
    ``json.JSONEncoder.default``), and modules reached without their name in the text.
    """

    def __init__(self) -> None:
        import _locale
        import ast  # noqa: F401 (imported by the harness later: part of the baseline)
        import decimal
        import gc
        import random
        import traceback  # noqa: F401
        import warnings

        self.decimal: Any = decimal
        self.random: Any = random
        self.warnings: Any = warnings
        self.gc: Any = gc
        self.contexts = [
            (c, c.copy()) for c in (decimal.DefaultContext, decimal.BasicContext, decimal.ExtendedContext)
        ]
        self.context = decimal.getcontext().copy()
        self.filters = list(warnings.filters)
        self.warn_hooks = (warnings.showwarning, warnings.formatwarning, self.warnings.defaultaction)
        self.limits = (sys.getrecursionlimit(), sys.get_int_max_str_digits(), sys.getswitchinterval())
        self.sys_attrs = {k: getattr(sys, k) for k in _SYS_ATTRS if hasattr(sys, k)}
        self.lists: list[tuple[list[Any], list[Any]]] = [
            (lst, list(lst)) for lst in (sys.path, sys.meta_path, sys.path_hooks)
        ]
        self.importer_cache = dict(sys.path_importer_cache)
        self.modules = dict(sys.modules)
        self.module_dicts: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.builtins = dict(vars(builtins))
        self.environ = dict(os.environ)
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.signals = {}
        for sig in signal.valid_signals():
            try:
                handler = signal.getsignal(sig)
            except (OSError, ValueError):
                continue
            if handler is not None:
                self.signals[sig] = handler
        self.sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.gc_state = (gc.isenabled(), gc.get_threshold())
        self.rlimits = {r: resource.getrlimit(r) for r in _RLIMITS}
        self.dlopen = sys.getdlopenflags()
        self.locale = _locale
        self.locale_all = _locale.setlocale(_locale.LC_ALL, None)

    def watch(self, text: str) -> None:
        """Keep a copy of the namespace of every module ``text`` (tests, prelude) names, as it is now."""
        mods = self.modules
        for word in set(_WORD.findall(text)):
            if word in mods and word not in self.module_dicts and word not in ("sys", "builtins"):
                d = getattr(mods[word], "__dict__", None)
                if type(d) is dict:
                    self.module_dicts[word] = (d, dict(d))

    def restore(self) -> bool:
        """Put everything back; False if something could not be (the judge must go)."""
        ok = True
        # The modules first: a test may have replaced warnings.filters or decimal itself.
        mods = sys.modules
        if len(mods) != len(self.modules) or not all(
            map(is_, map(mods.get, self.modules), self.modules.values())
        ):
            added = [k for k in mods if k not in self.modules]
            if added:
                # A module the sample imported cannot be unloaded: taken out of sys.modules,
                # it was imported afresh by the next sample, and an extension module that
                # loads once per process (numpy) then raised ImportError, so every right
                # answer after the first failed. Only a fresh judge has the zygote's modules.
                ok = False
            for k in added:
                del mods[k]
            mods.update(self.modules)
        for d, saved in self.module_dicts.values():
            if len(d) != len(saved) or not all(map(is_, map(d.get, saved), saved.values())):
                d.clear()
                d.update(saved)
        live = vars(builtins)
        if len(live) != len(self.builtins) or not all(
            map(is_, map(live.get, self.builtins), self.builtins.values())
        ):
            live.clear()
            live.update(self.builtins)
        decimal = self.decimal
        for ctx, kept in self.contexts:
            for attr in ("prec", "rounding", "Emin", "Emax", "capitals", "clamp"):
                setattr(ctx, attr, getattr(kept, attr))
            ctx.traps = dict(kept.traps)
            ctx.flags = dict(kept.flags)
        decimal.setcontext(self.context.copy())
        self.random.seed(os.urandom(32))
        w = self.warnings
        w.filters[:] = self.filters
        w.showwarning, w.formatwarning, w.defaultaction = self.warn_hooks
        w._filters_mutated()
        sys.setrecursionlimit(self.limits[0])
        sys.set_int_max_str_digits(self.limits[1])
        sys.setswitchinterval(self.limits[2])
        sys.settrace(None)
        sys.setprofile(None)
        sys.setdlopenflags(self.dlopen)
        for k, v in self.sys_attrs.items():
            setattr(sys, k, v)
        for lst, saved_list in self.lists:
            if lst != saved_list:
                lst[:] = saved_list
        if sys.path_importer_cache != self.importer_cache:
            sys.path_importer_cache.clear()
            sys.path_importer_cache.update(self.importer_cache)
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        os.umask(self.umask)
        for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
            signal.setitimer(timer, 0)
        for sig, handler in self.signals.items():
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.sigmask)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        enabled, thresholds = self.gc_state
        self.gc.set_threshold(*thresholds)
        (self.gc.enable if enabled else self.gc.disable)()
        with contextlib.suppress(Exception):
            if self.locale.setlocale(self.locale.LC_ALL, None) != self.locale_all:
                self.locale.setlocale(self.locale.LC_ALL, self.locale_all)
        for r, (soft, hard) in self.rlimits.items():
            now = resource.getrlimit(r)
            if now != (soft, hard):
                try:
                    resource.setrlimit(r, (soft, hard))
                except (OSError, ValueError):
                    ok = False  # a hard limit lowered: only a fresh judge has it back
        if len(os.listdir("/proc/self/task")) > 1:
            ok = False  # a thread of the tests still runs: it could change anything later
        return ok


def _judge_loop(workdir: str) -> int:
    """The resident judge: one sample per message from the zygote, until the zygote closes the socket.

    Each message carries a memfd with the request and the sample's pipes (SCM_RIGHTS):
    stdout, stderr, the verdict pipe, calls to the candidate and its answers. They are
    put on fds 1-5 for the sample and replaced by /dev/null after it, so no pipe of one
    sample stays open into the next. The reply is one byte: ``_run_judge``'s status.
    """
    ctl = socket.socket(fileno=JUDGE_CTL_FD)
    null = os.open("/dev/null", os.O_RDWR)
    state = JudgeState()
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 16, 8)
        except OSError:
            return 0
        if not msg or len(fds) != 6:
            return 0
        memfd, *pipes = fds
        status = 70
        try:
            os.lseek(memfd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(memfd, 1 << 20):
                chunks.append(chunk)
            os.close(memfd)
            for target, fd in enumerate(pipes, 1):
                os.dup2(fd, target)
                os.close(fd)
            head, _, tests = b"".join(chunks).partition(b"\n")
            req = json_decode(head.decode())
            req["tests"] = tests.decode("utf-8", "surrogatepass")
            # The sample's own /tmp (a fresh mount for each sample, as root): between
            # samples the judge stands on "/", holding no old mount alive.
            os.chdir(workdir)
            state.watch(req["tests"])
            state.watch(req.get("prelude") or "")
            status = _run_judge(req, req["nonce"])
        except BaseException as e:
            with contextlib.suppress(BaseException):
                os.write(2, f"sandbox judge: {_describe(e)}\n".encode())
        # The judge's own streams (those put back after every sample) must be empty before
        # the next sample's pipes take fds 1 and 2: the candidate shares these pipes' open
        # file descriptions, and one it made non-blocking and kept full left the tests' output
        # and the failing test's traceback in their buffers, written into the next sample's
        # output (its verdict's stderr tail) by the judge's next write.
        flushed = True
        for stream in (state.sys_attrs.get("stdout"), state.sys_attrs.get("stderr")):
            try:
                if stream is not None:
                    stream.flush()
            except BaseException:
                flushed = False
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        try:
            if not state.restore() or not flushed:
                status |= JUDGE_RETIRE
        except BaseException as e:
            status |= JUDGE_RETIRE
            with contextlib.suppress(BaseException):
                os.write(2, f"sandbox judge: could not reset its state: {_describe(e)}\n".encode())
        for target in range(1, 6):
            os.dup2(null, target)
        with contextlib.suppress(OSError):
            os.chdir("/")
        try:
            ctl.sendall(bytes([status & 0xFF]))
        except OSError:
            return 0


def _run_program(req: Json, nonce: str) -> int:
    """A script run as ``__main__``, stdin to stdout, as ``python3 solution.py`` would."""
    import traceback

    write = os.write

    def report(obj: Json) -> None:
        write(VERDICT_FD, (nonce + " " + json_encode(obj) + "\n").encode())

    text = source_text(req["code"])
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


def empty_folder(top: str, budget: int = 1_000_000) -> bool:
    """Remove everything inside ``top``, however deep, without recursion; True when it is empty.

    A sample may leave a 3000-deep chain of folders (deeper than the recursion limit
    and PATH_MAX), folders it made unreadable, or millions of files: this walks down
    by ``chdir`` one level at a time and never follows a symbolic link. At most
    ``budget`` entries are handled; whatever could not be removed is reported, not raised.
    """
    os.chdir(top)
    depth = 0
    stuck: set[tuple[int, int]] = set()
    while budget > 0:
        descended = False
        with os.scandir(".") as it:
            entries = list(it)
        for e in entries:
            budget -= 1
            try:
                if not e.is_dir(follow_symlinks=False):
                    os.unlink(e.name)
                    continue
                try:
                    os.rmdir(e.name)
                    continue
                except OSError:
                    pass
                st = e.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in stuck:
                    continue
                stuck.add((st.st_dev, st.st_ino))
                with contextlib.suppress(OSError):
                    os.chmod(e.name, 0o700)
                os.chdir(e.name)
                depth += 1
                descended = True
                break
            except OSError:
                continue
        if descended:
            continue
        if depth == 0:
            break
        os.chdir("..")
        depth -= 1
    os.chdir(top)
    with os.scandir(".") as it:
        return next(it, None) is None


def _child(
    cfg: Json, req: Json, fds: list[int], uid: int | None, workdir: str, body: Callable[[], int]
) -> None:
    status = 70
    try:
        _enter_child(cfg, req, fds, uid, workdir)
        status = body()
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
        self.own_sockets: set[int] = set()
        """The inodes of the Unix sockets between this zygote and its resident judge."""
        self.pid_fd = pid_setter(cfg)  # rollwatch:traces
        # The resident judge: (pid, pidfd, control socket) while it lives, and its sample count.
        self.judge: tuple[int, int, socket.socket] | None = None
        self.judge_runs = 0
        # What a sample writes is read into these and nowhere else (no bytes object, no
        # str), sent to the host from them and wiped after every sample: the next sample
        # is a fork of this process and must find nothing of this one's output, its
        # judge's traceback or its verdict (which names the failing test line).
        self.scratch = bytearray(65536)
        self.out_buf = bytearray()  # made for each sample, small, and grown as the output comes (grow_out)
        self.err_buf = bytearray(2 * STDERR_KEEP + len(self.scratch))
        self.ver_buf = bytearray(VERDICT_KEEP)
        self.used = [0, 0, 0]
        """Bytes of the last sample in out_buf, err_buf and ver_buf (wiped once sent)."""
        self.output: list[memoryview] = []
        """The views ``run`` leaves for ``serve`` to send after the response frame."""

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
            # No PID namespace, but the candidate and the judge run as uids of their own:
            # a process of that uid sending kill(-1) reaches every one of them (and
            # nothing else), in one atomic sweep that a fork bomb cannot outrun.
            for uid in {self.cfg["uid"], self.cfg.get("judge_uid", self.cfg["uid"])}:
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

    def reap_all(self, wanted: set[int]) -> dict[int, tuple[int, resource.struct_rusage]]:
        """Wait for every child (orphans come to us: we are a subreaper); the ``wanted`` ones' ends."""
        ends: dict[int, tuple[int, resource.struct_rusage]] = {}
        while True:
            try:
                pid, st, ru = os.wait4(-1, 0)
            except ChildProcessError:
                return ends
            except InterruptedError:
                continue
            if pid in wanted:
                ends[pid] = (st, ru)
            elif self.kill_mode == "tree":
                self.kill_all()

    def unix_leftovers(self) -> bool:
        """Whether a Unix socket not ours is left in the sandbox's network namespace.

        Every process of the sample is gone and reaped, and a socket closes with its last
        descriptor, but one sent in a message that no one will read (into its own queue,
        say) lives on until the kernel's collector gets to it, later: the next sample could
        connect to it, or read the name it was bound to in /proc/net/unix (a message of a
        hundred bytes per socket). The sandbox then starts afresh (a new namespace).
        """
        try:
            fd = os.open("/proc/net/unix", os.O_RDONLY)
        except OSError:
            return False
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError:
            return False
        finally:
            os.close(fd)
        own = self.own_sockets if self.judge is not None else set()
        for row in b"".join(chunks).splitlines()[1:]:
            fields = row.split()
            if len(fields) >= 7 and fields[6].isdigit() and int(fields[6]) not in own:
                return True
        return False

    def wipe_ipc(self) -> None:
        """Remove the SysV IPC objects a sample left in the sandbox's IPC namespace."""
        for kind in ("shm", "msg", "sem"):
            # Raw reads, not open(): this runs after every sample, and a text file object
            # touches (and so copies) far more of the zygote's pages than the read itself.
            try:
                fd = os.open("/proc/sysvipc/" + kind, os.O_RDONLY)
            except OSError:
                continue
            try:
                chunks = []
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
            except OSError:
                continue
            finally:
                os.close(fd)
            rows = b"".join(chunks).splitlines()[1:]
            for row in rows:
                ident = int(row.split()[1])
                if kind == "shm":
                    _libc.shmctl(ident, 0, None)  # IPC_RMID
                elif kind == "msg":
                    _libc.msgctl(ident, 0, None)
                else:
                    _libc.semctl(ident, 0, 0)

    def wipe(self) -> bool:
        """Empty the private temporary folders (and IPC) for the next sample; False if something stayed."""
        if self.kill_mode != "tree" and self.kill_mode != "uid":
            self.wipe_ipc()
        clean = True
        with contextlib.suppress(OSError):
            os.chdir("/")
        fresh = {path: (size, inodes) for path, size, inodes in self.cfg.get("fresh_tmpfs") or []}
        for d in self.cfg["wipe"]:
            if d in fresh and fresh_tmpfs(d, *fresh[d]):  # rollwatch:traces
                continue
            try:
                with os.scandir(d) as it:
                    if next(it, None) is None:
                        continue  # already empty: the usual case but for /tmp
                clean = empty_folder(d) and clean
            except OSError:
                clean = False
        with contextlib.suppress(OSError):
            os.chdir("/")
        return clean

    # -- one request --------------------------------------------------------------------

    def _spawn(
        self,
        req: Json,
        fds: list[int],
        uid: int | None,
        workdir: str,
        body: Callable[[], int],
        first_pid: int = CANDIDATE_PID,
    ) -> int:
        if self.pid_fd is not None:
            # rollwatch:traces: the child's PID is ``first_pid`` whatever came before.
            os.pwrite(self.pid_fd, b"%d" % (first_pid - 1), 0)
        pid = os.fork()
        if pid == 0:
            _child(self.cfg, req, fds, uid, workdir, body)
        return pid

    def _judge(self, req: Json) -> tuple[int, int, socket.socket]:
        """The resident judge, forked now if there is none.

        It is forked once and serves sample after sample, as long as every sample
        ends cleanly: a second fork per sample would double what a sample costs.
        Whenever something is left running after a sample, the sweep that kills it
        takes the judge too, and the next sample gets a fresh one.
        """
        if self.judge is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.own_sockets = {os.fstat(ours.fileno()).st_ino, os.fstat(theirs.fileno()).st_ino}
            null = os.open("/dev/null", os.O_RDWR)
            limits = {**req["limits"], "cpu_s": 0}
            pid = self._spawn(
                {**req, "limits": limits},
                [null] * JUDGE_CTL_FD + [theirs.fileno()],
                self.cfg.get("judge_uid", self.cfg.get("uid")),
                "/",
                lambda: _judge_loop(os.path.dirname(self.cfg["workdir"])),
                JUDGE_PID,
            )
            theirs.close()
            os.close(null)
            protect_judge(pid)
            self.judge = (pid, os.pidfd_open(pid), ours)
            self.judge_runs = 0
        return self.judge

    def _drop_judge(self) -> int | None:
        """Kill and reap the resident judge (it failed, or served enough); its status if it had ended."""
        status = None
        if self.judge is not None:
            pid = self.judge[0]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                _, st = os.waitpid(pid, 0)
                if not (os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL):
                    status = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
            self._forget_judge()
        return status

    def _forget_judge(self) -> None:
        """Close our ends of the resident judge (a sweep killed it; the reaping happens there)."""
        if self.judge is not None:
            _, pidfd, sock = self.judge
            self.judge = None
            os.close(pidfd)
            sock.close()

    def _others_alive(self) -> bool:
        """Whether any process of the sandbox but init, this zygote and the resident judge exists."""
        keep = {1, os.getpid()}
        if self.judge is not None:
            keep.add(self.judge[0])
        return any(name.isdigit() and int(name) not in keep for name in os.listdir("/proc"))

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
            data = binascii.a2b_base64(stdin_data)
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
        function = req["mode"] == "function"

        stdout_total = 0
        stderr_total = 0
        out_cap = limit if keep_stdout else STDOUT_HEAD
        self.out_buf = bytearray(min(out_cap, len(self.scratch)))
        scratch = memoryview(self.scratch)
        err_v, ver_v = memoryview(self.err_buf), memoryview(self.ver_buf)
        used = self.used  # stdout, stderr, verdict
        outcome = None  # "timeout" | "output_limit" | None (exited)
        host_gone = False

        def take(fd: int) -> bool:
            """Read what ``fd`` has; False at EOF (or, once every writer is dead, when empty).

            Into the scratch buffer and from there into the sample's buffers, by memoryview:
            no bytes object ever holds the output (see ``__init__``).
            """
            nonlocal stdout_total, stderr_total
            try:
                k = os.readv(fd, [scratch])
            except BlockingIOError:
                return False
            if not k:
                return False
            if fd == out_r:
                stdout_total += k
                n = min(k, out_cap - used[0])
                if n > 0:
                    if used[0] + n > len(self.out_buf):
                        self.grow_out(used[0] + n, out_cap)
                    memoryview(self.out_buf)[used[0] : used[0] + n] = scratch[:n]
                    used[0] += n
            elif fd == err_r:
                stderr_total += k
                at = used[1]
                err_v[at : at + k] = scratch[:k]
                used[1] = at + k
                if used[1] > 2 * STDERR_KEEP:  # keep the tail (the two ranges do not overlap)
                    end = used[1]
                    err_v[:STDERR_KEEP] = err_v[end - STDERR_KEEP : end]
                    # What scrolled out is wiped now: the wipe after the sample only reaches
                    # the tail kept, and the judge's traceback (its failing test line, with the
                    # expected value) must not wait here for the next sample's fork.
                    err_v[STDERR_KEEP:end] = bytes(end - STDERR_KEEP)
                    used[1] = STDERR_KEEP
            else:
                n = min(k, VERDICT_KEEP - used[2])
                if n > 0:
                    ver_v[used[2] : used[2] + n] = scratch[:n]
                    used[2] += n
            return True

        # Everything that can be ready before the candidate's fork is: after it, each page
        # the zygote writes is copied for as long as the candidate shares it.
        poller = select.poll()
        for fd in (out_r, err_r, self.ctl_in):
            poller.register(fd, select.POLLIN)
        if not function:
            poller.register(ver_r, select.POLLIN)
        # A judge's verdict is one line of a few KiB at most (its fields are cut to size),
        # far below a pipe's capacity: it is read after the judge's reply, which saves the
        # zygote a wake-up per sample. A program's harness shares the candidate's process,
        # so its verdict pipe is read as it fills.
        open_fds = {out_r, err_r, ver_r}
        started = time.monotonic()
        judge_sock = None
        if function:
            # Two processes: the candidate's code in a fresh child, the tests in the
            # resident judge (see "the channel" above). The judge's reply ends the sample.
            # The judge gets its job first and sets up while the candidate is forked; its
            # first call waits in the pipe until the candidate reads it.
            call_r, call_w = os.pipe()
            ans_r, ans_w = os.pipe()
            job = os.memfd_create("judge", 0)
            # The job: a JSON line, then the tests' bytes as they came from the host.
            tests: bytearray = req["tests"]
            write_all(
                job,
                json_encode(
                    {"prelude": req.get("prelude"), "entry_point": req["entry_point"], "nonce": nonce}
                ).encode()
                + b"\n",
            )
            write_all(job, tests)
            for attempt in (1, 2):
                main, pidfd, sock = self._judge(req)
                try:
                    socket.send_fds(sock, [b"r"], [job, out_w, err_w, ver_w, call_w, ans_r])
                    break
                except OSError:
                    self._drop_judge()  # it died between samples: a fresh one
                    if attempt == 2:
                        raise
            for fd in (call_w, ans_r, job):
                os.close(fd)
            poller.register(pidfd, select.POLLIN)
            judge_sock = sock
            poller.register(sock.fileno(), select.POLLIN)
            watched, prelude = watched_for(req, tests), prelude_code_for(req)
            # The candidate is forked next: no copy of the tests may be in this process.
            wipe(tests)
            cand = self._spawn(
                req,
                [stdin_fd, out_w, err_w, call_r, ans_w],
                cfg.get("uid"),
                work,
                lambda: _run_candidate(req, watched, prelude),
            )
            for fd in (call_r, ans_w):
                os.close(fd)
        else:
            main = cand = self._spawn(
                req, [stdin_fd, out_w, err_w, ver_w], cfg.get("uid"), work, lambda: _run_program(req, nonce)
            )
            pidfd = os.pidfd_open(main)
            poller.register(pidfd, select.POLLIN)
        for fd in (stdin_fd, out_w, err_w, ver_w):
            os.close(fd)
        deadline = started + timeout

        exited = False
        judge_status: int | None = None
        retire = False
        while not exited and outcome is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = "timeout"
                break
            for fd, ev in poller.poll(max(1, int(remaining * 1000) + 1)):
                if fd == pidfd:
                    exited = True
                elif judge_sock is not None and fd == judge_sock.fileno():
                    exited = True
                    reply = judge_sock.recv(1)
                    if reply:
                        judge_status = reply[0] & ~JUDGE_RETIRE
                        retire = bool(reply[0] & JUDGE_RETIRE)
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

        ends: dict[int, tuple[int, resource.struct_rusage]] = {}
        cand_by_itself = False
        if exited and outcome is None:
            if function and judge_status != JUDGE_GONE:
                # Judged: the candidate has nothing more to say. It goes now, alone: the
                # judge stays for the next sample if nothing else is left.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(cand, signal.SIGKILL)
                _, st, ru = os.wait4(cand, 0)
                ends[cand] = (st, ru)
            elif function:
                # It stopped answering: its own end (a signal, an exit status) explains
                # why, so it gets a moment to end by itself.
                cand_fd = os.pidfd_open(cand)
                try:
                    select.select([cand_fd], [], [], 0.1)
                finally:
                    os.close(cand_fd)
                got, st, ru = os.wait4(cand, os.WNOHANG)
                if got == cand:
                    ends[cand] = (st, ru)
                    cand_by_itself = True
            else:
                _, st, ru = os.wait4(main, 0)
                ends[main] = (st, ru)
                cand_by_itself = True
        # The sample is over: whatever it left behind dies now (and the judge with it,
        # unless the sample ended cleanly with nothing left), then the pipes drain.
        judge_ok = function and judge_status is not None and outcome is None
        if function and not judge_ok:
            judge_status = self._drop_judge()
        if self.kill_mode != "namespace" or self._others_alive():
            self.kill_all()
            self._forget_judge()  # the sweep killed it; reaped below
            ends.update(self.reap_all({main, cand}))
        if not function:
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
        clean = self.wipe()
        if self.judge is not None:
            self.judge_runs += 1
            if self.judge_runs >= JUDGE_RUNS or retire:
                self._drop_judge()
        if host_gone:
            raise SystemExit(0)

        # stdout, the tail of stderr and the verdict channel follow the frame as raw
        # bytes, in that order (see ``serve``); the host parses the verdict.
        err_from = max(0, used[1] - STDERR_KEEP)
        self.output = [memoryview(self.out_buf)[: used[0]], err_v[err_from : used[1]], ver_v[: used[2]]]
        resp: Json = {
            "outcome": outcome or "exited",
            "wall_ms": round(wall * 1000, 3),
            "stdout_bytes": stdout_total,
            "stderr_bytes": stderr_total,
            "nonce": nonce,
            "raw": [len(v) for v in self.output],
        }
        if not clean:
            resp["restart"] = "the private folders could not be emptied"
        elif self.kill_mode == "namespace" and self.unix_leftovers():
            resp["restart"] = "Unix sockets outlived the sample (in flight)"
        if function and judge_status is not None:
            resp["judge_exit"] = judge_status
        status, usage = ends[cand] if cand in ends else (None, None)  # noqa: SIM401 (typed pair)
        if status is not None and (not function or cand_by_itself):
            if os.WIFSIGNALED(status):
                resp["signal"] = os.WTERMSIG(status)
            else:
                resp["exit_code"] = os.WEXITSTATUS(status)
        if usage is not None:
            resp["cpu_ms"] = round((usage.ru_utime + usage.ru_stime) * 1000, 3)
            resp["maxrss_kb"] = usage.ru_maxrss
        return resp

    def serve(self) -> None:
        while True:
            req = read_request(self.ctl_in)
            if req is None:
                return
            try:
                resp = self.run(req)
            except SystemExit:
                return
            except BaseException as e:
                import traceback

                # Whatever went wrong, the sample's processes go, and the host starts a fresh zygote.
                with contextlib.suppress(BaseException):
                    self.kill_all()
                self.judge = None
                resp = {
                    "outcome": "error",
                    "error": _describe(e),
                    "traceback": traceback.format_exc()[-4000:],
                }
            finally:
                for key in ("tests", "code"):
                    buf = req.get(key)
                    if type(buf) is bytearray:
                        wipe(buf)  # run() wipes the tests before the fork; on its way out too
            write_frame(self.ctl_out, resp)
            if "raw" in resp:  # an "error" response has no output behind it
                for view in self.output:
                    write_all(self.ctl_out, view)
            self.wipe_output()

    def grow_out(self, need: int, cap: int) -> None:
        """A larger stdout buffer holding what the old one held; the old one is wiped.

        Not one buffer of the whole limit kept across samples: written while a forked
        sample still shares its pages, a large one costs a copy of each (huge) page.
        """
        old, n = self.out_buf, self.used[0]
        new = bytearray(min(cap, max(need, 2 * len(old))))
        memoryview(new)[:n] = memoryview(old)[:n]  # a memmove, no temporary copy
        wipe(old)
        self.out_buf = new

    def wipe_output(self) -> None:
        """Zero what the last sample wrote (and the scratch buffer): the next sample is forked from here."""
        for view in self.output:
            view.release()
        self.output = []
        for buf, n in zip((self.out_buf, self.err_buf, self.ver_buf), self.used, strict=True):
            buf[:n] = bytes(n)
        wipe(self.scratch)
        self.used[:] = [0, 0, 0]


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Compiling this file and importing the preloaded modules leave megabytes freed but
    still mapped in the heap (~3 MB here). Every fork copies the page table entries of
    every mapped page and every sample's exit unmaps them again: fewer pages make both
    cheaper (~0.1 ms per fork).
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


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
    if cfg.get("cpu") is not None:
        # The slot's own CPU, for everything forked from here (samples cannot change it:
        # seccomp), so that a sample's busy processes take no CPU from another slot's.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cfg["cpu"]})
    # Not ptrace-able, its /proc/PID/mem and fds closed to everyone else: without root
    # the samples share our uid, and must not reach into the zygote.
    prctl(PR_SET_DUMPABLE, 0)
    if cfg.get("setup"):
        setup_root(cfg["setup"])
    bound_tmpfs(cfg)  # rollwatch:tmpfs
    hide_other_processes(cfg)  # rollwatch:traces
    # Once for every sample: an empty environment, and no privilege from any exec.
    os.environ.clear()
    os.environ.update(cfg["env"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if cfg.get("seccomp", True):  # rollwatch:seccomp
        global SECCOMP
        PROTECTED[:] = _seccomp.protected_here()
        SECCOMP = _seccomp.Installer(_seccomp.build(PROTECTED))
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
    trim_heap()
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
