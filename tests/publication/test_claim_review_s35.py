"""Session 35 (helper review-claim-s35): the release's claim (``PublicReleased`` schema 2) and
``check_bundle`` / ``rollwatch audit --item`` attacked from outside, after the claim was merged.

The events before a release are now pinned by the release's claim; what a served result states
beside them was not all held to them. Broke (each test failed before its fix):

* a result marked ``superseded`` was not held to its score: anyone serving it (a mirror, a
  hostile host) could state any score by setting ``"superseded": true``
  (:class:`TestTheResultsFields`; ``check_bundle`` and ``results.jsonl``'s ``_rollwatch`` check);
* its ``scored_at``, ``cost_usd`` and ``rollout_id`` were not checked at all;
* the answer (and request) a bundle proves was the last of its type in the bundle's own order:
  reordered, a bundle of a rollout asked twice proved the earlier answer
  (:class:`TestTheLogsOrder`);
* ``audit --item`` skipped the bundle of a result whose proof said ``"pending": [...]``, any
  seq (exit 0): a hostile host could state any result so (:class:`TestPending`);
* hostile JSON (``"events": 5``, a number or null for a hash) was a traceback out of
  ``check_bundle`` and ``audit --item`` (:class:`TestHostileJSON`; ``"events"`` an object was
  refused before too);
* a ``results.jsonl`` line keeping its verdict (``_rollwatch``) but stripped of its bundle
  counted as checked "as its line says", its date and answer unproven (:class:`TestTheArchiveLine`).

Held (pinned): a re-score landing between the release job's read and its append, on SQLite and
PostgreSQL, makes the job read again and name it; two release jobs and an unfenced re-score at
once release each rollout once, naming its stream exactly (:class:`TestTheReleaseRace`); a public bundle of
a released result names nothing after the release (its ``seqs`` no event the public should not
know of: every one is also an entry of the bundle, and all are before ``released_seq``).

Real parts: SQLite logs with the integrity service and the public routes on loopback, the real
release job, ``check_bundle``; ``publish export`` and ``rollwatch audit --item`` against a hostile
host; the ``store`` fixture's SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollwatch.abc import EventStore
from rollwatch.events import Event, PublicReleased, RolloutRequested, RolloutResponded
from rollwatch.integrity.bundle import VERDICTS
from rollwatch.publication.release import release_one
from tests.publication.helpers import add_rollout, new_run_id, rollout_events, start_run
from tests.publication.test_claim_attacks_s35 import (  # noqa: F401  (exported: a fixture)
    Exported,
    exported,
    ids,
    passes,
    scene,
)
from tests.publication.test_withheld_attacks_s34 import failing, rescored_pass

pytestmark = pytest.mark.anyio


class TestTheResultsFields:
    """What the served result states beside its events: every field the log gives is held to it."""

    async def test_a_superseded_mark_does_not_free_the_score(self, tmp_path: Path) -> None:
        """The attacker serves a released pass (scored 0.8, re-scored a pass at 0.9) marked
        superseded, with the score 1.0: the score of a superseded result is still its first
        pass's (the read models never change it), so it must be refused. An honest result
        superseded by a failing re-score after its release still checks, with its score."""
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        assert s.record["score"] == 0.8
        marked = {**s.record, "superseded": True, "superseded_at": s.record["released_at"]}
        for score in (1.0, 0.9):
            with pytest.raises(ValueError, match="the result's score is not what its logged events say"):
                s.check(s.bundle, {**marked, "score": score})

        run, rid = ids()
        (tmp_path / "honest").mkdir()
        s = await scene(
            tmp_path / "honest", *passes(rid, run), rid=rid, run=run, after=[failing(rid, rescore=True)]
        )
        assert s.record["superseded"] is True
        assert s.record["score"] == 0.8
        s.check(s.bundle)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("scored_at", "2000-01-01T00:00:00Z"),
            ("cost_usd", 0.0),
            ("cost_usd", None),
            ("rollout_id", "00000000-0000-5000-8000-000000000000"),
        ],
    )
    async def test_a_field_the_events_give_otherwise(self, tmp_path: Path, field: str, value: Any) -> None:
        """The attacker changes a field of the served result the events give (when it was
        scored, what its answers cost, which rollout it is): refused, naming the field."""
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        assert s.record[field] != value
        with pytest.raises(ValueError, match=f"the result's {field} is not what its logged events say"):
            s.check(s.bundle, {**s.record, field: value})

    async def test_the_cost_of_every_answer(self, tmp_path: Path) -> None:
        """An honest result of a rollout answered twice (the cost is both answers'; the answer
        the newer) checks; either answer's cost alone is refused."""
        run, rid = ids()
        s = await scene(tmp_path, twice_answered(rid, run), rid=rid, run=run)
        assert s.record["answer"] == "new"
        assert s.record["cost_usd"] == 0.001 + 0.002
        s.check(s.bundle)
        for cost in (0.001, 0.002):
            with pytest.raises(ValueError, match="the result's cost_usd"):
                s.check(s.bundle, {**s.record, "cost_usd": cost})

    async def test_the_archive_line_of_a_superseded_result_keeps_its_score(self, tmp_path: Path) -> None:
        """``audit``'s check of a ``results.jsonl`` line's ``_rollwatch`` verdict skipped the score
        of a line marked superseded: with its bundle stripped, a line marked so stated any
        score."""
        from rollwatch.integrity.audit import AuditFailure, _Archive

        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        cp = s.verifier.open_checkpoint(s.record["proof"]["checkpoint"])
        verdict = s.entry(s.seq("RolloutScored"))
        meta = {
            "canonical": verdict["canonical"],
            "leaf_index": verdict["leaf_index"],
            "leaf_hash": verdict["leaf_hash"],
            "inclusion": {"size": cp.size, "path": verdict["inclusion"]},
        }
        line = {k: v for k, v in s.record.items() if k != "proof"} | {"_rollwatch": meta}
        archive = _Archive(None, s.verifier, cp)  # type: ignore[arg-type]  # no fetch: the proof's tree is cp
        await archive.line(1, json.dumps(line))  # the honest line
        archive = _Archive(None, s.verifier, cp)  # type: ignore[arg-type]
        forged = line | {"superseded": True, "score": 1.0}
        with pytest.raises(AuditFailure, match=r"its score is 1\.0, but its logged verdict"):
            await archive.line(1, json.dumps(forged))


def twice_answered(rid: str, run: str) -> list[Event]:
    """A rollout asked twice, each answered (the first's answer ``old``, the second's ``new``),
    the second scored a pass and decided public: the read models take the newer answer and add
    both answers' costs."""
    evs = rollout_events(rid, run, passed=True, answer="new")
    [request] = [e for e in evs if isinstance(e, RolloutRequested)]
    [answer] = [e for e in evs if isinstance(e, RolloutResponded)]
    first_request = RolloutRequested(**{**request.to_data(), "attempt": 1})  # type: ignore[arg-type]
    first_answer = RolloutResponded(**{**answer.to_data(), "attempt": 1, "text": "old", "cost_usd": 0.001})  # type: ignore[arg-type]
    answer = RolloutResponded(**{**answer.to_data(), "attempt": 2, "cost_usd": 0.002})  # type: ignore[arg-type]
    request = RolloutRequested(**{**request.to_data(), "attempt": 2})  # type: ignore[arg-type]
    rest = [e for e in evs if not isinstance(e, RolloutRequested | RolloutResponded)]
    return [first_request, first_answer, request, answer, *rest]


class TestTheLogsOrder:
    async def test_a_reordered_bundle_proves_the_newest_answer(self, tmp_path: Path) -> None:
        """The rollout was asked twice and answered twice; the pass judged the second answer.
        The attacker moves the first answer's entry to the end of the bundle and states it as the
        result's answer (with its cost): the claim is taken in the log's order, whatever the
        bundle's, and the first answer is refused."""
        run, rid = ids()
        s = await scene(tmp_path, twice_answered(rid, run), rid=rid, run=run)
        old = s.seq("RolloutResponded", lambda d: d["text"] == "old")
        bundle = s.bundle
        bundle["events"] = [e for e in bundle["events"] if e["seq"] != old] + [s.entry(old)]
        s.check(bundle)  # the same entries in another order: still the honest result
        with pytest.raises(ValueError, match="the result's answer is not what its logged events say"):
            s.check(bundle, {**s.record, "answer": "old"})

    async def test_events_after_the_release_change_nothing(self, tmp_path: Path) -> None:
        """Held before (pinned): the attacker adds to the public bundle the rollout's real events
        after its release, with their bytes (a later pass at 0.5 and a public decision, as the
        operator's bundle gives them), listed first, and states that pass's score: the claim
        is the first pass before the first release."""
        from tests.publication.test_withheld_attacks_s34 import none

        run, rid = ids()
        later = [rescored_pass(rid, 0.5, previous=True), none(rid)]
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run, after=later)
        released = s.release["seq"]
        extra = [e for e in s.operators["events"] if e["seq"] > released]
        assert len(extra) == 2
        bundle = s.bundle
        assert all(e["seq"] <= released for e in bundle["events"])
        bundle["events"] = extra + bundle["events"]
        s.check(bundle)
        with pytest.raises(ValueError, match="the result's score is not what its logged events say"):
            s.check(bundle, {**s.record, "score": 0.5})


def _mutations() -> dict[str, Callable[[dict[str, Any]], None]]:
    def withheld(b: dict[str, Any], value: Any) -> None:
        for e in b["events"]:
            if "withheld" in e:
                e["leaf_hash"] = value

    return {
        "events a number": lambda b: b.update(events=5),
        "events an object": lambda b: b.update(events={"a": 1}),
        "an inclusion hash a number": lambda b: b["events"][0].update(inclusion=[5]),
        "an inclusion hash null": lambda b: b["events"][0].update(inclusion=[None]),
        "a withheld leaf hash a number": lambda b: withheld(b, 5),
        "a withheld leaf hash null": lambda b: withheld(b, None),
    }


class TestHostileJSON:
    @pytest.mark.parametrize("how", sorted(_mutations()))
    async def test_a_malformed_bundle_is_refused(self, tmp_path: Path, how: str) -> None:
        """The attacker serves a bundle of a malformed shape: a ValueError saying so (what
        ``audit`` reports as FAILED), never another exception (a traceback out of audit)."""
        run, rid = ids()
        s = await scene(tmp_path, *passes(rid, run), rid=rid, run=run)
        bundle = s.bundle
        _mutations()[how](bundle)
        with pytest.raises(ValueError, match=r"malformed|not a list|not a base64 string"):
            s.check(bundle)

    @pytest.mark.parametrize("how", ["events a number", "an inclusion hash a number"])
    def test_audit_item_fails_cleanly(self, exported: Exported, how: str) -> None:  # noqa: F811
        """``rollwatch audit --item`` against a host serving such a bundle: exit 1, one FAILED
        bundle line, no traceback."""
        from tests.integrity.test_audit_hostile import audit, body, failed, hostile

        path = f"/rollouts/{exported.rid}.json"
        record = json.loads((exported.out / path.lstrip("/")).read_text())
        _mutations()[how](record["proof"])
        with hostile(exported.out, {path: body(json.dumps(record))}) as s:
            failed(audit(s.url, "--item", exported.rid, "--no-archive"), "bundle", exported.rid)


class TestPending:
    def test_a_static_export_whose_bundle_says_pending_fails(self, exported: Exported) -> None:  # noqa: F811
        """A mirror of the export serves the result with an earlier public date, and its bundle
        with ``"pending": [1]``: ``audit --item`` skipped the bundle ("not checked yet", exit 0).
        An export's bundle never waits: exit 1."""
        from tests.integrity.test_audit_hostile import audit, body, failed, hostile

        path = f"/rollouts/{exported.rid}.json"
        record = json.loads((exported.out / path.lstrip("/")).read_text())
        record["not_before"] = exported.first
        record["proof"]["pending"] = [1]
        with hostile(exported.out, {path: body(json.dumps(record))}) as s:
            failed(
                audit(s.url, "--item", exported.rid, "--no-archive"),
                "bundle",
                exported.rid,
                "not under its checkpoint",
            )

    @pytest.mark.parametrize("pending", [[1], ["x"], "1", [True]])
    def test_a_live_host_pending_what_its_checkpoint_covers_fails(
        self,
        exported: Exported,  # noqa: F811
        tmp_path: Path,
        pending: Any,
    ) -> None:
        """A host serving the public routes (``/public/...``) says the result's bundle has events
        pending that its signed checkpoint covers (or that are no seqs): exit 1. Only events after
        the checkpoint may wait, as ``results.jsonl``'s lines already must (session 26)."""
        from tests.integrity.test_audit_hostile import audit, body, failed, hostile

        root = tmp_path / "host"
        shutil.copytree(exported.out, root / "public")
        path = f"/public/rollouts/{exported.rid}.json"
        record = json.loads((root / path.lstrip("/")).read_text())
        size = record["proof"]["tree_size"]
        record["not_before"] = exported.first
        record["proof"]["pending"] = pending
        with hostile(root, {path: body(json.dumps(record))}) as s:
            failed(
                audit(s.url, "--item", exported.rid, "--no-archive"), "bundle", exported.rid, f"size {size}"
            )
        # After the checkpoint: what an honest live log says between checkpoints, not checked yet.
        record["proof"]["pending"] = [size + 1]
        with hostile(root, {path: body(json.dumps(record))}) as s:
            p = audit(s.url, "--item", exported.rid, "--no-archive")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "await the next checkpoint: not checked yet" in p.stdout


class TestTheReleaseRace:
    @pytest.mark.parametrize("what", ["a failing re-score", "a passing re-score"])
    async def test_a_rescore_between_the_read_and_the_append(self, store: EventStore, what: str) -> None:
        """Another writer (a re-score) appends to the rollout's stream after the release job read
        it and before its append lands, on SQLite and PostgreSQL: the append expects the version it
        read, conflicts, and the job reads again. A failing one stops the release; a passing one
        is named by the release's claim (its seq among ``seqs``, its ``verdict_seq``)."""
        run = new_run_id()
        await start_run(store, run)
        past = datetime.now(UTC) - timedelta(seconds=1)
        rid = await add_rollout(store, run, passed=True, problem_id="p1", not_before=past)
        racing = _Racing(
            store,
            failing(rid, rescore=True) if what == "a failing re-score" else rescored_pass(rid, previous=True),
        )
        released = await release_one(racing, rid)  # type: ignore[arg-type]
        assert racing.raced, "the race did not happen"
        recs = [r async for r in store.read(stream=f"rollout-{rid}")]
        if what == "a failing re-score":
            assert released is False
            assert "PublicReleased" not in [r.type for r in recs]
            return
        assert released is True
        [rel] = [r for r in recs if r.type == "PublicReleased"]
        ev = rel.event()
        assert isinstance(ev, PublicReleased)
        assert ev.seqs == [r.seq for r in recs if r.seq < rel.seq]
        assert rel.seq == recs[-1].seq
        assert ev.verdict_seq == [r.seq for r in recs if r.type == "RolloutRescored"][-1]

    async def test_releases_and_rescores_at_once(self, store: EventStore) -> None:
        """Twenty due passes, each released by two release jobs at once while a re-score (a pass,
        with its "none" decision) is appended to its stream, unfenced, as a contended re-score
        does, on SQLite and PostgreSQL: each rollout is released once, and its release names
        exactly the events of its stream before it."""
        import anyio

        from tests.publication.test_withheld_attacks_s34 import none

        run = new_run_id()
        await start_run(store, run)
        past = datetime.now(UTC) - timedelta(seconds=1)
        rids = [
            await add_rollout(store, run, passed=True, problem_id="p1", not_before=past) for _ in range(20)
        ]
        async with anyio.create_task_group() as tg:
            for rid in rids:
                tg.start_soon(release_one, store, rid)
                tg.start_soon(store.append, f"rollout-{rid}", [rescored_pass(rid, previous=True), none(rid)])
                tg.start_soon(release_one, store, rid)
        for rid in rids:
            recs = [r async for r in store.read(stream=f"rollout-{rid}")]
            [rel] = [r for r in recs if r.type == "PublicReleased"]
            ev = rel.event()
            assert isinstance(ev, PublicReleased)
            assert ev.seqs == [r.seq for r in recs if r.seq < rel.seq]
            assert ev.verdict_seq == [r.seq for r in recs if r.seq < rel.seq and r.type in VERDICTS][-1]


class _Racing:
    """The store, where ``event`` is appended to the rollout's stream (by another writer) just
    before the release job's first append lands."""

    def __init__(self, store: EventStore, event: Event) -> None:
        self.store = store
        self.event = event
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def append(
        self, stream: str, events: Sequence[Event], *, expected_version: int | None = None
    ) -> Any:
        if not self.raced and any(isinstance(ev, PublicReleased) for ev in events):
            self.raced = True
            await self.store.append(stream, [self.event])
        return await self.store.append(stream, events, expected_version=expected_version)


class TestTheArchiveLine:
    def test_a_live_line_stripped_to_its_verdict_is_not_checked(
        self,
        exported: Exported,  # noqa: F811
        tmp_path: Path,
    ) -> None:
        """A host serving the public routes serves ``results.jsonl`` with the result's line
        stripped of its bundle (``proof``) but keeping its verdict and proof (``_rollwatch``, as an
        export's lines carry it), its public date moved earlier and its answer replaced. The
        verdict proves neither: ``audit`` counted the line among those "in the signed tree, as
        their lines say: ok" (exit 0). It is counted among the lines that carry no proof of their
        claim, NOT checked (a live rollwatch's lines always carry their bundle). Since session 36
        a live service's line without its bundle fails the audit (exit 1, FAILED archive), with or
        without its verdict."""
        from tests.integrity.test_audit_hostile import audit, body, failed, hostile

        root = tmp_path / "host"
        shutil.copytree(exported.out, root / "public")
        [line] = [json.loads(x) for x in (root / "public" / "results.jsonl").read_text().splitlines()]
        assert line["rollout_id"] == exported.rid
        assert "_rollwatch" in line
        del line["proof"]
        line |= {"not_before": exported.first, "answer": "print('not the answer it scored')"}
        for stripped in (line, {k: v for k, v in line.items() if k != "_rollwatch"}):
            with hostile(root, {"/public/results.jsonl": body(json.dumps(stripped) + "\n")}) as s:
                p = audit(s.url, "--item", exported.rid)
            failed(p, "archive", "results.jsonl", "no proof bundle", "not proven")
