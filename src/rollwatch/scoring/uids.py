"""Sandbox uids no other process on the host shares: one lock file per uid.

As root, slot N of a pool runs its samples as uid ``start + N``, and their tests
(the judge) as uid ``start + N + JUDGE_UID_OFFSET``. Two rollwatch
processes on one host (a daemon and ``rollwatch problems check``, or two daemons)
must not use the same uids: RLIMIT_NPROC counts per uid, and the zygote's
``kill(-1)`` as the slot's uid (isolation "none") reaches every process of that
uid. So each pool takes a run of ``workers`` uids from ``[uid_base, uid_base +
uid_count)`` whose lock files (``/run/rollwatch/uid-<N>.lock``) it can ``flock``,
together with those of their judge uids, and holds them until it closes: a pool
whose ``uid_base`` lands on another pool's judge uids takes other uids, so no
candidate ever runs as (and could signal, trace or starve) another pool's judge. The kernel drops a flock with the last descriptor,
so a killed daemon's uids come free at once, and a stale file locks nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field

from rollwatch.errors import SandboxError

LOCK_DIR = "/run/rollwatch"
JUDGE_UID_OFFSET = 1 << 16
"""As root, a python-function sample's tests run as ``uid + JUDGE_UID_OFFSET``: a uid
no candidate runs as, so no candidate can signal, trace or read the judge."""


@dataclass
class UidLease:
    """``count`` consecutive uids from ``start`` and their judge uids, held (by open, locked files) until released."""

    start: int
    count: int
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def uids(self) -> range:
        return range(self.start, self.start + self.count)

    @property
    def judge_uids(self) -> range:
        return range(self.start + JUDGE_UID_OFFSET, self.start + JUDGE_UID_OFFSET + self.count)

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

    A run is free only when its judge uids (each ``+ JUDGE_UID_OFFSET``) are free too:
    both are locked, so pools whose ranges overlap only through their judges do not meet.

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
        taken = None
        for uid in range(start, start + workers):
            for wanted in (uid, uid + JUDGE_UID_OFFSET):
                fd = _lock(lock_dir, wanted)
                if fd is None:
                    taken = uid
                    break
                held.append(fd)
            if taken is not None:
                break
        if taken is None:
            return UidLease(start, workers, held)
        for fd in held:
            os.close(fd)
        # The uid after the one that was taken (itself or as a judge) is the next place a
        # free run can begin.
        start = taken + 1
    raise SandboxError(
        f"no {workers} free sandbox uids in {base}..{base + count - 1}: other rollwatch processes hold them "
        "(raise scoring.uid_count, or move scoring.uid_base)"
    )
