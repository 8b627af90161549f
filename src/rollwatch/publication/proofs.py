"""Proof bundles: every event behind a released result, proven against one signed checkpoint.

A released result claims: this request (provider, model, problem and its content
hash, sample, the prompt as sent) got this answer, which scored this, was decided
public with this embargo, and was released. Each of those is an event of the
rollout's stream ``rollout-<id>``; the bundle carries all of them, with the signed
checkpoint they are proven against::

    {"format": "rollwatch-proof/v1",
     "rollout_id": ID,
     "checkpoint": "<the signed note, as /checkpoint served it>",
     "tree_size": N,                       # the checkpoint's size
     "events": [{"seq": S, "leaf_index": S - 1, "type": "RolloutRequested",
                 "canonical": "<the event's canonical JSON: the leaf's bytes>",
                 "leaf_hash": base64, "inclusion": [base64, ...]}, ...],
     "pending": [S, ...],                  # events after the checkpoint: proven at the next one
     "complete": true}                     # no event pending

A public bundle gives a failing verdict before the release (the run's, flipped to a pass
by a re-score; or one that withdrew a public date a later pass restored) as its leaf hash
alone::

     {"seq": S, "leaf_index": S - 1, "type": "RolloutScored", "withheld": "failing verdict",
      "leaf_hash": base64, "inclusion": [base64, ...]}

A failing verdict's ``reason`` and ``detail`` name the hidden test it failed, its line and
expected value: the subscribers' (the feed, the console), never the public's. Its bytes
were in the bundle, released with the pass (session 34). The leaf is still proven in the
tree; a verifier takes it as a failing verdict at that seq, which can only count against
the claim (it must come before the pass the release stands for; it withdraws the public
date until a later pass restores it), never for it; its ``type`` is the operator's word,
read by nothing that checks. A leaf's inclusion does not tell a withheld entry is this
rollout's event (any leaf would do), and no inclusion proof tells a bundle holds every event
of its rollout: whoever served a bundle could leave a withdrawal out, or give a foreign leaf
as a failing verdict before a later pass, and move the proven public date
(tests/publication/test_withheld_attacks_s34.py ``TestLeftOut``). Since session 35 the
release's own event says which: ``PublicReleased`` (schema 2,
:func:`rollwatch.publication.release.released`) names the seq of every event of the rollout
before it and those given here by leaf alone (one rule, :func:`withheld_as`), and
``check_bundle`` holds the bundle to exactly those (``test_claim_attacks_s35``). A result
released before (schema 1) names none, and its bundle gets the check of before.

A failed attempt (``RolloutFailed``, retried: its ``message`` is the provider's error body,
which not even the subscribers' feed shows) is given the same way, ``"withheld": "failed
attempt"``; a verifier counts it as a failing verdict too. It always comes before the answer,
so before any verdict: it changes nothing of the claim (session 34 found its bytes in every
public bundle of a result whose first attempt failed).

A public bundle (``public=True``: the public routes and ``publish export``) stops at the
result's release: it names no event after it, pending or not. Before, it listed the seqs
of the rollout's later events (a re-score of it) under ``pending``: the log's live size
between checkpoints, and from its steps how many events, re-scores of results under
embargo among them, were appended meanwhile. Every seq a public bundle names is at most
``released_seq``, which the result states anyway; the claim (request, answer, verdict,
decision, release) is all before it. The operator's console keeps the whole stream.

An auditor needs the log's public key (``/public/key``, ``key`` in an export; pin it
once) and nothing of ours: verify the note's Ed25519 signature, take its size and
root, and for each event hash ``0x00 ‖ canonical`` and fold ``inclusion`` (RFC 9162
§2.1.3.2) up to that root; then read the claim out of the canonical JSON. The
rollout id itself is ``UUIDv5(6f1d7f0e-3c9b-4c1e-9a57-2b8f0d4c7a11, run_id ‖ 0x00 ‖
model ‖ 0x00 ‖ problem_id ‖ 0x00 ‖ sample)`` (see :func:`rollwatch.runs.pipeline.rollout_id`),
so the request event ties the id to what was asked.

Bundles for the checkpoint of the moment are kept (the 2,000 used last, about 40 MB),
so the feed's items and popular results are built once per checkpoint; a
``results.jsonl`` or an export of more results than that makes the rest as it goes
(about 3 ms a result) and keeps no more. Before, every bundle made against one
checkpoint was kept until the next one: an export of a 1M-event log, or one anonymous
pull of ``/public/results.jsonl`` streamed from the daemon, held every result's bundle
(1.2 GB at 1M events; a year's log would have taken the daemon's memory).
"""

from __future__ import annotations

from typing import Any

from rollwatch.abc import EventStore
from rollwatch.events import rollout_stream
from rollwatch.integrity.bundle import withheld_as
from rollwatch.integrity.checkpoint import b64
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.integrity.tree import MerkleTree, StoredCheckpoint

FORMAT = "rollwatch-proof/v1"

_KEEP = 2_000  # about 20 KB each in memory


class ProofBundles:
    """The proof bundles of released results, from ``store`` and its ``tree``."""

    def __init__(
        self, store: EventStore, tree: MerkleTree, *, public: bool = False, keep: int = _KEEP
    ) -> None:
        """``public``: bundles stop at the release (see the module's docstring). ``keep``:
        how many bundles of the current checkpoint are kept (the ones used last)."""
        self.store = store
        self.tree = tree
        self.public = public
        self.keep = keep
        self._seq = -1  # the CheckpointSigned event the kept bundles are for
        self._kept: dict[str, dict[str, Any]] = {}

    @property
    def kept(self) -> int:
        """How many bundles are kept now (at most ``keep``)."""
        return len(self._kept)

    async def checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint bundles are made against now (the latest signed one)."""
        cp = await self.tree.latest_checkpoint()
        if cp is None or cp.seq != self._seq:
            self._seq, self._kept = (cp.seq if cp is not None else -1), {}
        return cp

    async def bundle(
        self, rollout_id: str, checkpoint: StoredCheckpoint | None = None
    ) -> dict[str, Any] | None:
        """The bundle of ``rollout_id`` against ``checkpoint`` (default: the latest); None without one.

        Only call this for released results: the bundle shows every event of the rollout (a
        public one every event up to its release; None for one without a release).
        """
        cp = checkpoint or await self.checkpoint()
        if cp is None:
            return None
        current = cp.seq == self._seq
        if current and (kept := self._kept.pop(rollout_id, None)) is not None:
            self._kept[rollout_id] = kept  # used last: kept longest
            return kept
        pending: list[int] = []
        covered = []
        released = False
        async for ev in self.store.read(stream=rollout_stream(rollout_id)):
            if self.public and released:
                break  # nothing after the release: its seq would tell the log's live size
            released = released or ev.type == "PublicReleased"
            if ev.seq > cp.size:
                pending.append(ev.seq)
            else:
                covered.append(ev)
        if self.public and not released:
            return None
        paths = await self.tree.inclusion_proofs([ev.seq - 1 for ev in covered], cp.size)
        events: list[dict[str, Any]] = []
        for ev, path in zip(covered, paths, strict=True):
            canonical = ev.canonical()
            if self.public and (withheld := withheld_as(ev.type, ev.data)) is not None:
                events.append(
                    {
                        "seq": ev.seq,
                        "leaf_index": ev.seq - 1,
                        "type": ev.type,  # what the operator says it is: no proof of it
                        "withheld": withheld,
                        "leaf_hash": b64(leaf_hash(canonical)),
                        "inclusion": [b64(h) for h in path],
                    }
                )
                continue
            events.append(
                {
                    "seq": ev.seq,
                    "leaf_index": ev.seq - 1,
                    "type": ev.type,
                    "canonical": canonical.decode(),
                    "leaf_hash": b64(leaf_hash(canonical)),
                    "inclusion": [b64(h) for h in path],
                }
            )
        out = {
            "format": FORMAT,
            "rollout_id": rollout_id,
            "checkpoint": cp.note,
            "tree_size": cp.size,
            "events": events,
            "pending": pending,
            "complete": not pending,
        }
        if current and self.keep > 0:
            while len(self._kept) >= self.keep:
                del self._kept[next(iter(self._kept))]  # the one used longest ago
            self._kept[rollout_id] = out
        return out
