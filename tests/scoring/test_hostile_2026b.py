"""Hostile answers, 2026 second round: a wrong answer that makes its failure look like ours.

A failure worded "sandbox error" or "sandbox lost" is counted against the machine, not the
model, and judged again by `rescore`: a model that learns to end that way never fails.
Real pools, real sandboxes.
"""

from __future__ import annotations

import pytest

from rollwatch.report.failures import verdict_cause
from rollwatch.scoring.inside import seccomp

from .test_kernel import _as_nobody, needs_nonroot_bwrap

pytestmark = pytest.mark.anyio

# Each reaches every other process of the sandbox it can see (the resident judge among
# them; the zygote is PID 1 there, and it catches SIGINT as any Python program does), then
# waits for the sweep: a wrong answer either way.
_EVERY_OTHER = """
import ctypes, fcntl, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
def owned_by(pid, sig=None):
    r, w = os.pipe()
    fcntl.fcntl(r, fcntl.F_SETOWN, pid)
    if sig is not None:
        fcntl.fcntl(r, 10, sig)  # F_SETSIG
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
    os.write(w, b"x")  # ready: the kernel signals the owner
def f(x):
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
        sig = signal.SIGINT if pid == 1 else signal.SIGKILL
        {call}
    time.sleep(0.5)
    return -1
"""
SANDBOX_KILLERS = {
    "kill": "libc.kill(pid, sig)",
    "kill-its-group": "libc.kill(-pid, sig)",
    "tgkill": f"libc.syscall({seccomp.number('tgkill')}, pid, pid, sig)",
    "pidfd-send-signal-through-its-proc-folder": (
        "libc.syscall(424, os.open(f'/proc/{pid}', os.O_RDONLY | os.O_DIRECTORY), sig, None, 0)"
    ),
    "a-pipe-it-owns-signals-sigio": "owned_by(pid)",
    "a-pipe-it-owns-signals-sigkill-or-sigint": "owned_by(pid, sig)",
    "prlimit-of-one-mib": (
        f"libc.syscall({seccomp.number('prlimit64')}, pid, 9, (ctypes.c_ulong * 2)(1 << 20, 1 << 20), None)"
    ),
}


@needs_nonroot_bwrap
@pytest.mark.skipif(not seccomp.supported(), reason="no seccomp filter for this machine")
def test_without_root_a_candidate_cannot_take_the_judge_or_the_zygote_down() -> None:
    """As nobody the candidate shares the resident judge's uid and the zygote's: a wrong
    answer that killed the judge (by kill, its group, tgkill, pidfd_send_signal on its /proc
    folder, a pipe it made the judge the owner of, whose SIGIO the kernel sends) was scored
    "sandbox error: the judge ended without a verdict"; one that sent the zygote SIGINT
    through pidfd_send_signal "sandbox error: KeyboardInterrupt", through a pipe it owns
    "sandbox lost": ours, judged again by `rescore`, never the model's failure. The judge
    is now a protected process of the seccomp filter, and pidfd_send_signal and naming a
    file's owner (F_SETOWN, F_SETSIG...) are denied: each is the model's wrong answer, and
    the next sample passes."""
    codes = [_EVERY_OTHER.format(call=call) for call in SANDBOX_KILLERS.values()]
    results = _as_nobody([*codes, "def f(x):\n    return x * x"])
    *attacks, (honest, why) = results
    wrong = {
        name: reason
        for name, (passed, reason) in zip(SANDBOX_KILLERS, attacks, strict=True)
        if passed or verdict_cause(reason) != ("model", "wrong_answer")
    }
    assert wrong == {}
    assert honest, why
