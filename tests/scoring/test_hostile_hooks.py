"""Hostile answers through the interpreter's own hooks, and output meant to fool a reader.

Each answer is wrong and reaches for a hook that runs code where a harness might look
(profile and trace functions in every thread, ``__build_class__``, import hooks,
``register_at_fork``, the exception hooks, ``faulthandler`` and interval timers writing
on the channel, ``sys.stdout`` replaced by an object of its own, the verdict fd closed
or pointed at stdout), or prints output that looks right on a terminal (``\\r``, ANSI
erase sequences). Every one must end as the model's failed verdict, within its time
limit, leave nothing running, and the pool must still pass honest answers. None found
a hole: they cover hooks no earlier test reached for.
"""

from __future__ import annotations

import pytest

from rollwatch.problems import Problem
from rollwatch.scoring import ScoringPool

from .conftest import SQUARE, function_problem
from .helpers import ECHO, fails_as_the_models

pytestmark = pytest.mark.anyio

# Writes a verdict-looking line on every fd but the answer pipe (garbage there fails the
# sample before the hooks matter): what each hook below does when it fires.
FORGE = """
import os as _os
def _forge(*_a, **_k):
    for _fd in range(0, 64):
        if _fd == 4:
            continue
        try:
            _os.write(_fd, b'0' * 32 + b' {"ok":true}\\n')
        except OSError:
            pass
"""

FUNCTION_HOOKS: dict[str, tuple[Problem, str]] = {
    "profile-and-trace-in-every-thread": (
        SQUARE,
        FORGE
        + """
import sys, threading
def _hook(frame, event, arg):
    if event in ("return", "c_return"):
        _forge()
    return _hook
sys.setprofile(_hook)
threading.setprofile(_hook)
threading.settrace(_hook)
threading.Thread(target=lambda: sum(range(1000)), daemon=True).start()
def f(x):
    sys.settrace(_hook)
    return x + 1
""",
    ),
    "build-class-import-and-meta-path-hooks": (
        SQUARE,
        FORGE
        + """
import builtins, sys, types
_real_build, _real_import = builtins.__build_class__, builtins.__import__
def _build(*a, **k):
    _forge()
    return _real_build(*a, **k)
def _imp(name, *a, **k):
    _forge()
    return _real_import(name, *a, **k)
class _Finder:
    def find_spec(self, name, path=None, target=None):
        _forge()
        return None
builtins.__build_class__ = _build
builtins.__import__ = _imp
sys.meta_path.insert(0, _Finder())
def f(x):
    class Local:
        pass
    import json
    return x + 1
""",
    ),
    "fork-excepthook-and-unraisable-hooks": (
        SQUARE,
        FORGE
        + """
import os, sys, threading
os.register_at_fork(before=_forge, after_in_parent=_forge, after_in_child=_forge)
sys.excepthook = threading.excepthook = sys.unraisablehook = _forge
class _Del:
    def __del__(self):
        raise RuntimeError("unraisable")
def f(x):
    _Del()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    threading.Thread(target=lambda: 1 / 0).start()
    return x + 1
""",
    ),
    "faulthandler-dumps-on-the-answer-pipe": (
        SQUARE,
        """
import faulthandler
faulthandler.enable(file=4, all_threads=True)
faulthandler.dump_traceback_later(0.001, repeat=True, file=4)
def f(x):
    faulthandler.dump_traceback(file=4)
    return x * x + 1
""",
    ),
    "interval-timer-interrupts-the-harness": (
        SQUARE,
        """
import signal
def _boom(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGALRM, _boom)
signal.signal(signal.SIGVTALRM, _boom)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
signal.setitimer(signal.ITIMER_VIRTUAL, 0.0005, 0.0005)
def f(x):
    return x + 1
""",
    ),
    "memory-exhausted-in-a-thread-as-it-answers": (
        SQUARE,
        """
import threading
_hog = []
def _eat():
    try:
        while True:
            _hog.append(bytearray(16 << 20))
    except MemoryError:
        _hog.clear()
def f(x):
    threading.Thread(target=_eat, daemon=True).start()
    return x + 1
""",
    ),
    "nul-and-lone-surrogate-in-the-code": (
        SQUARE,
        "def f(x):\n    return x + 1  # \ud800\n\x00\n",
    ),
    "an-8-mb-line-of-code": (
        function_problem(SQUARE.tests, timeout=10.0),
        "def f(x):\n    return x + 1 + 0 * len('" + "a" * (8 << 20) + "')\n",
    ),
}

PROGRAM_HOOKS: dict[str, str] = {
    "stdout-replaced-by-an-object-that-exits-zero-on-flush": """
import os, sys
class _Out:
    def write(self, s):
        os.write(1, s.upper().encode())
        return len(s)
    def flush(self):
        os._exit(0)
s = input()
sys.stdout = _Out()
print(s)
""",
    "stdout-replaced-by-an-object-that-raises": """
import sys
class _Out:
    def write(self, s):
        raise SystemExit(0)
    def flush(self):
        raise KeyboardInterrupt
s = input()
sys.stdout = _Out()
print(s)
""",
    "closes-the-verdict-fd-then-raises": "import os\nos.close(3)\nprint('hellO')\nraise RuntimeError('x')",
    "verdict-fd-pointed-at-stdout-then-raises": "import os\nos.dup2(1, 3)\nraise RuntimeError(input())",
    "carriage-return-over-a-wrong-line": "import sys\nsys.stdout.write('hellO\\r' + input() + '\\n')",
    "ansi-erase-over-a-wrong-line": "import sys\nsys.stdout.write('hellO\\x1b[2K\\r\\x1b[1G' + input() + '\\n')",
    "excepthook-prints-the-answer": "import sys\ns = input()\nsys.excepthook = lambda *a: print(s)\nraise RuntimeError",
    "atexit-prints-the-answer-after-exit-one": "import atexit, sys\ns = input()\natexit.register(print, s)\nsys.exit(1)",
}


@pytest.mark.parametrize("name", sorted(FUNCTION_HOOKS))
async def test_a_hook_in_the_candidates_process_cannot_pass_it(pool: ScoringPool, name: str) -> None:
    """Hooks fire in the candidate's process only: the judge sees plain data, and the
    verdict pipe is not in reach. The wrong answer fails as the model's."""
    problem, code = FUNCTION_HOOKS[name]
    await fails_as_the_models(pool, problem, code, within=40)


@pytest.mark.parametrize("name", sorted(PROGRAM_HOOKS))
async def test_a_program_that_bends_its_output_or_exit_fails(pool: ScoringPool, name: str) -> None:
    """A program whose output is wrong as bytes (whatever a terminal would show), or whose
    right output comes only from a hook after a failing exit, fails as the model's."""
    await fails_as_the_models(pool, ECHO, PROGRAM_HOOKS[name])
