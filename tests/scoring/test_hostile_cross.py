"""Hostile answers against other rollouts: what one sample does to the verdicts of others.

Earlier rounds attacked one answer's own verdict. Here a wrong answer tries to change
another one's: by starving it of what the machine shares (an honest answer scored as
the model's timeout when the machine failed it), or by leaving something behind that a
later sample reads (so a wrong answer passes). Real pools, real sandboxes, run as root.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from rollwatch.report.failures import verdict_cause
from rollwatch.scoring import ScoringPool

from .conftest import BACKENDS, UID_BASE, fenced, nothing_left, sandbox_processes, settings, stdio_problem
from .test_hostile import storable

pytestmark = pytest.mark.anyio


def _psi() -> bool:
    try:
        Path("/proc/pressure/cpu").read_bytes()
    except OSError:
        return False
    return True


# -- starvation: another pool's sample on the same CPU ------------------------------------

# 40 busy processes in sessions of their own, then past its own time limit: the model's
# timeout, whatever it does to others.
HOG = """
import os, time
for _ in range(40):
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
time.sleep(60)
"""
# 0.2-0.7 s of CPU alone on this machine.
BUSY_HONEST = """
n = 0
for i in range(3_000_000):
    n += i
print("ok")
"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.skipif(not _psi(), reason="no pressure stall information in this kernel")
async def test_a_hog_in_another_pool_does_not_make_an_honest_answer_the_models_timeout(backend: str) -> None:
    """Each slot's sandbox is pinned to a CPU, but two pools on one host (the daemon and a
    `rollwatch run`, `rescore` or `problems check` beside it; two daemons; more workers than
    cores) pin their slots to the same CPUs. A hog in one pool's slots starved an honest
    answer in the other's: 70 ms of CPU in its 3 s, scored `timeout`, the model's failure.
    It is now our failure (`sandbox error`, judged again by `rescore`), known from the slot
    cgroup's CPU pressure (its work ready, its CPU running others); the hog's own timeout
    stays the model's."""
    async with ScoringPool(settings(backend, uid_count=8)) as hogs, ScoringPool(settings(backend, uid_count=8)) as pool:
        if any(sb._cgroup is None for sb in (*hogs.sandboxes, *pool.sandboxes)):
            pytest.skip("no cgroup v2 for the slots here")
        honest = stdio_problem([("", "ok\n")], timeout=3.0)
        alone = await pool.score(honest, fenced(BUSY_HONEST))
        assert alone.passed, alone
        hogged: list[object] = []

        async def hog() -> None:
            hogged.append(await hogs.score(stdio_problem([("", "ok\n")], timeout=8.0), fenced(HOG)))

        async with anyio.create_task_group() as tg:
            for _ in hogs.sandboxes:  # one on every CPU
                tg.start_soon(hog)
            with anyio.fail_after(15):  # the hogs' processes are running
                while len(sandbox_processes(range(hogs.settings.uid_base, hogs.settings.uid_base + 2))) < 70:
                    await anyio.sleep(0.05)
            s = await pool.score(honest, fenced(BUSY_HONEST))
        storable(s)
        assert s.passed or verdict_cause(s.reason)[0] == "infra", s
        if not s.passed:
            assert s.reason.startswith("sandbox error: the host ran other work on the sample's CPU"), s
        for h in hogged:
            assert verdict_cause(h.reason) == ("model", "timeout"), h  # type: ignore[attr-defined]
    await nothing_left(range(UID_BASE, UID_BASE + 8))
