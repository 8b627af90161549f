"""Embargo attacks of the `emb` review, from outside, on real SQLite files and loopback HTTP.

* *The live log size in a public proof bundle.* A released result's bundle listed, under
  ``pending``, the seqs of its rollout's events appended after the signed checkpoint (a
  re-score of it, say): anyone reading ``/public/rollouts/ID.json``, ``results.jsonl`` or an
  export learnt the log's live size, and from its steps how many events (re-scores of
  embargoed rollouts among them) were appended meanwhile. Public bundles now stop at the
  release: every seq they name is at or below ``released_seq``, which is public anyway.
* *A pass withdrawn before its release, then restored.* A re-score failed an embargoed
  pass; its public date passed meanwhile; a later re-score passed it again, and the release
  job released it at once, as subscribers saw it: no embargo at all. A pass withdrawn
  before its release now loses its date, and its embargo counts from the restoring event
  (read from the log, so logs written before this rule read the same way).

Each test failed before its fix (see the report of the session that wrote them).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from rollwatch.abc import EventStore
from rollwatch.events import PublicationDecided, PublicDate, RolloutRescored, parse_rfc3339, rfc3339
from rollwatch.publication import release_due
from rollwatch.publication.export import export_public
from rollwatch.publication.policy import Embargo, decide
from rollwatch.publication.proofs import ProofBundles
from rollwatch.publication.public import public_view
from rollwatch.publication.release import caught_up
from tests.integrity.test_tlog_tiles import add_released, live_log
from tests.publication.helpers import Env, add_rollout, finish_run, new_run_id, serving, start_run
from tests.publication.test_flip_attacks import rescore
from tests.publication.test_leak_2026 import _absorbed
from tests.publication.test_releases import BASE

pytestmark = pytest.mark.anyio

EMBARGO_S = 30 * 86400.0


@pytest.fixture(autouse=True)
def _no_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def named_seqs(proof: dict[str, Any]) -> list[int]:
    """Every seq a proof bundle names: its events' and its pending ones."""
    return [int(ev["seq"]) for ev in proof["events"]] + [int(s) for s in proof["pending"]]


class TestLiveSizeInPublicBundles:
    async def test_a_served_bundle_names_no_seq_after_its_release(self, tmp_path: Path) -> None:
        """A released result re-scored (passing again, so nothing public changes) after the
        signed checkpoint, with embargoed work appended too: ``/public/rollouts/ID.json`` and its
        ``results.jsonl`` line name no seq beyond the release (before, ``pending`` held the
        re-score's seq: the live size). The operator's full bundle still lists it."""
        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            rid = await add_released(live.store, live.pdb)
            cp = await live.integrity.final_checkpoint()
            assert cp is not None
            await rescore(live.store, rid, passed=True, previous=True, decide=False)
            run = new_run_id()
            await start_run(live.store, run)
            for sample in range(2):
                await add_rollout(live.store, run, passed=True, sample=sample, embargo_s=3600)
            head = await _absorbed(live)
            one = (await c.get(f"/public/rollouts/{rid}.json")).json()
            lines = [json.loads(x) for x in (await c.get("/public/results.jsonl")).text.splitlines()]
            [line] = [x for x in lines if x["rollout_id"] == rid]
            for record in (one, line):
                proof = record["proof"]
                assert proof["pending"] == [], proof["pending"]
                assert max(named_seqs(proof)) <= record["released_seq"] <= cp.size
                assert proof["complete"] is True
            full = await ProofBundles(live.store, live.integrity.tree).bundle(rid)
            assert full is not None
            assert full["pending"], "the operator's bundle lists the re-score"
            assert max(full["pending"]) < head

    async def test_an_export_names_no_seq_after_a_release(self, tmp_path: Path) -> None:
        """A released result marked superseded by a re-score after the checkpoint: the export
        files it (its folder's chunk, ``results.jsonl``, the top-level copy the mark rewrites)
        with a bundle naming no seq beyond its release; before, the re-score's seqs were
        ``pending`` in every copy, the closed folder's for good."""
        out = tmp_path / "site"
        async with live_log(tmp_path) as live:
            rid = await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            await rescore(live.store, rid, passed=False, previous=True, decide=False)
            await _absorbed(live)
            s = await export_public(
                live.store, live.pdb, out, base_url=BASE, embargo_s=0.0, tree=live.integrity.tree
            )
            assert s.released == 1
        records = [json.loads((out / "rollouts" / f"{rid}.json").read_text())]
        for f in [out / "results.jsonl", *out.glob("releases/*/results-*.jsonl")]:
            records += [json.loads(x) for x in f.read_text().splitlines()]
        assert len(records) == 3
        assert records[0]["superseded"] is True
        for record in records:
            assert record["proof"]["pending"] == [], record["proof"]["pending"]
            assert max(named_seqs(record["proof"])) <= record["released_seq"]


# --- a pass withdrawn before its release, restored later -------------------------------------------


async def withdraw(store: EventStore, rid: str) -> None:
    """A re-score failing the pass, with the "none" decision every re-score appends."""
    await rescore(store, rid, passed=False, previous=True, decide=False)
    await _none(store, rid)


async def _none(store: EventStore, rid: str) -> None:
    now = rfc3339(datetime.now(UTC))
    await store.append(
        f"rollout-{rid}",
        [PublicationDecided(rollout_id=rid, audience="none", not_before=now, embargo_s=EMBARGO_S)],
    )


async def restore_as_before(store: EventStore, rid: str) -> int:
    """A re-score passing it again as older rollwatch wrote it ("none": it was decided public
    once); the restore's seq."""
    await rescore(store, rid, passed=True, previous=False, decide=False)
    await _none(store, rid)
    return await _seq_of(store, rid, "RolloutRescored")


async def restore_as_now(store: EventStore, rid: str, embargo_s: float) -> int:
    """A re-score passing it again with the decisions :func:`decide` makes for it now."""
    date = PublicDate()
    async for rec in store.read(stream=f"rollout-{rid}"):
        date.apply(rec)
    ev = RolloutRescored(
        rollout_id=rid,
        problem_id="p1",
        passed=True,
        score=1.0,
        scorer="python-function",
        problem_hash=f"h-{uuid.uuid4().hex[:8]}",
        scorer_version="1",
        rescore_id=str(uuid.uuid4()),
        previous_passed=False,
    )
    decisions = decide(Embargo(embargo_s), ev, datetime.now(UTC), date.decided, withdrawn=date.withdrawn)
    assert [d.audience for d in decisions] == ["public"], decisions
    await store.append(f"rollout-{rid}", [ev, *decisions])
    return await _seq_of(store, rid, "RolloutRescored")


async def _seq_of(store: EventStore, rid: str, typ: str) -> int:
    return max([rec.seq async for rec in store.read(stream=f"rollout-{rid}") if rec.type == typ])


async def _at(store: EventStore, seq: int) -> datetime:
    return parse_rfc3339((await store.read_at([seq]))[seq].at)


async def _withdrawn_after_its_date(env: Env) -> str:
    """An embargoed pass whose public date has just passed, withdrawn before the release job
    got to it (it never ran), of a finished run."""
    run = new_run_id()
    await start_run(env.store, run)
    past = datetime.now(UTC) - timedelta(seconds=1)
    rid = await add_rollout(env.store, run, passed=True, not_before=past, embargo_s=EMBARGO_S)
    await finish_run(env.store, run, rollouts=1, passed=1)
    await withdraw(env.store, rid)
    return rid


async def _public_text(env: Env) -> str:
    routes = ("/public/", "/public/feed.json", "/public/feed.atom", "/public/results.jsonl")
    return "".join([(await env.client.get(r)).text for r in routes])


class TestRestoredPassWaitsItsEmbargo:
    @pytest.mark.parametrize("shape", ["as_before", "as_now"])
    async def test_a_restored_pass_is_released_an_embargo_after_its_restore(
        self, tmp_path: Path, shape: str
    ) -> None:
        """Withdrawn before its release, restored after its first date passed: the release job
        releases nothing now (before: at once), no public route shows it, the embargo counts
        announce it due an embargo after the restore; at that moment it is released. The same
        for a log written by older code (the restore's "none" decision: the embargo the first
        decision carried, counted from the restore) and by this one (its own public decision)."""
        async with serving(tmp_path) as env:
            rid = await _withdrawn_after_its_date(env)
            if shape == "as_before":
                restored = await restore_as_before(env.store, rid)
            else:
                restored = await restore_as_now(env.store, rid, EMBARGO_S)
            due = await _at(env.store, restored) + timedelta(seconds=EMBARGO_S)
            assert await release_due(env.store, env.pdb) == 0, "released at once, as subscribers saw it"
            assert rid not in await _public_text(env)
            await caught_up(env.store, env.pdb)
            view = await public_view(env.store, env.pdb, embargo_default=EMBARGO_S)
            [counted] = view.embargoed
            assert counted.solutions == 1
            got = parse_rfc3339(counted.next_release)
            assert abs((got - due).total_seconds()) < 5, (counted.next_release, rfc3339(due))
            assert await release_due(env.store, env.pdb, now=due - timedelta(seconds=10)) == 0
            assert await release_due(env.store, env.pdb, now=due + timedelta(seconds=1)) == 1
            [row] = await env.pdb.fetchall(
                "SELECT not_before, released_seq FROM public_rollouts WHERE rollout_id = ?", (rid,)
            )
            assert abs((parse_rfc3339(row[0]) - due).total_seconds()) < 5
            assert rid not in await _public_text(env), "shown before its own date"

    async def test_a_restored_pass_shows_at_its_new_date_with_a_bundle_that_proves_it(
        self, tmp_path: Path
    ) -> None:
        """A log of older code (restore with "none"), restored with a 1-second embargo and
        released at its new date by the release job: the public route serves it with the new
        ``not_before``, and ``rollwatch audit``'s bundle check accepts that date from the logged
        events (the first decision's date no longer stands)."""
        from rollwatch.integrity.bundle import check_bundle
        from rollwatch.integrity.checkpoint import NoteVerifier

        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            run = new_run_id()
            await start_run(live.store, run)
            past = datetime.now(UTC) - timedelta(seconds=1)
            from tests.integrity.test_tlog_tiles import rollout_uuid
            from tests.publication.helpers import rollout_events

            rid = rollout_uuid(run, "gpt-x", "p1", 0)
            events = rollout_events(rid, run, passed=True, not_before=past, embargo_s=1.0)
            await live.store.append(f"rollout-{rid}", events)
            await withdraw(live.store, rid)
            restored = await restore_as_before(live.store, rid)
            due = await _at(live.store, restored) + timedelta(seconds=1)
            assert await release_due(live.store, live.pdb, now=due - timedelta(milliseconds=500)) == 0
            assert await release_due(live.store, live.pdb, now=due + timedelta(seconds=1)) == 1
            await live.integrity.final_checkpoint()
            await _absorbed(live)
            early = await c.get(f"/public/rollouts/{rid}.json")
            if datetime.now(UTC) < due - timedelta(milliseconds=100):
                assert early.status_code == 404, "served before its new date"
            with anyio.fail_after(10):  # the routes go by the real clock: the new date is 1 s on
                while (r := await c.get(f"/public/rollouts/{rid}.json")).status_code != 200:
                    await anyio.sleep(0.05)
            record = r.json()
            assert datetime.now(UTC) >= due
            assert record["not_before"] == rfc3339(due)
            vkey = (await c.get("/public/key")).text.strip()
        check_bundle(record["proof"], rid, NoteVerifier.from_vkey(vkey), record)


class TestTimingOfWithdrawals:
    async def test_withdrawing_an_embargoed_pass_does_not_make_the_public_archive_again(
        self, tmp_path: Path
    ) -> None:
        """``/public/results.jsonl`` is made again (milliseconds a result: a slower answer)
        when what it shows may have moved; the key counted every superseded mark, an embargoed
        pass's withdrawal included, so timing the next answer told that a pass under embargo
        had just been withdrawn. Only marks on released results count now."""
        async with serving(tmp_path) as env:
            run = new_run_id()
            await start_run(env.store, run)
            past = datetime.now(UTC) - timedelta(seconds=1)
            await add_rollout(env.store, run, passed=True, problem_id="p0", not_before=past)
            held = await add_rollout(env.store, run, passed=True, embargo_s=EMBARGO_S, sample=1)
            await release_due(env.store, env.pdb)
            first = await env.client.get("/public/results.jsonl")
            made = env.api._results
            assert made is not None
            await withdraw(env.store, held)
            again = await env.client.get("/public/results.jsonl")
            assert again.content == first.content
            assert env.api._results is made, "the archive was made again for a withdrawal under embargo"
