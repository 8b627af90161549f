"""The seccomp filter every sample runs under: a narrower kernel surface.

Standard library only: the zygote loads this file by path (it runs inside the
sandbox, where rollwatch is not importable) and installs the filter in each
sample's child after the uid drop and before the first byte of candidate code.
The host imports it too, to say in the logs and tests what is denied.

Denied with EPERM (the call fails; the program goes on and can report it):

* the kernel keyring (``keyctl``, ``add_key``, ``request_key``): it is per uid,
  not per namespace, so one sample could leave a key for the next;
* ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``, ``pidfd_getfd``, and
  ``pidfd_send_signal``: it takes an fd of a ``/proc/PID`` folder, which the filter
  cannot see the target of, so it would signal a protected process past the rule below;
* new namespaces (``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*``
  flag) and every way to mount (``mount``, ``umount2``, ``pivot_root``,
  ``chroot``, the new mount API, ``open_by_handle_at``);
* memory no address space counts: ``memfd_create``, ``memfd_secret`` and SysV IPC
  (``shmget``, ``msgget``, ``semget``): their pages live on with no mapping, or in the
  kernel, so RLIMIT_AS never sees them; without a memory cgroup, one sample held 384 MB
  under a 256 MB limit in each, and semaphore sets alone go to tens of gigabytes;
* sockets of any family but ``AF_UNIX`` and ``AF_NETLINK`` (``socket``,
  ``socketpair``): IPv4 and IPv6 on its loopback included. A sample has no network
  to use them on; TCP's buffers are kernel memory no limit of the sample counts,
  charged to the host's one TCP budget (``tcp_mem``): a sample held 384 MB on its
  loopback under a 256 MB limit, and enough of them would starve every TCP
  connection on the host, the daemon's too. The rarer families (TIPC, RDS, vsock,
  AF_ALG...) are kernel code, some loaded on first use, no answer needs;
* ``sched_setaffinity``: the zygote pins its slot to one CPU, and a sample of many busy
  processes must not spread over the other slots' CPUs;
* lowering its own priority (``setpriority``: ``nice``; ``sched_setscheduler``,
  ``sched_setattr``, ``sched_setparam``: ``SCHED_IDLE``): where the scheduler shares the CPU
  by process (no autogroups: the service in a cpu cgroup of its own), any busy process of the
  host on the slot's CPU then ran nearly all the time, and the sample's own timeout read as the
  host's starvation, "sandbox error" (ours, judged again), not the model's;
* ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, kernel modules,
  ``kexec_*``, ``reboot``, swap, ``acct``, ``quotactl``, the clocks, ``syslog``,
  host names, ``iopl``/``ioperm`` and the other legacy ones;
* signals (``kill``, ``tkill``, ``tgkill``, ``rt_*sigqueueinfo``,
  ``pidfd_open``) and ``prlimit64`` aimed at a protected process: the zygote,
  its parent, its process group, PID 1 or the resident judge (EPERM, as the kernel
  answers another uid), or at every process (``kill(-1)``: ESRCH, as if there were
  none to signal). Without root the samples share the zygote's uid (and the judge's),
  so the kernel alone would let them stop it: a wrong answer that killed the judge was
  scored "sandbox error" (ours, judged again by ``rescore``), not the model's failure;
* naming a process to be sent SIGIO (or any signal) when a file is ready: ``fcntl``'s
  ``F_SETOWN``, ``F_SETOWN_EX`` and ``F_SETSIG``, ``ioctl``'s ``FIOSETOWN`` and
  ``SIOCSPGRP``. The kernel sends it with the sample's credentials but no ``kill``
  call for the rule above to see: without root a pipe owned by the judge killed it, and
  one owned by the zygote (PID 1) with SIGINT took the sandbox down ("sandbox lost").

``setsid`` succeeds without doing anything: the process stays in the sample's session.
The scheduler shares a CPU between sessions (autogroups), so 40 busy processes, each in a
session of its own, took 40 shares of it to another sample's one: pinned to the same CPU,
another pool's honest answer ran at a fortieth of its speed and timed out. A program that
starts a process in a new session (``start_new_session=True``) still runs.

``sched_yield`` succeeds without yielding, for the reason priorities may not be lowered
(above): where the CPU is shared by process, a loop of it beside one busy process of the
host stayed ready to run and all but never ran, and its timeout read as the host's
starvation. A spinning wait that yields still works; it spins.

``clone3`` fails with ENOSYS instead: its flags live in memory a filter cannot
read, and on ENOSYS the C library falls back to ``clone``, whose flags it can.
A system call of a foreign ABI (i386 or x32 on x86-64) fails with EPERM.
"""

from __future__ import annotations

import ctypes
import os
import struct

# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (little-endian on both arches).
_NR, _ARCH, _ARG0_LO, _ARG1_LO = 0, 4, 16, 24

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
EPERM = 1
ESRCH = 3
ENOSYS = 38

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4
_SECCOMP = {"x86_64": 317, "aarch64": 277}

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NEW_ANY = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
)

_X32_BIT = 0x40000000

# Numbers from the kernel's tables: arch/x86/entry/syscalls/syscall_64.tbl and
# include/uapi/asm-generic/unistd.h (arm64). None: the call does not exist there.
_TABLE: dict[str, tuple[int | None, int | None]] = {
    # name: (x86_64, aarch64)
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    "pidfd_send_signal": (424, 424),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "adjtimex": (159, 171),
    "clock_adjtime": (305, 266),
    "syslog": (103, 116),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "lookup_dcookie": (212, 18),
    "vhangup": (153, 58),
    "iopl": (172, None),
    "ioperm": (173, None),
    "uselib": (134, None),
    "_sysctl": (156, None),
    "memfd_create": (319, 279),
    "memfd_secret": (447, 447),
    "shmget": (29, 194),
    "msgget": (68, 186),
    "semget": (64, 190),
    "sched_setaffinity": (203, 122),
    "setpriority": (141, 140),
    "sched_setscheduler": (144, 119),
    "sched_setattr": (314, 274),
    "sched_setparam": (142, 118),
}
DENIED = tuple(_TABLE)
"""System calls a sample may never make."""

_SIGNALS: dict[str, tuple[int, int]] = {
    "kill": (62, 129),
    "tkill": (200, 130),
    "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240),
    "pidfd_open": (434, 434),
    "prlimit64": (302, 261),
}
TARGETED = tuple(_SIGNALS)
"""System calls that may not be aimed (first argument) at a protected process."""

_FAKE: dict[str, tuple[int, int]] = {
    "setsid": (112, 157),
    "sched_yield": (24, 124),
}
FAKED = tuple(_FAKE)
"""System calls that return success and do nothing."""
_SOCKET = {"x86_64": 41, "aarch64": 198}
_SOCKETPAIR = {"x86_64": 53, "aarch64": 199}
ALLOWED_DOMAINS = {"AF_UNIX": 1, "AF_NETLINK": 16}
"""The only socket address families a sample may open (``socket``'s first argument)."""
_CLONE = {"x86_64": 56, "aarch64": 220}
_FCNTL = {"x86_64": 72, "aarch64": 25}
_IOCTL = {"x86_64": 16, "aarch64": 29}
OWNER_FCNTL = {"F_SETOWN": 8, "F_SETSIG": 10, "F_SETOWN_EX": 15}
"""``fcntl`` commands a sample may not make (the second argument): who gets a file's signal, and which."""
OWNER_IOCTL = {"FIOSETOWN": 0x8901, "SIOCSPGRP": 0x8902}
"""``ioctl`` requests a sample may not make: the same for sockets."""
_CLONE3 = 435
_ARCHES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}


def supported(machine: str | None = None) -> bool:
    """Whether we can build a filter for this machine (``uname -m``)."""
    return (machine or os.uname().machine) in _ARCHES


def number(name: str, machine: str | None = None) -> int | None:
    """The system call ``name``'s number on ``machine`` (default: this one)."""
    machine = machine or os.uname().machine
    col = _ARCHES[machine][1]
    if name in _TABLE:
        return _TABLE[name][col]
    if name in _SIGNALS:
        return _SIGNALS[name][col]
    if name == "clone":
        return _CLONE[machine]
    if name in _FAKE:
        return _FAKE[name][col]
    if name == "socket":
        return _SOCKET[machine]
    if name == "socketpair":
        return _SOCKETPAIR[machine]
    if name == "clone3":
        return _CLONE3
    return None


class _Asm:
    """Classic BPF with symbolic jump targets, resolved (and range-checked) at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.code):
            offs = []
            for target in (jt, jf):
                off = self.labels[target] - pc - 1 if isinstance(target, str) else int(str(target))
                if not 0 <= off <= 255:
                    raise ValueError(f"BPF jump out of range at {pc}: {off}")
                offs.append(off)
            out += struct.pack("=HBBI", code, offs[0], offs[1], k)
        return bytes(out)


def build(protected: list[int], machine: str | None = None) -> bytes:
    """The filter program (an array of ``struct sock_filter``) for ``machine``.

    ``protected``: pids (and negated process groups) no signal may be sent to.
    """
    machine = machine or os.uname().machine
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp filter for {machine}")
    audit_arch, col = _ARCHES[machine]
    a = _Asm()
    a.op(_LD_W_ABS, _ARCH)
    a.op(_JEQ_K, audit_arch, 0, "deny")
    a.op(_LD_W_ABS, _NR)
    if machine == "x86_64":
        a.op(_JGE_K, _X32_BIT, "deny", 0)
    for nrs in _TABLE.values():
        nr = nrs[col]
        if nr is not None:
            a.op(_JEQ_K, nr, "deny", 0)
    a.op(_JEQ_K, _CLONE[machine], "clone", 0)
    a.op(_JEQ_K, _CLONE3, "enosys", 0)
    for nrs3 in _FAKE.values():
        a.op(_JEQ_K, nrs3[col], "fake", 0)
    a.op(_JEQ_K, _SOCKET[machine], "socket", 0)
    a.op(_JEQ_K, _SOCKETPAIR[machine], "socket", 0)
    for nrs2 in _SIGNALS.values():
        a.op(_JEQ_K, nrs2[col], "target", 0)
    a.op(_JEQ_K, _FCNTL[machine], "fcntl", 0)
    a.op(_JEQ_K, _IOCTL[machine], "ioctl", 0)
    a.op(_RET_K, _RET_ALLOW)
    a.label("fcntl")
    a.op(_LD_W_ABS, _ARG1_LO)  # the command, an unsigned int
    for cmd in OWNER_FCNTL.values():
        a.op(_JEQ_K, cmd, "deny", 0)
    a.op(_RET_K, _RET_ALLOW)
    a.label("ioctl")
    a.op(_LD_W_ABS, _ARG1_LO)  # the request, an unsigned int
    for req in OWNER_IOCTL.values():
        a.op(_JEQ_K, req, "deny", 0)
    a.op(_RET_K, _RET_ALLOW)
    a.label("clone")
    a.op(_LD_W_ABS, _ARG0_LO)
    a.op(_JSET_K, CLONE_NEW_ANY, "deny", 0)
    a.op(_RET_K, _RET_ALLOW)
    a.label("socket")
    a.op(_LD_W_ABS, _ARG0_LO)  # the address family, an int
    for domain in ALLOWED_DOMAINS.values():
        a.op(_JEQ_K, domain, "allow", 0)
    a.op(_RET_K, _RET_ERRNO | EPERM)
    a.label("allow")
    a.op(_RET_K, _RET_ALLOW)
    a.label("target")
    a.op(_LD_W_ABS, _ARG0_LO)  # pid_t is 32 bits: the kernel reads only the low word
    for pid in sorted({p & 0xFFFFFFFF for p in protected}):
        # kill(-1) answers what it answers a uid of its own: no process to signal.
        a.op(_JEQ_K, pid, "absent" if pid == 0xFFFFFFFF else "deny", 0)
    a.op(_RET_K, _RET_ALLOW)
    a.label("absent")
    a.op(_RET_K, _RET_ERRNO | ESRCH)
    a.label("deny")
    a.op(_RET_K, _RET_ERRNO | EPERM)
    a.label("enosys")
    a.op(_RET_K, _RET_ERRNO | ENOSYS)
    a.label("fake")
    a.op(_RET_K, _RET_ERRNO | 0)  # errno 0: the call returns 0, not run
    return a.assemble()


def protected_here() -> list[int]:
    """What a sample forked from this process may not signal: us, our parent, our group, init, everyone."""
    me, parent, group = os.getpid(), os.getppid(), os.getpgid(0)
    return [p for p in (me, parent, 1, -1, -group, -me, -parent) if p not in (0, -0)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Installer:
    """A filter made ready before the fork, so the child only makes one system call."""

    def __init__(self, program: bytes) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.prctl.argtypes = [
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // 8, ctypes.cast(self._buf, ctypes.c_void_p))
        self._libc.syscall.restype = ctypes.c_long
        self._addr = ctypes.c_void_p(ctypes.addressof(self._prog))
        self._nr = _SECCOMP.get(os.uname().machine)

    def install(self) -> None:
        """Apply the filter to this thread and everything it starts.

        The caller has set no_new_privs (the zygote does, once). One system call:
        ``seccomp()`` with SPEC_ALLOW, because by default the kernel turns on its
        speculative-store-bypass mitigation for every filtered task, which slows
        CPU-bound samples; samples ran without it before they had a filter. Where
        ``seccomp()`` or the flag is missing, ``prctl`` (mitigation and all).
        """
        nr = self._nr  # looked up before the fork: the child makes one system call
        if nr is not None:
            done = self._libc.syscall(nr, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, self._addr)
            if done == 0:
                return
        if self._libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self._prog), 0, 0) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"prctl(PR_SET_SECCOMP): {os.strerror(e)}")
