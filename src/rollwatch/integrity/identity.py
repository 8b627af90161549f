"""Which log derived state belongs to: the chain hash of the log's event 1.

The Merkle tree records the hash of event 1 of the log it was built from. State
found next to a log but recording another log's event 1 (a folder reused for
another database, a test run from a folder holding another log's ``var/``) is not
evidence about this log: the daemon sets it aside (renamed, never deleted) with one
WARNING and rebuilds, and ``rollwatch verify`` leaves it out. State that records
this log's event 1 and disagrees with the log is tampering, and is reported as such.

A log replaced wholesale (a new event 1) under a key that has signed before still
meets the signer's rule: no checkpoint of it exists anywhere, so nothing is signed
(see :class:`rollwatch.integrity.checkpointer.Checkpointer`).
"""

from __future__ import annotations

from pathlib import Path

import anyio

from rollwatch.abc import EventStore
from rollwatch.integrity.tree import recorded_first_hash
from rollwatch.log import get_logger

log = get_logger(__name__)


async def first_hash(store: EventStore) -> str | None:
    """The chain hash of the log's event 1 (None while the log is empty or lacks it)."""
    async for page in store.read_batches(until=1, batch=1):
        return page[0].hash if page[0].seq == 1 else None
    return None


async def foreign_tree(store: EventStore, tree: Path) -> str | None:
    """The event-1 hash ``tree`` records when it is another log's (else None)."""
    recorded = await anyio.to_thread.run_sync(recorded_first_hash, tree)
    if recorded is None:
        return None
    ours = await first_hash(store)
    return recorded if ours is not None and ours != recorded else None


def _set_aside(paths: list[Path], tag: str) -> list[str]:
    moved = []
    for p in paths:
        if p.exists():
            target = p.with_name(f"{p.name}.of-log-{tag}")
            p.replace(target)
            moved.append(str(target))
    return moved


async def set_aside_foreign_state(store: EventStore, tree: Path, witness: Path) -> bool:
    """Move the tree and the witness file away when the tree is another log's; True if it was.

    Call before the tree is opened. Logs one WARNING naming both logs and where the
    files went.
    """
    recorded = await foreign_tree(store, tree)
    if recorded is None:
        return False
    paths = [tree, tree.with_name(tree.name + "-wal"), tree.with_name(tree.name + "-shm"), witness]
    moved = await anyio.to_thread.run_sync(_set_aside, paths, recorded[:16])
    log.warning(
        "state_of_another_log_set_aside",
        tree=str(tree),
        its_log_first_hash=recorded,
        this_log_first_hash=await first_hash(store),
        moved_to=moved,
        action="rebuilding the tree from this log",
    )
    return True
