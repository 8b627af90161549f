"""The sandbox contract, on every namespace backend: hostile programs are contained.

Each hostile program scores as failed with a clear reason, the pool goes on scoring
correctly afterwards, and no process of the sandbox uids is left running.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import pytest

from rollwatch.scoring import ScoringPool

from .conftest import SECRET, SQUARE, fenced, function_problem, nothing_left, sandbox_processes, stdio_problem

pytestmark = pytest.mark.anyio

SHORT = function_problem(
    """
    def check(candidate):
        assert candidate(2) == 4
    """,
    timeout=1.0,
)
# Filling 512 MB takes a while on a busy machine: memory hogs get longer than spinners.
ROOMY = function_problem(SHORT.tests, timeout=10.0)
SLOW_TO_FAIL = {"memory-hog"}

# name -> (candidate code, what the reason must contain: one of these)
HOSTILE: dict[str, tuple[str, str | tuple[str, ...]]] = {
    "fork-bomb": (
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        "timeout",
    ),
    "memory-hog": (
        """
        hog = []
        while True:
            hog.append(bytearray(10**7))
        """,
        "memory",
    ),
    "one-huge-allocation": ("x = bytearray(10**11)", "memory"),
    "infinite-loop": ("while True:\n    pass", "timeout"),
    "ignores-alarms-and-catches-everything": (
        """
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
        """,
        "timeout",
    ),
    "10GB-file": (
        """
        with open("big", "wb") as fh:
            for _ in range(10 * 1024):
                fh.write(bytes(1024 * 1024))
        """,
        "file size limit",
    ),
    "1GB-to-stdout": (
        """
        import sys
        chunk = "x" * 65536
        for _ in range(16 * 1024):
            sys.stdout.write(chunk)
        """,
        "output limit",
    ),
    "1GB-to-stderr": (
        """
        import os
        chunk = b"x" * 65536
        for _ in range(16 * 1024):
            os.write(2, chunk)
        """,
        "output limit",
    ),
    "orphan-that-outlives-its-parent": (
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(3600)
            os._exit(0)
        def f(x):
            return x
        """,
        "AssertionError",
    ),
    "closes-stdout-and-stderr": (
        """
        import os
        os.close(1)
        os.close(2)
        def f(x):
            print("lost")
            return x + 1
        """,
        "AssertionError",
    ),
    "kills-its-parent": (
        """
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        """,
        "PermissionError",
    ),
    "kills-pid-1": ("import os, signal\nos.kill(1, signal.SIGKILL)", "PermissionError"),
    "kill-minus-one": (
        """
        import os, signal
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        def f(x):
            return 0
        """,
        "AssertionError",
    ),
    "deep-recursion": (
        # Through a C function every level costs C stack: the interpreter overflows it.
        """
        import sys
        sys.setrecursionlimit(10**7)
        def down(n):
            return list(map(down, [n + 1]))
        down(0)
        """,
        "killed by signal SIGSEGV",
    ),
    "recursion-error": ("def down(n):\n    return down(n + 1)\ndown(0)", "RecursionError"),
    "exit-0-before-the-tests": ("import os\nos._exit(0)", "exited before the tests finished (exit status 0)"),
    "sys-exit-before-the-tests": (
        "import sys\nsys.exit(0)",
        "exited before the tests finished (SystemExit 0)",
    ),
    "always-equal": (
        """
        class Anything:
            def __eq__(self, other):
                return True
        def f(x):
            return Anything()
        """,
        "unverifiable return value: Anything",
    ),
    "int-subclass-always-equal": (
        """
        class Liar(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def f(x):
            return Liar(0)
        """,
        "unverifiable return value: Liar",
    ),
    "forges-the-verdict-channel": (
        """
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b"ok\\n")
            except OSError:
                pass
        os._exit(0)
        """,
        "exited before the tests finished",
    ),
}


class TestHostilePrograms:
    async def test_rebound_builtins_do_not_reach_the_tests(self, pool: ScoringPool) -> None:
        """A candidate that rebinds builtins (abs, isinstance) cannot bend the tests' own use of them."""
        p = function_problem(
            """
            def check(candidate):
                assert abs(candidate(2) - 4) < 1e-9
                assert isinstance(candidate(3), int)
            """
        )
        code = """
            import builtins
            builtins.abs = lambda x: 0
            builtins.isinstance = lambda *a: True
            def f(x):
                return 4.5
        """
        s = await pool.score(p, fenced(code))
        assert not s.passed
        assert s.reason == "exception: AssertionError", s
        tests_import_builtins = function_problem(
            "import builtins\ndef check(candidate):\n    assert builtins.abs(candidate(2) - 4) == 0\n"
        )
        s = await pool.score(tests_import_builtins, fenced(code))
        assert not s.passed
        assert "builtins.abs was rebound" in s.reason, s

    async def test_rebinding_what_the_tests_import_fails(self, pool: ScoringPool) -> None:
        """A candidate that rebinds a function of a module the tests import (random.randint) fails."""
        p = function_problem(
            """
            import random
            def check(candidate):
                x = random.Random(1).randint(0, 10)
                assert candidate(x) == x * x
            """
        )
        code = """
            import random, os
            random.randint = lambda a, b: 0
            os._exit = lambda code: None
            def f(x):
                return x * x
        """
        s = await pool.score(p, fenced(code))
        assert not s.passed
        assert s.reason == "tampered with the standard library: random.randint was rebound", s

    async def test_a_left_trace_function_fails(self, pool: ScoringPool) -> None:
        """A candidate that installs a trace function (it could skip the tests' lines) fails."""
        code = """
            import sys
            def f(x):
                sys.settrace(lambda *a: None)
                return x * x
        """
        s = await pool.score(SQUARE, fenced(code))
        assert not s.passed
        assert "trace or profile function" in s.reason, s

    @pytest.mark.parametrize("name", sorted(HOSTILE))
    async def test_contained_and_failed(self, pool: ScoringPool, name: str) -> None:
        """A hostile program fails with its reason; the pool goes on; nothing is left running."""
        code, expected = HOSTILE[name]
        with anyio.fail_after(30):
            s = await pool.score(ROOMY if name in SLOW_TO_FAIL else SHORT, fenced(code))
        assert not s.passed, s
        expected = (expected,) if isinstance(expected, str) else expected
        assert any(e in s.reason for e in expected), s
        assert sandbox_processes() == []
        with anyio.fail_after(10):
            ok = await pool.score(SQUARE, fenced("def f(x):\n    return x * x"))
        assert ok.passed, ok
        await nothing_left()

    async def test_stdio_program_that_floods_stdout(self, pool: ScoringPool) -> None:
        """A stdio program printing without end is killed at the output cap, not read to memory."""
        p = stdio_problem([("1\n", "1\n")], timeout=5.0)
        s = await pool.score(p, fenced("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)"))
        assert not s.passed
        assert s.reason == "output limit on case 1 (01)"
        assert s.detail["first_failure"]["stdout_bytes"] <= pool.settings.output_limit_kb * 1024 + 65536 * 2

    async def test_stdio_program_that_closes_stdout(self, pool: ScoringPool) -> None:
        """A program that closes stdout before answering fails as a wrong answer, and nothing hangs."""
        p = stdio_problem([("1\n", "1\n")])
        s = await pool.score(p, fenced("import os\nos.close(1)\nimport time\ntime.sleep(0.2)"))
        assert not s.passed
        assert s.reason.startswith("wrong answer on case 1"), s

    async def test_no_connection_to_the_hosts_loopback(self, pool: ScoringPool) -> None:
        """A listener on the host's 127.0.0.1 never sees a connection from a sample."""
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(8)
            srv.setblocking(False)
            port = srv.getsockname()[1]
            code = f"""
                import socket
                s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
                s.sendall(b"exfiltrated")
                def f(x):
                    return x * x
            """
            s = await pool.score(SQUARE, fenced(code))
            assert not s.passed
            # IPv4 and IPv6 sockets are refused outright (seccomp; test_hostile_2026.py).
            assert "PermissionError" in s.reason, s
            with pytest.raises(BlockingIOError):
                srv.accept()

    async def test_no_network_interfaces_but_loopback(self, pool: ScoringPool) -> None:
        """The sample's network namespace holds only its own loopback."""
        code = """
            import socket
            names = sorted(n for _, n in socket.if_nameindex())
            raise SystemExit("interfaces: " + ",".join(names))
        """
        s = await pool.score(SQUARE, fenced(code))
        assert "interfaces: lo'" in s.reason, s

    async def test_no_secrets_no_shadow_no_home(self, pool: ScoringPool) -> None:
        """The environment is empty of the daemon's variables; /etc/shadow, /root, the repo are absent."""
        code = f"""
            import os
            seen = []
            seen.append("env=" + ",".join(sorted(os.environ)))
            for path in ("/etc/shadow", "/etc/passwd", "/proc/1/root/etc/shadow", "{Path.cwd()}", "/work", "/home"):
                try:
                    with open(path, "rb") as fh:
                        seen.append(path + ":READ:" + fh.read(64).decode(errors="replace"))
                except OSError as e:
                    seen.append(path + ":" + type(e).__name__)
            seen.append("uid=" + str(os.getuid()))
            raise RuntimeError(" | ".join(seen))
        """
        s = await pool.score(SQUARE, fenced(code))
        assert not s.passed
        assert SECRET not in s.reason
        assert SECRET not in str(s.detail)
        assert "ROLLWATCH_TEST_SECRET" not in s.reason
        assert ":READ:" not in s.reason, s.reason
        assert "env=HOME,LANG,LC_ALL,PATH,PYTHONDONTWRITEBYTECODE,TMPDIR" in s.reason
        if os.geteuid() == 0:
            assert "uid=0" not in s.reason

    async def test_private_temporary_folders_do_not_outlive_a_sample(self, pool: ScoringPool) -> None:
        """Files written to /tmp, /var/tmp, /dev/shm and the working folder are gone for the next sample."""
        marker = "rw-marker-" + os.urandom(4).hex()
        write = f"""
            import os
            for d in ("/tmp", "/var/tmp", "/dev/shm", "."):
                with open(os.path.join(d, "{marker}"), "w") as fh:
                    fh.write("x")
            def f(x):
                return x * x
        """
        look = f"""
            import os
            found = [d for d in ("/tmp", "/var/tmp", "/dev/shm", ".") if os.path.exists(os.path.join(d, "{marker}"))]
            assert not found, found
            def f(x):
                return x * x
        """
        for _ in range(pool.workers):  # the queue hands out slots in turn: every slot writes
            assert (await pool.score(SQUARE, fenced(write))).passed
        for _ in range(pool.workers):  # ... and every slot looks
            s = await pool.score(SQUARE, fenced(look))
            assert s.passed, s
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            assert not Path(d, marker).exists()

    async def test_ipc_objects_do_not_outlive_a_sample(self, pool: ScoringPool) -> None:
        """A POSIX message queue left by one sample is gone for the next (SysV IPC objects
        cannot be made at all: test_hostile_2026.py)."""
        key = 0x5200 + os.getpid() % 1000
        make = f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.semget({key}, 1, 0o1666) < 0 and ctypes.get_errno() == 1  # EPERM
            assert libc.mq_open(b"/rw-{key}", os.O_CREAT | os.O_RDWR, 0o666, None) >= 0, os.strerror(ctypes.get_errno())
            def f(x):
                return x * x
        """
        look = f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            left = []
            if libc.mq_open(b"/rw-{key}", os.O_RDWR) >= 0:
                left.append("mqueue")
            assert not left, left
            def f(x):
                return x * x
        """
        for _ in range(pool.workers):
            s = await pool.score(SQUARE, fenced(make))
            assert s.passed, s
        for _ in range(pool.workers):
            s = await pool.score(SQUARE, fenced(look))
            assert s.passed, s

    async def test_the_rest_of_the_file_system_is_read_only(self, pool: ScoringPool) -> None:
        """Writes outside the private folders fail."""
        code = """
            import os
            out = []
            for path in ("/usr/rw-test", "/rw-test", "/etc/rw-test", "/proc/rw-test"):
                try:
                    open(path, "w").close()
                    out.append(path + ":WROTE")
                except OSError as e:
                    out.append(path + ":" + type(e).__name__)
            raise RuntimeError(" ".join(out))
        """
        s = await pool.score(SQUARE, fenced(code))
        assert "WROTE" not in s.reason, s.reason

    async def test_samples_run_in_parallel_up_to_the_worker_count(self, pool: ScoringPool) -> None:
        """Two sleeping samples on two workers take about one sleep, not two."""
        p = function_problem("def check(candidate):\n    assert candidate(1) == 1\n")
        code = fenced("import time\ntime.sleep(0.5)\ndef f(x):\n    return x")
        results = []
        start = anyio.current_time()

        async def one() -> None:
            results.append(await pool.score(p, code))

        async with anyio.create_task_group() as tg:
            for _ in range(pool.workers):
                tg.start_soon(one)
        elapsed = anyio.current_time() - start
        assert all(r.passed for r in results), results
        assert elapsed < 0.5 * pool.workers * 0.9
