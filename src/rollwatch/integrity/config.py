"""``[integrity]``: how often checkpoints are signed, under which name and key.

Every key is optional::

    [integrity]
    origin = "rollwatch.example/log"   # the log's name in checkpoints (and the key's)
    checkpoint_every = 1000            # sign after this many events ...
    checkpoint_interval = "10m"        # ... or this long, whichever comes first (and at shutdown)
    scrub_interval = "5m"              # re-read and check the whole log this often
    key_file = "/var/lib/rollwatch/checkpoint.key"   # default <state dir>/checkpoint.key
    # key_name = "..."                 # default: origin
    # tree = "var/merkle.db"           # default: merkle.db next to the projections

The state directory is ``$STATE_DIRECTORY`` (systemd ``StateDirectory=``) or else the
projections' folder. A systemd credential ``checkpoint-key`` takes precedence over the
key file (see :mod:`rollwatch.integrity.keys`).

This module imports nothing of rollwatch at load time, so that ``rollwatch.config``
can import it without a cycle.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from rollwatch.config import StoreConfig


def _duration(value: object) -> float:
    from rollwatch.config import parse_duration

    return parse_duration(value)


_KEY_NAME = re.compile(r"[^\s+]+")


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
    checkpoint_interval: Annotated[float, BeforeValidator(_duration)] = Field(default=600.0, ge=1.0)
    """Sign a checkpoint at least this often when anything was appended."""
    scrub_interval: Annotated[float, BeforeValidator(_duration)] = Field(default=300.0, ge=0.1)
    """Start a full re-read of the log (chain, tree leaves, checkpoints) this often; a pass
    over 10⁶ events takes 15-25 s (paced to half a core, at nice 19, in a process of its own)."""

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
        if v is not None and not _KEY_NAME.fullmatch(v):
            raise ValueError(f"{v!r}: a key name must be non-empty, without spaces or '+'")
        return v

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
