"""The content check of ``rollwatch verify``, in a process of its own beside the hashing,
and the check of what no hash covers (stream versions, SQLite's index).

Every event's data must be what rollwatch writes (see
:func:`rollwatch.integrity.verify.foreign_data`): parsing and re-serializing it costs
about as much as the rest of ``verify`` together, so ``verify`` runs it here, on the
other core, while it hashes a log of more than
:data:`~rollwatch.integrity.verify.SPLIT_ABOVE` events (``python -m rollwatch.integrity.content``, the store URL on stdin,
started through :func:`rollwatch.integrity._worker.worker_pass`; this module imports
``verify``, so ``verify`` never imports it).
The scrub checks content in its own pass (it runs in a process of its own already).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rollwatch.abc import EventStore


async def _checked(store: EventStore) -> int:
    """Every event's content, then what no hash covers (the stream versions, SQLite's
    index: :meth:`EventStore.verify_versions`) up to the same event: on this core, while
    the other hashes (they took a 200k-event ``verify`` 0.33 s after the hashing)."""
    from rollwatch.integrity.verify import content_and_versions

    return await content_and_versions(store)


async def _main(store_url: str) -> int:
    from rollwatch.integrity._worker import reported
    from rollwatch.store import open_store_url

    # Not through the configuration: its import (pydantic) cost this process a third of its CPU.
    async with open_store_url(store_url, read_only=True) as store:
        events, status = await reported(_checked(store))
    if events is not None:
        print(f"ok {events}", flush=True)
    return status


if __name__ == "__main__":
    from rollwatch.integrity._worker import run_as_worker, worker_arg

    run_as_worker(_main, worker_arg())
