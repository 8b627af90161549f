"""The daemon's integrity services in one place: configuration, tree, key, checkpointer, routes.

``[integrity]`` in the configuration (every key optional)::

    [integrity]
    origin = "rollwatch.example/log"   # the log's name in checkpoints (and the key's)
    checkpoint_every = 1000            # sign after this many events ...
    checkpoint_interval = "10m"        # ... or this long, whichever comes first (and at shutdown)
    key_file = "/var/lib/rollwatch/checkpoint.key"   # default <state dir>/checkpoint.key
    # key_name = "..."                 # default: origin
    # tree = "var/merkle.db"           # default: merkle.db next to the projections

The state directory is ``$STATE_DIRECTORY`` (systemd ``StateDirectory=``) or else the
projections' folder. A systemd credential ``checkpoint-key`` takes precedence over the
key file (see :mod:`rollwatch.integrity.keys`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.routing import Route

from rollwatch.abc import EventStore
from rollwatch.config import Duration, StoreConfig, parse_duration
from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner, check_key_name
from rollwatch.integrity.checkpointer import checkpointer, final_checkpoint
from rollwatch.integrity.keys import load_signer
from rollwatch.integrity.routes import integrity_routes
from rollwatch.integrity.tree import MerkleTree


class IntegrityConfig(BaseModel):
    """``[integrity]``: how often checkpoints are signed, under which name and key."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    origin: str = "rollwatch.example/log"
    """The log's name on the first line of every checkpoint; a schema-less URL is recommended."""
    key_name: str | None = None
    """The signing key's name (default: ``origin``)."""
    key_file: str | None = None
    """The Ed25519 private key (PEM); made at first start (default ``<state dir>/checkpoint.key``)."""
    tree: str | None = None
    """The Merkle tree's SQLite file (default ``merkle.db`` next to the projections)."""
    checkpoint_every: int = Field(default=1000, ge=1)
    """Sign a checkpoint once this many events were appended since the last one."""
    checkpoint_interval: Duration = Field(default=parse_duration("10m"), ge=1.0)
    """Sign a checkpoint at least this often when anything was appended."""

    @field_validator("origin")
    @classmethod
    def _origin(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v) or "+" in v:
            raise ValueError(
                f"{v!r}: the origin must be non-empty, without spaces or '+' (e.g. 'example.org/rollwatch')"
            )
        return v

    @field_validator("key_name")
    @classmethod
    def _key_name(cls, v: str | None) -> str | None:
        return None if v is None else check_key_name(v)

    @property
    def name(self) -> str:
        """The key name checkpoints are signed under."""
        return self.key_name or self.origin

    def state_dir(self, store: StoreConfig) -> Path:
        """``$STATE_DIRECTORY`` (its first entry), else the projections' folder."""
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0])
        return store.projections_path.parent

    def key_path(self, store: StoreConfig) -> Path:
        """Where the signing key is kept."""
        return Path(self.key_file) if self.key_file else self.state_dir(store) / "checkpoint.key"

    def witness_path(self, store: StoreConfig) -> Path:
        """Where the last signed checkpoint is remembered apart from the log."""
        return self.state_dir(store) / "checkpoint.last"

    def tree_path(self, store: StoreConfig) -> Path:
        """The Merkle tree's SQLite file."""
        return Path(self.tree) if self.tree else store.projections_path.parent / "merkle.db"


class Integrity:
    """The tree, the signer and the checkpointer of one daemon (see :func:`open_integrity`)."""

    def __init__(
        self, config: IntegrityConfig, store: EventStore, tree: MerkleTree, signer: NoteSigner, witness: Path
    ) -> None:
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
        async with anyio.create_task_group() as tg:
            await tg.start(follow)
            try:
                await checkpointer(
                    self.store,
                    self.tree,
                    self.signer,
                    every_events=self.config.checkpoint_every,
                    interval=self.config.checkpoint_interval,
                    stop=stop,
                    origin=self.config.origin,
                    witness=self.witness,
                    task_status=task_status,
                )
            except Exception as e:
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
    config: IntegrityConfig, store_config: StoreConfig, store: EventStore
) -> AsyncIterator[Integrity]:
    """Open the tree and load (or make) the key; close the tree on exit."""
    signer = await anyio.to_thread.run_sync(load_signer, config.key_path(store_config), config.name)
    async with MerkleTree(config.tree_path(store_config)) as tree:
        yield Integrity(config, store, tree, signer, config.witness_path(store_config))
