"""Session 2026's hostile answers: memory no limit sees, and more ways to bend a verdict.

Each test is an attack by a model that games its tests, against the real pool (real
sandboxes of each backend, real subprocesses). Those that found a hole failed before
the fix named in their docstring; the others cover ground no earlier test did.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from rollwatch.problems import load_problem
from rollwatch.report.failures import verdict_cause
from rollwatch.scoring import ScoringPool
from rollwatch.scoring.extract import WHOLE_TEXT_MAX, extract_code

from .conftest import BACKENDS, SQUARE, fenced, nothing_left, sandbox_processes, settings, stdio_problem
from .helpers import ECHO, honest_still_passes, storable
from .test_scorers import command_problem

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def pool_256(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """A one-slot pool whose samples may use 256 MB each."""
    async with ScoringPool(settings(request.param, workers=1, memory_mb=256)) as p:
        yield p
    await nothing_left()


# Memory held where no limit of the sample looks: RLIMIT_AS (the memory limit where no
# memory cgroup exists) counts mapped pages only, not memfds or SysV segments that live on
# unmapped, nor the kernel's socket buffers. Each answer holds 384 MB under a 256 MB limit
# and says so; scaled up (256 memfds of 64 MB a process, SysV segments without end, the
# host's whole TCP budget) it takes the host's memory.
UNCOUNTED_MEMORY = {
    "memfd": """
import os
chunk, fds, held = b"x" * (1 << 20), [], 0
try:
    for i in range(12):
        fd = os.memfd_create("m%d" % i)
        for _ in range(32):
            os.write(fd, chunk)
        fds.append(fd)
        held += 32
except OSError as e:
    print("refused:", e)
print("held" if held >= 384 else "only %d MB" % held)
""",
    "sysv-shm": """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
held = 0
for i in range(12):
    ident = libc.shmget(0, 32 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    if ident < 0:
        print("refused: errno", ctypes.get_errno())
        break
    addr = libc.shmat(ident, None, 0)
    ctypes.memset(addr, 1, 32 << 20)
    libc.shmdt(ctypes.c_void_p(addr))  # unmapped: no longer in the address space, still in memory
    held += 32
print("held" if held >= 384 else "only %d MB" % held)
""",
    # Semaphore sets: kernel memory, 32000 semaphores a set, 32000 sets a namespace.
    "sysv-semaphores": """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def avail():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) >> 10
before = avail()
for i in range(200):
    if libc.semget(0, 32000, 0o1600) < 0:  # IPC_PRIVATE, IPC_CREAT | 0600
        print("refused: errno", ctypes.get_errno())
        break
held = before - avail()
print("held" if held >= 384 else "only %d MB" % held)
""",
    # Kernel socket buffers: a sender whose peer never reads. TCP's are charged to the host's
    # one budget for every TCP socket (tcp_mem), the daemon's included.
    "tcp-loopback-buffers": """
import socket
keep, total, chunk = [], 0, b"x" * (1 << 20)
try:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(200)
    while total < (384 << 20) and len(keep) < 240:
        c = socket.create_connection(ls.getsockname())
        s, _ = ls.accept()
        keep += [c, s]
        c.setblocking(False)
        while True:
            try:
                total += c.send(chunk)
            except BlockingIOError:
                break
except OSError as e:
    print("refused:", e)
print("held" if total >= (384 << 20) else "only %d MB" % (total >> 20))
""",
}


@pytest.mark.parametrize("name", sorted(UNCOUNTED_MEMORY))
async def test_memory_outside_the_address_space_is_refused(pool_256: ScoringPool, name: str) -> None:
    """memfds, SysV segments and semaphore sets, TCP buffers on the sandbox's loopback:
    each held 384 MB under memory_mb = 256 (each passed before the seccomp filter denied
    memfd_create, memfd_secret, shmget, msgget and semget, and IPv4/IPv6 sockets)."""
    problem = stdio_problem([("", "held\n")], timeout=10.0)
    with anyio.fail_after(30):
        s = await pool_256.score(problem, fenced(UNCOUNTED_MEMORY[name]))
    assert not s.passed, s
    assert "refused" in s.detail["first_failure"]["difference"], s
    storable(s)
    assert verdict_cause(s.reason)[0] == "model", s
    await honest_still_passes(pool_256)


# A wrong answer that words its failure as ours: "sandbox lost", "sandbox error: …" and
# "scorer error: …" are infra failures (report.failures): counted against rollwatch, not
# the model, and judged again by `rollwatch rescore`. A program shares its process with
# the harness that reports its exception (and so its nonce); a function's candidate
# sends the judge its own load failure or SystemExit message.
OUR_WORDS = "sandbox lost: the zygote died (not the model's fault)"


def _program_reports(kind: str, reason: str) -> str:
    """A program that finds the harness's nonce, reports its own failure, and prints a wrong answer."""
    verdict = {"kind": kind, "reason": reason}
    return (
        "import json, os, sys\n"
        "nonce = sys._getframe(0).f_back.f_locals['nonce']\n"
        f"os.write(3, (nonce + ' ' + json.dumps({verdict!r}) + '\\n').encode())\n"
        "print('wrong')\n"
    )


LAUNDERED_STDIO = {
    "exception-verdict": _program_reports("exception", OUR_WORDS),
    "memory-verdict": _program_reports("memory", "scorer error: ours"),
    "syntax-verdict": _program_reports("syntax", "sandbox error: the sandbox failed"),
}
# A candidate writes its own messages on its answer pipe (fd 4) to the judge.
_SEND = (
    "import json, os, struct\n"
    "def _send(msg):\n"
    "    b = json.dumps(msg).encode()\n"
    "    os.write(4, struct.pack('>I', len(b)) + b)\n"
)
LAUNDERED_FUNCTION = {
    "load-failure": _SEND + f"_send(['load', 'exception', {OUR_WORDS!r}])\nos._exit(1)\n",
    "load-memory": _SEND + "_send(['load', 'memory', 'scorer error: ours'])\nos._exit(1)\n",
    "exit-in-call": _SEND
    + f"def f(x):\n    _send(['raise', 'SystemExit', {OUR_WORDS!r}, 'exit', None])\n"
    + "    import time\n    time.sleep(0.2)\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(LAUNDERED_STDIO))
async def test_a_program_cannot_word_its_failure_as_ours(pool: ScoringPool, name: str) -> None:
    """Each was counted an infra failure (the reason as the program wrote it) before the host
    kept a sample's reason under its kind's own wording."""
    s = await pool.score(ECHO, fenced(LAUNDERED_STDIO[name]))
    assert not s.passed, s
    assert verdict_cause(s.reason)[0] == "model", s
    await honest_still_passes(pool)


@pytest.mark.parametrize("name", sorted(LAUNDERED_FUNCTION))
async def test_a_candidate_cannot_word_its_failure_as_ours(pool: ScoringPool, name: str) -> None:
    """As above, through the judge: a load failure or a SystemExit message is the candidate's text."""
    s = await pool.score(SQUARE, fenced(LAUNDERED_FUNCTION[name]))
    assert not s.passed, s
    assert verdict_cause(s.reason)[0] == "model", s
    await honest_still_passes(pool)


def test_a_long_unfenced_answer_is_not_parsed_on_the_event_loop() -> None:
    """1.2 MB of unfenced, valid Python: extraction parsed it whole on the daemon's event
    loop (5-30 s on our shared machine, every run and request stalled); now no code found
    at once. Unfenced code up to WHOLE_TEXT_MAX is still taken."""
    text = "x = 1\n" * 200_000 + "def f(x):\n    return x * x\n"
    started = time.perf_counter()
    ex = extract_code(text, "f")
    assert time.perf_counter() - started < 0.5
    assert ex.method == "none"
    short = "x = 1\n" * (WHOLE_TEXT_MAX // 6 - 10) + "def f(x):\n    return x * x\n"
    assert extract_code(short, "f").method == "whole-text"


# A checker that decides by its exit status, as the command protocol allows, and names
# what it got (topo-order's does: "n=1: the prerequisites have a cycle, expected IMPOSSIBLE").
EXIT_STATUS_CHECKER = """
import os, subprocess, sys
out = subprocess.run([os.environ["ROLLWATCH_RUN"], sys.argv[1]], input=b"2\\n", capture_output=True).stdout
if out.strip() != b"4":
    print("expected 4, got", out.decode(errors="replace").strip()[:100])
    sys.exit(1)
"""


async def test_a_checkers_failing_exit_status_is_the_models_failure(
    pool: ScoringPool, tmp_path: Path
) -> None:
    """Every wrong answer a checker failed by exit status ("checker: <its last line>") was
    counted an infra failure (checker_error: our judging broke) and queued for `rescore`,
    whatever the answer printed; it is the model's wrong answer. A checker that cannot
    start, times out, dies by a signal or gives a score that is not a number stays ours."""
    problem = command_problem(tmp_path, EXIT_STATUS_CHECKER)
    assert (await pool.score(problem, fenced("print(int(input()) ** 2)"))).passed
    for code in ("print(5)", f"print({OUR_WORDS!r})"):
        s = await pool.score(problem, fenced(code))
        assert not s.passed, s
        assert s.reason.startswith("checker: expected 4, got"), s
        assert verdict_cause(s.reason) == ("model", "wrong_answer"), s
    for reason in (
        "checker timeout (60s)",
        "checker killed by signal SIGSEGV",
        "checker: score is not a number",
    ):
        assert verdict_cause(reason) == ("infra", "checker_error"), reason


# The same checker, but it shows what it got on a line of its own, last: the program's
# output is then the checker's last line, which the protocol reads as JSON.
ECHOING_CHECKER = """
import os, subprocess, sys
out = subprocess.run([os.environ["ROLLWATCH_RUN"], sys.argv[1]], input=b"2\\n", capture_output=True).stdout
if out.strip() != b"4":
    print("expected 4, got:")
    print(out.decode(errors="replace").strip()[:300])
    sys.exit(1)
"""
ECHOED_VERDICTS = {
    "reason-in-our-words": {"passed": False, "score": 0.0, "reason": OUR_WORDS},
    "passed-against-the-exit-status": {"passed": True},
}


@pytest.mark.parametrize("name", sorted(ECHOED_VERDICTS))
async def test_an_echoed_verdict_is_not_worded_as_ours(pool: ScoringPool, tmp_path: Path, name: str) -> None:
    """A program printing a JSON verdict through a checker that echoes it: its own reason
    ("sandbox lost: …") or a pass the exit status denies ("checker said passed but exited
    1", with score 1.0) made the failure ours (infra, re-scored). Still a failure, now the
    model's, and no credit."""
    problem = command_problem(tmp_path, ECHOING_CHECKER)
    s = await pool.score(problem, fenced(f"import json\nprint(json.dumps({ECHOED_VERDICTS[name]!r}))"))
    assert not s.passed, s
    assert verdict_cause(s.reason)[0] == "model", s
    assert s.score == 0.0, s


@pytest.fixture
def problem_under_usr() -> Iterator[Path]:
    """A problem folder where an operator might install problem sets: under /usr/local/share."""
    top = Path("/usr/local/share")
    if not os.access(top, os.W_OK):
        pytest.skip("/usr/local/share is not writable here")
    folder = Path(tempfile.mkdtemp(prefix="rollwatch-problem-", dir=top))
    try:
        (folder / "tests.py").write_text(SECRET_TESTS)
        (folder / "problem.toml").write_text(
            'prompt = "def f(x): ..."\n[scorer]\nkind = "python-function"\nentry_point = "f"\n'
            'tests = "tests.py"\ntimeout = "5s"\n'
        )
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


SECRET_TESTS = """
def check(candidate):
    for x in range(-5, 30):
        assert candidate(x) == (x * 7919 + 17) % 1009, x
"""
# Finds the tests in the file system (every folder the sandbox shows is read-only /usr, /lib...)
# and answers from their text.
READS_THE_TESTS = r"""
import os, re
_known = {}
for root, _, files in os.walk("/usr/local/share"):
    if "tests.py" in files and "problem.toml" in files:
        text = open(os.path.join(root, "tests.py")).read()
        for x in range(-5, 30):
            _known[x] = eval(re.search(r"== (.*), x", text).group(1), {"x": x})
def f(x):
    return _known.get(x, 0)
"""


async def test_a_problem_folder_the_sandbox_shows_is_refused(
    pool: ScoringPool, problem_under_usr: Path
) -> None:
    """The sandbox shows /usr (and /bin, /lib, the interpreter's prefix) read-only: with a
    problem set installed there, an answer read the tests and passed without solving
    anything. Such a problem is now not scored at all: a scorer error naming the folder."""
    problem = load_problem(problem_under_usr)
    s = await pool.score(problem, fenced(READS_THE_TESTS))
    assert not s.passed, s
    assert s.reason.startswith("scorer error: the problem's folder"), s
    assert str(problem_under_usr) in s.reason, s


async def test_unix_sockets_asyncio_and_multiprocessing_still_work(pool: ScoringPool) -> None:
    """What the socket refusal leaves: Unix sockets (asyncio's own self-pipe is one), a
    multiprocessing pool, netlink (if_nameindex); IPv4, IPv6 and the other families fail
    with EPERM."""
    code = """
import asyncio, errno, multiprocessing, socket
a, b = socket.socketpair()
a.sendall(b"ping")
assert b.recv(4) == b"ping"
async def _twice(x):
    await asyncio.sleep(0)
    return 2 * x
assert asyncio.run(_twice(3)) == 6
with multiprocessing.get_context("fork").Pool(2) as p:
    assert p.map(abs, [-1, -2]) == [1, 2]
assert [n for _, n in socket.if_nameindex()] == ["lo"]  # over netlink
for family, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_DGRAM),
                     (socket.AF_INET6, socket.SOCK_STREAM), (socket.AF_PACKET, socket.SOCK_RAW),
                     (socket.AF_VSOCK, socket.SOCK_STREAM), (socket.AF_ALG, socket.SOCK_SEQPACKET),
                     (30, socket.SOCK_RDM)):  # AF_TIPC
    try:
        socket.socket(family, kind)
        raise AssertionError("a socket of family %d opened" % family)
    except PermissionError as e:
        assert e.errno == errno.EPERM
try:
    socket.socketpair(socket.AF_INET)
    raise AssertionError("an IP socket pair opened")
except PermissionError:
    pass
def f(x):
    return x * x
"""
    s = await pool.score(SQUARE, fenced(code))
    assert s.passed, s


async def test_a_slow_answer_that_outlasts_its_checker_is_the_models_timeout(
    pool: ScoringPool, tmp_path: Path
) -> None:
    """Each run within its own limit, but slow enough that a checker running the program
    many times ran out of its budget: "checker timeout", an infra failure (ours, queued for
    `rescore`, which spends the checker's whole budget again). The program's runs took that
    time, so it is the model's timeout; a checker that hangs by itself stays ours."""
    problem = command_problem(
        tmp_path,
        """
        import os, subprocess, sys
        for _ in range(12):
            subprocess.run([os.environ["ROLLWATCH_RUN"], sys.argv[1]], input=b"2\\n", capture_output=True)
        """,
        timeout="3s",
        # The checker's own start and each run's sandbox come out of its budget too: runs of
        # 0.8 s under a 6 s budget took less than half of it on a loaded machine (the suite's
        # three workers on two cores), and the timeout was named the checker's. Runs of 2.5 s
        # leave that overhead a smaller share.
        checker_timeout="10s",
    )
    s = await pool.score(problem, fenced("import time\ntime.sleep(2.5)\nprint(4)"))
    assert not s.passed, s
    assert s.reason.startswith("timeout: the program's runs took"), s
    assert verdict_cause(s.reason) == ("model", "timeout"), s
    hangs = command_problem(tmp_path, "import time\ntime.sleep(60)\n", checker_timeout="1s")
    s = await pool.score(hangs, fenced("print(4)"))
    assert s.reason == "checker timeout (1s)", s
    assert verdict_cause(s.reason) == ("infra", "checker_error"), s


# Busy processes, each in a session of its own: the scheduler shares the CPU between
# sessions (autogroups), so each counts as much as a whole other sample.
CPU_HOG = """
import os, time
for _ in range(40):
    if os.fork() == 0:
        os.setsid()
        try:
            os.sched_setaffinity(0, range(os.cpu_count()))
        except OSError:
            pass
        while True:
            pass
time.sleep(6)
print("no")
"""
BUSY_HONEST = """
n = 0
for i in range(3_000_000):
    n += i
print("ok")
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: every slot shares it")
async def test_a_cpu_hog_does_not_time_out_another_slots_answer(pool: ScoringPool) -> None:
    """An honest answer taking 0.2-0.3 s timed out at 1.5 s while another slot's sample ran 40
    busy processes in sessions of their own. Each slot's sandbox is now pinned to a CPU of
    its own, which its samples cannot change. (3 s: starved while the hog runs, 6 s, the
    answer times out; pinned, it passes with room for a machine busy with other tests.)"""
    honest = stdio_problem([("", "ok\n")], timeout=3.0)
    assert (await pool.score(honest, fenced(BUSY_HONEST))).passed
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.score, stdio_problem([("", "yes\n")], timeout=10.0), fenced(CPU_HOG))
        with anyio.fail_after(10):  # the hog's processes are running
            while len(sandbox_processes()) < 30:
                await anyio.sleep(0.05)
        s = await pool.score(honest, fenced(BUSY_HONEST))
        assert s.passed, s
