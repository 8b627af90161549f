"""The Merkle tree's worker process: ``python -m rollwatch.integrity._worker LOG TREE BATCH``.

Started by :meth:`rollwatch.integrity.tree.MerkleTree.follow_in_worker` so that
hashing the log does not take the daemon's GIL. It catches the tree in TREE up with
the SQLite log in LOG whenever a line arrives on stdin (the daemon writes one per
append) and at least every second (appends by other processes), and reports on
stdout, one line each:

* ``size N``: the tree now holds N events;
* ``integrity SEQ REASON``: the log does not continue the tree (the worker exits 1);
* ``error MESSAGE``: anything else went wrong (the worker exits 2).

It exits 0 when stdin closes. Its logs go to stderr, like the daemon's.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio

from rollwatch import _child
from rollwatch.errors import IntegrityError, StoreError
from rollwatch.integrity.tree import MerkleTree, SQLiteLogFile
from rollwatch.log import configure_logging

T = TypeVar("T")


async def worker_pass(module: str, arg: str, what: str, lines_before: list[str] | None = None) -> int:
    """Run ``python -m module`` with ``arg`` on its stdin (a pass over the log that
    reports as :func:`reported` does) and return the events it checked.

    ``arg`` names the store, a PostgreSQL password perhaps: on stdin it is not in the
    command line that ``ps`` shows every user of the machine. The module reads it with
    :func:`worker_arg`.

    Raises :class:`IntegrityError` on a finding, :class:`StoreError` when the pass could
    not run (the log out of reach, its process not started); ``what`` names the pass in
    that message. ``lines_before``, when given, gets the lines the pass printed before its
    last (what else it reports: the scrub's subscriber events).
    """
    try:
        result = await anyio.run_process(
            [sys.executable, "-m", module],
            input=arg.encode(),
            check=False,
            stderr=None,
            start_new_session=True,
            env=_child.env(),  # see rollwatch._child
        )
    except OSError as e:  # no descriptor or process left for it (EMFILE, EAGAIN): not a finding
        raise StoreError(f"{what} could not run: cannot start its process: {e}") from e
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else f"error {what} exited with status {result.returncode}"
    kind, _, rest = last.partition(" ")
    if lines_before is not None:
        lines_before.extend(lines[:-1])
    if kind == "ok":
        return int(rest)
    if kind == "integrity":
        seq, _, reason = rest.partition(" ")
        raise IntegrityError(int(seq), reason)
    raise StoreError(f"{what} could not run: {rest}")


def worker_arg() -> str:
    """The argument :func:`worker_pass` sent this process on its stdin."""
    return sys.stdin.read()


def _wait_for_input(fd: int, timeout: float) -> bool:
    """Whether stdin is still open after waiting up to ``timeout`` for a line (drains what came)."""
    readable, _, _ = select.select([fd], [], [], timeout)
    if not readable:
        return True
    return os.read(fd, 65536) != b""


async def reported(work: Awaitable[T]) -> tuple[T | None, int]:
    """``work``'s result and 0; or None and the exit status, once the failure is reported
    on stdout as the daemon reads it (``integrity SEQ REASON``: 1, ``error MESSAGE``: 2)."""
    try:
        return await work, 0
    except IntegrityError as e:
        print(f"integrity {e.seq} {e.reason}", flush=True)
        return None, 1
    except Exception as e:
        print(f"error {type(e).__name__}: {e}", flush=True)
        return None, 2


async def main(log_path: str, tree_path: str, batch: int) -> int:
    # Background work: when the cores are busy, appends (the evidence) go first and the
    # tree catches up after them. A checkpoint catches the tree up itself before signing.
    _child.background(10)
    fd = sys.stdin.fileno()
    async with MerkleTree(tree_path, batch=batch) as tree:
        log = SQLiteLogFile(log_path)
        while True:
            size, status = await reported(tree.catch_up(log))
            if size is None:
                return status
            print(f"size {size}", flush=True)
            if not await anyio.to_thread.run_sync(_wait_for_input, fd, 1.0):
                return 0


def run_as_worker(fn: Callable[..., Awaitable[int]], *args: object) -> NoReturn:
    """Run ``fn(*args)`` as the body of a worker process the daemon started, and exit
    with its status. The daemon starts it in a session of its own and stops it itself
    (stdin closed, or cancelled); it dies with the daemon (:mod:`rollwatch._child`).
    SIGINT is ignored all the same, should it come from outside."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _child.die_with_parent()
    configure_logging(os.environ.get("ROLLWATCH_LOG_LEVEL", "info"))
    sys.exit(anyio.run(fn, *args))


if __name__ == "__main__":
    run_as_worker(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
