"""Tamper evidence beyond the hash chain: an RFC 9162 Merkle tree over the log,
signed checkpoints (C2SP tlog-checkpoint), public proofs, and the auditor.

Modules: :mod:`~rollwatch.integrity.merkle` (hashes, proofs, verifiers; pure),
:mod:`~rollwatch.integrity.tree` (the tree kept in ``merkle.db``, and its worker
process), :mod:`~rollwatch.integrity.checkpoint` (signed notes, checkpoints, the
``CheckpointSigned`` event), :mod:`~rollwatch.integrity.keys` (the signing key),
:mod:`~rollwatch.integrity.checkpointer` (signing, never inconsistently),
:mod:`~rollwatch.integrity.routes` (HTTP), :mod:`~rollwatch.integrity.audit` (the
third party's check), :mod:`~rollwatch.integrity.verify` (the operator's check),
:mod:`~rollwatch.integrity.scrub` (the daemon's periodic re-read of the whole log),
:mod:`~rollwatch.integrity.health` (the daemon's verdict, behind ``/healthz``),
:mod:`~rollwatch.integrity.identity` (which log state belongs to; the origin),
:mod:`~rollwatch.integrity.tiles` (the log as a C2SP tlog-tiles log),
:mod:`~rollwatch.integrity.bundle` (checking a released result's proof bundle),
:mod:`~rollwatch.integrity.witness` (a C2SP tlog-witness: ``rollwatch witness serve``),
:mod:`~rollwatch.integrity.witnessing` (the daemon's witnesses and their quorum) and
:mod:`~rollwatch.integrity.service` (the daemon's bundle). ``[integrity]`` is
:class:`rollwatch.config.IntegrityConfig`, with the rest of the configuration.

The names below are imported on first use, so that importing one part does not
pull in the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollwatch.config import IntegrityConfig
    from rollwatch.errors import AuditFailure, InvalidNote, InvalidProof
    from rollwatch.integrity.audit import AuditReport, audit
    from rollwatch.integrity.checkpoint import (
        Checkpoint,
        NoteSigner,
        NoteVerifier,
    )
    from rollwatch.integrity.checkpointer import Checkpointer, checkpointer, final_checkpoint
    from rollwatch.integrity.routes import inclusion_fields, integrity_routes
    from rollwatch.integrity.service import Integrity, open_integrity
    from rollwatch.integrity.tree import MerkleTree, SQLiteLogFile
    from rollwatch.integrity.verify import TreeReport, check_log_tree

_WHERE = {
    "AuditFailure": "rollwatch.errors",
    "AuditReport": "audit",
    "audit": "audit",
    "Checkpoint": "checkpoint",
    "InvalidNote": "rollwatch.errors",
    "NoteSigner": "checkpoint",
    "NoteVerifier": "checkpoint",
    "Checkpointer": "checkpointer",
    "checkpointer": "checkpointer",
    "final_checkpoint": "checkpointer",
    "IntegrityConfig": "rollwatch.config",
    "InvalidProof": "rollwatch.errors",
    "inclusion_fields": "routes",
    "integrity_routes": "routes",
    "Integrity": "service",
    "open_integrity": "service",
    "MerkleTree": "tree",
    "SQLiteLogFile": "tree",
    "TreeReport": "verify",
    "check_log_tree": "verify",
}

__all__ = [
    "AuditFailure",
    "AuditReport",
    "Checkpoint",
    "Checkpointer",
    "Integrity",
    "IntegrityConfig",
    "InvalidNote",
    "InvalidProof",
    "MerkleTree",
    "NoteSigner",
    "NoteVerifier",
    "SQLiteLogFile",
    "TreeReport",
    "audit",
    "check_log_tree",
    "checkpointer",
    "final_checkpoint",
    "inclusion_fields",
    "integrity_routes",
    "open_integrity",
]


assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
