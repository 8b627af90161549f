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
    """In a worker: a lower priority (``niceness``, 1-19) than the daemon's own work.

    A worker is in a session of its own, and where the kernel groups processes by session
    (``CONFIG_SCHED_AUTOGROUP``) a process's nice value weighs only within its session: the
    worker then takes a core as fully as the daemon does. Setting its session's nice value
    too (``/proc/self/autogroup``) was tried and taken out (session 24): work of the daemon
    waits on these workers (a problem check and re-score in a cluster test took past 90 s,
    2 of 6 tries, with two busy loops on the machine), so starving them stalled it.
    """
    os.nice(niceness)
