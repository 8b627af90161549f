"""Sandbox uids no other process on the host shares: one lock file per uid.

As root, slot N of a pool runs its samples as uid ``start + N``. Two rollwatch
processes on one host (a daemon and ``rollwatch problems check``, or two daemons)
must not use the same uids: RLIMIT_NPROC counts per uid, and the zygote's
``kill(-1)`` as the slot's uid (isolation "none") reaches every process of that
uid. So each pool takes a run of ``workers`` uids from ``[uid_base, uid_base +
uid_count)`` whose lock files (``/run/rollwatch/uid-<N>.lock``) it can ``flock``,
and holds them until it closes. The kernel drops a flock with the last descriptor,
so a killed daemon's uids come free at once, and a stale file locks nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field

from rollwatch.errors import SandboxError

LOCK_DIR = "/run/rollwatch"


@dataclass
class UidLease:
    """``count`` consecutive uids from ``start``, held (by open, locked files) until released."""

    start: int
    count: int
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def uids(self) -> range:
        return range(self.start, self.start + self.count)

    def release(self) -> None:
        """Let other processes take these uids (closing the files drops the locks)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _lock(lock_dir: str, uid: int) -> int | None:
    fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def take_uids(base: int, count: int, workers: int, lock_dir: str = LOCK_DIR) -> UidLease:
    """The first run of ``workers`` consecutive uids in ``[base, base + count)`` no one else holds.

    Blocking (file system calls): call it from a worker thread. Raises SandboxError
    when every run is taken or the lock folder cannot be made.
    """
    try:
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
    except OSError as e:
        raise SandboxError(f"cannot make the uid lock folder {lock_dir}: {e.strerror}") from None
    start = base
    while start + workers <= base + count:
        held: list[int] = []
        for uid in range(start, start + workers):
            fd = _lock(lock_dir, uid)
            if fd is None:
                break
            held.append(fd)
        if len(held) == workers:
            return UidLease(start, workers, held)
        for fd in held:
            os.close(fd)
        # The uid after the one that was taken is the next place a free run can begin.
        start += len(held) + 1
    raise SandboxError(
        f"no {workers} free sandbox uids in {base}..{base + count - 1}: other rollwatch processes hold them "
        "(raise scoring.uid_count, or move scoring.uid_base)"
    )
