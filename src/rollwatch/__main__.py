"""``python -m rollwatch`` and the ``rollwatch`` console script."""

# First, before any import that searches the disk: a Ctrl-C while this module's imports
# looked for ``rollwatch._interrupt`` (a few stat calls, longer on a loaded machine) was a
# KeyboardInterrupt traceback. ``_signal`` and ``os`` are loaded by the time Python runs a
# line of ours, so the handler is in place within microseconds of this module starting.
import _signal  # type: ignore[import-not-found]
import os


def _interrupted_early(signum: int, frame: object) -> None:
    os.write(2, b"interrupted\n")
    os._exit(130)


if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted_early)

from rollwatch import _interrupt  # noqa: E402


def main() -> None:
    """Run the command line; Ctrl-C while its modules load ends it with one line (exit 130)."""
    _interrupt.while_loading(_interrupted_early)
    from rollwatch.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
