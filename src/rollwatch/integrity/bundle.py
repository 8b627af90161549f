"""Checking a released result's proof bundle (``rollwatch-proof/v1``, made by
:mod:`rollwatch.publication.proofs`): what ``rollwatch audit --item`` does with it.

Every event must be the rollout's, hash to a leaf whose inclusion path folds to the
root of the bundle's checkpoint, and that checkpoint must carry the log's signature;
the request must derive the rollout id (UUIDv5, :data:`ROLLOUT_NAMESPACE`), and the
events must make the whole claim: request, answer, passing score, public decision,
release.

An inclusion proof shows an event is in the log, never that a bundle holds every event of
its rollout. A ``PublicReleased`` of schema 2 (the release job's since session 35) names
them: the seq of every event of the rollout before it, those a public bundle gives by leaf
alone (:func:`withheld_as`), the verdict it releases, the decision it acts on and the date.
The bundle must then hold exactly those events before the release (none left out, no other
leaf), by leaf alone only where the release says so, and its events must give that verdict
and that date. A release of schema 1 names none: the check of before, which cannot tell an
event left out or a foreign leaf given as a withheld failing verdict (either can move the
date the bundle proves).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollwatch.errors import InvalidNote
from rollwatch.integrity.checkpoint import Checkpoint, NoteVerifier, unb64
from rollwatch.integrity.merkle import leaf_hash, verify_inclusion

if TYPE_CHECKING:
    from rollwatch.events import PublicDate

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

VERDICTS = ("RolloutScored", "RolloutRescored")


def withheld_as(type_: str, data: Any) -> str | None:
    """How a public bundle gives an event of type ``type_`` with stored ``data`` (as hashed, not
    upcast): by its leaf alone as :data:`WITHHELD_ATTEMPT` or :data:`WITHHELD`, or None (with its
    bytes). One rule for the bundles (:mod:`rollwatch.publication.proofs`) and the release job,
    whose ``PublicReleased`` names the seqs so given."""
    if type_ == "RolloutFailed":
        return WITHHELD_ATTEMPT
    if type_ in VERDICTS and (not isinstance(data, dict) or data.get("passed") is not True):
        return WITHHELD
    return None


def derive_rollout_id(run_id: str, model: str, problem_id: str, sample: int) -> str:
    """The rollout id the pipeline gives the sample ``sample`` of ``model`` on ``problem_id`` in ``run_id``."""
    return str(uuid.uuid5(ROLLOUT_NAMESPACE, f"{run_id}\x00{model}\x00{problem_id}\x00{sample}"))


def check_bundle(
    bundle: Any, rollout_id: str, verifier: NoteVerifier, record: dict[str, Any] | None = None
) -> tuple[Checkpoint, int]:
    """The bundle's verified checkpoint and its number of events; ValueError saying what is wrong.

    ``record``: the result the bundle came with, whose fields must be what the events say (its
    rollout id, request, answer, cost, public date, release, and the first pass's score and date,
    superseded or not)."""
    if not isinstance(bundle, dict) or bundle.get("format") != "rollwatch-proof/v1":
        raise ValueError("no rollwatch-proof/v1 bundle")
    try:
        cp = verifier.open_checkpoint(str(bundle.get("checkpoint", "")))
    except InvalidNote as e:
        raise ValueError(f"its checkpoint: {e}") from None
    if bundle.get("pending"):
        raise ValueError(f"events {bundle['pending']} are not under its checkpoint yet (ask again later)")
    entries = bundle.get("events")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        # A number here was a TypeError traceback out of audit --item.
        raise ValueError("its events are not a list")
    parsed: list[tuple[int, Any]] = []  # (seq, envelope; None: withheld), as the bundle gives them
    indexes: set[int] = set()
    for ev in entries:
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
        parsed.append((index + 1, env))
    seen: dict[str, dict[str, Any]] = {}
    seqs: dict[str, int] = {}
    ats: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    verdicts: list[tuple[int, dict[str, Any]]] = []  # (seq, data) of every verdict
    verdict_ats: dict[int, Any] = {}
    costs: list[Any] = []  # each answer's cost_usd before the release, in the log's order
    stream: list[tuple[int, Any]] = []  # (seq, envelope; None: withheld) of every event, for the public date
    # In the log's order, whatever the bundle's: the claim is the newest answer (and request)
    # before the release, as the read models give it, and the first release. Before, the last
    # entry of a type in the bundle's own order was taken: a bundle reordered could state an
    # earlier answer of the rollout (one attempt's, re-asked) as the one its pass judged.
    for seq, env in sorted(parsed, key=lambda x: x[0]):
        if env is None:
            # A failing verdict given by its leaf alone (its reason names a hidden test): taken
            # as one, it never makes the release stand for a pass. Any leaf of the tree proves
            # so: a release that names its claim (PublicReleased schema 2) binds each such entry
            # to a seq it names as withheld (_holds_exactly); without one, it can move the public
            # date (rollwatch.publication.proofs, test_withheld_attacks_s34's TestLeftOut).
            verdicts.append((seq, {"passed": False}))
            stream.append((seq, None))
            continue
        data = env.get("data") if isinstance(env, dict) else None
        if (
            not isinstance(data, dict)
            or env.get("seq") != seq
            or env.get("stream") != f"rollout-{rollout_id}"
            or data.get("rollout_id") != rollout_id
        ):
            raise ValueError(f"event {seq} is not an event of rollout {rollout_id}")
        stream.append((seq, env))
        if "PublicReleased" in seqs:
            continue  # after the release: no part of its claim
        if env.get("type") == "PublicationDecided" and data.get("audience") != "public":
            continue  # the claim is the public decision: not subscribers, not "none" (a re-score's)
        if env.get("type") in VERDICTS:
            verdicts.append((seq, data))
            verdict_ats[seq] = env.get("at")
        if env.get("type") == "RolloutResponded":
            costs.append(data.get("cost_usd"))
        seen[str(env.get("type"))] = data
        seqs[str(env.get("type"))] = seq
        ats[str(env.get("type"))] = env.get("at")
        schemas[str(env.get("type"))] = env.get("schema")
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
    newest = max(before, key=lambda v: v[0])
    if newest[1].get("passed") is not True:
        raise ValueError("the verdict its release stands for is not a pass")
    date = _public_date(stream, seqs["PublicReleased"])
    claim = _claim(schemas["PublicReleased"], seen["PublicReleased"], seqs["PublicReleased"])
    if claim is not None:
        _holds_exactly(claim, stream, seqs["PublicReleased"], newest[0], date)
    if record is not None:
        if not isinstance(record, dict):
            raise ValueError("the result is not a JSON object")
        # The score and its date are the first pass's, as the read models give them
        # (``scored_seq``: a later pass changes neither the score nor the event the feed item
        # proves; nor does a superseded mark, a failing re-score after the release, which a
        # public bundle does not reach). Before, the newest verdict's was asked for, and a pass
        # re-scored a pass of another score (a checker's partial score) was refused: an honest
        # bundle; and a result marked superseded was not held to its score at all, so anyone
        # serving it could state any score by marking it so.
        first = min((v for v in before if v[1].get("passed") is True), key=lambda v: v[0])
        claims = [(k, req.get(k)) for k in ("run_id", "provider", "model", "problem_id", "sample")]
        claims += [
            ("rollout_id", rollout_id),
            ("answer", seen["RolloutResponded"].get("text")),
            ("not_before", date.not_before),
            ("released_seq", seqs["PublicReleased"]),
            ("released_at", ats["PublicReleased"]),
            ("passed", True),  # a released result is a pass (the verdict above)
            ("score", first[1].get("score")),
            ("scored_at", verdict_ats.get(first[0])),
        ]
        for k, logged in claims:
            if record.get(k) != logged:
                raise ValueError(f"the result's {k} is not what its logged events say")
        if not _same_cost(record.get("cost_usd"), _cost(costs)):
            raise ValueError("the result's cost_usd is not what its logged events say")
    return cp, len(parsed)


def _cost(costs: list[Any]) -> Any:
    """The cost the read models give a result whose answers cost ``costs`` (in the log's order):
    their sum, None when none says (:func:`rollwatch.events.add_cost`)."""
    from rollwatch.events import add_cost

    total: Any = None
    for c in costs:
        if c is not None:
            total = add_cost(total, c)
    return total


def _same_cost(a: Any, b: Any) -> bool:
    """Two costs alike: equal, or both unknown (None or NaN: a NaN is stored as NULL)."""
    return a == b or ((a is None or a != a) and (b is None or b != b))


@dataclass(frozen=True)
class _Claim:
    """What a ``PublicReleased`` of schema 2 commits to (:class:`rollwatch.events.PublicReleased`)."""

    seqs: frozenset[int]
    withheld: frozenset[int]
    verdict_seq: int
    decided_seq: int
    not_before: str


def _claim(schema: Any, data: dict[str, Any], released: int) -> _Claim | None:
    """The claim the release (its ``schema`` and stored ``data``, logged at ``released``) commits to; None for
    a release that names none (schema 1, or written without it): the weaker check of before.
    ValueError for one that names it malformed."""
    from rollwatch.errors import StoreError
    from rollwatch.events import PublicReleased, decode

    try:
        ev = decode("PublicReleased", int(schema or 1), dict(data))
    except (StoreError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"its release does not read: {e}") from None
    assert isinstance(ev, PublicReleased)
    named = (ev.seqs, ev.withheld, ev.verdict_seq, ev.decided_seq, ev.not_before)
    if all(v is None for v in named):
        return None

    def is_seq(v: Any) -> bool:
        return type(v) is int and 0 < v < released

    seqs, withheld = ev.seqs, ev.withheld
    if (
        not isinstance(seqs, list)
        or not all(is_seq(s) for s in seqs)
        or seqs != sorted(set(seqs))
        or not isinstance(withheld, list)
        or not all(type(s) is int for s in withheld)
        or not set(withheld) <= set(seqs)
        or not (type(ev.verdict_seq) is int and ev.verdict_seq in seqs)
        or not (type(ev.decided_seq) is int and ev.decided_seq in seqs)
        or not isinstance(ev.not_before, str)
    ):
        raise ValueError(f"its release (event {released}) names its claim malformed")
    return _Claim(frozenset(seqs), frozenset(withheld), ev.verdict_seq, ev.decided_seq, ev.not_before)


def _holds_exactly(
    claim: _Claim, stream: list[tuple[int, Any]], released: int, newest: int, date: PublicDate
) -> None:
    """ValueError unless the bundle's entries before the release are exactly the events its
    release names, given by leaf alone only where it says a public bundle does, and make the
    claim it states: its verdict (the newest before it, with its bytes), its decision, its date."""
    before = {seq: env for seq, env in stream if seq < released}
    if extra := sorted(set(before) - claim.seqs):
        raise ValueError(f"event {extra[0]} is not one of the events of the rollout its release names")
    if missing := sorted(claim.seqs - set(before)):
        raise ValueError(f"the bundle lacks event {missing[0]}, which its release names")
    for seq, env in stream:
        if env is None and seq not in claim.withheld:
            raise ValueError(f"event {seq} is given by its leaf alone; its release names it one to show")
        if (
            env is not None
            and seq in claim.withheld
            and withheld_as(str(env.get("type")), env["data"]) is None
        ):
            raise ValueError(f"event {seq} is not one its release says a public bundle withholds")
    if newest != claim.verdict_seq:
        raise ValueError(
            f"the verdict its release stands for is event {newest}; the release names event {claim.verdict_seq}"
        )
    if (date.decided_seq, date.not_before) != (claim.decided_seq, claim.not_before):
        raise ValueError(
            f"its events give the public date {date.not_before} (decision {date.decided_seq});"
            f" its release names {claim.not_before} (decision {claim.decided_seq})"
        )


def _public_date(stream: list[tuple[int, Any]], released: int) -> PublicDate:
    """The public date the events up to the release (``released``) give the result, as the
    release job reads it (:class:`rollwatch.events.PublicDate`: the public
    decision's, or for a pass withdrawn before its release and restored, an embargo after
    the restore); its ``not_before`` is the date."""
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
    return date
