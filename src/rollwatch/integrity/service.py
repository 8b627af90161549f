"""The daemon's integrity services in one object: tree, key, checkpointer, routes.

:func:`open_integrity` opens them from the ``[integrity]`` configuration
(:class:`rollwatch.config.IntegrityConfig`); :meth:`Integrity.run` keeps the
tree current (in a worker process) and signs checkpoints until told to stop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from starlette.routing import Route

from rollwatch.abc import EventStore
from rollwatch.config import IntegrityConfig
from rollwatch.errors import (
    ConfigError,
    ForeignCheckpointKey,
    IntegrityError,
    KeyRetired,
    MissingCheckpointKey,
    StoreError,
)
from rollwatch.events import CHECKPOINT_STREAM, Recorded
from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner
from rollwatch.integrity.checkpointer import check_shared_key, checkpointer, final_checkpoint
from rollwatch.integrity.health import Health
from rollwatch.integrity.identity import ORIGIN_FILE, resolve_origin, set_aside_foreign_state
from rollwatch.integrity.keys import credential_path, load_signer, promote_key
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.integrity.rotation import finish_rotation
from rollwatch.integrity.routes import ServedCheckpoint, integrity_routes, tlog_routes
from rollwatch.integrity.scrub import ScrubTarget, SubscribersSeen, scrub_forever, scrub_pass
from rollwatch.integrity.tree import MerkleTree, changed_error
from rollwatch.integrity.witnessing import Witnessing
from rollwatch.log import get_logger

if TYPE_CHECKING:
    from rollwatch.config import StoreConfig
    from rollwatch.web.access import Operators

log = get_logger(__name__)

_PROVEN_KEPT = 100_000  # leaves of events proven in a signed root, kept (about 10 MB)


class Integrity:
    """The tree, the signer and the checkpointer of one daemon (see :func:`open_integrity`)."""

    def __init__(
        self,
        config: IntegrityConfig,
        store: EventStore,
        tree: MerkleTree,
        signer: NoteSigner,
        witness: Path,
        node: str = "",
        store_config: StoreConfig | None = None,
        key_used_before: bool = False,
        lease: float = 30.0,
    ) -> None:
        from rollwatch.config import StoreConfig

        self.store_config = store_config or StoreConfig()
        self.health = Health()
        """Ok until the tree follower, the checkpointer or the scrub finds the log changed."""
        self.node = node
        self.lease = lease
        """How long the signing leader of a shared log may stop answering before another takes over."""
        self.key_used_before = key_used_before
        self.config = config
        self.store = store
        self.tree = tree
        self.signer = signer
        self.witness = witness
        self.witnessing: Witnessing | None = None
        """The witnesses of ``[integrity] witnesses`` and their cosignatures (None without any)."""
        self.subscribers: SubscribersSeen | None = None
        """Given the subscriber events each scrub pass read: raises when the keys were read
        from others (:meth:`rollwatch.publication.keys.SubscriberDirectory.check_seen`)."""
        self.due_in_log: set[str] = set()
        """The rollouts the last scrub pass found with a public decision due and no release in
        the log (:class:`~rollwatch.events.PendingReleases`), until the release job takes them:
        it releases those its read models missed (an edited projections file)."""
        self.checked = False
        """Whether the routes that serve what the log says may serve it: once the log has passed
        the check at start, or at once when the tree held every event already (see :meth:`run`)."""
        self.trusted: Checkpoint | None = None
        """The largest checkpoint this process signed or verified the signature of (see :meth:`changed`)."""
        self._proven: dict[int, bytes] = {}
        """Seq -> the leaf of an event proven in a trusted checkpoint's root (it cannot change)."""
        if config.witnesses:
            self.witnessing = Witnessing.from_config(
                tree,
                [(w.url, w.key) for w in config.witnesses],
                config.witness_quorum,
                config.witness_timeout,
                witness.parent,
                refresh=config.checkpoint_interval,
                sole=not store.shared,
            )
            self.health.witness = self.witnessing.status
            self.health.refusals = self.witnessing.refusal_reasons

    def routes(self, operators: Operators | None = None) -> list[Route]:
        """``/public/checkpoint``, ``/public/key``, ``/public/key/rotations``, ``/public/proof/*``, and the tlog-tiles routes
        (``/checkpoint``, ``/tile/...``; entry bundles for the operator, as ``operators`` decides)."""
        cosigned = self.witnessing.cosigned if self.witnessing is not None else None
        served = ServedCheckpoint(self.tree, self.store, self.health, lambda: self.signer.vkey)
        return [
            *integrity_routes(self.tree, lambda: self.signer.vkey, self.store, cosigned, served),
            *tlog_routes(self.tree, self.store, operators, cosigned, served),
        ]

    def witnessed(self) -> tuple[int, float | None, int]:
        """(size, age in seconds, refusals) of the latest witnessed checkpoint, for ``/metrics``."""
        w = self.witnessing
        if w is None:
            return 0, None, 0
        age = None if w.witnessed_at is None else time.time() - w.witnessed_at
        return w.witnessed_size, age, len(w.refusals())

    def _trust(self, cp: Checkpoint) -> None:
        if self.trusted is None or cp.size > self.trusted.size:
            self.trusted = cp

    async def changed(
        self, records: Iterable[Recorded], *, prove: bool = True
    ) -> tuple[list[int], list[int]]:
        """:meth:`MerkleTree.changed` against the trusted checkpoint (the release job's and the
        public routes' check before they release or serve on an event's word); a change
        found marks :attr:`health` tampered at once, as the scrub would at its next pass.
        An event proven once is compared with its proven leaf after (a feed asks for the
        same few hundred on every request). Without ``prove``, an event not proven yet is
        compared with the stored leaf only (about a tenth of the cost: the subscriber feed,
        which pages through every event; an edit of ``merkle.db`` beside is the scrub's)."""
        # Each record's leaf made once (canonical bytes and SHA-256: most of a check's cost).
        todo = [(r, leaf) for r in records if self._proven.get(r.seq) != (leaf := leaf_hash(r.canonical()))]
        trusted = self.trusted if prove else None
        signed = (trusted.size, trusted.root) if trusted is not None else None
        changed, unabsorbed = await self.tree.changed(
            [r for r, _ in todo], signed, leaves=[leaf for _, leaf in todo]
        )
        if changed:
            self.health.tampered(
                changed_error(changed[0]), found_by="check before a release or a public answer"
            )
        elif signed is not None:
            if len(self._proven) > _PROVEN_KEPT:
                self._proven.clear()
            self._proven.update((r.seq, leaf) for r, leaf in todo if r.seq <= signed[0])
        return changed, unabsorbed

    async def reload_signer(self) -> NoteSigner | None:
        """The key at hand now (after ``rollwatch key rotate``, or the new key copied in), taken
        only when it is the key the log's chain of rotations has in force; None otherwise.

        Asked before each checkpoint by a signer whose key the log retired. A key file that
        cannot be read as a key now (caught mid-copy: ``cp`` empties it, then writes) stopped
        the daemon (exit 2, "not an unencrypted PEM private key"); it is read again at the
        next checkpoint. A key the chain does not name is never taken (the routes, the scrub's
        finding and the key check would have gone by it)."""
        from rollwatch.integrity.rotation import KeyRing, key_at_hand

        key_file = self.config.key_path(self.store_config)
        try:
            signer = await key_at_hand(self.store, key_file, self.config.name)
        except (ConfigError, OSError) as e:
            log.warning(
                "checkpoint_key_unreadable", key_file=str(key_file), error=str(e), retry="next checkpoint"
            )
            return None
        if signer is None or signer.vkey == self.signer.vkey:
            return signer
        ring = await KeyRing.load(self.store, self.signer.verifier(), self.config.origin or self.signer.name)
        if ring.current is None or ring.current.vkey != signer.vkey:
            return None
        self.signer = signer
        return signer

    async def run(
        self,
        stop: anyio.Event,
        *,
        check_after: Callable[[], Awaitable[object]] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the tree current, sign checkpoints and scrub the log until ``stop``; then sign a final one.

        Reports started once the tree has caught up and the first checkpoint is
        signed. Detection at start: a log that no longer matches the tree or what
        was signed raises :class:`IntegrityError` before anything is reported
        started (the daemon then refuses to start). Detection while running: the
        tree follower (each new event), the checkpointer and the scrub (every old
        event, every ``scrub_interval``) mark :attr:`health` tampered instead; then
        nothing more is signed, the tree stops, and this returns at ``stop`` with
        no final checkpoint, while the daemon keeps serving what was public.
        ``check_after``, when given, is awaited before the check at start begins (the
        daemon's build of its read models from the whole log, which would share the cores),
        unless the routes wait for the check (a tree that did not hold every event).
        """
        started = False
        failure: BaseException | None = None
        found_by = ""

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()
                tg.start_soon(scrub)
                if self.witnessing is not None:
                    # Witnesses only ever wait for checkpoints; the log never waits for them.
                    tg.start_soon(self.witnessing.run)

        class _Started:
            def started(self, value: object = None) -> None:
                report_started()

        async def fail_with(e: BaseException, by: str) -> None:
            nonlocal failure, found_by
            while isinstance(e, ExceptionGroup) and len(e.exceptions) == 1:
                e = e.exceptions[0]
            if isinstance(e, IntegrityError) and self.store.shared:
                # On a shared log, checkpoints another node signed under another key look
                # like forgeries to this node's scrub (one that signed meanwhile, after the
                # check at start): a key mismatch, said as such, is no tampering.
                e = await self._key_mismatch(e.seq) or e
            if started and isinstance(e, IntegrityError):
                # At once: the release job and the signer check health before each step.
                self.health.note(e, found_by=by)
            if failure is None:
                failure, found_by = e, by
            tg.cancel_scope.cancel()

        async def follow(*, task_status: TaskStatus[None]) -> None:
            try:
                await self.tree.follow_in_worker(self.store, task_status=task_status)
            except Exception as e:
                await fail_with(e, "Merkle tree follower")

        async def scrub() -> None:
            try:
                interval = self.config.scrub_interval
                await scrub_forever(
                    self.scrub_target(),
                    interval,
                    first_after=interval,
                    subscribers=self.subscribers,
                    due=self._found_due,
                    before_pass=self.store.check_same_file,
                    longest=self.config.scrub_timeout,
                    health=self.health,
                )
            except Exception as e:
                await fail_with(e, "scrub")

        # Failures leave through here as themselves, not wrapped in an ExceptionGroup:
        # the daemon reports an IntegrityError as such. The worker catches up first; a
        # log that no longer continues the tree fails before anything is reported started.
        # The signer given at each call: the one in force (see :meth:`reload_signer`).
        sign = functools.partial(
            checkpointer,
            self.store,
            self.tree,
            every_events=self.config.checkpoint_every,
            interval=self.config.checkpoint_interval,
            stop=stop,
            origin=self.config.origin,
            witness=self.witness,
            node=self.node,
            health=self.health,
            key_used_before=self.key_used_before,
            reload=self.reload_signer,
            promote=functools.partial(promote_key, self.config.key_path(self.store_config)),
            on_trusted=self._trust,
        )
        # A tree that held every event of the log when opened vouches for each: an event
        # served while the check at start runs is compared with a leaf absorbed before this
        # start (see :meth:`changed`), so the routes serve at once. A tree deleted (built
        # again from the log now) or behind it cannot: they wait for the check, unless
        # nothing was ever signed, which leaves the check nothing to hold the log to.
        self.checked = (0 < self.tree.size >= await self.store.head()) or (
            not self.key_used_before and await self.store.stream_version(CHECKPOINT_STREAM) == 0
        )
        async with anyio.create_task_group() as tg:
            await tg.start(follow)
            try:
                # Detection at start, before anything is appended: one whole pass over
                # the log (chain, every leaf the tree absorbed, every checkpoint in the
                # log and the witness file). A log changed while the daemon was down
                # makes it refuse to start.
                # First a key that differs from the one signing a shared log: the scrub
                # would take its checkpoints for forgeries, the checkpointer start a
                # second series.
                await check_shared_key(
                    self.store, self.tree, self.signer, self.config.origin or self.signer.name
                )
                if check_after is not None and self.checked:
                    # Only where the routes need not wait for the check (the tree vouches for
                    # every event): where they do, they wait for both, which end together
                    # sooner side by side (each leaves part of the cores idle near its end).
                    await check_after()
                await self._scrub_at_start()
            except IntegrityError as e:
                await fail_with(e, "scrub")
            else:
                self.checked = True
                try:
                    if self.store.shared:
                        # Every node keeps its tree (for proofs); one signs at a time, the
                        # leader of "checkpoints", so the log has one series of checkpoints.
                        report_started()
                        while not stop.is_set():
                            body = self._signing_while_leading(
                                functools.partial(sign, self.signer, step_down=True)
                            )
                            await self.store.lead("checkpoints", body, stop, lease=self.lease)
                            if not body.stepped_down:
                                break
                            # Our key retired: another node, given the key in force, signs.
                            await self._until_key_in_force(stop)
                    else:
                        await sign(self.signer, task_status=_Started())
                except Exception as e:
                    await fail_with(e, "checkpointer")
                else:
                    tg.cancel_scope.cancel()
        if isinstance(failure, IntegrityError) and found_by != "scrub":
            # The follower sees the tail, the signer the roots: neither knows which
            # event changed first. One pass of the scrub does.
            located = await self._locate()
            if located is not None:
                if started:
                    self.health.note(located, found_by="scrub")
                elif located.seq <= failure.seq:
                    failure = located
        if not started and failure is not None:
            if isinstance(failure, IntegrityError):
                self.health.tampered(failure, found_by=found_by)
            raise failure
        if failure is not None and not isinstance(failure, IntegrityError):
            raise failure
        if not self.health.ok:
            self.health.report()
            await stop.wait()

    async def _key_mismatch(self, seq: int) -> ForeignCheckpointKey | None:
        """:func:`check_shared_key`'s finding about the event at ``seq``, if it is a
        checkpoint another key signed."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            try:
                await check_shared_key(
                    self.store, self.tree, self.signer, self.config.origin or self.signer.name, at=seq
                )
            except ForeignCheckpointKey as e:
                return e
            except (StoreError, OSError) as e:
                log.warning("checkpoint_key_check_failed", error=str(e))
        return None

    def _found_due(self, rids: list[str]) -> None:
        self.due_in_log.update(rids)

    def take_due(self) -> list[str]:
        """What :attr:`due_in_log` holds, emptied: for the release job (see there)."""
        out = sorted(self.due_in_log)
        self.due_in_log.clear()
        return out

    async def _locate(self) -> IntegrityError | None:
        """The scrub's finding, if one pass now finds anything."""
        try:
            await scrub_pass(self.scrub_target(background=False), self.subscribers, events=await self._head())
        except IntegrityError as e:
            return e
        except StoreError as e:
            log.warning("scrub_failed", error=str(e))
        return None

    def _signing_while_leading(self, sign: Callable[[], Awaitable[None]]) -> _LeaderBody:
        """``sign`` as the body of the "checkpoints" leadership on a shared log: once it ends
        (the leadership lost or handed on), this node no longer signs, so what its signer
        could not sign is no longer its to say. A node that lost the lead while its signer
        was failing (the database down a few seconds) kept saying "no checkpoint can be
        signed" in /healthz for as long as it ran, while the new leader signed.

        A signer whose key the log retired (:class:`KeyRetired`) ends the body, which hands
        the leadership on (``stepped_down``): a leader left with the retired key kept it and
        signed nothing, while a node given the new key never came to lead."""
        return _LeaderBody(sign, self.health)

    async def _until_key_in_force(self, stop: anyio.Event) -> None:
        """Wait, after stepping down, until the key file holds the key the log has in force (or
        ``stop``). Meanwhile /healthz says what this node waits for: degraded only while no
        node leads the checkpoints (then the log goes unsigned)."""
        every = min(self.config.checkpoint_interval, _STANDBY_POLL_S)
        while not stop.is_set():
            try:
                if await self._holds_key_in_force():
                    log.info("checkpoint_leadership_sought", key=self.signer.vkey)
                    self.health.standby = None
                    self.health.resume("signer")
                    return
                if await self.store.led("checkpoints"):
                    self.health.resume("signer")
                    self.health.standby = _STANDBY
                else:
                    self.health.standby = None
                    self.health.stall(
                        "signer", f"{_RETIRED}, and no node holding the key in force leads ({_GIVE})"
                    )
            except (StoreError, OSError) as e:
                log.warning("checkpoint_key_check_failed", error=str(e), retry_in_s=every)
            with anyio.move_on_after(every):
                await stop.wait()
        self.health.standby = None

    async def _holds_key_in_force(self) -> bool:
        """Whether this node's signer (or its key file, read again) holds the key in force."""
        from rollwatch.integrity.rotation import KeyRing

        ring = await KeyRing.load(self.store, self.signer.verifier(), self.config.origin or self.signer.name)
        current = ring.current
        if current is None or current.vkey == self.signer.vkey:
            return True
        signer = await self.reload_signer()
        return signer is not None and signer.vkey == current.vkey

    async def _scrub_at_start(self) -> None:
        try:
            # Not in the background: nothing is appended or signed until it passes.
            events, seconds = await scrub_pass(
                self.scrub_target(background=False),
                self.subscribers,
                due=self._found_due,
                events=await self._head(),
            )
        except IntegrityError:
            raise
        except StoreError as e:
            # Not a finding: the pass could not run (the database out of reach, say).
            log.warning("scrub_failed", error=str(e), at="start", retry_in_s=self.config.scrub_interval)
            return
        log.info("scrub_passed", events=events, seconds=round(seconds, 2), at="start")

    async def _head(self) -> int | None:
        """The log's head, for the check at start to choose one process or two; None when it
        cannot be read (a damaged page is the pass's to name as a finding, not this read's)."""
        try:
            return await self.store.head()
        except StoreError:
            return None

    def scrub_target(self, *, background: bool = True) -> ScrubTarget:
        """What the scrub reads: this daemon's log, tree, key and witness file."""
        return ScrubTarget(self.store_config.url, self.tree.path, self.signer.vkey, self.witness, background)

    async def final_checkpoint(self) -> Checkpoint | None:
        """Sign the log as it stands now (shutdown, after the runs); None when nothing is new."""
        if not self.health.ok:
            return None
        # As before any signature: a new key takes the key file's name first (a process whose
        # only checkpoint is this one left it pending, and the next start found the log
        # signed with no key).
        await anyio.to_thread.run_sync(promote_key, self.config.key_path(self.store_config))
        return await final_checkpoint(
            self.store, self.tree, self.signer, origin=self.config.origin, witness=self.witness
        )


_STANDBY_POLL_S = 5.0
"""Seconds between reads of the key file by a node that stepped down (at most)."""

_RETIRED = (
    "no checkpoint can be signed: the log rotated to another key, and this service signs with a retired one"
)

_GIVE = "give this node the new key: it takes it without a restart"

_STANDBY = (
    "not signing: the log rotated to another key and this node holds a retired one; another node"
    " leads the checkpoints, and this one competes again once its key file holds the key in force"
)


class _LeaderBody:
    """The body of the "checkpoints" leadership (see :meth:`Integrity._signing_while_leading`)."""

    def __init__(self, sign: Callable[[], Awaitable[None]], health: Health) -> None:
        self.sign = sign
        self.health = health
        self.stepped_down = False

    async def __call__(self) -> None:
        try:
            await self.sign()
        except KeyRetired as e:
            self.stepped_down = True
            log.warning(
                "checkpoint_leadership_released",
                key=e.key,
                in_force=e.in_force,
                reason="the log retired this node's key; a node holding the key in force signs",
                next="competes again once the key file holds the key in force",
            )
        finally:
            self.health.resume("signer")


@asynccontextmanager
async def open_integrity(
    config: IntegrityConfig,
    store_config: StoreConfig,
    store: EventStore,
    node: str = "",
    *,
    lease: float = 30.0,
) -> AsyncIterator[Integrity]:
    """Open the tree and load (or make) the key; close the tree on exit."""
    await set_aside_foreign_state(
        store,
        config.tree_path(store_config),
        [config.witness_path(store_config), config.state_dir(store_config) / ORIGIN_FILE],
        witness=config.witness_path(store_config),
        key_file=config.key_path(store_config),
    )
    config = await resolve_origin(config, config.state_dir(store_config), store, store_url=store_config.url)
    key_file = config.key_path(store_config)
    await finish_rotation(store, key_file, config.name)
    key_used_before = await anyio.Path(key_file).exists()
    if not key_used_before and not store.shared and credential_path() is None:
        # No key, yet the log was signed: a new one would sign nothing this log's
        # checkpoints lead to, and the scrub would call each of them a forgery (it did,
        # exit 1 "integrity check failed", on a log restored without its key). On a
        # shared log, check_shared_key says the nodes need the same key.
        checkpoints = await store.stream_version(CHECKPOINT_STREAM)
        if checkpoints > 0:
            raise MissingCheckpointKey(str(key_file), checkpoints)
    signer = await anyio.to_thread.run_sync(load_signer, key_file, config.name)
    async with MerkleTree(config.tree_path(store_config)) as tree:
        yield Integrity(
            config,
            store,
            tree,
            signer,
            config.witness_path(store_config),
            node,
            store_config,
            key_used_before=key_used_before,
            lease=lease,
        )
