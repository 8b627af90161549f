"""Session 35 (helper claim-s35): the release commits to the claim its proof bundle makes, attacked.

Until now an inclusion proof showed an event was in the log, never that a bundle held every event
of its rollout: whoever served a bundle (a mirror, a CDN, someone holding the export) could leave
a withdrawal out, or give any leaf of the tree as a withheld failing verdict, and move the public
date the bundle proves (``test_withheld_attacks_s34.py::TestLeftOut``, strict xfails until now).
The release job's ``PublicReleased`` (schema 2) now names the seq of every event of the rollout
before it (``seqs``), those a public bundle gives by leaf alone (``withheld``), the verdict it
releases (``verdict_seq``), the decision it acts on (``decided_seq``) and the date
(``not_before``); ``check_bundle`` (what ``rollwatch audit --item`` runs) holds a bundle to
exactly those. Each attack below is what an outsider serving the bundle would try; each was
accepted before (the test failed), except where its docstring says it pins a limit.

Real parts: a SQLite log with its integrity service and the public routes on loopback, the real
release job (``release_due``), ``check_bundle``; :class:`TestAudit` runs ``publish export`` and
``rollwatch audit --item`` (the real commands) against a hostile server.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import httpx
import pytest

from rollwatch.events import (
    Event,
    PublicationDecided,
    PublicDate,
    PublicReleased,
    Recorded,
    RolloutScored,
    canonical_json,
    decode,
    rfc3339,
)
from rollwatch.integrity.bundle import WITHHELD, WITHHELD_ATTEMPT, check_bundle, derive_rollout_id
from rollwatch.integrity.checkpoint import NoteVerifier
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.publication import release as release_mod
from rollwatch.publication.proofs import ProofBundles
from rollwatch.publication.release import release_due
from tests.publication.helpers import finish_run, new_run_id, rollout_events, start_run
from tests.publication.test_withheld_attacks_s34 import as_withheld, failing, none, rescored_pass

pytestmark = pytest.mark.anyio

FOREIGN = "foreign"
"""A batch that is another rollout's request: a leaf of the tree that is not this rollout's."""


@dataclass(frozen=True, kw_only=True)
class ReleasedV1(Event, register=False):
    """``PublicReleased`` as the release job wrote it before session 35 (schema 1: no claim)."""

    TYPE: ClassVar[str] = "PublicReleased"
    SCHEMA: ClassVar[int] = 1
    rollout_id: str


@dataclass
class Scene:
    rid: str
    record: dict[str, Any]  # /public/rollouts/{rid}.json as the loopback server sent it
    verifier: NoteVerifier
    stream: list[tuple[int, str, dict[str, Any]]]  # (seq, type, data) of the rollout's events
    release: dict[str, Any]  # the PublicReleased's envelope as stored
    foreign: list[dict[str, Any]]  # each FOREIGN batch's leaf, with its bytes and path
    operators: dict[str, Any]  # the operator's bundle (/ops/rollouts/{rid}/proof): every byte

    @property
    def bundle(self) -> dict[str, Any]:
        return copy.deepcopy(self.record["proof"])

    def check(self, bundle: dict[str, Any], record: dict[str, Any] | None = None) -> None:
        check_bundle(bundle, self.rid, self.verifier, self.record if record is None else record)

    def seq(self, type_: str, pick: Callable[[dict[str, Any]], bool] = lambda d: True) -> int:
        """The seq of the one event of ``type_`` (whose data ``pick`` picks)."""
        [seq] = [s for s, t, d in self.stream if t == type_ and pick(d)]
        return seq

    def entry(self, seq: int) -> dict[str, Any]:
        [e] = [e for e in self.record["proof"]["events"] if e["seq"] == seq]
        return copy.deepcopy(e)


async def scene(
    tmp_path: Path, *batches: Sequence[Event] | str, rid: str, run: str, after: Sequence[Event] = ()
) -> Scene:
    """Each batch appended in turn (to the rollout's stream, or a FOREIGN leaf), the run started
    before and finished after the first; released by the release job, ``after`` appended to the
    rollout's stream, checkpointed, and fetched as the public fetches it."""
    from tests.integrity.test_tlog_tiles import live_log
    from tests.publication.test_leak_2026 import _absorbed

    async with live_log(tmp_path) as live:
        await start_run(live.store, run)
        others = []
        for i, batch in enumerate(batches):
            if batch == FOREIGN:
                other = derive_rollout_id(run, "gpt-x", f"other{i}", 0)
                await live.store.append(f"rollout-{other}", rollout_events(other, run, passed=False)[:1])
                others.append(other)
            else:
                await live.store.append(f"rollout-{rid}", list(batch))
            if i == 0 or (i == 1 and batches[0] == FOREIGN):
                await finish_run(live.store, run, rollouts=1, passed=1)
        assert await release_due(live.store, live.pdb) == 1
        if after:
            await live.store.append(f"rollout-{rid}", list(after))
        await live.integrity.final_checkpoint()
        await _absorbed(live)
        async with httpx.AsyncClient(base_url=live.url) as c:
            r = await c.get(f"/public/rollouts/{rid}.json")
            assert r.status_code == 200, r.text
            record = r.json()
        size = record["proof"]["tree_size"]
        foreign = []
        for other in others:
            async for ev in live.store.read(stream=f"rollout-{other}"):
                [path] = await live.integrity.tree.inclusion_proofs([ev.seq - 1], size)
                foreign.append(
                    {
                        "seq": ev.seq,
                        "leaf_index": ev.seq - 1,
                        "type": "RolloutScored",
                        "canonical": ev.canonical().decode(),
                        "leaf_hash": base64.b64encode(leaf_hash(ev.canonical())).decode(),
                        "inclusion": [base64.b64encode(h).decode() for h in path],
                    }
                )
        operators = await ProofBundles(live.store, live.integrity.tree).bundle(rid)
        assert operators is not None
        recs = [ev async for ev in live.store.read(stream=f"rollout-{rid}")]
        [rel] = [ev for ev in recs if ev.type == "PublicReleased"]
        stream = [(ev.seq, ev.type, ev.data) for ev in recs]
        verifier = NoteVerifier.from_vkey(live.integrity.signer.vkey)
    return Scene(rid, record, verifier, stream, json.loads(rel.canonical()), foreign, operators)


def ids() -> tuple[str, str]:
    run = new_run_id()
    return run, derive_rollout_id(run, "gpt-x", "p1", 0)


def withdrawn_and_restored(rid: str, run: str) -> tuple[list[Sequence[Event] | str], str, str]:
    """A pass decided public two hours ago, withdrawn by a failing re-score, restored by a
    passing one with a decision of its own an hour ago; the batches and both dates."""
    now = datetime.now(UTC)
    first, restored = now - timedelta(hours=2), now - timedelta(hours=1)
    restore = PublicationDecided(rollout_id=rid, audience="public", not_before=rfc3339(restored))
    return (
        [
            FOREIGN,
            rollout_events(rid, run, passed=True, not_before=first),
            [failing(rid, rescore=True), none(rid)],
            FOREIGN,
            [rescored_pass(rid), restore],
        ],
        rfc3339(first),
        restore.not_before,
    )


def passes(rid: str, run: str) -> list[Sequence[Event] | str]:
    """A pass scored 0.8, decided public, re-scored a pass at 0.9 under a newer version."""
    first = [
        RolloutScored(rollout_id=rid, passed=True, score=0.8, scorer="checker")
        if isinstance(e, RolloutScored)
        else e
        for e in rollout_events(rid, run, passed=True, failed_first=True)
    ]
    return [first, [rescored_pass(rid, 0.9, previous=True), none(rid)]]


class TestTheReleaseNamesItsClaim:
    async def test_the_release_job_names_every_event_before_it(self, tmp_path: Path) -> None:
        """What the release job appends: schema 2, every seq of the rollout's stream before it,
        the failed attempt and the failing verdict among them as withheld, the newest verdict,
        the restore's own decision and the date the served result states."""
        run, rid = ids()
        batches, _, restored = withdrawn_and_restored(rid, run)
        batches[1] = rollout_events(rid, run, passed=True, failed_first=True, not_before=datetime.now(UTC))
        s = await scene(tmp_path, *batches, rid=rid, run=run)
        rel = s.release
        assert rel["schema"] == PublicReleased.SCHEMA == 2
        before = [seq for seq, _, _ in s.stream if seq < rel["seq"]]
        assert rel["data"]["seqs"] == before
        assert rel["data"]["withheld"] == [
            s.seq("RolloutFailed"),
            s.seq("RolloutRescored", lambda d: d["passed"] is False),
        ]
        assert rel["data"]["withheld"] == [e["seq"] for e in s.record["proof"]["events"] if "withheld" in e]
        assert rel["data"]["verdict_seq"] == s.seq("RolloutRescored", lambda d: d["passed"] is True)
        assert rel["data"]["decided_seq"] == s.seq(
            "PublicationDecided", lambda d: d["not_before"] == restored
        )
        assert rel["data"]["not_before"] == restored == s.record["not_before"]
        s.check(s.bundle)
        # The operator's bundle gives every event with its bytes, the withheld ones too.
        assert not any("withheld" in e for e in s.operators["events"])
        s.check(s.operators)

    async def test_an_old_release_keeps_the_check_of_before(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pins the limit the README states: a log released before session 35 (``PublicReleased``
        schema 1, as the release job wrote it then) decodes (its claim None) and its bundle gets
        the check of before, which still takes the withdrawal left out."""
        monkeypatch.setattr(release_mod, "released", lambda rid, read, date: ReleasedV1(rollout_id=rid))
        run, rid = ids()
        batches, first, restored = withdrawn_and_restored(rid, run)
        s = await scene(tmp_path, *batches, rid=rid, run=run)
        assert s.release["schema"] == 1
        assert s.release["data"] == {"rollout_id": rid}
        ev = decode("PublicReleased", 1, s.release["data"])
        assert isinstance(ev, PublicReleased)
        assert (ev.seqs, ev.withheld, ev.verdict_seq, ev.decided_seq, ev.not_before) == (None,) * 5
        assert s.record["not_before"] == restored
        s.check(s.bundle)
        bundle = s.bundle
        bundle["events"] = [e for e in bundle["events"] if "withheld" not in e]
        s.check(bundle, {**s.record, "not_before": first})  # the limit: accepted


class TestLeftOut:
    """A named event dropped from the bundle."""

    async def test_the_named_verdict_left_out_leaves_an_older_pass(self, tmp_path: Path) -> None:
        """The attacker drops the pass the release names (the re-score under the newer version):
        the bundle then proves the release stood for the older pass, with the record unchanged.
        The release names the re-score's seq: the bundle lacks it."""
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        named = s.release["data"]["verdict_seq"]
        assert named == s.seq("RolloutRescored")
        bundle = s.bundle
        bundle["events"] = [e for e in bundle["events"] if e["seq"] != named]
        with pytest.raises(ValueError, match=f"the bundle lacks event {named}, which its release names"):
            s.check(bundle)

    async def test_the_first_pass_left_out_claims_another_score(self, tmp_path: Path) -> None:
        """The attacker drops the first pass (0.8) and states the re-score's 0.9: the score claimed
        is the first pass's in the bundle. The release names the first pass's seq."""
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        assert s.record["score"] == 0.8
        first = s.seq("RolloutScored")
        bundle = s.bundle
        bundle["events"] = [e for e in bundle["events"] if e["seq"] != first]
        with pytest.raises(ValueError, match=f"the bundle lacks event {first}"):
            s.check(bundle, {**s.record, "score": 0.9})

    @pytest.mark.parametrize("which", ["failed attempt", "subscribers", "none"])
    async def test_an_event_the_claim_did_not_need_is_still_named(self, tmp_path: Path, which: str) -> None:
        """The attacker drops an event the check of before did not need (the failed attempt, the
        subscribers' decision, a re-score's "none"): every event the release names must be there."""
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        if which == "failed attempt":
            seq = s.seq("RolloutFailed")
        else:
            seq = s.seq("PublicationDecided", lambda d: d["audience"] == which)
        bundle = s.bundle
        bundle["events"] = [e for e in bundle["events"] if e["seq"] != seq]
        with pytest.raises(ValueError, match=f"the bundle lacks event {seq}"):
            s.check(bundle)


class TestOtherLeaves:
    """A leaf the release does not name, or names as shown, given as a withheld entry."""

    async def test_the_withdrawal_swapped_for_a_foreign_leaf_keeps_the_count(self, tmp_path: Path) -> None:
        """The attacker replaces the withdrawal by another rollout's leaf before the first decision
        (the bundle holds as many entries, as many withheld) and states the first decision's
        date: the foreign seq is not one the release names."""
        run, rid = ids()
        batches, first, _ = withdrawn_and_restored(rid, run)
        s = await scene(tmp_path, *batches, rid=rid, run=run)
        foreign = s.foreign[0]
        assert foreign["seq"] < s.seq("RolloutRequested")
        bundle = s.bundle
        bundle["events"] = [as_withheld(foreign) if "withheld" in e else e for e in bundle["events"]]
        assert len(bundle["events"]) == len(s.record["proof"]["events"])
        with pytest.raises(ValueError, match=f"event {foreign['seq']} is not one of the events"):
            s.check(bundle, {**s.record, "not_before": first})

    @pytest.mark.parametrize("label", [WITHHELD, WITHHELD_ATTEMPT])
    async def test_a_foreign_leaf_between_the_decision_and_a_later_pass(
        self, tmp_path: Path, label: str
    ) -> None:
        """A pass decided public, then re-scored a pass (with a "none"). The attacker adds another
        rollout's leaf between the decision and the re-score, as a withheld failing verdict or
        failed attempt: taken as a failing verdict, it withdrew the date and the re-score restored
        it, an embargo after the re-score (a later date). Its seq is not one the release names."""
        run, rid = ids()
        s = await scene(
            tmp_path,
            rollout_events(rid, run, passed=True),
            FOREIGN,
            [rescored_pass(rid, previous=True), none(rid)],
            rid=rid,
            run=run,
        )
        bundle = s.bundle
        bundle["events"].append(as_withheld(s.foreign[0]) | {"withheld": label})
        restore_at = json.loads(s.entry(s.seq("RolloutRescored"))["canonical"])["at"]
        with pytest.raises(ValueError, match=f"event {s.foreign[0]['seq']} is not one of the events"):
            s.check(bundle, {**s.record, "not_before": restore_at})

    async def test_the_first_pass_given_by_its_leaf_claims_another_score(self, tmp_path: Path) -> None:
        """The attacker gives the first pass (0.8) by its leaf (a failing verdict, as a verifier
        reads it) and states the re-score's 0.9: the release names that seq one to show."""
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        first = s.seq("RolloutScored")
        bundle = s.bundle
        bundle["events"] = [as_withheld(e) if e["seq"] == first else e for e in bundle["events"]]
        with pytest.raises(ValueError, match=f"event {first} is given by its leaf alone"):
            s.check(bundle, {**s.record, "score": 0.9})


def _edit(rel: dict[str, Any], how: str, s: Scene) -> dict[str, Any]:
    """The release's envelope edited as ``how`` says."""
    env = copy.deepcopy(rel)
    data = env["data"]
    withdrawal = s.seq("RolloutRescored", lambda d: d["passed"] is False)
    if how == "a seq dropped":
        data["seqs"].remove(withdrawal)
        data["withheld"].remove(withdrawal)
    elif how == "withheld emptied":
        data["withheld"] = []
    elif how == "a shown seq withheld":
        data["withheld"] = sorted([*data["withheld"], s.seq("RolloutScored")])
    elif how == "the verdict moved":
        data["verdict_seq"] = s.seq("RolloutScored")
    elif how == "the decision moved":
        data["decided_seq"] = s.seq(
            "PublicationDecided",
            lambda d: d["audience"] == "public" and d["not_before"] != data["not_before"],
        )
    elif how == "the date moved":
        data["not_before"] = "2000-01-01T00:00:00Z"
    elif how == "relabelled schema 1":
        env["schema"] = 1
        env["data"] = {"rollout_id": data["rollout_id"]}
    elif how == "fields nulled":
        env["data"] = {k: (v if k == "rollout_id" else None) for k, v in data.items()}
    return env


class TestTheReleaseEdited:
    @pytest.mark.parametrize(
        "how",
        [
            "a seq dropped",
            "withheld emptied",
            "a shown seq withheld",
            "the verdict moved",
            "the date moved",
            "the decision moved",
            "relabelled schema 1",
            "fields nulled",
        ],
    )
    async def test_an_edited_release_is_not_in_the_tree(self, tmp_path: Path, how: str) -> None:
        """The attacker edits the ``PublicReleased`` the bundle holds (to name fewer events, none,
        or another verdict or date; or relabels it an old schema 1 release, or nulls its claim,
        to get the check of before), and leaves the withdrawal out: its bytes are the leaf, so
        its inclusion proof fails, whatever the rest."""
        run, rid = ids()
        batches, first, _ = withdrawn_and_restored(rid, run)
        s = await scene(tmp_path, *batches, rid=rid, run=run)
        assert s.release["data"]["seqs"], "the release names its claim"
        bundle = s.bundle
        bundle["events"] = [e for e in bundle["events"] if "withheld" not in e]
        [entry] = [e for e in bundle["events"] if e["seq"] == s.release["seq"]]
        entry["canonical"] = canonical_json(_edit(s.release, how, s))
        entry["leaf_hash"] = base64.b64encode(leaf_hash(entry["canonical"].encode())).decode()
        with pytest.raises(ValueError, match=f"event {s.release['seq']} is not in the tree"):
            s.check(bundle, {**s.record, "not_before": first})


class TestAClaimTheEventsDoNotMake:
    """The release's claim as the log's writer wrote it, wrong or malformed (not a bundle
    server's doing: its bytes are signed). Refused as such, never a traceback, never taken."""

    @staticmethod
    def writing(monkeypatch: pytest.MonkeyPatch, change: Callable[[dict[str, Any]], None]) -> None:
        honest = release_mod.released

        def lying(rid: str, read: list[Recorded], date: PublicDate) -> PublicReleased:
            data = honest(rid, read, date).to_data()
            change(data)
            return PublicReleased(**data)

        monkeypatch.setattr(release_mod, "released", lying)

    @pytest.mark.parametrize(
        "change",
        [
            {"seqs": "1,2,3"},
            {"seqs": [True]},
            {"seqs": [3.0]},
            {"withheld": None},
            {"withheld": ["x"]},
            {"verdict_seq": True},
            {"verdict_seq": None},
            {"decided_seq": 10**9},
            {"not_before": 5},
            {"seqs": []},
        ],
        ids=lambda c: json.dumps(c),
    )
    async def test_a_malformed_claim(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any
    ) -> None:
        self.writing(monkeypatch, lambda d: d.update(change))
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        with pytest.raises(ValueError, match="names its claim malformed"):
            s.check(s.bundle)

    @pytest.mark.parametrize("how", ["seq unsorted", "seq at the release", "withheld not named"])
    async def test_seqs_out_of_shape(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
        def change(d: dict[str, Any]) -> None:
            if how == "seq unsorted":
                d["seqs"] = list(reversed(d["seqs"]))
            elif how == "seq at the release":
                d["seqs"] = [*d["seqs"], d["seqs"][-1] + 1]
            else:
                d["withheld"] = [*d["withheld"], d["seqs"][0] - 1]

        self.writing(monkeypatch, change)
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        with pytest.raises(ValueError, match="names its claim malformed"):
            s.check(s.bundle)

    async def test_a_date_its_events_do_not_give(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.writing(monkeypatch, lambda d: d.update(not_before="2000-01-01T00:00:00Z"))
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        with pytest.raises(ValueError, match="its release names 2000-01-01T00:00:00Z"):
            s.check(s.bundle)

    async def test_a_verdict_not_the_newest(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        def older(d: dict[str, Any]) -> None:
            d["verdict_seq"] = min(
                d["seqs"][i] for i in range(len(d["seqs"])) if d["seqs"][i] not in d["withheld"]
            )

        self.writing(monkeypatch, older)
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        with pytest.raises(ValueError, match="the release names event"):
            s.check(s.bundle)

    async def test_a_shown_event_named_withheld(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The release names the answer as one a public bundle withholds: the bundle (with its
        bytes) contradicts it."""
        self.writing(monkeypatch, lambda d: d.update(withheld=sorted([*d["withheld"], d["seqs"][-4]])))
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        with pytest.raises(ValueError, match="is not one its release says a public bundle withholds"):
            s.check(s.bundle)


# --- the real commands: publish export, audit --item against a hostile server ------------------


@dataclass
class Exported:
    out: Path
    rid: str
    first: str
    restored: str
    foreign: dict[str, Any]
    """Another rollout's leaf before this one's events, with its path in the export's tree."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """``publish export`` of a real log holding a pass withdrawn and restored, released by the
    release job."""
    from tests.helpers import rollwatch
    from tests.integrity.test_tlog_tiles import live_log
    from tests.publication.test_leak_2026 import _absorbed

    tmp = tmp_path_factory.mktemp("claim")
    out = tmp / "site"
    run, rid = ids()
    batches, first, restored = withdrawn_and_restored(rid, run)

    async def build() -> dict[str, Any]:
        async with live_log(tmp) as live:
            await start_run(live.store, run)
            foreign = 0
            for i, batch in enumerate(batches):
                if batch == FOREIGN:
                    other = derive_rollout_id(run, "gpt-x", f"other{i}", 0)
                    recs = await live.store.append(
                        f"rollout-{other}", rollout_events(other, run, passed=False)[:1]
                    )
                    foreign = foreign or recs[0].seq
                else:
                    await live.store.append(f"rollout-{rid}", list(batch))
            await finish_run(live.store, run, rollouts=1, passed=1)
            assert await release_due(live.store, live.pdb) == 1
            await live.integrity.final_checkpoint()
            await _absorbed(live)
            p = await anyio.to_thread.run_sync(
                lambda: rollwatch(
                    "--config",
                    str(live.config_file),
                    "publish",
                    "export",
                    str(out),
                    env={"STATE_DIRECTORY": ""},
                )
            )
            assert p.returncode == 0, p.stdout + p.stderr
            size = json.loads((out / "rollouts" / f"{rid}.json").read_text())["proof"]["tree_size"]
            [path] = await live.integrity.tree.inclusion_proofs([foreign - 1], size)
            leaf = (await live.store.read_at([foreign]))[foreign].canonical()
            return {
                "seq": foreign,
                "leaf_index": foreign - 1,
                "type": "RolloutRescored",
                "withheld": WITHHELD,
                "leaf_hash": base64.b64encode(leaf_hash(leaf)).decode(),
                "inclusion": [base64.b64encode(h).decode() for h in path],
            }

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("STATE_DIRECTORY", raising=False)
        foreign = anyio.run(build)
    return Exported(out, rid, first, restored, foreign)


class TestAudit:
    def test_the_export_audits(self, exported: Exported) -> None:
        from tests.integrity.test_audit_hostile import audit, hostile

        record = json.loads((exported.out / "rollouts" / f"{exported.rid}.json").read_text())
        assert record["not_before"] == exported.restored
        with hostile(exported.out) as s:
            p = audit(s.url, "--item", exported.rid)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"bundle: item {exported.rid}" in p.stdout

    @pytest.mark.parametrize("attack", ["left out", "foreign"])
    def test_a_mirror_moving_the_public_date_fails(self, exported: Exported, attack: str) -> None:
        """A mirror serves the export with the result's withdrawal left out of its bundle (or
        swapped for another rollout's leaf) and the first decision's earlier date: ``audit --item``
        exits 1 naming the bundle and the seq."""
        from tests.integrity.test_audit_hostile import audit, body, failed, hostile

        path = f"/rollouts/{exported.rid}.json"
        record = json.loads((exported.out / path.lstrip("/")).read_text())
        events = record["proof"]["events"]
        [withdrawal] = [e for e in events if "withheld" in e]
        events.remove(withdrawal)
        if attack == "left out":
            word = f"lacks event {withdrawal['seq']}"
        else:
            events.append(exported.foreign)
            word = f"event {exported.foreign['seq']} is not one of the events"
        record["not_before"] = exported.first
        with hostile(exported.out, {path: body(json.dumps(record))}) as s:
            failed(audit(s.url, "--item", exported.rid, "--no-archive"), "bundle", exported.rid, word)
