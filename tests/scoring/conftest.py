"""Fixtures of the scoring tests: real sandboxes of each isolation backend.

Every pool here runs its samples under uids of its own (``UID_BASE`` + slot, far from
the 60000 the daemon uses), so a scan of /proc for those uids finds exactly what our
samples left behind: the answer must always be nothing.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from rollwatch.problems import Case, Problem
from rollwatch.scoring import ScoringPool, ScoringSettings

ROOT = Path(__file__).resolve().parents[2]
PROBLEMS = ROOT / "config" / "problems"
UID_BASE = 61000 + (os.getpid() % 400) * 8
WORKERS = 2


def backend_available(name: str) -> bool:
    if name == "bwrap":
        return shutil.which("bwrap") is not None
    if name == "unshare":
        return os.geteuid() == 0 and shutil.which("unshare") is not None
    return True


BACKENDS = [
    pytest.param(
        name, marks=pytest.mark.skipif(not backend_available(name), reason=f"{name} is not available")
    )
    for name in ("bwrap", "unshare")
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def settings(isolation: str, **kw: object) -> ScoringSettings:
    base: dict[str, object] = {
        "workers": WORKERS,
        "isolation": isolation,
        "uid_base": UID_BASE,
        "uid_count": 8,
        "timeout": 5.0,
        "memory_mb": 512,
    }
    base.update(kw)
    return ScoringSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=BACKENDS)
async def pool(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """One pool per namespace backend, shared by a module's tests (hostile ones included)."""
    async with ScoringPool(settings(request.param)) as p:
        assert p.isolation == request.param
        yield p
    assert sandbox_processes() == []


def sandbox_processes(uids: range | None = None) -> list[tuple[int, int, str]]:
    """(pid, uid, command) of every process running as one of our sandbox uids.

    The candidates' uids: the resident judge of each slot (``JUDGE_UID_OFFSET`` above)
    belongs to the sandbox, like the zygote, and lives as long as it.
    """
    uids = uids or range(UID_BASE, UID_BASE + 8)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                if uid in uids:
                    found.append((int(name), uid, cmd[:120]))
                break
    return found


async def nothing_left(uids: range | None = None, within: float = 5.0) -> None:
    """Wait (polling, with a deadline) until no process of the sandbox uids is left."""
    with anyio.fail_after(within):
        while sandbox_processes(uids):
            await anyio.sleep(0.02)


def function_problem(
    tests: str, entry: str = "f", *, timeout: float | None = None, prelude: str = ""
) -> Problem:
    return Problem(
        id="t-" + entry,
        title=entry,
        prompt=f"def {entry}(x): ...",
        scorer="python-function",
        content_hash="sha256:test",
        entry_point=entry,
        tests=textwrap.dedent(tests),
        timeout=timeout,
        prelude=prelude,
    )


def stdio_problem(
    cases: list[tuple[str, str]], *, tolerance: float | None = None, timeout: float | None = None
) -> Problem:
    return Problem(
        id="t-stdio",
        title="stdio",
        prompt="",
        scorer="stdio",
        content_hash="sha256:test",
        cases=tuple(Case(f"{i:02d}", i_.encode(), o.encode()) for i, (i_, o) in enumerate(cases, 1)),
        float_tolerance=tolerance,
        timeout=timeout,
    )


SQUARE = function_problem(
    """
    def check(candidate):
        assert candidate(2) == 4
        assert candidate(5) == 25
        assert candidate(-3) == 9
    """
)


def fenced(code: str) -> str:
    return "Here you go:\n```python\n" + textwrap.dedent(code).strip() + "\n```\n"


def timed_out(reason: str, where: str = "") -> bool:
    """Whether ``reason`` is a timeout (``where``: what follows it, " on case 2 (02)"): the
    model's, or ours when the machine kept the sample's CPU busy with other work for most of
    its time (a loaded test machine: SampleResult.starved)."""
    return reason == "timeout" + where or (
        reason.startswith("sandbox error: the host ran other work on the sample's CPU")
        and reason.endswith(where)
    )


SECRET = "sk-rollwatch-test-" + os.urandom(8).hex()


@pytest.fixture(scope="session", autouse=True)
def secret_env() -> Iterator[str]:
    """A fake API key in the daemon's environment from the start; no sample may see it."""
    os.environ["ROLLWATCH_TEST_SECRET"] = SECRET
    try:
        yield SECRET
    finally:
        os.environ.pop("ROLLWATCH_TEST_SECRET", None)
