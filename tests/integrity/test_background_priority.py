"""The integrity workers yield the cores to the daemon, in the kernel's eyes too.

The Merkle tree's worker runs at nice 10 and the scrub at nice 19, each in a session of its
own (see ``rollwatch._child``). Where the kernel schedules each session as a group
(``CONFIG_SCHED_AUTOGROUP``, on in Debian's kernels: ``/proc/sys/kernel/sched_autogroup_enabled``)
a process's nice value weighs only against its own session: both workers took a core as
fully as the daemon did. A cold start of 200k events, whose scrub at start and tree ran
beside the projections' build, caught up in 4.5 s; with the sessions' nice values set too,
3.5 s. What the kernel holds for each worker is read from ``/proc``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integrity.served import Site, _poll, _stop
from tests.integrity.test_stalled_watches import _children

AUTOGROUP = Path("/proc/self/autogroup")

pytestmark = pytest.mark.skipif(
    not AUTOGROUP.exists(),
    reason="this kernel does not group processes by session (no CONFIG_SCHED_AUTOGROUP)",
)


def _niceness(pid: int, module: bytes) -> tuple[int, int] | None:
    """The process's own nice value and its session's, once it runs ``module``'s work;
    None if ``pid`` is not that worker (or is gone)."""
    try:
        if module not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        stat = Path(f"/proc/{pid}/stat").read_text()
        group = Path(f"/proc/{pid}/autogroup").read_text()
    except OSError:
        return None
    own = int(stat.rsplit(")", 1)[1].split()[16])  # field 19, nice
    return own, int(group.split("nice")[1])


def _seen(daemon: int, module: bytes, want: int) -> tuple[int, int] | None:
    """A worker of ``daemon`` running ``module`` once it has lowered itself (its own nice
    value, set last, is ``want``): its own and its session's values."""
    for pid in _children(daemon):
        got = _niceness(pid, module)
        if got is not None and got[0] == want:
            return got
    return None


def test_the_tree_worker_and_the_scrub_yield_as_sessions(site: tuple[Site, subprocess.Popen[str]]) -> None:
    """Each worker's session has the worker's nice value (before: 0, whatever the worker's)."""
    _, proc = site
    tree = _poll(
        lambda: _seen(proc.pid, b"rollwatch.integrity._worker", 10), 30, "the tree's worker at nice 10"
    )
    assert tree == (10, 10)
    # A scrub pass every 500 ms: one is caught once it has lowered itself.
    scrub = _poll(lambda: _seen(proc.pid, b"rollwatch.integrity.scrub", 19), 30, "a scrub pass at nice 19")
    assert scrub == (19, 19)
    err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
