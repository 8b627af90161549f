"""The release job: ``PublicReleased`` for every public decision whose embargo has passed.

The decision (``PublicationDecided`` with audience ``public``) is made when a positive
result is scored, or when a re-score flips a verdict to a pass, and carries its own
``not_before``; this job only carries it out. It
reads pending decisions from the public projection, then, for each, re-reads the
rollout's stream (the log is the truth; the projection may lag) and appends
``PublicReleased`` with ``expected_version`` set to the stream's version as read. So:

* after downtime, the first pass releases everything that fell due meanwhile;
* a rollout is released once, ever: a second pass finds the ``PublicReleased`` in the
  stream, and two processes racing on the same rollout cannot both append, because
  the second append expects a version the first one moved on from
  (``ConcurrencyConflict``; the loser re-reads and finds the release);
* a change of ``publication.embargo`` cannot move a decision already in the log: the
  job never computes a date, it compares the event's ``not_before`` with the clock;
* the ``PublicReleased`` names what it releases (:func:`released`): the seq of every event
  of the stream before it, those a public proof bundle gives by leaf alone, the verdict, the
  decision and the date; ``check_bundle`` holds a bundle to exactly those.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from rollwatch.abc import EventStore
from rollwatch.errors import ConcurrencyConflict, IntegrityError, storage_failure
from rollwatch.events import PublicDate, PublicReleased, Recorded, rollout_stream
from rollwatch.integrity.bundle import VERDICTS, withheld_as
from rollwatch.integrity.health import Health
from rollwatch.log import get_logger
from rollwatch.projections import ProjectionDB
from rollwatch.publication.clock import ReleaseClock

if TYPE_CHECKING:
    from rollwatch.publication.public import EventCheck

log = get_logger(__name__)

_BATCH = 1000
_PARALLEL = 32  # appends in flight at once; the store commits them in shared transactions
_ATTEMPTS = 5


async def caught_up(store: EventStore, pdb: ProjectionDB) -> int:
    """Bring the projections up to the log's current head; return that head."""
    head = await store.head()
    if pdb.applied < head:
        await pdb.catch_up(store, until=head)
    return head


async def release_one(
    store: EventStore, rollout_id: str, now: datetime | None = None, check: EventCheck | None = None
) -> bool:
    """Append ``PublicReleased`` for one rollout if its log says it is due; True if appended.

    Due means: scored as passed (by the newest verdict: a re-score under a newer
    problem version that fails it means never), a public date at or before ``now``, and no
    ``PublicReleased`` yet. The date is :class:`~rollwatch.events.PublicDate`'s:
    the public decision's ``not_before``, or for a pass withdrawn before its release and
    restored, an embargo after the restore (before, the first date stood, and such a pass
    was released at once).

    With ``check`` (the daemon's integrity service), the stream's events must also be the
    ones appended, as the Merkle tree and the signed checkpoints hold them: a decision whose
    date was edited in the file (which the scrub finds only at its next pass) raises
    :class:`IntegrityError` instead of releasing, and one the tree has not absorbed yet
    waits for a later pass.
    """
    stream = rollout_stream(rollout_id)
    for _ in range(_ATTEMPTS):
        version = 0
        date = PublicDate()
        read = []
        async for rec in store.read(stream=stream):
            read.append(rec)
            version = rec.version
            date.apply(rec)
        when = now or datetime.now(UTC)
        due = date.due
        if date.released_seq is not None or due is None or due > when:
            return False
        if check is not None:
            from rollwatch.integrity.tree import changed_error

            changed, unabsorbed = await check.changed(read)
            if changed:
                raise changed_error(changed[0])
            if unabsorbed:
                return False
        try:
            await store.append(stream, [released(rollout_id, read, date)], expected_version=version)
        except ConcurrencyConflict:
            # Someone appended to this stream since we read it (perhaps the same release
            # from another process): read again and decide again.
            continue
        return True
    log.warning("release_contended", rollout_id=rollout_id, attempts=_ATTEMPTS)
    return False


def released(rollout_id: str, read: list[Recorded], date: PublicDate) -> PublicReleased:
    """The ``PublicReleased`` of ``rollout_id`` whose stream, read whole, is ``read`` and whose
    date ``date`` is due: it names the claim its public proof bundle makes (schema 2), so that
    :func:`~rollwatch.integrity.bundle.check_bundle` requires the bundle to hold exactly these
    events (none left out, no other leaf given as a withheld one). The append expects the
    stream's version as read: nothing can come between."""
    verdicts = [rec.seq for rec in read if rec.type in VERDICTS]
    return PublicReleased(
        rollout_id=rollout_id,
        seqs=[rec.seq for rec in read],
        withheld=[rec.seq for rec in read if withheld_as(rec.type, rec.data) is not None],
        verdict_seq=verdicts[-1] if verdicts else None,
        decided_seq=date.decided_seq,
        not_before=date.not_before,
    )


async def _release_into(
    store: EventStore,
    rid: str,
    now: datetime | None,
    limiter: anyio.CapacityLimiter,
    done: list[str],
    check: EventCheck | None,
    changed: list[IntegrityError],
) -> None:
    async with limiter:
        try:
            if await release_one(store, rid, now, check):
                done.append(rid)
        except IntegrityError as e:
            changed.append(e)


async def release_due(
    store: EventStore,
    pdb: ProjectionDB,
    now: datetime | None = None,
    check: EventCheck | None = None,
    also: Collection[str] = (),
) -> int:
    """Release every rollout whose public decision has fallen due; return how many were released.

    With ``check``, each release is checked against it first (:func:`release_one`); an event
    found changed raises :class:`IntegrityError` (the lowest seq found) after the batch.

    ``also``: rollouts the log itself has a due public decision for and no release (the
    scrub's finding, :class:`~rollwatch.events.PendingReleases`), tried after those the
    projections show due. One released so was missed by the projections file, caught up
    with the log: its row edited (its date moved, marked failed or superseded, deleted) or
    its events skipped (a checkpoint moved ahead). It is released all the same (as
    :func:`release_one` decides from the rollout's stream), logged as ERROR
    ``projections_tampered``, and the file is no longer trusted (built again beside)."""
    released = 0
    last_ts = float("-inf")
    last_id = ""
    first = now or datetime.now(UTC)  # what was due when the log's finding is weighed
    # What the file showed due, released or not: a release of the log's finding is a row the
    # file missed only when it is none of these. One the file showed whose release waited (the
    # Merkle tree not yet holding an event of its stream just appended, a re-score say, or a
    # stream contended) and that the tree then absorbed was released below as "missed": ERROR
    # projections_tampered, and every read model built again, though the file held it as due.
    shown: set[str] = set()
    while True:
        await caught_up(store, pdb)
        when = now or datetime.now(UTC)
        rows = await pdb.fetchall(
            "SELECT rollout_id, not_before_ts FROM public_rollouts"
            " WHERE released_seq IS NULL AND not_before_ts IS NOT NULL AND not_before_ts <= ?"
            " AND passed = 1 AND superseded_seq IS NULL AND (not_before_ts > ? OR (not_before_ts = ? AND rollout_id > ?))"
            " ORDER BY not_before_ts, rollout_id LIMIT ?",
            (when.timestamp(), last_ts, last_ts, last_id, _BATCH),
        )
        if not rows:
            break
        shown.update(rid for rid, _ts in rows)
        limiter = anyio.CapacityLimiter(_PARALLEL)
        done: list[str] = []
        changed: list[IntegrityError] = []
        async with anyio.create_task_group() as tg:
            for rid, _ts in rows:
                tg.start_soon(_release_into, store, rid, now, limiter, done, check, changed)
        released += len(done)
        if changed:
            if released:
                log.info("public_released", rollouts=released)
            raise min(changed, key=lambda e: e.seq)
        last_id, last_ts = rows[-1][0], rows[-1][1]
        if len(rows) < _BATCH:
            break
    missed = []
    for rid in also:
        # Due by ``first``, so due in the projections' query above too, had they shown it.
        if await release_one(store, rid, first, check):
            released += 1
            if rid not in shown:
                missed.append(rid)
    if missed:
        why = (
            f"the log had {len(missed)} public decision(s) due and unreleased that it did not show"
            f" as due: {', '.join(missed[:5])}{' ...' if len(missed) > 5 else ''}"
        )
        log.error("projections_tampered", file=str(pdb.file), reason=why, action="released; rebuilding")
        pdb.distrusted(why)
    if released:
        log.info("public_released", rollouts=released)
    return released


async def _next_due(pdb: ProjectionDB) -> float | None:
    """Seconds until the earliest pending decision falls due (None when none is pending)."""
    row = await pdb.fetchone(
        "SELECT min(not_before_ts) FROM public_rollouts"
        " WHERE released_seq IS NULL AND not_before_ts IS NOT NULL AND passed = 1 AND superseded_seq IS NULL"
    )
    if row is None or row[0] is None:
        return None
    return float(row[0]) - time.time()


async def release_job(
    store: EventStore,
    pdb: ProjectionDB,
    *,
    interval: float = 1.0,
    stop_event: anyio.Event | None = None,
    health: Health | None = None,
    clock: ReleaseClock | None = None,
    check: EventCheck | None = None,
    missed: Callable[[], Collection[str]] | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Release due results every ``interval`` seconds (sooner when one falls due sooner).

    Runs until cancelled or until ``stop_event`` is set. An error in one pass is logged
    and the next pass tries again: the job never gives up while the daemon runs.
    Reports started at once (``await tg.start(...)``); its first pass is the catch-up
    after downtime. Once ``health`` is not ok (the log was found tampered with),
    nothing more is released: a release would publish a result the log may no
    longer hold as it was scored. With ``clock``, releases go by it and wait while it is
    held (a jump of the wall clock, or a clock behind the log: :mod:`.clock`). With
    ``check``, every release is checked first (:func:`release_one`): an event found
    changed marks ``health`` tampered, and nothing more is released. ``missed``: the
    scrub's finding of what the log has due, taken once a pass (``release_due``'s ``also``).
    """
    task_status.started()
    failing: str | None = None
    while stop_event is None or not stop_event.is_set():
        if health is not None and not health.ok:
            log.warning("release_withheld", reason="the log was found tampered with")
            if stop_event is not None:
                await stop_event.wait()
            else:
                await anyio.sleep_forever()
            return
        try:
            if clock is not None:
                await clock.check_log(store)
            if clock is None:
                await release_due(store, pdb, check=check, also=missed() if missed else ())
            elif not clock.held:
                await release_due(store, pdb, clock.now(), check, missed() if missed else ())
            # Held, what the wall clock says is due waits a whole interval (not a loop).
            due = None if clock is not None and clock.held else await _next_due(pdb)
            failing = None
        except IntegrityError as e:
            health = health or Health()
            if health.ok:  # else the check said so already
                health.tampered(e, found_by="release job")
            continue
        except Exception as e:
            if (failure := storage_failure(e)) is None:
                log.exception("release_pass_failed", retry_in_s=interval)
            elif failure != failing:  # once per outage, not once a pass
                log.error("release_pass_failed", error=failure, retry_in_s=interval)
            failing, due = failure, None
        # At least a pause: a due release can wait on the tree to absorb its events.
        wait = interval if due is None else max(0.05, min(interval, due + 0.001))
        with anyio.move_on_after(wait):
            if stop_event is not None:
                await stop_event.wait()
            else:
                await anyio.sleep_forever()
