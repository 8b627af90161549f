"""Session 33 (helper attack-export-s33): ``publish export`` attacked for results released early or
counts told under embargo. The attacks that failed are pinned where no test did: a configuration
whose embargo is shorter than the one the log's decisions carry, a run partly released, names
made of path separators and markup. One wrote outside DIR (fixed, :class:`TestPlantedDuringAnExport`);
one leaked a hidden test through a proof bundle (fixed in session 34, :class:`TestFailedVerdictInABundle`)."""

from __future__ import annotations

import base64
import copy
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollwatch.events import PublicationDecided, RolloutRescored, RolloutScored, rfc3339
from rollwatch.integrity.bundle import WITHHELD, check_bundle, derive_rollout_id
from rollwatch.integrity.checkpoint import NoteVerifier
from rollwatch.publication.export import export_public
from rollwatch.publication.proofs import ProofBundles
from rollwatch.publication.release import release_due
from rollwatch.publication.releases import Archive, check_export, period_of
from tests.publication.helpers import add_rollout, finish_run, new_run_id, rollout_events, start_run
from tests.publication.test_releases import BASE, Log, month_start

pytestmark = pytest.mark.anyio

HOUR = 3600.0


def everything(out: Path) -> bytes:
    """Every byte the export holds (what a mirror of DIR serves)."""
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


async def export(log: Log, out: Path, now: datetime, embargo_s: float) -> None:
    await export_public(
        log.store, log.pdb, out, base_url=BASE, embargo_s=embargo_s, embargo_counts=False, now=now
    )


class TestShorterEmbargo:
    async def test_a_configuration_with_a_shorter_embargo_exports_nothing_sooner(
        self, log: Log, tmp_path: Path
    ) -> None:
        """Verdicts decided under an hour, exported by a configuration that now says no embargo
        (and no counts): the decisions in the log win. A minute on, nothing of the pass, of its
        run's pass rate or of the failure is in any file; an hour on, all of it is."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        passed = await add_rollout(
            log.store, log.run_id, passed=True, embargo_s=HOUR, answer="EMBARGOED-PASS"
        )
        await add_rollout(log.store, log.run_id, passed=False, sample=1, none_embargo_s=HOUR)
        await finish_run(log.store, log.run_id, rollouts=2, passed=1)
        soon = now + timedelta(minutes=1)
        assert await release_due(log.store, log.pdb, now=soon) == 0
        await export(log, out, soon, embargo_s=0.0)
        blob = everything(out)
        assert passed.encode() not in blob
        assert b"EMBARGOED-PASS" not in blob
        assert log.run_id.encode() not in blob, "the run's pass rate is told an embargo early"
        assert json.loads((out / "feed.json").read_text())["items"] == []

        later = now + timedelta(hours=1, minutes=1)
        assert await release_due(log.store, log.pdb, now=later) == 1
        await export(log, out, later, embargo_s=0.0)
        page = (out / "index.html").read_text()
        assert f"run {log.run_id}: 1/2 passed" in page
        assert passed.encode() in (out / "results.jsonl").read_bytes()
        assert check_export(out) == []


class TestPartlyReleased:
    async def test_a_run_partly_released_tells_nothing_of_the_rest(self, log: Log, tmp_path: Path) -> None:
        """A run of two passes, one public in a minute and one in an hour, and a failure. Between the
        two releases the export holds the first pass and nothing else: no pass rate of the run, no
        count of its rollouts, no word of the second pass (counts switched off)."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        first = await add_rollout(log.store, log.run_id, passed=True, embargo_s=60.0, none_embargo_s=HOUR)
        second = await add_rollout(
            log.store, log.run_id, passed=True, embargo_s=HOUR, sample=1, answer="SECOND"
        )
        await add_rollout(log.store, log.run_id, passed=False, sample=2, none_embargo_s=HOUR)
        await finish_run(log.store, log.run_id, rollouts=3, passed=2)
        between = now + timedelta(minutes=30)
        assert await release_due(log.store, log.pdb, now=between) == 1
        await export(log, out, between, embargo_s=60.0)
        blob = everything(out)
        assert first.encode() in blob
        assert second.encode() not in blob
        assert b"SECOND" not in blob
        page = (out / "index.html").read_text()
        assert f"run {log.run_id}:" not in page
        assert "/3 passed" not in page
        assert "No disclosed runs yet" in page

        after = now + timedelta(hours=2)
        assert await release_due(log.store, log.pdb, now=after) == 1
        await export(log, out, after, embargo_s=60.0)
        assert f"run {log.run_id}: 2/3 passed" in (out / "index.html").read_text()


class TestNames:
    async def test_names_of_path_separators_and_markup_stay_text_inside_dir(
        self, log: Log, tmp_path: Path
    ) -> None:
        """A provider, model and problem named with ``../``, slashes and markup: the export writes
        only inside DIR (rollout files are named by id), and every page shows the names as text."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        nasty = '../../<script>alert(1)</script>"&x'
        rid = await add_rollout(
            log.store,
            log.run_id,
            passed=True,
            not_before=now - timedelta(minutes=5),
            provider="../p/<b>",
            model=nasty,
            problem_id="../../../etc/passwd",
        )
        await add_rollout(log.store, log.run_id, passed=False, sample=1, model=nasty, none_embargo_s=0.0)
        await finish_run(log.store, log.run_id, rollouts=2, passed=1)
        await release_due(log.store, log.pdb, now=now)
        before = set(os.listdir(tmp_path))
        await export(log, out, now + timedelta(minutes=1), embargo_s=0.0)
        assert set(os.listdir(tmp_path)) - before == {"site"}
        assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
        page = (out / "index.html").read_text()
        assert "<script>alert(1)" not in page
        assert "&lt;script&gt;" in page
        assert "<b>" not in page
        atom = (out / "feed.atom").read_text()
        assert "<script>" not in atom
        assert json.loads((out / "rollouts" / f"{rid}.json").read_text())["model"] == nasty
        assert check_export(out) == []


@dataclass
class Flipped:
    """A released pass that a re-score flipped from a failure naming a hidden test, exported."""

    rid: str
    out: Path
    record: dict[str, Any]
    verifier: NoteVerifier
    seqs: dict[str, int]  # the rollout's event types and their seqs (the last of each type)
    operators_bundle: dict[str, Any]  # the console's bundle of it (the operator's)
    between: dict[str, Any]  # another rollout's event, logged between the pass and the release


@pytest.fixture
async def flipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Flipped:
    from tests.integrity.test_tlog_tiles import live_log
    from tests.publication.test_leak_2026 import _absorbed

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    out = tmp_path / "site"
    async with live_log(tmp_path) as live:
        run = new_run_id()
        await start_run(live.store, run)
        rid = derive_rollout_id(run, "gpt-x", "p1", 0)
        failing = RolloutScored(
            rollout_id=rid,
            passed=False,
            score=0.0,
            scorer="python-function",
            reason="exception: AssertionError: assert candidate(12345) == 98761",
            detail={"traceback": "HIDDEN-TEST-LINE"},
        )
        evs = [
            failing if isinstance(e, RolloutScored) else e
            for e in rollout_events(rid, run, passed=False, none_embargo_s=0.0)
        ]
        await live.store.append(f"rollout-{rid}", evs)
        await finish_run(live.store, run, rollouts=1, passed=0)
        flip = RolloutRescored(
            rollout_id=rid,
            problem_id="p1",
            passed=True,
            score=1.0,
            scorer="python-function",
            problem_hash="h2",
            scorer_version="1",
            rescore_id=str(uuid.uuid4()),
            previous_passed=False,
        )
        public = PublicationDecided(
            rollout_id=rid, audience="public", not_before=rfc3339(datetime.now(UTC)), embargo_s=0.0
        )
        await live.store.append(f"rollout-{rid}", [flip, public])
        other = derive_rollout_id(run, "gpt-x", "p2", 0)  # a leaf between the pass and the release
        await live.store.append(f"rollout-{other}", rollout_events(other, run, passed=False)[:1])
        assert await release_due(live.store, live.pdb) == 1
        await live.integrity.final_checkpoint()
        await _absorbed(live)
        await export_public(live.store, live.pdb, out, base_url=BASE, embargo_s=0.0, tree=live.integrity.tree)
        seqs = {ev.type: ev.seq async for ev in live.store.read(stream=f"rollout-{rid}")}
        operators = await ProofBundles(live.store, live.integrity.tree).bundle(rid)
        assert operators is not None
        others = await ProofBundles(live.store, live.integrity.tree).bundle(other)
        assert others is not None
        verifier = NoteVerifier.from_vkey(live.integrity.signer.vkey)
    record = json.loads((out / "rollouts" / f"{rid}.json").read_text())
    return Flipped(rid, out, record, verifier, seqs, operators, others["events"][0])


def withheld_as_written(bundle: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """``ev`` of ``bundle`` (one with its bytes) given as a withheld failing verdict."""
    return {
        "seq": ev["seq"],
        "leaf_index": ev["leaf_index"],
        "type": "RolloutScored",
        "withheld": WITHHELD,
        "leaf_hash": ev["leaf_hash"],
        "inclusion": ev["inclusion"],
    }


class TestFailedVerdictInABundle:
    """A failing verdict's ``reason`` and ``detail`` name the hidden test it failed, its line
    and expected value: the subscribers' alone. A failure flipped to a pass by a re-score and
    released carried the failing verdict's bytes in the public proof bundle (session 33 found
    it; a strict xfail until session 34). The bundle now gives that verdict by its leaf."""

    async def test_a_flip_to_pass_exports_no_hidden_test_of_its_failing_verdict(
        self, flipped: Flipped
    ) -> None:
        blob = everything(flipped.out)
        assert flipped.rid.encode() in blob
        assert b"98761" not in blob
        assert b"HIDDEN-TEST-LINE" not in blob
        [withheld] = [e for e in flipped.record["proof"]["events"] if "canonical" not in e]
        assert withheld["withheld"] == WITHHELD
        assert withheld["seq"] == flipped.seqs["RolloutScored"]
        assert set(withheld) == {"seq", "leaf_index", "type", "withheld", "leaf_hash", "inclusion"}
        # The claim still proves out, as `rollwatch audit --item` checks it.
        _, n = check_bundle(flipped.record["proof"], flipped.rid, flipped.verifier, flipped.record)
        assert n == len(flipped.record["proof"]["events"])
        # The operator's bundle (the console's) keeps the verdict's bytes.
        ops = [e for e in flipped.operators_bundle["events"] if e["seq"] == withheld["seq"]]
        assert "HIDDEN-TEST-LINE" in ops[0]["canonical"]

    async def test_the_pass_given_as_withheld_is_no_pass(self, flipped: Flipped) -> None:
        """Someone serving the bundle hides the passing re-score behind a leaf hash: a withheld
        entry is a failing verdict, and the release then stands for no pass."""
        bundle = copy.deepcopy(flipped.record["proof"])
        bundle["events"] = [
            withheld_as_written(bundle, e) if e.get("type") == "RolloutRescored" else e
            for e in bundle["events"]
        ]
        with pytest.raises(ValueError, match="the verdict its release stands for is not a pass"):
            check_bundle(bundle, flipped.rid, flipped.verifier)

    async def test_a_withheld_leaf_after_the_pass_counts_against_it(self, flipped: Flipped) -> None:
        """A withheld entry placed between the pass and the release (any leaf of the tree would
        prove): it is the newest verdict before the release, and a failing one."""
        bundle = copy.deepcopy(flipped.record["proof"])
        assert flipped.seqs["RolloutRescored"] < flipped.between["seq"] < flipped.seqs["PublicReleased"]
        check_bundle(bundle, flipped.rid, flipped.verifier)  # as served: a pass
        bundle["events"].append(withheld_as_written(bundle, flipped.between))
        with pytest.raises(ValueError, match="not a pass"):
            check_bundle(bundle, flipped.rid, flipped.verifier)

    @pytest.mark.parametrize(
        "edit",
        ["leaf_hash", "short_leaf_hash", "twice", "other_label", "index_moved"],
    )
    async def test_a_withheld_entry_edited_is_refused(self, flipped: Flipped, edit: str) -> None:
        bundle = copy.deepcopy(flipped.record["proof"])
        [w] = [e for e in bundle["events"] if "withheld" in e]
        if edit == "leaf_hash":
            w["leaf_hash"] = base64.b64encode(bytes(32)).decode()
            match = "is not in the tree"
        elif edit == "short_leaf_hash":
            w["leaf_hash"] = base64.b64encode(base64.b64decode(w["leaf_hash"])[:31]).decode()
            match = "is not in the tree"
        elif edit == "twice":
            bundle["events"].append(dict(w))
            match = "in the bundle twice"
        elif edit == "other_label":
            w["withheld"] = "passing verdict"
            match = "a malformed event"
        else:
            w["leaf_index"] += 1
            match = "is not in the tree|in the bundle twice"
        with pytest.raises(ValueError, match=match):
            check_bundle(bundle, flipped.rid, flipped.verifier, flipped.record)


class TestPlantedDuringAnExport:
    @pytest.mark.parametrize("how", ["symlink", "hardlink"])
    async def test_a_link_planted_at_the_chunks_temporary_name_is_not_written_through(
        self, log: Log, tmp_path: Path, how: str
    ) -> None:
        """An export checks DIR for links when it opens it, then spends its time on the read
        models, the tiles and the proof bundles before it opens the open folder's next chunk
        (``results-0002.jsonl.tmp``, a name anyone can tell from the public manifest). A link
        planted there meanwhile was opened and written through: the file it pointed at, outside
        DIR, was cut and filled with the export's results. The chunk is now made as every other
        file is: the name removed, then created anew, never followed."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(1, month_start(now))
        await log.export(out)
        [rid] = await log.results(1, month_start(now), problem_id="p2")
        outside = tmp_path / "outside.txt"
        outside.write_text("precious\n")
        folder = out / "releases" / period_of(now.timestamp())
        archive = Archive.open(out)  # as export_public opens it, links refused
        try:
            planted = folder / "results-0002.jsonl.tmp"  # meanwhile, by someone who may write in DIR
            if how == "symlink":
                planted.symlink_to(outside)
            else:
                os.link(outside, planted)
            archive.add(rid, month_start(now).timestamp(), now, b'{"rollout_id":"x"}', b"LEAKED-LINE\n")
            archive.finish(now, None, 10**6)
        finally:
            archive.abandon()
            archive.close()
        assert outside.read_text() == "precious\n"
        assert (folder / "results-0002.jsonl").read_bytes() == b"LEAKED-LINE\n"
        assert not (folder / "results-0002.jsonl").is_symlink()
