"""Session 34 (helper review-withheld-s34): the withheld failing verdict of a public proof bundle
(commit 0adf48b) attacked, and the public routes searched for anything else of a hidden test or
a failed attempt. Real parts: a SQLite log with its integrity service, the public routes on a
loopback server, ``check_bundle`` as ``rollwatch audit --item`` runs it.

Broke (each test failed before its fix): a failed attempt's error text was in the public bundle
(:class:`TestFailedAttempt`); a ``leaf_index`` of ``1e400`` was a traceback, not a refusal
(:class:`TestHostileEntries`); an honest bundle of a pass re-scored as a pass with another score
was refused (:class:`TestHonestBundles`). Held (pinned): the rest of :class:`TestHostileEntries`
and :class:`TestHonestBundles`. Not fixed in session 34: a verifier could not tell an event left
out of a bundle (:class:`TestLeftOut`, strict xfails; fixed in session 35 by the release's claim,
``PublicReleased`` schema 2)."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollwatch.events import Event, PublicationDecided, RolloutFailed, RolloutRescored, RolloutScored, rfc3339
from rollwatch.integrity.bundle import WITHHELD, WITHHELD_ATTEMPT, check_bundle, derive_rollout_id
from rollwatch.integrity.checkpoint import NoteVerifier
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.publication.release import release_due
from tests.publication.helpers import finish_run, new_run_id, rollout_events, start_run

pytestmark = pytest.mark.anyio

HIDDEN = "assert candidate(12345) == 98761"


def failing(rid: str, *, rescore: bool = False) -> RolloutScored | RolloutRescored:
    """A failing verdict naming a hidden test (its assertion line, its expected value)."""
    if rescore:
        return RolloutRescored(
            rollout_id=rid,
            problem_id="p1",
            passed=False,
            score=0.0,
            scorer="python-function",
            problem_hash="h2",
            scorer_version="1",
            rescore_id=str(uuid.uuid4()),
            previous_passed=True,
            reason=f"exception: AssertionError: {HIDDEN}",
            detail={"test_source": HIDDEN},
        )
    return RolloutScored(
        rollout_id=rid,
        passed=False,
        score=0.0,
        scorer="python-function",
        reason=f"exception: AssertionError: {HIDDEN}",
        detail={"test_source": HIDDEN},
    )


def rescored_pass(rid: str, score: float = 1.0, previous: bool = False) -> RolloutRescored:
    return RolloutRescored(
        rollout_id=rid,
        problem_id="p1",
        passed=True,
        score=score,
        scorer="checker",
        problem_hash="h3",
        scorer_version="1",
        rescore_id=str(uuid.uuid4()),
        previous_passed=previous,
        reason="passed",
    )


def public(rid: str) -> PublicationDecided:
    return PublicationDecided(rollout_id=rid, audience="public", not_before=rfc3339(datetime.now(UTC)))


def none(rid: str) -> PublicationDecided:
    return PublicationDecided(rollout_id=rid, audience="none", not_before=rfc3339(datetime.now(UTC)))


@dataclass
class Scene:
    rid: str
    record: dict[str, Any]  # /public/rollouts/{rid}.json as the loopback server sent it
    verifier: NoteVerifier
    stream: list[tuple[int, str, dict[str, Any]]]  # (seq, type, data) of the rollout's events
    foreign: list[dict[str, Any]]  # another rollout's events, with their bytes, one after each batch

    @property
    def bundle(self) -> dict[str, Any]:
        return copy.deepcopy(self.record["proof"])

    def check(self, bundle: dict[str, Any], record: dict[str, Any] | None = None) -> None:
        check_bundle(bundle, self.rid, self.verifier, self.record if record is None else record)


async def scene(tmp_path: Path, first: Sequence[Event], *later: Sequence[Event], rid: str, run: str) -> Scene:
    """``first`` appended to the rollout's stream (its run started and finished), then each of
    ``later`` (a foreign leaf after each batch), released, checkpointed, and fetched as the
    public fetches it."""
    from tests.integrity.test_tlog_tiles import live_log
    from tests.publication.test_leak_2026 import _absorbed

    async with live_log(tmp_path) as live:
        await start_run(live.store, run)
        await live.store.append(f"rollout-{rid}", list(first))
        await finish_run(live.store, run, rollouts=1, passed=1)
        others = []
        for i, batch in enumerate(["", *later]):
            if batch:
                await live.store.append(f"rollout-{rid}", list(batch))
            other = derive_rollout_id(run, "gpt-x", f"other{i}", 0)
            await live.store.append(f"rollout-{other}", rollout_events(other, run, passed=False)[:1])
            others.append(other)
        assert await release_due(live.store, live.pdb) == 1
        await live.integrity.final_checkpoint()
        await _absorbed(live)
        async with httpx.AsyncClient(base_url=live.url) as c:
            r = await c.get(f"/public/rollouts/{rid}.json")
            assert r.status_code == 200, r.text
            record = r.json()
            foreign = []
            for other in others:
                # Another rollout's request: its leaf, with its bytes, from the operator's tree.
                async for ev in live.store.read(stream=f"rollout-{other}"):
                    proof = await live.integrity.tree.inclusion_proof(
                        ev.seq - 1, record["proof"]["tree_size"]
                    )
                    foreign.append(
                        {
                            "seq": ev.seq,
                            "leaf_index": ev.seq - 1,
                            "canonical": ev.canonical().decode(),
                            "leaf_hash": base64.b64encode(leaf_hash(ev.canonical())).decode(),
                            "inclusion": [base64.b64encode(h).decode() for h in proof],
                        }
                    )
        stream = [(ev.seq, ev.type, ev.data) async for ev in live.store.read(stream=f"rollout-{rid}")]
        verifier = NoteVerifier.from_vkey(live.integrity.signer.vkey)
    return Scene(rid, record, verifier, stream, foreign)


def ids() -> tuple[str, str]:
    run = new_run_id()
    return run, derive_rollout_id(run, "gpt-x", "p1", 0)


def as_withheld(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: ev[k] for k in ("seq", "leaf_index", "leaf_hash", "inclusion")} | {"withheld": WITHHELD}


class TestFailedAttempt:
    """A failed attempt's ``message`` (the provider's error body, retried) is the operator's:
    the subscribers' feed leaves out a failure that is not final. It was in every public bundle
    of a result whose first attempt failed, bytes and all, on ``/public/rollouts/{id}.json``,
    ``results.jsonl`` and the export."""

    async def test_a_retried_failure_is_given_by_its_leaf(self, tmp_path: Path) -> None:
        run, rid = ids()
        evs = rollout_events(rid, run, passed=True, failed_first=True)
        evs = [
            RolloutFailed(
                rollout_id=rid,
                attempt=1,
                kind="server_error",
                status=500,
                retryable=True,
                message="OPERATOR-ONLY: org-secret quota exceeded",
            )
            if isinstance(e, RolloutFailed)
            else e
            for e in evs
        ]
        s = await scene(tmp_path, evs, rid=rid, run=run)
        assert "OPERATOR-ONLY" not in json.dumps(s.record)
        [failed_seq] = [seq for seq, t, _ in s.stream if t == "RolloutFailed"]
        [entry] = [e for e in s.record["proof"]["events"] if e["seq"] == failed_seq]
        assert "canonical" not in entry
        assert entry["withheld"] == WITHHELD_ATTEMPT
        s.check(s.bundle)  # the claim still proves out


class TestHostileEntries:
    """A server that controls the bundle and the record, not the log's key."""

    @pytest.fixture
    async def flip(self, tmp_path: Path) -> Scene:
        run, rid = ids()
        evs = [
            failing(rid) if isinstance(e, RolloutScored) else e
            for e in rollout_events(rid, run, passed=False)
        ]
        return await scene(tmp_path, evs, [rescored_pass(rid), public(rid)], rid=rid, run=run)

    async def test_as_served(self, flip: Scene) -> None:
        assert HIDDEN not in json.dumps(flip.record)
        flip.check(flip.bundle)

    @pytest.mark.parametrize("value", [1e400, float("inf"), float("nan"), -1, 10**9, "x", None, [1]])
    async def test_a_leaf_index_of_any_other_value_is_refused(self, flip: Scene, value: Any) -> None:
        """``1e400`` (and ``Infinity``, which Python's JSON reads) was an OverflowError out of
        check_bundle: ``audit --item`` ended in a traceback rather than naming the bundle."""
        for kind in ("withheld", "canonical"):
            bundle = flip.bundle
            [ev] = [e for e in bundle["events"] if kind in e][:1]
            ev["leaf_index"] = value
            with pytest.raises(ValueError, match=r"a malformed event|is not in the tree"):
                flip.check(bundle)

    async def test_a_canonical_beside_withheld_must_be_the_rollouts_event(self, flip: Scene) -> None:
        """A ``canonical`` key makes an entry one with bytes, whatever ``withheld`` says: another
        rollout's event there is refused."""
        bundle = flip.bundle
        [w] = [e for e in bundle["events"] if "withheld" in e]
        foreign = flip.foreign[0]
        w.update(foreign)  # its bytes, leaf and path; "withheld" kept
        with pytest.raises(ValueError, match="is not an event of rollout"):
            flip.check(bundle)

    async def test_a_withheld_entry_cannot_stand_for_the_request_answer_or_release(self, flip: Scene) -> None:
        for t in ("RolloutRequested", "RolloutResponded", "PublicReleased", "PublicationDecided"):
            bundle = flip.bundle
            bundle["events"] = [
                as_withheld(e)
                if e.get("type") == t
                and (t != "PublicationDecided" or '"audience":"public"' in e["canonical"])
                else e
                for e in bundle["events"]
            ]
            with pytest.raises(ValueError, match=f"lacks {t}"):
                flip.check(bundle)

    async def test_a_huge_inclusion_list_is_refused(self, flip: Scene) -> None:
        bundle = flip.bundle
        [w] = [e for e in bundle["events"] if "withheld" in e]
        w["inclusion"] = w["inclusion"] + [w["inclusion"][0]] * 100_000
        with pytest.raises(ValueError, match="is not in the tree"):
            flip.check(bundle)

    async def test_order_and_bool_or_str_indexes_change_no_claim(self, flip: Scene) -> None:
        """Entries in any order, a leaf index as a string or float of the same number: the same
        leaves, the same claim; a changed record is still refused."""
        bundle = flip.bundle
        bundle["events"].reverse()
        for e in bundle["events"]:
            e["leaf_index"] = str(e["leaf_index"])
        flip.check(bundle)
        for k, v in (
            ("not_before", "2000-01-01T00:00:00Z"),
            ("score", 0.5),
            ("model", "gpt-y"),
            ("answer", "x"),
        ):
            with pytest.raises(ValueError, match=f"the result's {k} is not"):
                flip.check(bundle, {**flip.record, k: v})


class TestHonestBundles:
    async def test_a_pass_withdrawn_and_restored(self, tmp_path: Path) -> None:
        run, rid = ids()
        s = await scene(
            tmp_path,
            rollout_events(rid, run, passed=True),
            [failing(rid, rescore=True), none(rid)],
            [rescored_pass(rid, 0.9), public(rid)],
            rid=rid,
            run=run,
        )
        assert HIDDEN not in json.dumps(s.record)
        assert s.record["score"] == 1.0  # the first pass's (the read models' scored_seq)
        assert sum("withheld" in e for e in s.record["proof"]["events"]) == 1
        s.check(s.bundle)

    async def test_two_failing_verdicts_before_the_pass(self, tmp_path: Path) -> None:
        run, rid = ids()
        evs = [
            failing(rid) if isinstance(e, RolloutScored) else e
            for e in rollout_events(rid, run, passed=False)
        ]
        s = await scene(
            tmp_path,
            evs,
            [failing(rid, rescore=True), none(rid)],
            [rescored_pass(rid), public(rid)],
            rid=rid,
            run=run,
        )
        assert HIDDEN not in json.dumps(s.record)
        assert sum("withheld" in e for e in s.record["proof"]["events"]) == 2
        s.check(s.bundle)

    async def test_a_pass_rescored_as_a_pass_of_another_score(self, tmp_path: Path) -> None:
        """A checker's pass scored 0.8, re-scored a pass at 0.9 before its release: the result
        says 0.8 (the read models keep the first pass), check_bundle took the newest verdict's
        score and refused the honest bundle."""
        run, rid = ids()
        evs = [
            RolloutScored(rollout_id=rid, passed=True, score=0.8, scorer="checker")
            if isinstance(e, RolloutScored)
            else e
            for e in rollout_events(rid, run, passed=True)
        ]
        s = await scene(tmp_path, evs, [rescored_pass(rid, 0.9, previous=True), none(rid)], rid=rid, run=run)
        s.check(s.bundle)


class TestLeftOut:
    """An inclusion proof shows an event is in the log, never that the bundle holds every event
    of the rollout (the canonical bytes carry no count of the stream's events). Whoever serves a
    bundle could leave events out, or (since 0adf48b) give any leaf of the tree as a withheld
    failing verdict: either moved the public date the bundle proves (strict xfails until session
    35). The release job's ``PublicReleased`` (schema 2) now names the seq of every event of the
    rollout before it, and which a public bundle gives by leaf: ``check_bundle`` holds the
    bundle to exactly those (more attacks: ``test_claim_attacks_s35``)."""

    async def test_the_withdrawal_left_out_proves_an_earlier_date(self, tmp_path: Path) -> None:
        """The attacker drops the withheld failing re-score (the withdrawal) and states the first
        decision's earlier date: the release names the withdrawal's seq, so the bundle lacks it."""
        run, rid = ids()
        now = datetime.now(UTC)
        restore = PublicationDecided(
            rollout_id=rid, audience="public", not_before=rfc3339(now - timedelta(hours=1))
        )
        s = await scene(
            tmp_path,
            rollout_events(rid, run, passed=True, not_before=now - timedelta(hours=2)),
            [failing(rid, rescore=True), none(rid)],
            [rescored_pass(rid), restore],
            rid=rid,
            run=run,
        )
        assert s.record["not_before"] == restore.not_before  # the log's date
        bundle = s.bundle
        [withdrawal] = [e["seq"] for e in bundle["events"] if "withheld" in e]
        bundle["events"] = [e for e in bundle["events"] if "withheld" not in e]
        with pytest.raises(ValueError, match=f"the bundle lacks event {withdrawal}, which its release names"):
            s.check(bundle, {**s.record, "not_before": rfc3339(now - timedelta(hours=2))})

    async def test_a_foreign_leaf_as_a_withheld_verdict_moves_the_date(self, tmp_path: Path) -> None:
        """The attacker gives another rollout's leaf (between the public decision and a later
        pass) as a withheld failing verdict: taken so, it withdrew the date and the later pass
        restored it, a re-score's time later. Its seq is not one the release names."""
        run, rid = ids()
        s = await scene(
            tmp_path,
            rollout_events(rid, run, passed=True),
            [rescored_pass(rid, previous=True), none(rid)],
            rid=rid,
            run=run,
        )
        s.check(s.bundle)
        [rescore] = [
            json.loads(e["canonical"]) for e in s.bundle["events"] if e.get("type") == "RolloutRescored"
        ]
        assert s.foreign[0]["seq"] < rescore["seq"]  # a leaf between the decision and the re-score
        bundle = s.bundle
        bundle["events"].append(as_withheld(s.foreign[0]))
        with pytest.raises(ValueError, match=f"event {s.foreign[0]['seq']} is not one of the events"):
            s.check(bundle, {**s.record, "not_before": rescore["at"]})
