"""Isolation is never lost in silence, and pools on one host never share sandbox uids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
import structlog

from rollwatch.errors import IsolationUnavailable
from rollwatch.scoring import ScoringPool
from rollwatch.scoring.uids import JUDGE_UID_OFFSET, take_uids

from .conftest import ROOT, SQUARE, UID_BASE, fenced, function_problem, sandbox_processes, settings

pytestmark = pytest.mark.anyio
SQUARE_OK = fenced("def f(x):\n    return x * x")


@pytest.fixture
def no_sandbox_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with the usual tools but neither bwrap nor unshare."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "setpriv", "env", "cat"):
        for d in ("/usr/bin", "/bin"):
            if os.path.exists(f"{d}/{tool}"):
                (bin_dir / tool).symlink_to(f"{d}/{tool}")
                break
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


class TestNoSilentFallback:
    async def test_auto_without_bwrap_or_unshare_refuses_naming_them(self, no_sandbox_tools: Path) -> None:
        """With neither tool on PATH, the default settings refuse to score, and say which tools are missing."""
        with pytest.raises(IsolationUnavailable) as e:
            async with ScoringPool(settings("auto", workers=1)):
                pass
        assert "bwrap" in str(e.value)
        assert "unshare" in str(e.value)
        assert 'isolation = "none"' in str(e.value)
        assert sandbox_processes() == []

    async def test_auto_never_falls_back_even_when_isolation_is_not_required(
        self, no_sandbox_tools: Path
    ) -> None:
        """require_isolation = false alone is not enough: auto still refuses; "none" must be written out."""
        with pytest.raises(IsolationUnavailable):
            async with ScoringPool(settings("auto", workers=1, require_isolation=False)):
                pass

    async def test_default_requires_isolation(self) -> None:
        """isolation "none" with the default settings is refused: require_isolation defaults to true."""
        with pytest.raises(IsolationUnavailable, match="require_isolation"):
            async with ScoringPool(settings("none", workers=1)):
                pass

    async def test_written_out_none_runs_and_warns_at_every_start(self, no_sandbox_tools: Path) -> None:
        """isolation "none" with require_isolation = false scores, and each start logs a WARNING."""
        for _ in range(2):
            with structlog.testing.capture_logs() as logged:
                async with ScoringPool(settings("none", workers=1, require_isolation=False)) as pool:
                    assert pool.isolation == "none"
                    assert (await pool.score(SQUARE, SQUARE_OK)).passed
            warned = [e for e in logged if e["event"] == "scoring_unisolated"]
            assert len(warned) == 1, logged
            assert warned[0]["log_level"] == "warning"

    def test_cli_refuses_without_the_tools(self, tmp_path: Path, no_sandbox_tools: Path) -> None:
        """`rollwatch problems check` with PATH lacking bwrap and unshare exits 1 with a message, no traceback."""
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(
            textwrap.dedent(
                f"""
                node = "test-node"
                [store]
                url = "sqlite:{tmp_path / "events.db"}"
                [scoring]
                workers = 1
                [[problem_sets]]
                name = "favorites"
                path = "{ROOT / "config" / "problems"}"
                """
            )
        )
        r = subprocess.run(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "problems", "check"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "PATH": str(no_sandbox_tools)},
        )
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "bwrap" in r.stderr
        assert "unshare" in r.stderr
        assert "Traceback" not in r.stderr


# -- uids -----------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids are used only as root")

HOLDER = """
import json, sys
import anyio
from rollwatch.scoring import ScoringPool, ScoringSettings
from rollwatch.problems import Problem
P = Problem(id="p", title="p", prompt="", scorer="python-function", content_hash="h",
            entry_point="f", tests="def check(c):\\n    assert c(1) == 1\\n")
HOG = '''
import os, time
kids = 0
while True:
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        kids += 1
    except OSError:
        break
time.sleep(60)
'''
async def main():
    s = ScoringSettings(workers=2, isolation="bwrap" if {bwrap} else "unshare", uid_base={base}, uid_count=8,
                        timeout=60, processes=32)
    async with ScoringPool(s) as pool:
        print("JUDGES", json.dumps([sb.judge_uid for sb in pool.sandboxes]), flush=True)
        print("UIDS", json.dumps([sb.uid for sb in pool.sandboxes]), flush=True)
        async with anyio.create_task_group() as tg:
            if {hog}:
                tg.start_soon(pool.score, P, "```python\\n" + HOG + "\\n```")
            await anyio.to_thread.run_sync(sys.stdin.readline)
            tg.cancel_scope.cancel()
anyio.run(main)
"""


def _holder(base: int, *, hog: bool = False) -> tuple[subprocess.Popen[str], list[int]]:
    proc, uids, _ = _holder_with_judges(base, hog=hog)
    return proc, uids


def _holder_with_judges(
    base: int, *, hog: bool = False
) -> tuple[subprocess.Popen[str], list[int], list[int]]:
    """A process holding a pool of 2 at ``base``: it, its slots' uids and its judges' uids."""
    import shutil

    script = HOLDER.format(base=base, hog=hog, bwrap=shutil.which("bwrap") is not None)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    judges: list[int] = []
    for line in proc.stdout:  # the pool's own log lines come first
        if line.startswith("JUDGES "):
            judges = json.loads(line[7:])
        if line.startswith("UIDS "):
            return proc, json.loads(line[5:]), judges
    _stop(proc)
    raise AssertionError("the pool did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@needs_root
class TestUids:
    def test_two_processes_take_disjoint_ranges_and_release_them(self) -> None:
        """Two pools in two processes with one uid_base get disjoint uids; once both exit, the first range is free."""
        base = UID_BASE + 2000
        a, uids_a = _holder(base)
        try:
            b, uids_b = _holder(base)
            try:
                assert len(uids_a) == len(uids_b) == 2
                assert not set(uids_a) & set(uids_b), (uids_a, uids_b)
                assert all(base <= u < base + 8 for u in uids_a + uids_b)
            finally:
                _stop(b)
        finally:
            _stop(a)
        lease = take_uids(base, 8, 2)
        try:
            assert lease.start == base
        finally:
            lease.release()

    def test_no_room_left_is_a_clear_error(self) -> None:
        """When every run of uids is held, taking one more fails naming the settings to change."""
        base = UID_BASE + 2100
        first = take_uids(base, 4, 2)
        second = take_uids(base, 4, 2)
        try:
            assert (first.start, second.start) == (base, base + 2)
            with pytest.raises(Exception, match="uid_count"):
                take_uids(base, 4, 2)
        finally:
            first.release()
            second.release()

    def test_a_range_is_free_only_with_its_judge_uids(self) -> None:
        """A run whose judge uids (+JUDGE_UID_OFFSET) another lease holds as candidate uids is skipped, both ways round."""
        base = UID_BASE + 2300
        low = take_uids(base, 8, 2)
        try:
            assert low.judge_uids == range(low.start + JUDGE_UID_OFFSET, low.start + JUDGE_UID_OFFSET + 2)
            # uid_base set on the first lease's judge uids: its candidates must go elsewhere.
            high = take_uids(low.start + JUDGE_UID_OFFSET, 8, 2)
            try:
                assert not set(high.uids) & set(low.judge_uids), (high, low)
                assert not set(high.judge_uids) & set(low.uids)
            finally:
                high.release()
        finally:
            low.release()
        # The other way round: candidates first high, then a pool whose judges would land on them.
        high = take_uids(base + JUDGE_UID_OFFSET, 8, 2)
        try:
            low = take_uids(high.start - JUDGE_UID_OFFSET, 8, 2)
            try:
                assert not set(low.judge_uids) & set(high.uids), (low, high)
            finally:
                low.release()
        finally:
            high.release()

    def test_two_pools_never_share_a_judge_uid(self) -> None:
        """Two pools in two processes, the second's uid_base on the first's judge uids: no uid of either is the other's."""
        base = UID_BASE + 2400
        a, uids_a, judges_a = _holder_with_judges(base)
        try:
            assert judges_a == [u + JUDGE_UID_OFFSET for u in uids_a]
            b, uids_b, judges_b = _holder_with_judges(uids_a[0] + JUDGE_UID_OFFSET)
            try:
                assert len(uids_b) == 2
                everyone = uids_a + judges_a + uids_b + judges_b
                assert len(set(everyone)) == len(everyone), (uids_a, judges_a, uids_b, judges_b)
            finally:
                _stop(b)
        finally:
            _stop(a)

    async def test_a_process_hog_in_one_pool_does_not_starve_another(self) -> None:
        """One pool's sample holds its process limit; an honest threaded solution in another pool still passes."""
        base = UID_BASE + 2200
        hog, hog_uids = _holder(base, hog=True)
        try:
            with anyio.fail_after(30):
                while len(sandbox_processes(range(min(hog_uids), max(hog_uids) + 1))) < 30:
                    assert hog.poll() is None
                    await anyio.sleep(0.05)
            threaded = fenced(
                """
                import threading
                def f(x):
                    out = []
                    ts = [threading.Thread(target=out.append, args=(x * x,)) for _ in range(24)]
                    for t in ts:
                        t.start()
                    for t in ts:
                        t.join()
                    return out[0]
                """
            )
            p = function_problem(SQUARE.tests, timeout=10.0)
            async with ScoringPool(settings("auto", uid_base=base, processes=32)) as pool:
                mine = {sb.uid for sb in pool.sandboxes}
                assert not mine & set(hog_uids)
                s = await pool.score(p, threaded)
                assert s.passed, s.reason
        finally:
            _stop(hog)
