"""The scrub: the daemon re-reads its whole stored log, again and again, at low priority.

The tree's follower checks each new event as it is absorbed (it continues the chain
from the last absorbed hash, and the seq after the last), but nothing else would ever
read an old event again: a rewrite of event 12 a month later would stay unseen until
someone ran ``rollwatch verify``. The scrub (as ZFS and Ceph scrub their disks) reads
every event, every ``scrub_interval``, and checks in one pass:

* no seq is missing, and each event's chain hash covers its content and the hash before;
* each event's Merkle leaf is the leaf ``merkle.db`` absorbed when it was appended;
* every ``CheckpointSigned`` event of the log, and the witness file, sign the root
  the log's first ``size`` events hash to now, and the log is not shorter than any;
* the subscriber events (``SubscriberAdded``, ``SubscriberRevoked``) it reads are
  exactly those the daemon's keys were read from, through an index of those alone
  (:meth:`rollwatch.publication.keys.SubscriberDirectory.check_seen`, in the daemon).

A pass runs in a separate process (``python -m rollwatch.integrity.scrub``), so that
its hashing never takes the daemon's GIL; while the daemon runs, at nice 19 and paced: after each
page of events it rests as long as the page took (:data:`DUTY` of one core at
most), because nice alone does not keep a busy two-core machine's appends from
slowing down (``bench/bench_scrub.py``). The check at start, which the runs and the signer
wait for, runs at the daemon's priority and unpaced. It opens the log and the tree read-only. A finding raises
:class:`IntegrityError` in the daemon (see :meth:`rollwatch.integrity.service.Integrity.run`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from rollwatch._child import background
from rollwatch.abc import SUBSCRIBER_TYPES
from rollwatch.errors import DamagedLog, IntegrityError, StoreError
from rollwatch.events import PendingReleases, Recorded
from rollwatch.integrity._worker import worker_pass
from rollwatch.integrity.health import Health
from rollwatch.integrity.tree import MerkleTree
from rollwatch.integrity.verify import SPLIT_ABOVE, TreeReport, check_log_tree, read_kept
from rollwatch.log import get_logger

if TYPE_CHECKING:
    from rollwatch.abc import EventStore
    from rollwatch.config import StoreConfig

log = get_logger(__name__)

DUTY = 0.5
"""The share of one core a pass may use: it rests (1/DUTY − 1) times as long as it works."""


@dataclass(frozen=True, slots=True)
class ScrubTarget:
    """What one pass reads: the log (as configured), the tree file, the key, the witness file."""

    store_url: str
    tree: Path
    vkey: str | None
    witness: Path | None
    background: bool = True
    """At nice 19 and :data:`DUTY` (the passes while the daemon runs), or at the daemon's
    own priority and a whole core (the check at start: the runs and the signer wait for
    it; paced, it took 10.75 s of a 200k-event log)."""
    content: bool = True
    """This pass checks each event's content and what no hash covers (stream versions,
    SQLite's index); False where another process does (the check at start, see
    :func:`scrub_pass`)."""

    def to_json(self) -> str:
        """The pass's one argument."""
        return json.dumps(
            {
                "store_url": self.store_url,
                "tree": str(self.tree),
                "vkey": self.vkey,
                "witness": None if self.witness is None else str(self.witness),
                "background": self.background,
                "content": self.content,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ScrubTarget:
        """The inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(
            d["store_url"],
            Path(d["tree"]),
            d["vkey"],
            Path(d["witness"]) if d["witness"] else None,
            bool(d.get("background", True)),
            bool(d.get("content", True)),
        )


_RELEASE_TYPES = frozenset({"PublicationDecided", "PublicReleased"})

SubscribersSeen = Callable[[dict[int, str], int], Awaitable[None]]
"""Given the hash of every subscriber event a pass read (by seq) and how many events it
read: raises :class:`IntegrityError` when the keys were read from others."""


async def scrub_once(
    target: ScrubTarget,
    *,
    duty: float = 1.0,
    subscribers: Callable[[dict[int, str], int], None] | None = None,
    due: Callable[[list[str]], None] | None = None,
) -> TreeReport:
    """One full pass, in this process; raises :class:`IntegrityError` naming the first bad seq.

    ``duty`` < 1: rest between pages so that the pass uses at most that share of a core.
    ``subscribers``, when given, is told the hash of every subscriber event read (by seq)
    and how many events were read, once every row is read and checked (before the
    indexes are: so an index found not to match its rows still has them compared).
    ``due``, when given, is told the rollouts the log has a public decision for, due by
    now, and no release (:class:`~rollwatch.events.PendingReleases`), once the pass passed.
    """
    found: dict[int, str] = {}
    pending = PendingReleases() if due is not None else None
    from rollwatch.store import open_store_url

    kept = await anyio.to_thread.run_sync(read_kept, target.witness)
    read = 0  # the last seq read and checked
    try:
        async with (
            open_store_url(target.store_url, read_only=True) as store,
            contextlib.AsyncExitStack() as stack,
        ):
            tree = await _tree_or_none(stack, target.tree)
            last = time.monotonic()

            async def pace() -> None:
                nonlocal last
                worked = time.monotonic() - last
                await anyio.sleep(worked * (1 / duty - 1))
                last = time.monotonic()

            def seen(page: list[Recorded]) -> None:
                nonlocal read
                read = page[-1].seq
                found.update((ev.seq, ev.hash) for ev in page if ev.type in SUBSCRIBER_TYPES)
                if pending is not None:
                    for ev in page:
                        if ev.type in _RELEASE_TYPES:
                            pending.see(ev)

            try:
                report = await check_log_tree(
                    store,
                    vkey=target.vkey,
                    tree=tree,
                    chain=True,
                    content=target.content,
                    kept=kept,
                    pace=pace if duty < 1 else None,
                    seen=seen,
                )
            except DamagedLog:
                read = await _last_readable(store, read)
                raise
            if subscribers is not None:
                subscribers(found, report.events)
            if target.content:  # what no hash covers: versions, SQLite's index
                await store.verify_versions(report.events)
            if due is not None and pending is not None:
                due(pending.due(datetime.now(UTC)))
            return report
    except DamagedLog as e:
        # Not a pass that could not run (the log out of reach): a restart and ``verify``
        # refuse a file SQLite cannot read, and a daemon that went on signing and releasing
        # over it, its /healthz "ok", hid whatever the damaged pages hold.
        raise IntegrityError(read + 1, f"the pass could read no further: {e}") from e


async def _tree_or_none(stack: contextlib.AsyncExitStack, path: Path) -> MerkleTree | None:
    """The tree file opened read-only, or None when it cannot be (then the pass checks the log
    without it: chain, content, every signed checkpoint, the witness file).

    The daemon keeps the tree it opened: someone who moves ``merkle.db`` away, or puts in its
    place a file a read-only open refuses (a view added, not a database), changes nothing the
    daemon does, but a pass that needed the file failed as ``scrub_failed`` pass after pass
    while ``/healthz`` said ok, and a rewrite of signed events went unseen for as long as the
    daemon ran. The leaves are what the file adds; the signed roots hold without it."""
    try:
        return await stack.enter_async_context(MerkleTree(path, read_only=True))
    except StoreError as e:
        log.warning(
            "scrub_without_tree",
            tree=str(path),
            error=str(e),
            consequence="this pass checks the log against its signed checkpoints, not leaf by leaf",
        )
        return None


async def _last_readable(store: EventStore, after: int, most: int = 10_000) -> int:
    """The seq before the first one after ``after`` that SQLite cannot read: the pass reads
    the checkpoints first, through every page, so where it stopped says little. A lookup by
    seq reads one leaf page: the first that fails is on the damaged one."""
    head = await store.head()
    for seq in range(after + 1, min(head, after + most) + 1):
        try:
            await store.read_at([seq])
        except DamagedLog:
            return seq - 1
    return after


async def scrub_pass(
    target: ScrubTarget,
    subscribers: SubscribersSeen | None = None,
    *,
    longest: float | None = None,
    due: Callable[[list[str]], None] | None = None,
    events: int | None = None,
) -> tuple[int, float]:
    """One pass in a worker process at low priority: (events checked, seconds).

    Raises :class:`IntegrityError` on a finding (``subscribers``'s too, given the
    subscriber events the pass read), :class:`StoreError` when the pass could not run
    (the log out of reach, say) or its process did not finish within ``longest`` seconds
    (it is killed: one stopped with SIGSTOP, or waiting on a file that never answers, held
    every later pass for good). ``due``: told what :func:`scrub_once`'s is, once it passed.
    ``events``: about how many the log holds, when known (see :data:`SPLIT_ABOVE`).
    """
    started = time.monotonic()
    before: list[str] = []

    async def compare() -> None:
        found = [line.split(" ", 2) for line in before if line.startswith("subscribers ")]
        if subscribers is not None and found:
            _, until, seen = found[-1]
            await subscribers({int(k): v for k, v in json.loads(seen).items()}, int(until))

    # The check at start (nothing runs or is signed until it passes) checks each event's
    # content, the stream versions and SQLite's index in a second process meanwhile, as
    # ``verify`` does: the content costs about what the hashing does, so on two cores the
    # check ends in about half the time (on a log above SPLIT_ABOVE events). The first bad
    # seq either finds is the one named.
    passes: list[tuple[str, str, str, list[str] | None]] = [
        ("rollwatch.integrity.scrub", target.to_json(), "the scrub", before)
    ]
    if not target.background and target.content and (events is None or events > SPLIT_ABOVE):
        passes = [
            ("rollwatch.integrity.scrub", replace(target, content=False).to_json(), "the scrub", before),
            ("rollwatch.integrity.content", target.store_url, "the scrub's content check", None),
        ]
    checked: list[int] = []
    found: list[IntegrityError] = []
    failed: list[StoreError] = []

    async def one(module: str, arg: str, what: str, lines: list[str] | None) -> None:
        try:
            events = await worker_pass(module, arg, what, lines)
        except IntegrityError as e:
            found.append(e)
        except StoreError as e:
            failed.append(e)
        else:
            if lines is not None:
                checked.append(events)

    with anyio.move_on_after(longest) as limit:
        async with anyio.create_task_group() as tg:
            for module, arg, what, lines in passes:
                tg.start_soon(one, module, arg, what, lines)
    if found:
        # An index that does not match its rows (SQLite's check): the subscriber events,
        # read from the rows, are compared all the same, and the keys closed if they differ.
        with contextlib.suppress(IntegrityError):
            await compare()
        raise min(found, key=lambda e: e.seq)
    if limit.cancelled_caught:
        raise StoreError(
            f"the scrub could not run: its pass did not finish within {longest:g} s"
            " (integrity.scrub_timeout) and was stopped"
        )
    if failed:
        raise failed[0]
    events = checked[0]
    await compare()
    if due is not None:
        for line in before:
            if line.startswith("due "):
                due([str(r) for r in json.loads(line[4:])])
    return events, time.monotonic() - started


async def scrub_forever(
    target: ScrubTarget,
    interval: float,
    *,
    first_after: float = 0.0,
    subscribers: SubscribersSeen | None = None,
    before_pass: Callable[[], Awaitable[None]] | None = None,
    longest: float | None = None,
    health: Health | None = None,
    due: Callable[[list[str]], None] | None = None,
) -> None:
    """A pass after ``first_after`` seconds, then one every ``interval`` (start to start); never returns.

    ``before_pass``, in this process before each pass, raises :class:`IntegrityError` on
    what only this process can see (its log file replaced: the pass reads the new one).
    ``longest``: the longest a pass may run (its process is then killed).

    Raises :class:`IntegrityError` on the first finding. A pass that cannot run is
    logged and tried again at the next interval; ``health`` is degraded, naming why,
    from then until a pass passes.
    """
    await anyio.sleep(first_after)
    while True:
        next_at = anyio.current_time() + interval
        try:
            if before_pass is not None:
                await before_pass()
            events, seconds = await scrub_pass(target, subscribers, longest=longest, due=due)
            log.info("scrub_passed", events=events, seconds=round(seconds, 2), next_in_s=interval)
            if health is not None:
                health.resume("scrub")
        except StoreError as e:
            if isinstance(e, IntegrityError):
                raise
            log.warning("scrub_failed", error=str(e), retry_in_s=interval)
            if health is not None:
                health.stall("scrub", f"the log is not being re-checked: {e}")
        await anyio.sleep(max(0.0, next_at - anyio.current_time()))


def target_for(store_config: StoreConfig, tree: Path, vkey: str | None, witness: Path | None) -> ScrubTarget:
    """The scrub target of a daemon's store, tree, key and witness file."""
    return ScrubTarget(store_config.url, tree, vkey, witness)


async def _main(arg: str) -> int:
    target = ScrubTarget.from_json(arg)
    if target.background:  # appends and the tree's follower go first
        background(19)
    from rollwatch.integrity._worker import reported

    def subscribers(found: dict[int, str], events: int) -> None:
        print(f"subscribers {events} {json.dumps(found, separators=(',', ':'))}", flush=True)

    def due(rids: list[str]) -> None:
        print(f"due {json.dumps(rids, separators=(',', ':'))}", flush=True)

    report, status = await reported(
        scrub_once(target, duty=DUTY if target.background else 1.0, subscribers=subscribers, due=due)
    )
    if report is not None:
        print(f"ok {report.events}", flush=True)
    return status


if __name__ == "__main__":
    from rollwatch.integrity._worker import run_as_worker, worker_arg

    run_as_worker(_main, worker_arg())
