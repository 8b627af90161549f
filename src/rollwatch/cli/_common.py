"""What every command module shares: the context, ``--config``/``--log-level``, the
event loop, and the mapping from errors to exit codes.

Command modules import this module, never the root group (``rollwatch.cli``), so
that the root can import them all without a cycle.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import sqlite3
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import click

from rollwatch import _interrupt
from rollwatch.errors import ConfigError, NewerSchema, RollwatchError, StoreError, UsageError

# The configuration (pydantic) and the logging (structlog) are imported when a command
# runs, not with the command line: ``rollwatch --help``, ``rollwatch verify --help`` and a
# usage error need neither (about 0.1 s of CPU of the 0.2 s such a command took).
if TYPE_CHECKING:
    from rollwatch.abc import EventStore
    from rollwatch.config import Config
    from rollwatch.projections import ProjectionDB

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.asynccontextmanager
async def current_projections(config: Config, store: EventStore) -> AsyncIterator[ProjectionDB]:
    """The read models, made current with the log as the daemon makes them: a file that
    does not match the log (another log's, edited, of an older version, unreadable) is
    rebuilt beside the one in use, never caught up in place. A terminal sees progress
    when that takes more than half a second."""
    from rollwatch.progress import Progress
    from rollwatch.projections import ProjectionDB
    from rollwatch.readmodels import default_projections

    started = time.monotonic()
    bar: Progress | None = None

    def show(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            if time.monotonic() - started < 0.5:
                return
            bar = Progress("read models", total)
        bar.total = total
        bar.update(done)

    async with ProjectionDB(config.store.projections_path, default_projections(), setup=False) as pdb:
        try:
            await pdb.build(store, progress=show)
        except sqlite3.Error as e:
            raise StoreError(f"cannot bring the projections {pdb.path} up to date: {e}") from e
        finally:
            if bar is not None:
                bar.close()
        yield pdb


class Context:
    """What every command gets: where the config is, and how to load it once."""

    def __init__(self) -> None:
        self.config_path: str | None = None
        self.log_level = "info"
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        """The validated configuration (loaded on first use; ConfigError when invalid)."""
        if self._config is None:
            from rollwatch.config import load_config

            self._config = load_config(self.config_path)
        return self._config


def config_option(path: str) -> str:
    """``--config PATH`` as given; an empty one is bad usage. ``--config "$CFG"`` with CFG
    unset read ./config/rollwatch.toml (or /etc's) unasked, or the working folder."""
    if not path.strip():
        raise UsageError("--config is empty; name the configuration file")
    return path


def common(fn: F) -> F:
    """``--config`` and ``--log-level`` on every command (also accepted before the command)."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(),
        default=None,
        help="config file (default: $ROLLWATCH_CONFIG, ./config/rollwatch.toml, /etc/rollwatch/rollwatch.toml)",
    )
    @click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
    @functools.wraps(fn)
    def wrapper(*args: Any, config_path: str | None, log_level: str | None, **kw: Any) -> Any:
        from rollwatch.log import configure_logging

        ctx = click.get_current_context().find_object(Context)
        assert ctx is not None
        if config_path is not None:
            ctx.config_path = config_option(config_path)
        if log_level:
            ctx.log_level = log_level
        configure_logging(ctx.log_level)
        return fn(ctx, *args, **kw)

    return wrapper  # type: ignore[return-value]


def require_log(config: Config) -> None:
    """Commands that read the log never create it: a SQLite log that is not there is bad usage (exit 2)."""
    path = config.store.sqlite_path
    if path is not None and not path.is_file():
        raise UsageError(
            f"there is no event log at {path} (store.url {config.store.url}); "
            "`rollwatch serve` or `rollwatch run` creates it"
        )


def cell(value: object) -> str:
    """``value`` as one cell of a table printed on a terminal: every character that is not
    printable (a line break, the ESC of an escape sequence, a bidi mark) written as its Python
    escape (``\\n``, ``\\x1b``). Notes are text from the log that anyone with an ``ops`` key can
    write through the console; a line break in one forged a line of ``schedules list``, and
    an escape sequence drove the operator's terminal."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` on a fresh event loop (one per command) and return its result.

    Ctrl-C from here on cancels ``fn`` (asyncio.run's own handler); before, while the
    command's modules load and it checks its arguments, it ends the process at once.
    """
    _interrupt.loaded()
    return anyio.run(fn)


def _single(e: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has left (a broken pipe of a socket
    is an error like any other)."""
    import select

    poll = select.poll()
    poll.register(1, select.POLLOUT)
    return any(revents & select.POLLERR for _, revents in poll.poll(0))


def _reader_gone() -> NoReturn:
    """End as a process killed by SIGPIPE is reported (141), without a word: the reader
    asked for no more. Standard output goes to /dev/null first, so that Python's flush as
    it exits does not print "Exception ignored ... BrokenPipeError"."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    sys.exit(141)


def run_command(group: click.Group) -> NoReturn:
    """Run ``group`` as the program: map errors to exit codes and one-line messages.

    Exit codes (SPEC §2): 0 ok, 1 a check failed, 2 bad usage or configuration,
    130 interrupted (Ctrl-C), 141 the reader of standard output went away (as SIGPIPE
    ends a process). An error we can name never shows a traceback.
    """
    _standard_streams()
    try:
        try:
            group.main(standalone_mode=False)
        except BaseExceptionGroup as group_error:
            raise _single(group_error) from None
        finally:
            _interrupt.ending()
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Ctrl-C (click turns it into Abort inside a command; KeyboardInterrupt while the
        # command's modules load): one line, 130 as shells report a process killed by SIGINT.
        # A Ctrl-C as the event loop shuts down leaves its last coroutine unawaited, and
        # Python warned of it as the process exited, after that line ("RuntimeWarning:
        # coroutine 'BaseEventLoop.shutdown_default_executor' was never awaited").
        warnings.simplefilter("ignore")
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError as e:
        if _stdout_reader_gone():
            _reader_gone()
        click.echo(f"error: {_os_message(e)}", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (ConfigError, UsageError, NewerSchema) as e:
        # NewerSchema: this release is older than the log (a downgrade). No retry reads it
        # (systemd does not restart an exit 2); installing the newer release does.
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except RollwatchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        # A file or folder (of the configuration, or named on the command line) that cannot
        # be made, opened or written: a read-only disk, a missing parent, a file in the way.
        click.echo(f"error: {_os_message(e)}", err=True)
        sys.exit(1)
    sys.exit(0)


class _ClosedOutput(io.TextIOBase):
    """Standard output of a process started with it closed (``rollwatch report >&-``): a
    command that prints fails on its first line (exit 1, one line) instead of a traceback
    ("'NoneType' object has no attribute 'write'") or a success whose output went nowhere."""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        raise OSError(errno.EBADF, "it was closed when the command started", "standard output")


def _standard_streams() -> None:
    """Put /dev/null on any of the descriptors 0, 1, 2 the process started without.

    Otherwise the next file opened takes that number (the event log, a socket, the
    epoll of the event loop) and whatever writes to "standard output" (a print, a child
    process inheriting it) writes into it. A closed standard output then refuses to be
    written (:class:`_ClosedOutput`); a closed standard error stays silent.
    """
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, flags)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if fd == 1:
                sys.stdout = _ClosedOutput()
            elif fd == 2:
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115  # the process's own stream


def _os_message(e: OSError) -> str:
    """One line for an OSError: what failed on which file (``e`` itself when it names none)."""
    if e.filename is None:
        return str(e)
    names = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"cannot use {names}: {e.strerror or e}"
