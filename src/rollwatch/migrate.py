"""Copy an event log from one store to another, exactly (``rollwatch migrate``).

Every envelope keeps its seq, id, stream, version, type, schema, at, data and hash:
the copy is the same log, so its hashes (and anything published about them) stay
valid. The target checks each event against its chain as it imports it, so a
tampered source stops the copy at the first bad event, and the whole target is
verified at the end.

A migration that stopped half way (each batch is one transaction) resumes: when the
target already holds a prefix of the source, identical up to its head, the copy
continues after it. A target holding anything else is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from rollwatch.abc import EventStore
from rollwatch.errors import IntegrityError, StoreError
from rollwatch.events import Recorded
from rollwatch.log import get_logger

log = get_logger(__name__)

_BATCH = 5000


@runtime_checkable
class Importer(Protocol):
    """A store that can take already-recorded events as they are."""

    async def import_recorded(self, batch: Sequence[Recorded]) -> int:
        """Append ``batch`` unchanged, checking it continues the chain; return the head."""
        ...


async def migrate(
    source: EventStore, target: EventStore, progress: Callable[[int], None] | None = None
) -> int:
    """Copy ``source``'s log into ``target`` and verify the target; return how many events were copied.

    Both stores must be open. ``progress`` is called with the last copied seq after
    each batch. Stop writers to ``source`` first: events appended to it after the
    copy starts are not copied (run ``migrate`` again to copy them).

    Raises ``StoreError`` if ``target`` cannot import or holds a different log, and
    ``IntegrityError`` (naming the seq) if an event of ``source`` breaks the chain.
    """
    if not isinstance(target, Importer):
        raise StoreError(f"{type(target).__name__} cannot import an event log; migrate to PostgreSQL")
    until = await source.head()
    start = await target.head()
    if start > until:
        raise StoreError(
            f"the target already holds {start} events, more than the source's {until}: "
            "migrate into an empty database"
        )
    if start:
        await _check_same_prefix(source, target, start)
        log.info("migrate_resume", after=start, until=until)
    copied = 0
    async for page in source.read_batches(after=start, until=until, batch=_BATCH):
        await target.import_recorded(page)
        copied += len(page)
        if progress is not None:
            progress(page[-1].seq)
    report = await target.verify()
    last = [r async for r in source.read(after=until - 1, until=until)] if until else []
    if report.events != until or (last and report.head_hash != last[0].hash):
        raise IntegrityError(
            report.events, f"the target's head does not match the source's event {until} after copying"
        )
    log.info("migrate_done", copied=copied, events=report.events, head_hash=report.head_hash)
    return copied


async def _check_same_prefix(source: EventStore, target: EventStore, head: int) -> None:
    """Refuse a target whose events are not exactly the source's first ``head``."""
    ours = [r async for r in target.read(after=head - 1, until=head)]
    theirs = [r async for r in source.read(after=head - 1, until=head)]
    # The hash covers every event before it, so one comparison checks the whole prefix
    # (as far as the target's own chain is intact, which verify checks at the end).
    if ours != theirs:
        raise StoreError(
            f"the target already holds {head} events that differ from the source's "
            f"(event {head} is not the same): migrate into an empty database"
        )
