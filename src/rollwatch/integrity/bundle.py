"""Checking a released result's proof bundle (``rollwatch-proof/v1``, made by
:mod:`rollwatch.publication.proofs`): what ``rollwatch audit --item`` does with it.

Every event must be the rollout's, hash to a leaf whose inclusion path folds to the
root of the bundle's checkpoint, and that checkpoint must carry the log's signature;
the request must derive the rollout id (UUIDv5, :data:`ROLLOUT_NAMESPACE`), and the
events must make the whole claim: request, answer, passing score, public decision,
release.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from rollwatch.errors import InvalidNote
from rollwatch.integrity.checkpoint import Checkpoint, NoteVerifier, unb64
from rollwatch.integrity.merkle import leaf_hash, verify_inclusion

ROLLOUT_NAMESPACE = uuid.UUID("6f1d7f0e-3c9b-4c1e-9a57-2b8f0d4c7a11")
"""``rollout_id = UUIDv5(ROLLOUT_NAMESPACE, run_id ‖ 0x00 ‖ model ‖ 0x00 ‖ problem_id ‖ 0x00 ‖ sample)``."""

WITHHELD = "failing verdict"
"""A public bundle's entry for a failing verdict: its leaf hash and inclusion path, not its
bytes (see :mod:`rollwatch.publication.proofs`)."""

WITHHELD_ATTEMPT = "failed attempt"
"""A public bundle's entry for a failed attempt (``RolloutFailed``: the provider's error text),
given as a failing verdict is; a verifier counts it as one (it cannot tell them apart)."""

CLAIM = ("RolloutRequested", "RolloutResponded", "PublicationDecided", "PublicReleased")
"""The events a bundle must show with their bytes; and a passing verdict (the run's
``RolloutScored`` or a re-score's ``RolloutRescored``), the newest before the release."""


def derive_rollout_id(run_id: str, model: str, problem_id: str, sample: int) -> str:
    """The rollout id the pipeline gives the sample ``sample`` of ``model`` on ``problem_id`` in ``run_id``."""
    return str(uuid.uuid5(ROLLOUT_NAMESPACE, f"{run_id}\x00{model}\x00{problem_id}\x00{sample}"))


def check_bundle(
    bundle: Any, rollout_id: str, verifier: NoteVerifier, record: dict[str, Any] | None = None
) -> tuple[Checkpoint, int]:
    """The bundle's verified checkpoint and its number of events; ValueError saying what is wrong.

    ``record``: the result the bundle came with, whose fields must be what the events say (its
    request, answer, public date, release and verdict; its score too unless it is marked superseded)."""
    if not isinstance(bundle, dict) or bundle.get("format") != "rollwatch-proof/v1":
        raise ValueError("no rollwatch-proof/v1 bundle")
    try:
        cp = verifier.open_checkpoint(str(bundle.get("checkpoint", "")))
    except InvalidNote as e:
        raise ValueError(f"its checkpoint: {e}") from None
    if bundle.get("pending"):
        raise ValueError(f"events {bundle['pending']} are not under its checkpoint yet (ask again later)")
    seen: dict[str, dict[str, Any]] = {}
    seqs: dict[str, int] = {}
    ats: dict[str, Any] = {}
    verdicts: list[tuple[int, dict[str, Any]]] = []  # (seq, data) of every verdict
    stream: list[tuple[int, Any]] = []  # (seq, envelope; None: withheld) of every event, for the public date
    indexes: set[int] = set()
    for ev in bundle.get("events") or []:
        try:
            index = int(ev["leaf_index"])
            path = [unb64(h, "an inclusion hash") for h in ev["inclusion"]]
            if "canonical" in ev or ev.get("withheld") not in (WITHHELD, WITHHELD_ATTEMPT):
                canonical = str(ev["canonical"]).encode()
                leaf, env = leaf_hash(canonical), json.loads(canonical)
            else:
                leaf, env = unb64(ev["leaf_hash"], "a leaf hash"), None
        except (KeyError, TypeError, ValueError, OverflowError, InvalidNote, RecursionError) as e:
            raise ValueError(f"a malformed event: {e}") from None
        if index in indexes:
            raise ValueError(f"event {index + 1} is in the bundle twice")
        indexes.add(index)
        if len(leaf) != 32 or not verify_inclusion(index, cp.size, leaf, path, cp.root):
            raise ValueError(
                f"event {index + 1} is not in the tree of size {cp.size} (its bytes or path were changed)"
            )
        if env is None:
            # A failing verdict given by its leaf alone (its reason names a hidden test): taken
            # as one, it never makes the release stand for a pass; it can move the public date
            # (see rollwatch.publication.proofs and test_withheld_attacks_s34's TestLeftOut).
            verdicts.append((index + 1, {"passed": False}))
            stream.append((index + 1, None))
            continue
        data = env.get("data") if isinstance(env, dict) else None
        if (
            not isinstance(data, dict)
            or env.get("seq") != index + 1
            or env.get("stream") != f"rollout-{rollout_id}"
            or data.get("rollout_id") != rollout_id
        ):
            raise ValueError(f"event {index + 1} is not an event of rollout {rollout_id}")
        stream.append((index + 1, env))
        if env.get("type") == "PublicationDecided" and data.get("audience") != "public":
            continue  # the claim is the public decision: not subscribers, not "none" (a re-score's)
        if env.get("type") in ("RolloutScored", "RolloutRescored"):
            verdicts.append((index + 1, data))
        seen[str(env.get("type"))] = data
        seqs[str(env.get("type"))] = index + 1
        ats[str(env.get("type"))] = env.get("at")
    missing = [t for t in CLAIM if t not in seen]
    if missing:
        raise ValueError(f"the bundle lacks {', '.join(missing)}")
    req = seen["RolloutRequested"]
    try:
        derived = derive_rollout_id(req["run_id"], req["model"], req["problem_id"], int(req["sample"]))
    except (KeyError, TypeError, ValueError):
        derived = ""
    if derived != rollout_id:
        raise ValueError("the rollout id is not the UUIDv5 of its request's run, model, problem and sample")
    # The release stands for the newest verdict before it: the run's, or a re-score's that
    # flipped it to a pass (a later flip back marks it superseded; the release still was).
    before = [(seq, data) for seq, data in verdicts if seq < seqs["PublicReleased"]]
    if not before:
        raise ValueError("the bundle holds no verdict before its release")
    if max(before, key=lambda v: v[0])[1].get("passed") is not True:
        raise ValueError("the verdict its release stands for is not a pass")
    if record is not None:
        claims = [(k, req.get(k)) for k in ("run_id", "provider", "model", "problem_id", "sample")]
        claims += [
            ("answer", seen["RolloutResponded"].get("text")),
            ("not_before", _public_date(stream, seqs["PublicReleased"])),
            ("released_seq", seqs["PublicReleased"]),
            ("released_at", ats["PublicReleased"]),
            ("passed", True),  # a released result is a pass (the verdict above)
        ]
        if record.get("superseded") is not True:
            # The score is the first pass's, as the read models give it (``scored_seq``: a later
            # pass changes neither the score nor the event the feed item proves). Before, the
            # newest verdict's was asked for, and a pass re-scored a pass of another score
            # (a checker's partial score) was refused: an honest bundle.
            first = min((v for v in before if v[1].get("passed") is True), key=lambda v: v[0])
            claims.append(("score", first[1].get("score")))
        for k, logged in claims:
            if record.get(k) != logged:
                raise ValueError(f"the result's {k} is not what its logged events say")
    return cp, len(bundle.get("events") or [])


def _public_date(stream: list[tuple[int, Any]], released: int) -> str | None:
    """The public date the events up to the release (``released``) give the result, as the
    release job reads it (:class:`rollwatch.events.PublicDate`: the public
    decision's, or for a pass withdrawn before its release and restored, an embargo after
    the restore)."""
    from rollwatch.errors import StoreError
    from rollwatch.events import PublicDate, RolloutScored, decode

    date = PublicDate()
    withheld = RolloutScored(rollout_id="", passed=False, score=0.0, scorer="")
    for seq, env in sorted(stream, key=lambda x: x[0]):
        if seq > released:
            break
        if env is None:
            date.take(seq, "", withheld)  # a failing verdict's "at" dates nothing
            continue
        try:
            ev = decode(str(env.get("type")), int(env.get("schema") or 1), env["data"])
        except (StoreError, KeyError, TypeError, ValueError):
            continue  # a type this rollwatch does not know dates nothing
        date.take(seq, str(env.get("at")), ev)
    return date.not_before
