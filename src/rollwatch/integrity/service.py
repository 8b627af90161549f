"""The daemon's integrity services in one object: tree, key, checkpointer, routes.

:func:`open_integrity` opens them from the ``[integrity]`` configuration
(:class:`rollwatch.config.IntegrityConfig`); :meth:`Integrity.run` keeps the
tree current (in a worker process) and signs checkpoints until told to stop.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from starlette.routing import Route

from rollwatch.abc import EventStore
from rollwatch.config import IntegrityConfig
from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner
from rollwatch.integrity.checkpointer import checkpointer, final_checkpoint
from rollwatch.integrity.keys import load_signer
from rollwatch.integrity.routes import integrity_routes
from rollwatch.integrity.tree import MerkleTree

if TYPE_CHECKING:
    from rollwatch.config import StoreConfig


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
    ) -> None:
        self.node = node
        self.config = config
        self.store = store
        self.tree = tree
        self.signer = signer
        self.witness = witness

    def routes(self) -> list[Route]:
        """``/public/checkpoint``, ``/public/key`` and ``/public/proof/*``."""
        return integrity_routes(self.tree, self.signer.vkey)

    async def run(
        self, stop: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the tree current and sign checkpoints until ``stop``; then sign a final one and return.

        Reports started once the tree has caught up and the first checkpoint is
        signed. Raises :class:`IntegrityError` when the log no longer matches what was
        signed (the tree refuses to absorb it, or the checkpointer to sign it).
        """
        failure: BaseException | None = None

        async def fail_with(e: BaseException) -> None:
            nonlocal failure
            failure = failure or e
            tg.cancel_scope.cancel()

        async def follow(*, task_status: TaskStatus[None]) -> None:
            try:
                await self.tree.follow_in_worker(self.store, task_status=task_status)
            except Exception as e:
                await fail_with(e)

        # Failures leave through here as themselves, not wrapped in an ExceptionGroup:
        # the daemon reports an IntegrityError as such. The worker catches up first; a
        # log that no longer continues the tree fails before anything is reported started.
        sign = functools.partial(
            checkpointer,
            self.store,
            self.tree,
            self.signer,
            every_events=self.config.checkpoint_every,
            interval=self.config.checkpoint_interval,
            stop=stop,
            origin=self.config.origin,
            witness=self.witness,
            node=self.node,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(follow)
            try:
                if self.store.shared:
                    # Every node keeps its tree (for proofs); one signs at a time, the
                    # leader of "checkpoints", so the log has one series of checkpoints.
                    task_status.started()
                    await self.store.lead("checkpoints", sign, stop)
                else:
                    await sign(task_status=task_status)
            except Exception as e:
                while isinstance(e, ExceptionGroup) and len(e.exceptions) == 1:
                    e = e.exceptions[0]
                await fail_with(e)
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def final_checkpoint(self) -> Checkpoint | None:
        """Sign the log as it stands now (shutdown, after the runs); None when nothing is new."""
        return await final_checkpoint(
            self.store, self.tree, self.signer, origin=self.config.origin, witness=self.witness
        )


@asynccontextmanager
async def open_integrity(
    config: IntegrityConfig, store_config: StoreConfig, store: EventStore, node: str = ""
) -> AsyncIterator[Integrity]:
    """Open the tree and load (or make) the key; close the tree on exit."""
    signer = await anyio.to_thread.run_sync(load_signer, config.key_path(store_config), config.name)
    async with MerkleTree(config.tree_path(store_config)) as tree:
        yield Integrity(config, store, tree, signer, config.witness_path(store_config), node)
