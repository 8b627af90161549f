"""The content check of ``rollwatch verify``, in a process of its own beside the hashing.

Every event's data must be what rollwatch writes (see
:func:`rollwatch.integrity.verify.foreign_data`): parsing and re-serializing it costs
about as much as the rest of ``verify`` together, so ``verify`` runs it here, on the
other core, while it hashes the log (``python -m rollwatch.integrity.content URL``).
The scrub checks content in its own pass (it runs in a process of its own already).
"""

from __future__ import annotations

import sys

import anyio

from rollwatch import _child
from rollwatch.errors import IntegrityError, StoreError


async def worker_pass(module: str, arg: str, what: str) -> int:
    """Run ``python -m module arg`` (a pass over the log that reports as
    :func:`rollwatch.integrity._worker.reported` does) and return the events it checked.

    Raises :class:`IntegrityError` on a finding, :class:`StoreError` when the pass could
    not run (the log out of reach, say); ``what`` names the pass in that message.
    """
    result = await anyio.run_process(
        [sys.executable, "-m", module, arg],
        check=False,
        stderr=None,
        start_new_session=True,
        env=_child.env(),  # see rollwatch._child
    )
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else f"error {what} exited with status {result.returncode}"
    kind, _, rest = last.partition(" ")
    if kind == "ok":
        return int(rest)
    if kind == "integrity":
        seq, _, reason = rest.partition(" ")
        raise IntegrityError(int(seq), reason)
    raise StoreError(f"{what} could not run: {rest}")


async def content_beside(store_url: str) -> int:
    """The content check of the log at ``store_url`` in a second process (see the module)."""
    return await worker_pass("rollwatch.integrity.content", store_url, "the content check")


async def _main(store_url: str) -> int:
    from rollwatch.config import StoreConfig
    from rollwatch.integrity._worker import reported
    from rollwatch.integrity.verify import content_pass
    from rollwatch.store import open_store

    async with open_store(StoreConfig(url=store_url), read_only=True) as store:
        events, status = await reported(content_pass(store))
    if events is not None:
        print(f"ok {events}", flush=True)
    return status


if __name__ == "__main__":
    from rollwatch.integrity._worker import run_as_worker

    run_as_worker(_main, sys.argv[1])
