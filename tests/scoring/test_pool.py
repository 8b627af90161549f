"""The scoring pool's lifetime: isolation policy, the event loop, cancellation, crashes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from rollwatch.config import ScoringConfig
from rollwatch.errors import IsolationUnavailable, SandboxError
from rollwatch.scoring import ScoringPool, settings_from_config
from rollwatch.scoring.inside.zygote import PRELOAD
from rollwatch.scoring.sandbox import sandbox_python

from .conftest import (
    BACKENDS,
    ROOT,
    SQUARE,
    UID_BASE,
    fenced,
    function_problem,
    nothing_left,
    sandbox_processes,
    settings,
    timed_out,
)

pytestmark = pytest.mark.anyio
SQUARE_OK = fenced("def f(x):\n    return x * x")


class TestSettings:
    def test_from_config(self) -> None:
        """The [scoring] table maps onto the settings; what it lacks keeps its default."""
        s = settings_from_config(ScoringConfig(workers=3, require_isolation=True, memory_mb=256, timeout=7.5))
        assert (s.workers, s.require_isolation, s.memory_mb, s.timeout) == (3, True, 256, 7.5)
        assert s.isolation == "auto"
        assert s.worker_count == 3
        assert settings_from_config(ScoringConfig()).worker_count == (os.cpu_count() or 2)


class TestIsolationPolicy:
    async def test_require_isolation_refuses_to_run_bare(self) -> None:
        """With require_isolation, a pool that could only run without namespaces refuses to start."""
        with pytest.raises(IsolationUnavailable, match="require_isolation"):
            async with ScoringPool(settings("none", require_isolation=True)):
                pass
        assert sandbox_processes() == []

    async def test_auto_takes_the_best_backend(self) -> None:
        """isolation=auto picks bubblewrap where it is installed, and says so."""
        async with ScoringPool(settings("auto", require_isolation=True, workers=1)) as pool:
            assert pool.isolation == ("bwrap" if Path("/usr/bin/bwrap").exists() else "unshare")
            assert (await pool.score(SQUARE, SQUARE_OK)).isolation == pool.isolation

    async def test_unisolated_backend_still_kills_leftovers(self) -> None:
        """Without namespaces (isolation none) samples still run, limited, and leave nothing behind."""
        orphan = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(3600)\ndef f(x):\n    return x * x"
        async with ScoringPool(settings("none", workers=1, require_isolation=False)) as pool:
            assert pool.isolation == "none"
            s = await pool.score(SQUARE, fenced(orphan))
            assert s.passed, s
            await nothing_left()
            spin = function_problem("def check(candidate):\n    pass\n", timeout=0.5)
            s = await pool.score(spin, fenced("while True:\n    pass"))
            assert timed_out(s.reason), s

    async def test_unopened_pool(self) -> None:
        """Scoring on a pool that was never entered is a SandboxError, not a hang."""
        with pytest.raises(SandboxError, match="not open"):
            await ScoringPool(settings("bwrap")).score(SQUARE, SQUARE_OK)


@pytest.mark.parametrize("isolation", BACKENDS)
class TestLifetime:
    async def test_event_loop_stays_responsive(self, isolation: str) -> None:
        """Scoring many samples at once never stalls the event loop (a ticker keeps its pace)."""
        gaps: list[float] = []

        async def ticker() -> None:
            last = anyio.current_time()
            while True:
                await anyio.sleep(0.005)
                now = anyio.current_time()
                gaps.append(now - last)
                last = now

        async with ScoringPool(settings(isolation)) as pool, anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            results = []

            async def one() -> None:
                results.append(await pool.score(SQUARE, SQUARE_OK))

            async with anyio.create_task_group() as inner:
                for _ in range(40):
                    inner.start_soon(one)
            tg.cancel_scope.cancel()
        assert len(results) == 40
        assert all(r.passed for r in results)
        assert max(gaps) < 0.25, max(gaps)

    async def test_cancelled_sample_leaves_nothing(self, isolation: str) -> None:
        """Cancelling a score mid-sample kills the sample at once; the slot works again after."""
        spin = fenced("import os\nos.fork()\nwhile True:\n    pass")
        async with ScoringPool(settings(isolation, workers=1, timeout=60)) as pool:
            with anyio.move_on_after(30) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pool.score, SQUARE, spin)
                    with anyio.fail_after(10):
                        while len(sandbox_processes()) < 2:
                            await anyio.sleep(0.02)
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught
            await nothing_left()
            assert (await pool.score(SQUARE, SQUARE_OK)).passed

    async def test_a_dead_sandbox_is_replaced(self, isolation: str) -> None:
        """When a slot's sandbox dies between samples, the next sample gets a fresh one."""
        async with ScoringPool(settings(isolation, workers=1)) as pool:
            (sb,) = pool.sandboxes
            assert sb.pid is not None
            os.kill(sb.pid, signal.SIGKILL)
            # The kill is asynchronous: on a busy machine the sandbox could still answer a
            # sample before it is gone. Wait until it has exited (a zombie, or reaped).
            with anyio.fail_after(10):
                while _alive(sb.pid):
                    await anyio.sleep(0.01)
            s = await pool.score(SQUARE, SQUARE_OK)
            assert s.passed, s
            assert sb.restarts == 1

    async def test_the_zygote_carries_no_dead_weight(self, isolation: str) -> None:
        """The zygote's C heap is about a plain interpreter's with the same imports: no syntax
        tree of its own source and no freed memory left mapped (every fork copies the page
        tables of it, and every sample's exit tears them down)."""
        async with ScoringPool(settings(isolation, workers=1)) as pool:
            (sb,) = pool.sandboxes
            assert sb.pid is not None
            zygote = _first_python_below(sb.pid)
            ours = _heap_kb(f"/proc/{zygote}/smaps")
        plain = subprocess.run(
            [sandbox_python(), "-I", "-B", "-c", _PLAIN_HEAP, *PRELOAD],
            capture_output=True,
            text=True,
            check=True,
        )
        theirs = int(plain.stdout)
        # The zygote's own code, its seccomp filter and its caches: well under a MiB.
        assert ours < theirs + 1024, (ours, theirs)

    async def test_a_killed_daemon_leaves_nothing_behind(self, isolation: str, tmp_path: Path) -> None:
        """SIGKILL of the process owning a pool, mid-sample, takes every sandbox process with it."""
        base = UID_BASE + 4
        script = tmp_path / "owner.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import anyio
                from rollwatch.problems import Problem
                from rollwatch.scoring import ScoringPool, ScoringSettings

                P = Problem(id="p", title="p", prompt="", scorer="python-function", content_hash="h",
                            entry_point="f", tests="def check(c):\\n    assert c(1) == 1\\n")
                async def main():
                    s = ScoringSettings(workers=2, isolation={isolation!r}, uid_base={base}, timeout=120)
                    async with ScoringPool(s) as pool:
                        async with anyio.create_task_group() as tg:
                            for _ in range(2):
                                tg.start_soon(pool.score, P, "```python\\nimport os\\nos.fork()\\nwhile True: pass\\n```")
                anyio.run(main)
                """
            )
        )
        uids = range(base, base + 2)
        proc = subprocess.Popen(
            [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            with anyio.fail_after(20):
                while len(sandbox_processes(uids)) < 4:
                    assert proc.poll() is None
                    await anyio.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        await nothing_left(uids)
        marker = f'"uid":{base}'.encode()
        with anyio.fail_after(5):
            while _cmdlines_with(marker):
                await anyio.sleep(0.02)


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (zombies have)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] not in (b"Z", b"X")


_PLAIN_HEAP = """
import ctypes, importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
heap = False
for line in open("/proc/self/smaps"):
    if "-" in line.split()[0] and not line.startswith(" "):
        heap = line.rstrip().endswith("[heap]")
    elif heap and line.startswith("Anonymous:"):
        print(line.split()[1])
        break
"""


def _heap_kb(smaps: str) -> int:
    """The anonymous kB of the [heap] mapping in an smaps file."""
    heap = False
    for line in Path(smaps).read_text().splitlines():
        if "-" in line.split()[0] and not line.startswith(" "):
            heap = line.endswith("[heap]")
        elif heap and line.startswith("Anonymous:"):
            return int(line.split()[1])
    raise AssertionError(f"no [heap] in {smaps}")


def _first_python_below(pid: int) -> int:
    """The nearest process below ``pid`` (bwrap, or setpriv and unshare) that runs the sandbox's Python."""
    python = sandbox_python().encode()
    level = [pid]
    while level:
        below = []
        for p in level:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] == python:
                    return p
                below += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        level = below
    raise AssertionError(f"no process below {pid} runs {sandbox_python()}")


def _cmdlines_with(marker: bytes) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker in Path(f"/proc/{name}/cmdline").read_bytes():
                    out.append(int(name))
            except OSError:
                pass
    return out


async def test_function_problem_helper() -> None:
    """The test helper builds a scoreable problem (keeps the helpers honest)."""
    p = function_problem("def check(candidate):\n    pass\n", "g")
    assert p.entry_point == "g"
    assert p.scorer == "python-function"
