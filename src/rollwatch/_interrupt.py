"""Ctrl-C while ``rollwatch`` (or ``python -m rollwatch``) loads its modules: one line, exit 130.

A KeyboardInterrupt raised inside an import can land in the import lock's callback,
where Python prints it as "Exception ignored" with a traceback and goes on with the
command. Until a command starts its event loop (``run_async``), it has only loaded
modules and checked its arguments: the process may simply end. Left alone when SIGINT
is ignored (a job started in the background).
"""

from __future__ import annotations

# The C module under ``signal``: importing ``signal`` imports ``enum`` first (about 10 ms,
# more on a loaded machine), and a Ctrl-C in that time was a KeyboardInterrupt traceback
# from inside it. ``_signal`` is built in: the handler is in place at once. (Nor ``typing``
# here: 25 ms more.)
import _signal as signal  # type: ignore[import-not-found]
import atexit
import os


def _interrupted(signum: int, frame: object) -> None:
    os.write(2, b"interrupted\n")
    os._exit(130)


def while_loading(early: object = None) -> None:
    """End the process at once on SIGINT, if SIGINT would raise KeyboardInterrupt (or is
    ``early``, the same handler ``__main__`` put in place before it could import this)."""
    current = signal.getsignal(signal.SIGINT)
    if current is signal.default_int_handler or (early is not None and current is early):
        signal.signal(signal.SIGINT, _interrupted)


def _finalizing() -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# Registered as this module loads, first thing in the process, so it runs last: after the
# other exit handlers, as the interpreter tears itself down. Python then puts SIGINT back to
# the system's default, and a Ctrl-C in those last moments killed the process silently
# (status -2, not 0 or 130).
atexit.register(_finalizing)


def ending() -> None:
    """The command is done (its output written, its exit code chosen): SIGINT from here on
    ends the process at once, as while loading. Python would otherwise raise
    KeyboardInterrupt into its shutdown, and die of SIGINT with no word said."""
    while_loading()


def loaded() -> None:
    """SIGINT raises KeyboardInterrupt again (the command's event loop handles Ctrl-C from here)."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
