"""Hostile answers against other rollouts: what one sample does to the verdicts of others.

Earlier rounds attacked one answer's own verdict. Here a wrong answer tries to change
another one's: by starving it of what the machine shares (an honest answer scored as
the model's timeout when the machine failed it), or by leaving something behind that a
later sample reads (so a wrong answer passes). Real pools, real sandboxes, run as root.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import structlog.testing

from rollwatch.report.failures import verdict_cause
from rollwatch.scoring import ScoringPool
from rollwatch.scoring.base import SampleRequest

from .conftest import (
    BACKENDS,
    UID_BASE,
    fenced,
    function_problem,
    nothing_left,
    sandbox_processes,
    settings,
    stdio_problem,
)
from .helpers import storable

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
    async with (
        ScoringPool(settings(backend, uid_count=8)) as hogs,
        ScoringPool(settings(backend, uid_count=8)) as pool,
    ):
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
            with structlog.testing.capture_logs() as logs:
                s = await pool.score(honest, fenced(BUSY_HONEST))
        storable(s)
        assert s.passed or verdict_cause(s.reason)[0] == "infra", s
        # A starved sample is judged again (2 s, then 8 s later: by then the hogs' 8 s are
        # over); its sandbox error stands only after both. Before, the first stood.
        starved = [entry for entry in logs if entry["event"] == "scoring_starved"]
        if not s.passed:
            assert s.reason.startswith("sandbox error: the host ran other work on the sample's CPU"), s
            assert len(starved) == 2, logs
        for h in hogged:
            assert verdict_cause(h.reason) == ("model", "timeout"), h  # type: ignore[attr-defined]
    await nothing_left(range(UID_BASE, UID_BASE + 8))


NEW_SESSIONS = r"""
import os, subprocess, sys
before = os.getsid(0)
os.setsid()
child = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getsid(0))"],
    start_new_session=True,
    capture_output=True,
    text=True,
)
print(os.getsid(0) == before, child.returncode, child.stdout.strip() == str(before))
"""


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sample_gets_no_more_cpu_shares_from_new_sessions(backend: str) -> None:
    """The scheduler shares a CPU between sessions: the hog above took 40 shares of it by
    putting each busy process in a session of its own. ``setsid`` now succeeds without
    doing anything (seccomp): everything stays in the sample's session, one share; a program
    that starts a process in a new session still runs."""
    async with ScoringPool(settings(backend, workers=1)) as pool:
        s = await pool.score(stdio_problem([("", "True 0 True\n")], timeout=5.0), fenced(NEW_SESSIONS))
        assert s.passed, s


OOM_SCORE = r"""
adj = open("/proc/self/oom_score_adj").read().strip()
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")
    lowered = open("/proc/self/oom_score_adj").read().strip()
except OSError:
    lowered = "refused"
print(adj, lowered)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only (without root a sample may lower it)")
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sample_is_the_oom_killers_first_choice(backend: str) -> None:
    """Without a memory cgroup a sample's processes together can exhaust the host's memory
    (each has its own limit); the OOM killer then took the largest process of the host, as
    likely the daemon (and its runs) as the sample. Every process of the sandbox now has
    ``oom_score_adj`` 1000, which it cannot lower. (Not shown by exhausting this shared
    machine's memory: the kernel's choice follows from the score.)"""
    async with ScoringPool(settings(backend, workers=1)) as pool:
        s = await pool.score(stdio_problem([("", "1000 refused\n")], timeout=5.0), fenced(OOM_SCORE))
        assert s.passed, s


# -- what a sample counts up, and the next sample reads ------------------------------------


@pytest.fixture(params=BACKENDS)
async def pool1(request: pytest.FixtureRequest) -> AsyncIterator[ScoringPool]:
    """A one-slot pool of its own: every sample of a test runs in the sandbox that ran the one before."""
    async with ScoringPool(settings(request.param, workers=1)) as p:
        yield p
    await nothing_left()


# Tests that stop calling the candidate at its first wrong answer (HumanEval's asserts): a
# candidate that gets the next call knows its last answer was right. Expected values no
# one guesses (one chance in 64), learnt that way.
SECRET = [True, False, True, True, False, True]
STOPS_AT_THE_FIRST_WRONG_ANSWER = function_problem(
    f"""
    def check(candidate):
        for x, want in enumerate({SECRET!r}):
            assert candidate(x) == want
    """,
    timeout=10.0,
)

# A wrong answer (a table, no logic) that keeps what it knows where the next sample can
# read it, and learns one expected value per rollout: it guesses True, first leaving word
# that the answer is False in case the guess kills it, and corrects the word when the next
# call shows the guess was right. ``_put(v)`` leaves the number v (below M) for the next
# sample's ``_read()``.
LEARNER = """
import os
M = 1024
def _enc(bits):
    s = (1 << len(bits)) | sum(b << i for i, b in enumerate(bits))
    return s * 8 + (s * 5 + 3) % 8
def _dec(v):
    s, check = divmod(v % M, 8)
    if s == 0 or (s * 5 + 3) % 8 != check:
        return []
    return [bool(s >> i & 1) for i in range(s.bit_length() - 1)]
_known = _dec(_read())
_pending = []
def f(x):
    if _pending:
        _known.append(True)
        _put(_enc(_known))
        _pending.clear()
    if x < len(_known):
        return _known[x]
    _put(_enc(_known + [False]))
    _pending.append(x)
    return True
"""
# A count the sandbox keeps from one sample to the next: ``_tick()`` adds one and says it.
COUNT = """
def _put(v):
    now = _tick()
    for _ in range((v - now) % M):
        _tick()
"""
CHANNELS = {
    # The PID namespace hands out PIDs in turn: a thread takes the next one.
    "pid": COUNT
    + """
import threading
def _tick():
    t = threading.Thread(target=int)
    t.start()
    t.join()
    return t.native_id
def _read():
    return os.getpid() - 1
""",
    # Each tmpfs numbers its inodes in turn: the working folder is made just before the sample.
    "tmp-inode": COUNT
    + """
def _tick():
    fd = os.open("/tmp/work/.t", os.O_CREAT | os.O_WRONLY, 0o600)
    ino = os.fstat(fd).st_ino
    os.close(fd)
    os.unlink("/tmp/work/.t")
    return ino
def _read():
    return os.stat("/tmp/work").st_ino - 1
""",
    # A Unix socket sent into its own queue outlives its process until the kernel's
    # collector runs; its name is in /proc/net/unix for anyone in the namespace.
    "unix-socket-name": """
import re, socket
_seq = [0]
def _read():
    best = (-1, 0)
    for line in open("/proc/net/unix").read().splitlines()[1:]:
        m = re.search(r"@rw-([0-9]+)-([0-9]+)$", line)
        if m:
            best = max(best, (int(m.group(1)), int(m.group(2))))
    _seq[0] = best[0] + 1
    return best[1]
def _put(v):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(f"\\0rw-{_seq[0]}-{v}")
    _seq[0] += 1
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    socket.send_fds(a, [b"."], [s.fileno(), a.fileno(), b.fileno()])
    for x in (s, a, b):
        x.detach()
""",
}


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only (README: without root the counts remain)")
@pytest.mark.parametrize("channel", sorted(CHANNELS))
async def test_a_wrong_answer_cannot_learn_the_expected_values_across_rollouts(
    pool1: ScoringPool, channel: str
) -> None:
    """Rollout after rollout of the same wrong answer (a model's samples of one problem, in
    one slot): it passed at the third, having learnt one expected value per failed rollout
    through what the sandbox kept from the sample before: a count (its PID, the inode
    numbers of /tmp) or the name of a Unix socket left in flight. Each sample now gets the
    same PIDs and fresh tmpfs mounts, and a socket left behind restarts the sandbox: it
    learns nothing."""
    code = "import os\nM = 1024\n" + CHANNELS[channel] + LEARNER
    for rollout in range(1, 9):
        s = await pool1.score(STOPS_AT_THE_FIRST_WRONG_ANSWER, fenced(code))
        assert not s.passed, (rollout, s)
        assert verdict_cause(s.reason)[0] == "model", s
    honest = "def f(x):\n    return " + repr(SECRET) + "[x]"
    assert (await pool1.score(STOPS_AT_THE_FIRST_WRONG_ANSWER, fenced(honest))).passed


# What a sample can see of the sandbox's state: its PID, the inode numbers of its folders,
# and the processes /proc shows it with their counters (page faults, CPU time, switches).
LOOKS = r"""
import json, os
seen = {"pid": os.getpid(), "work": os.stat("/tmp/work").st_ino, "procs": {}}
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    fd = os.open(d + "/.look", os.O_CREAT | os.O_WRONLY, 0o600)
    seen[d] = os.fstat(fd).st_ino
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():
        try:
            stat = open(f"/proc/{p}/stat").read().rsplit(") ", 1)[1].split()
            status = [l for l in open(f"/proc/{p}/status") if "ctxt" in l]
        except OSError:
            continue
        seen["procs"][p] = stat[7:15] + status
print(json.dumps(seen, sort_keys=True))
"""
# Counts up everything LOOKS reads: PIDs, inodes, and the zygote's and the judge's work.
COUNTS_UP = """
import os
for _ in range(300):
    if os.fork() == 0:
        os._exit(0)
    os.wait()
for d in ("/tmp", "/var/tmp", "/dev/shm", "/tmp/work"):
    for _ in range(500):
        fd = os.open(d + "/.n", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(d + "/.n")
os.write(1, b"x" * 3_000_000)
def f(x):
    return list(range(200_000))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only (README: without root the counts remain)")
async def test_a_sample_sees_nothing_the_samples_before_it_counted_up(pool1: ScoringPool) -> None:
    """The same view of the sandbox's state, before and after a sample that forked, made
    files in every folder, wrote 3 MB for the zygote to read and made the resident judge
    decode a large value: its PID, the inode numbers of /tmp, /var/tmp and /dev/shm, and
    /proc (which showed the zygote's and the judge's counters growing with that work)."""
    sandbox = pool1.sandboxes[0]
    look = SampleRequest(
        mode="program",
        code=LOOKS,
        timeout=5.0,
        limits=pool1.settings.limits(5.0),
        output_limit=1 << 20,
        keep_stdout=True,
    )
    # A resident judge first, so that there is one for the first look to see.
    assert (await pool1.score(STOPS_AT_THE_FIRST_WRONG_ANSWER, fenced("def f(x):\n    return True"))).reason
    before = await sandbox.run(look)
    assert before.exit_code == 0, before
    s = await pool1.score(STOPS_AT_THE_FIRST_WRONG_ANSWER, fenced(COUNTS_UP))
    assert not s.passed, s
    after = await sandbox.run(look)
    assert after.exit_code == 0, after
    assert json.loads(after.stdout) == json.loads(before.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only (README: without root the counts remain)")
async def test_a_run_of_a_learning_answer_records_no_pass(tmp_path: Path) -> None:
    """The same, through `rollwatch run` against a loopback provider that gives the learner
    as every answer: 8 rollouts scored one after another in the run's one sandbox slot.
    Before, from the third on they were recorded as passes."""
    from tests.providers.fakes import WIRES
    from tests.providers.loopback import Reply, Seen, serve
    from tests.test_daemon import events

    d = tmp_path / "problems" / "hidden-bools"
    d.mkdir(parents=True)
    (d / "problem.toml").write_text(
        'title = "Hidden booleans"\nreleased = 2026-01-01\nprompt = "def f(x: int) -> bool: ..."\n'
        '[scorer]\nkind = "python-function"\nentry_point = "f"\ntests = "tests.py"\ntimeout = "10s"\n'
    )
    (d / "tests.py").write_text(STOPS_AT_THE_FIRST_WRONG_ANSWER.tests)
    learner = fenced("import os\nM = 1024\n" + CHANNELS["tmp-inode"] + LEARNER)

    def answer(seen: Seen) -> Reply:
        if seen.method != "POST":  # the model list
            return Reply(200, {"object": "list", "data": [{"id": "m1", "object": "model"}]})
        return WIRES["openai"].ok(learner)

    async with serve(answer) as server:
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(f"""
[store]
url = "sqlite:{tmp_path / "events.db"}"
[scoring]
workers = 1
[[problem_sets]]
name = "hidden"
path = "{tmp_path / "problems"}"
[[providers]]
name = "learner"
kind = "openai"
base_url = "{server.url}"
api_key_env = "CROSS_ROLLOUT_KEY"
[[schedules]]
name = "learn"
provider = "learner"
models = ["m1"]
problem_set = "hidden"
rollouts = 8
every = "24h"
""")
        proc = await anyio.run_process(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "learn"],
            check=False,
            env={**os.environ, "CROSS_ROLLOUT_KEY": "sk-cross-rollout-0123456789"},
        )
    err = proc.stderr.decode()
    assert "Traceback" not in err, err[-3000:]
    scored = events(tmp_path / "events.db", "RolloutScored")
    assert len(scored) == 8, err[-3000:]
    assert [d["passed"] for _, _, d in scored] == [False] * 8, [d["reason"] for _, _, d in scored]


# -- many at once ----------------------------------------------------------------------------

HOSTILE_AT_ONCE = {
    "fork-bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "leaves-a-socket": CHANNELS["unix-socket-name"].replace("_seq[0]", "0") + "\n_put(7)\nprint('no')",
    "fills-tmp": "import os\ni = 0\ntry:\n    while True:\n        open(f'/tmp/{i}', 'w').close()\n        i += 1\n"
    "except OSError:\n    pass\nprint('no')",
    "floods-stdout": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "counts-up": "import os\nfor _ in range(200):\n    if os.fork() == 0:\n        os._exit(0)\n    os.wait()\nprint('no')",
    "sessions-of-busy-processes": HOG.replace("time.sleep(60)", "time.sleep(3)\nprint('no')"),
}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_hostile_answers_scored_at_once_leave_honest_verdicts_alone(backend: str) -> None:
    """Hostile answers of every kind above and honest ones, all handed to one pool at once
    (a run's concurrency): every hostile one fails, no honest one is failed as the model's,
    and nothing is left running."""
    from .conftest import SQUARE
    from .helpers import ECHO, HONEST_ECHO, HONEST_SQUARE

    async with ScoringPool(settings(backend, timeout=10.0)) as pool:
        hostile: dict[str, object] = {}
        honest: list[object] = []

        async def bad(name: str) -> None:
            hostile[name] = await pool.score(
                stdio_problem([("", "yes\n")], timeout=5.0), fenced(HOSTILE_AT_ONCE[name])
            )

        async def good(problem: object, code: str) -> None:
            honest.append(await pool.score(problem, fenced(code)))  # type: ignore[arg-type]

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for name in HOSTILE_AT_ONCE:
                    tg.start_soon(bad, name)
                    tg.start_soon(good, SQUARE, HONEST_SQUARE)
                    tg.start_soon(good, ECHO, HONEST_ECHO)
        for name, s in hostile.items():
            assert not s.passed, (name, s)  # type: ignore[attr-defined]
            storable(s)  # type: ignore[arg-type]
        for s in honest:
            assert s.passed or verdict_cause(s.reason)[0] == "infra", s  # type: ignore[attr-defined]
    await nothing_left(range(UID_BASE, UID_BASE + 8))
