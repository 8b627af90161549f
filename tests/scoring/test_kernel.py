"""The sandbox's kernel side, attacked from inside: seccomp, the read-only view, the parent.

Every hostile program here runs in the real sandbox (bwrap and unshare, as root, and
bwrap without root) and reports what the kernel told it; the assertions read that
report from the failure reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from rollwatch.scoring import ScoringPool
from rollwatch.scoring.cgroup import cgroups
from rollwatch.scoring.inside import seccomp

from .conftest import ROOT, SQUARE, fenced, function_problem, nothing_left, sandbox_processes, settings

pytestmark = pytest.mark.anyio

NOBODY = 65534

# Calls a sample makes with harmless arguments; unfiltered, most would not fail with
# EPERM (ptrace(TRACEME) succeeds, bpf(0, NULL) is EFAULT, keyctl(GET_KEYRING_ID) works
# for any uid), so EPERM on every one of them is the filter's doing.
PROBE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "ok" if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
out = {{}}
for name, nr in {calls!r}.items():
    out[name] = call(nr, *{args!r}.get(name, (0, 0, 0, 0, 0)))
out["clone-newuser"] = call({clone}, 0x10000000 | 17, 0, 0, 0, 0)
# Aimed at the parent: refused; at everyone: as if there were no one.
aimed = {{}}
aimed["kill-parent-stop"] = call({kill}, os.getppid(), 19)
aimed["kill-everyone"] = call({kill}, -1, 0)
aimed["tgkill-parent"] = call({tgkill}, os.getppid(), os.getppid(), 19)
aimed["pidfd-parent"] = call({pidfd_open}, os.getppid(), 0)
aimed["prlimit-parent"] = call({prlimit}, os.getppid(), 7, 0, 0)
# The reason is cut at 300 characters: report how many calls were made and the odd ones out.
bad = {{k: v for k, v in out.items() if v != "EPERM"}}
bad.update({{k: v for k, v in aimed.items() if v != ("ESRCH" if k == "kill-everyone" else "EPERM")}})
out.update(aimed)
raise RuntimeError("PROBE" + json.dumps([len(out), bad]) + "PROBE")
"""

ARGS = {
    "keyctl": (0, -3, 0),  # KEYCTL_GET_KEYRING_ID, the session keyring
    "add_key": (0, 0, 0, 0, -4),
    "ptrace": (0, 0, 0, 0),  # PTRACE_TRACEME
    "unshare": (0x10000000,),
    "io_uring_setup": (1, 0),
}


def _probe_code() -> str:
    calls = {n: seccomp.number(n) for n in PROBED}
    return "import json\n" + PROBE.format(
        calls=calls,
        args=ARGS,
        clone=seccomp.number("clone"),
        kill=seccomp.number("kill"),
        tgkill=seccomp.number("tgkill"),
        pidfd_open=seccomp.number("pidfd_open"),
        prlimit=seccomp.number("prlimit64"),
    )


PROBED = [n for n in seccomp.DENIED if seccomp.number(n) is not None]


def _not_refused(reason: str) -> dict[str, str]:
    """The calls of PROBE that did not fail as they must (all of them were made)."""
    assert "PROBE" in reason, reason
    made, bad = json.loads(reason.split("PROBE")[1])
    assert made == len(PROBED) + 6, reason
    return dict(bad)


ALLOWED = """
import os, subprocess, threading, signal, time
from concurrent.futures import ThreadPoolExecutor
with open("/tmp/data.txt", "w") as fh:
    fh.write("x" * 100000)
assert os.path.getsize("/tmp/data.txt") == 100000
os.unlink("/tmp/data.txt")
hits = []
threads = [threading.Thread(target=hits.append, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert sorted(hits) == list(range(8))
with ThreadPoolExecutor(4) as ex:
    assert list(ex.map(abs, [-1, -2])) == [1, 2]
assert subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True).stdout == b"hi\\n"
pid = os.fork()
if pid == 0:
    os._exit(7)
assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 7
child = subprocess.Popen(["/bin/sleep", "30"])
os.kill(child.pid, signal.SIGTERM)  # its own children it may signal
assert child.wait() == -signal.SIGTERM
def f(x):
    return x * x
"""


@pytest.mark.skipif(not seccomp.supported(), reason="no seccomp filter for this machine")
class TestSeccomp:
    async def test_denied_calls_fail_with_eperm(self, pool: ScoringPool) -> None:
        """keyring, ptrace, namespaces, mounts, bpf, perf, userfaultfd, modules...: each call fails with EPERM."""
        s = await pool.score(SQUARE, fenced(_probe_code()))
        assert _not_refused(s.reason) == {}
        assert {"keyctl", "add_key", "request_key", "ptrace", "bpf", "perf_event_open", "userfaultfd"} <= set(
            PROBED
        )
        assert {"mount", "umount2", "pivot_root", "unshare", "setns", "kexec_load", "init_module"} <= set(
            PROBED
        )

    async def test_keyring_carries_nothing_to_the_next_sample(self, pool: ScoringPool) -> None:
        """A key stored by one sample cannot be stored at all, so the next one finds none."""
        add, ctl = seccomp.number("add_key"), seccomp.number("keyctl")
        store = f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            r = libc.syscall({add}, b"user", b"rw-carry", b"secret", 6, -4)  # KEY_SPEC_USER_KEYRING
            assert r < 0 and ctypes.get_errno() == 1, (r, ctypes.get_errno())
            def f(x):
                return x * x
        """
        look = f"""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            r = libc.syscall({ctl}, 10, 0, 0, 0, 0)  # KEYCTL_SEARCH needs the call at all
            assert r < 0 and ctypes.get_errno() == 1, (r, ctypes.get_errno())
            def f(x):
                return x * x
        """
        for _ in range(pool.workers):
            assert (await pool.score(SQUARE, fenced(store))).passed
        for _ in range(pool.workers):
            assert (await pool.score(SQUARE, fenced(look))).passed

    async def test_threads_processes_and_files_still_work(self, pool: ScoringPool) -> None:
        """Threads, a thread pool, subprocess, fork, signalling its own child and /tmp I/O work under the filter."""
        s = await pool.score(SQUARE, fenced(ALLOWED))
        assert s.passed, s.reason

    async def test_sigstop_to_the_parent_leaves_the_pool_working(self, pool: ScoringPool) -> None:
        """A sample that tries to stop its parent (the zygote) fails to, and the next sample on that slot passes."""
        code = """
            import os, signal
            for target in (os.getppid(), 1, -1, -os.getpgid(os.getppid()) if os.getppid() > 0 else -1):
                try:
                    os.kill(target, signal.SIGSTOP)
                except OSError:
                    pass
            def f(x):
                return x * x
        """
        for _ in range(pool.workers):
            await pool.score(SQUARE, fenced(code))
        quick = function_problem(SQUARE.tests, timeout=3.0)
        for _ in range(pool.workers):
            s = await pool.score(quick, fenced("def f(x):\n    return x * x"))
            assert s.passed, s.reason


def test_filter_has_no_jump_out_of_range_on_either_arch() -> None:
    """The assembler checks every jump: both arches' filters build, with many protected pids."""
    for machine in ("x86_64", "aarch64"):
        prog = seccomp.build([1, 2, -1, -2, 4000000], machine)
        assert len(prog) % 8 == 0
        assert len(prog) // 8 < 200


# -- without root ------------------------------------------------------------------------------

NONROOT = r"""
import json, sys
sys.path[:0] = {paths!r}
import anyio
from rollwatch.scoring import ScoringPool, ScoringSettings
from tests.scoring.conftest import SQUARE, fenced
codes = json.loads(sys.argv[1])
async def main():
    out = []
    async with ScoringPool(ScoringSettings(workers=1, isolation="bwrap", timeout=5.0, memory_mb=512)) as p:
        for code in codes:
            s = await p.score(SQUARE, fenced(code))
            out.append([s.passed, s.reason])
    print(json.dumps(out))
anyio.run(main)
"""


def _as_nobody(codes: list[str]) -> list[tuple[bool, str]]:
    """Score ``codes`` in a bwrap pool of a process running as nobody: (passed, reason) of each."""
    # The system's interpreter: the daemon's may live where nobody can read (pyenv under /root).
    paths = [str(ROOT / "src"), str(ROOT), *(p for p in sys.path if p.endswith("site-packages"))]
    script = NONROOT.format(paths=paths)
    r = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-c",
            script,
            json.dumps(codes),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [(bool(p), str(why)) for p, why in json.loads(r.stdout.strip().splitlines()[-1])]


WRITE_EVERYWHERE = """
import os
out = []
for path in ("/rw-test", "/usr/rw-test", "/opt/rw-test", "/opt/rollwatch/rw-test", "/etc/rw-test", "/bin/rw-test"):
    try:
        open(path, "w").close()
        out.append(path + ":WROTE")
    except OSError as e:
        out.append(path + ":" + type(e).__name__)
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    with open(d + "/rw-left", "w") as fh:
        fh.write("x" * 1000)
raise RuntimeError(" ".join(out))
"""
LOOK_FOR_LEFTOVERS = """
import os
left = [p for p in ("/rw-test", "/opt/rw-test", "/tmp/rw-left", "/var/tmp/rw-left", "/dev/shm/rw-left") if os.path.exists(p)]
assert not left, left
def f(x):
    return x * x
"""


SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
needs_nonroot_bwrap = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("bwrap") is None
    or shutil.which("setpriv") is None
    or not os.path.exists(SYSTEM_PYTHON),
    reason=f"needs root (to become nobody), bwrap, setpriv and {SYSTEM_PYTHON}",
)


@needs_nonroot_bwrap
def test_without_root_the_view_is_read_only_and_fresh() -> None:
    """As nobody under bwrap: nothing outside the private tmpfs is writable, and nothing written survives."""
    (_, reason), (passed, why) = _as_nobody([WRITE_EVERYWHERE, LOOK_FOR_LEFTOVERS])
    assert "WROTE" not in reason, reason
    assert "/rw-test:OSError" in reason or "/rw-test:PermissionError" in reason, reason
    assert passed, why


@needs_nonroot_bwrap
@pytest.mark.skipif(not seccomp.supported(), reason="no seccomp filter for this machine")
def test_without_root_the_parent_is_out_of_reach() -> None:
    """As nobody (samples share the zygote's uid): SIGSTOP to the parent and kill(-1) fail, the next sample passes."""
    (_, reason), (passed, why) = _as_nobody([_probe_code(), "def f(x):\n    return x * x"])
    assert _not_refused(reason) == {}
    assert passed, why


OTHERS_MEMORY = """
import os
me = os.getpid()
out = []
for name in os.listdir("/proc"):
    if name.isdigit() and int(name) != me:
        for what in ("mem", "environ", "fd"):
            try:
                if what == "fd":
                    os.listdir(f"/proc/{name}/fd")
                else:
                    open(f"/proc/{name}/{what}", "r+b" if what == "mem" else "rb").close()
                out.append(f"{name}:{what}:OPEN")
            except OSError:
                pass
raise RuntimeError("OPENED " + " ".join(out))
"""


@needs_nonroot_bwrap
def test_without_root_no_other_process_in_the_sandbox_is_open_to_a_sample() -> None:
    """As nobody (one uid for all): a sample can open no other sandbox process's memory, environment or fds."""
    ((_, reason),) = _as_nobody([OTHERS_MEMORY])
    assert "OPENED" in reason, reason
    assert ":OPEN" not in reason, reason


# -- tmpfs inodes ------------------------------------------------------------------------------

MANY_FILES = """
import errno, os
made = 0
stop = "none"
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    os.makedirs(d + "/many", exist_ok=True)
    try:
        for i in range(1_000_000):
            open(f"{d}/many/{i}", "w").close()
            made += 1
    except OSError as e:
        stop = errno.errorcode.get(e.errno, str(e.errno))
raise RuntimeError(f"FILES {made} {stop} FILES")
"""


async def test_a_million_empty_files_hit_the_inode_cap(pool: ScoringPool) -> None:
    """Empty files in each private tmpfs stop at its inode cap (ENOSPC), and the next sample starts clean."""
    p = function_problem(SQUARE.tests, timeout=30.0)
    s = await pool.score(p, fenced(MANY_FILES))
    assert "FILES" in s.reason, s.reason
    _, made, stop, _ = s.reason.split("FILES")[1].split(" ")
    assert stop == "ENOSPC", s.reason
    assert int(made) <= 3 * 16384, s.reason
    look = (
        "import os\nassert not any(os.path.exists(d + '/many') for d in ('/tmp', '/var/tmp', '/dev/shm'))\n"
    )
    for _ in range(pool.workers):
        s = await pool.score(p, fenced(look + "def f(x):\n    return x * x"))
        assert s.passed, s.reason


@needs_nonroot_bwrap
def test_without_root_the_inode_cap_holds_and_no_capability_is_left() -> None:
    """As nobody: the inode cap holds too, and a sample has no capability (CAP_SYS_ADMIN was the zygote's, briefly)."""
    caps = "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Cap')]\n"
    caps += "assert set(caps) <= {'0000000000000000'} | {caps[3]}, caps  # the bounding set may stay\n"
    caps += "assert caps[1] == caps[2] == caps[4] == '0000000000000000', caps\n"
    (_, reason), (passed, why) = _as_nobody([MANY_FILES, caps + "def f(x):\n    return x * x"])
    assert " ENOSPC " in reason, reason
    assert passed, why


# -- cgroups -----------------------------------------------------------------------------------

CG = cgroups()
needs_cgroups = pytest.mark.skipif(CG.root is None, reason=f"no usable cgroup v2 here: {CG.why_not}")


def _cgroup_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


@needs_cgroups
async def test_every_process_of_a_sample_is_in_its_slots_cgroup(pool: ScoringPool) -> None:
    """A sample's processes, even one that left its session, sit in the slot's own cgroup, as does the sandbox."""
    code = """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(30)
            os._exit(0)
        time.sleep(1.5)
        def f(x):
            return x * x
    """
    p = function_problem(SQUARE.tests, timeout=10.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.score, p, fenced(code))
        with anyio.fail_after(10):
            while not (procs := sandbox_processes()):
                await anyio.sleep(0.02)
        slots = {_cgroup_of(sb.pid) for sb in pool.sandboxes if sb.pid is not None}
        assert all("/rollwatch-" in c and "/slot-" in c for c in slots), slots
        for pid, _, _ in procs:
            with contextlib.suppress(FileNotFoundError):
                assert _cgroup_of(pid) in slots, (pid, _cgroup_of(pid), slots)
    await nothing_left()


@needs_cgroups
async def test_slot_cgroups_go_with_the_pool() -> None:
    """Closing a pool kills and removes its slots' cgroups."""
    async with ScoringPool(settings("auto")) as p:
        assert CG.root is not None
        dirs = [CG.root / Path(_cgroup_of(sb.pid)).name for sb in p.sandboxes if sb.pid is not None]
        assert dirs
        assert all(d.is_dir() for d in dirs), dirs
        assert (await p.score(SQUARE, fenced("def f(x):\n    return x * x"))).passed
    assert not any(d.exists() for d in dirs), dirs


@pytest.mark.skipif(
    "memory" not in CG.controllers, reason=f"no cgroup v2 memory controller here: {CG.why_not}"
)
async def test_six_processes_of_300_mb_exceed_a_1024_mb_sample(pool_1g: ScoringPool) -> None:
    """Memory counts for the whole sample: six processes of 300 MB each under memory_mb = 1024 fail."""
    code = """
        import os, time
        kids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                x = b"\\x01" * (300 << 20)
                time.sleep(3)
                os._exit(0)
            kids.append(pid)
        x = b"\\x01" * (300 << 20)
        time.sleep(3)
        assert all(os.waitpid(k, 0)[1] == 0 for k in kids)
        def f(x):
            return x * x
    """
    s = await pool_1g.score(function_problem(SQUARE.tests, timeout=30.0), fenced(code))
    assert not s.passed, s
    assert (await pool_1g.score(SQUARE, fenced("def f(x):\n    return x * x"))).passed


@pytest.mark.skipif("pids" not in CG.controllers, reason=f"no cgroup v2 pids controller here: {CG.why_not}")
async def test_processes_count_for_the_whole_sample(pool_1g: ScoringPool) -> None:
    """pids.max holds the sample's threads and processes together: 200 threads under processes = 64 fail."""
    code = """
        import threading, time
        ts = [threading.Thread(target=time.sleep, args=(2,)) for _ in range(200)]
        for t in ts:
            t.start()
        def f(x):
            return x * x
    """
    s = await pool_1g.score(SQUARE, fenced(code))
    assert not s.passed, s


@pytest.fixture(scope="module")
async def pool_1g() -> AsyncIterator[ScoringPool]:
    """A pool with the default memory limit (1024 MB)."""
    async with ScoringPool(settings("auto", memory_mb=1024)) as p:
        yield p


async def test_a_command_checkers_candidate_runs_filtered_and_in_the_slots_cgroup(
    pool: ScoringPool, tmp_path: Path
) -> None:
    """The candidate a command checker runs through $ROLLWATCH_RUN is under the seccomp filter and the slot's cgroup."""
    from .test_scorers import command_problem

    p = command_problem(
        tmp_path,
        """
        import json, os, subprocess, sys
        r = subprocess.run([os.environ["ROLLWATCH_RUN"], sys.argv[1]], input=b"", capture_output=True)
        print(json.dumps({"passed": False, "score": 0.0, "reason": "RAN " + r.stdout.decode().strip()}))
        """,
        timeout="10s",
    )
    code = f"""
        import ctypes, os, time
        libc = ctypes.CDLL(None, use_errno=True)
        r = libc.syscall({seccomp.number("keyctl")}, 0, -3, 0)
        print("keyctl", r, ctypes.get_errno(), flush=True)
        time.sleep(1.5)
    """
    async with anyio.create_task_group() as tg:
        result: list[str] = []

        async def score() -> None:
            result.append((await pool.score(p, fenced(code))).reason)

        tg.start_soon(score)
        if CG.root is not None:
            with anyio.fail_after(10):
                while not (procs := sandbox_processes()):
                    await anyio.sleep(0.02)
            slots = {_cgroup_of(sb.pid) for sb in pool.sandboxes if sb.pid is not None}
            for pid, _, _ in procs:
                with contextlib.suppress(FileNotFoundError):
                    assert _cgroup_of(pid) in slots, (pid, _cgroup_of(pid), slots)
    assert result == ["RAN keyctl -1 1"], result
    await nothing_left()


@needs_cgroups
def test_a_dead_processs_empty_cgroups_are_swept() -> None:
    """Cgroups left by a rollwatch process killed without tidying up go at the next start; live ones stay."""
    from rollwatch.scoring import cgroup

    assert CG.root is not None
    here = CG.root.parent
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    stale = here / f"rollwatch-{dead.pid}"
    (stale / "slot-0").mkdir(parents=True)
    alive = here / f"rollwatch-{os.getppid()}"
    made_alive = not alive.exists()
    alive.mkdir(exist_ok=True)
    try:
        cgroup._sweep(here)
        assert not stale.exists()
        assert alive.exists()
    finally:
        if made_alive:
            alive.rmdir()
        with contextlib.suppress(OSError):
            (stale / "slot-0").rmdir()
            stale.rmdir()
