"""Tamper evidence beyond the hash chain: an RFC 9162 Merkle tree over the log,
signed checkpoints (C2SP tlog-checkpoint), public proofs, and the auditor.

Modules: :mod:`~rollwatch.integrity.merkle` (hashes, proofs, verifiers; pure),
:mod:`~rollwatch.integrity.tree` (the tree kept in ``merkle.db``),
:mod:`~rollwatch.integrity.checkpoint` (notes, keys' IDs, the ``CheckpointSigned``
event), :mod:`~rollwatch.integrity.keys` (the signing key),
:mod:`~rollwatch.integrity.checkpointer` (signing, never inconsistently),
:mod:`~rollwatch.integrity.routes` (HTTP), :mod:`~rollwatch.integrity.audit` (the
third party's check), :mod:`~rollwatch.integrity.verify` (the operator's check),
:mod:`~rollwatch.integrity.service` (configuration and wiring for the daemon).
"""

from rollwatch.integrity.audit import AuditFailure, AuditReport, audit
from rollwatch.integrity.checkpoint import (
    Checkpoint,
    CheckpointSigned,
    InvalidNote,
    NoteSigner,
    NoteVerifier,
)
from rollwatch.integrity.checkpointer import Checkpointer, checkpointer, final_checkpoint
from rollwatch.integrity.merkle import InvalidProof
from rollwatch.integrity.routes import inclusion_fields, integrity_routes
from rollwatch.integrity.service import Integrity, IntegrityConfig, open_integrity
from rollwatch.integrity.tree import MerkleTree
from rollwatch.integrity.verify import TreeReport, check_log_tree

__all__ = [
    "AuditFailure",
    "AuditReport",
    "Checkpoint",
    "CheckpointSigned",
    "Checkpointer",
    "Integrity",
    "IntegrityConfig",
    "InvalidNote",
    "InvalidProof",
    "MerkleTree",
    "NoteSigner",
    "NoteVerifier",
    "TreeReport",
    "audit",
    "check_log_tree",
    "checkpointer",
    "final_checkpoint",
    "inclusion_fields",
    "integrity_routes",
    "open_integrity",
]
