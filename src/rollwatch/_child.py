"""Worker processes the daemon starts (the Merkle worker, the scrub, half a split build).

Each starts in a session of its own: a signal sent to the daemon's process group (``kill
-- -PGID``, ``timeout``, a unit without ``KillMode=mixed``, a terminal's Ctrl-C) reaches
the daemon only, which stops its workers itself. Had the worker died of it first, the
daemon took that for a failure and exited 1 from a clean stop. Being out of the group,
a worker asks the kernel to kill it when the daemon dies, whatever kills the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_PARENT = "ROLLWATCH_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def env() -> dict[str, str]:
    """A worker's environment: ours, and our pid (see :func:`die_with_parent`). Start it
    with ``start_new_session=True`` too."""
    return {**os.environ, _PARENT: str(os.getpid())}


def die_with_parent() -> None:
    """In a worker: be killed (SIGKILL) when the process that started it dies (Linux),
    and exit at once if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.environ.get(_PARENT)
    if parent is not None and parent.isdigit() and os.getppid() != int(parent):
        os._exit(1)


def background(niceness: int) -> None:
    """In a worker: yield the cores to the daemon and its other work (``niceness``, 1-19).

    A worker is in a session of its own, and where the kernel groups processes by session
    (``CONFIG_SCHED_AUTOGROUP``, on in Debian's kernels) a session is scheduled as one
    group against the others: a process's own nice value then weighs only against the
    processes of its session, so a scrub at nice 19 took a core as fully as the daemon did.
    Its session's nice value (``/proc/self/autogroup``) is set too, first: a worker seen at
    its own nice value has its session's.
    """
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
        f.write(f"{niceness}\n")
    os.nice(niceness)
