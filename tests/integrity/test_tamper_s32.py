"""Session 32's attacks on the files (an attacker holding the database files).

*A pending release edited away in the projections file.* The release job took what is due
from ``public_rollouts`` in the projections file alone; the log's own decision (the public
decision event and its ``not_before``) was never consulted for what is *missing*. A pass
whose row was edited so the job did not pick it (its date moved past year 9999, the row
marked failed or superseded, or deleted), or whose events were skipped by a checkpoint moved
ahead, with the file's recorded hash of the last applied event kept, was never released,
and nothing named the edit. Now the scrub's pass over the log hands the job what the log
has due (``PendingReleases``): released, and the file named. *A released row's fields or
superseded mark edited* were served as the log's: now each is compared with the log.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollwatch.abc import EventStore
from rollwatch.events import PendingReleases, RolloutRescored
from rollwatch.publication import release_due
from tests.publication.helpers import add_rollout, finish_run, new_run_id, serving, start_run


def _edit(file: Path, sql: str, *params: object) -> None:
    """One statement on the projections file, as someone holding it runs it."""
    db = sqlite3.connect(file, isolation_level=None)
    try:
        db.execute(sql, params)
    finally:
        db.close()


def _rescore(rid: str, passed: bool) -> RolloutRescored:
    """A re-score of ``rid`` under a newer problem version."""
    return RolloutRescored(
        rollout_id=rid,
        problem_id="p1",
        passed=passed,
        score=1.0 if passed else 0.0,
        scorer="python-function",
        problem_hash="h-newer",
        scorer_version="1",
        rescore_id=str(uuid.uuid4()),
        previous_passed=not passed,
    )


async def _released(env: Any) -> str:
    """A run of one passing rollout, released at once; its id."""
    run = new_run_id()
    await start_run(env.store, run)
    rid = await add_rollout(env.store, run, passed=True, problem_id="p1")
    await finish_run(env.store, run, rollouts=1, passed=1)
    await release_due(env.store, env.pdb)
    return rid


EDITS = {
    "date_moved": "UPDATE public_rollouts SET not_before_ts = 253402300799 WHERE rollout_id = ?",
    "superseded": "UPDATE public_rollouts SET superseded_seq = scored_seq WHERE rollout_id = ?",
    "deleted": "DELETE FROM public_rollouts WHERE rollout_id = ?",
    "failed": "UPDATE public_rollouts SET passed = 0 WHERE rollout_id = ?",
}


@pytest.mark.anyio
@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_a_pending_release_edited_away_in_the_projections_file_is_still_released(
    tmp_path: Path, edit: str
) -> None:
    async with serving(tmp_path) as env:
        run = new_run_id()
        await start_run(env.store, run)
        held = await add_rollout(env.store, run, passed=True, embargo_s=90 * 86400, problem_id="p1")
        await finish_run(env.store, run, rollouts=1, passed=1)
        await env.pdb.catch_up(env.store)
        _edit(env.pdb.file, EDITS[edit], held)
        later = datetime.now(UTC) + timedelta(days=91)
        # The release job alone (its query of the file) misses it ...
        assert await release_due(env.store, env.pdb, now=later) == 0
        # ... the scrub's pass over the log does not: handed to the job, it is released.
        distrusted: list[str] = []
        env.pdb.on_distrusted = distrusted.append
        assert await release_due(env.store, env.pdb, now=later, also=await _due_in_log(env.store, later)) == 1
        types = [rec.type async for rec in env.store.read(stream=f"rollout-{held}")]
    assert "PublicReleased" in types, types
    assert distrusted, "the file was not named"
    assert held in distrusted[0], distrusted


async def _due_in_log(store: EventStore, now: datetime) -> list[str]:
    """What a scrub pass hands the release job: the log's due and unreleased decisions."""
    pending = PendingReleases()
    async for rec in store.read():
        pending.see(rec)
    return pending.due(now)


@pytest.mark.anyio
async def test_the_logs_finding_releases_nothing_early_nor_twice(tmp_path: Path) -> None:
    """The scrub's finding is a list of candidates: one not due (under embargo), one released
    already, one superseded by a failing re-score, an honest file: nothing is released by it,
    and nothing is named."""
    async with serving(tmp_path) as env:
        run = new_run_id()
        await start_run(env.store, run)
        held = await add_rollout(env.store, run, passed=True, embargo_s=90 * 86400, problem_id="p1")
        done = await add_rollout(env.store, run, passed=True, embargo_s=0, problem_id="p2")
        await finish_run(env.store, run, rollouts=2, passed=2)
        await env.pdb.catch_up(env.store)
        assert await release_due(env.store, env.pdb) == 1  # ``done``
        distrusted: list[str] = []
        env.pdb.on_distrusted = distrusted.append
        now = datetime.now(UTC)
        assert await _due_in_log(env.store, now) == []
        assert await release_due(env.store, env.pdb, now=now, also=[held, done, "no-such-rollout"]) == 0
        later = now + timedelta(days=91)
        assert await _due_in_log(env.store, later) == [held]
        # Due later, and the file shows it: the job's own query releases it, the finding adds nothing.
        assert await release_due(env.store, env.pdb, now=later, also=[held]) == 1
        assert distrusted == []
        assert await _due_in_log(env.store, later) == []


@pytest.mark.anyio
async def test_a_projection_checkpoint_moved_ahead_under_a_live_daemon_skips_no_event(tmp_path: Path) -> None:
    """``projection_state.seq`` moved a few events past the log's head while the file is in
    use: the writer skips every event up to it (a whole rollout, its pass and its public
    decision), then records the next event it applies as its anchor, with the log's hash, so
    a restart trusts the file. The pass is never released and never in the subscriber feed."""
    async with serving(tmp_path) as env:
        run = new_run_id()
        await start_run(env.store, run)
        await env.pdb.catch_up(env.store)
        head = await env.store.head()
        # the next append's events (one rollout, one append) go unapplied
        _edit(env.pdb.file, "UPDATE projection_state SET seq = ?", head + 5)
        skipped = await add_rollout(env.store, run, passed=True, problem_id="p1")
        await finish_run(env.store, run, rollouts=1, passed=1)
        await env.pdb.catch_up(env.store)
        why = await env.pdb.distrust(env.store)  # what a restart would ask
        now = datetime.now(UTC)
        await release_due(env.store, env.pdb, now=now, also=await _due_in_log(env.store, now))
        types = [rec.type async for rec in env.store.read(stream=f"rollout-{skipped}")]
    assert why is not None or "PublicReleased" in types, (why, types)


RELEASED_EDITS = {
    "released_at": (
        "UPDATE public_rollouts SET released_at = '2020-01-01T00:00:00.000000Z' WHERE rollout_id = ?",
        "2020-01-01T00:00:00",
    ),
    "scored_at": (
        "UPDATE public_rollouts SET scored_at = '2020-01-01T00:00:00.000000Z' WHERE rollout_id = ?",
        "2020-01-01T00:00:00",
    ),
    "score": ("UPDATE public_rollouts SET score = 0.123456 WHERE rollout_id = ?", "0.123456"),
    "cost_usd": ("UPDATE public_rollouts SET cost_usd = 9876.5 WHERE rollout_id = ?", "9876.5"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("edit", sorted(RELEASED_EDITS))
async def test_a_released_results_edited_field_is_not_served(tmp_path: Path, edit: str) -> None:
    """A released result's release time, verdict time, score or cost edited in the projections
    file (every seq left as it was, so the row's events still check out): not served as
    the log's."""
    sql, mark = RELEASED_EDITS[edit]
    async with serving(tmp_path) as env:
        rid = await _released(env)
        assert rid in (await env.client.get(f"/public/rollouts/{rid}.json")).text
        _edit(env.pdb.file, sql, rid)
        for path in ("/public/results.jsonl", f"/public/rollouts/{rid}.json", "/public/feed.json"):
            r = await env.client.get(path)
            assert mark not in r.text, (path, r.text[:400])


@pytest.mark.anyio
@pytest.mark.parametrize("edit", ["mark_lifted", "mark_added"])
async def test_a_released_results_superseded_mark_edited_is_not_served(tmp_path: Path, edit: str) -> None:
    """A released result that a re-score found failing its problem's newest version is
    published marked ``superseded``. The mark lifted in the projections file (the result
    shown standing), or one added to an honest result (``superseded_seq`` pointing at its
    own verdict): not served as the log's."""
    async with serving(tmp_path) as env:
        rid = await _released(env)
        if edit == "mark_lifted":
            ev = _rescore(rid, False)
            await env.store.append(f"rollout-{rid}", [ev])
            await env.pdb.catch_up(env.store)
            assert '"superseded":true' in (await env.client.get(f"/public/rollouts/{rid}.json")).text
            sql = "UPDATE public_rollouts SET superseded_at = NULL, superseded_seq = NULL, superseded_hash = NULL"
            honest = '"superseded":false'
        else:
            sql = (
                "UPDATE public_rollouts SET superseded_at = '2026-01-01T00:00:00.000000Z',"
                " superseded_seq = scored_seq, superseded_hash = 'h-forged'"
            )
            honest = '"superseded":true'
        _edit(env.pdb.file, f"{sql} WHERE rollout_id = ?", rid)
        served = [
            (await env.client.get(path)).text
            for path in ("/public/results.jsonl", f"/public/rollouts/{rid}.json")
        ]
    for text in served:
        assert honest not in text.replace(" ", ""), text[:600]


def test_a_live_daemon_releases_a_pass_whose_pending_row_was_edited(tmp_path: Path) -> None:
    """The same edit under a real daemon (its scrub every 500 ms, its release job every
    200 ms): a pass under an 8 s embargo whose pending row's date is moved to year 9999 once
    the daemon has it. Safe: it is released when due anyway, or the edit is named."""
    import signal
    import subprocess
    import sys

    import anyio
    import httpx

    from rollwatch.store.sqlite import SQLiteEventStore
    from tests.test_daemon import free_port, wait_until

    db = tmp_path / "events.db"
    pfile = tmp_path / "projections.db"
    run = new_run_id()

    async def fill() -> str:
        async with SQLiteEventStore(db) as store:
            await start_run(store, run)
            rid = await add_rollout(store, run, passed=True, embargo_s=8)
            await finish_run(store, run, rollouts=1, passed=1)
            return rid

    held = anyio.run(fill)
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\nprojections = "{pfile}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n[publication]\nembargo = "8s"\nrelease_check = "200ms"\n'
        '[integrity]\nscrub_interval = "500ms"\n'
    )

    def pending() -> bool:
        try:
            con = sqlite3.connect(pfile)
            try:
                return bool(
                    con.execute("SELECT 1 FROM public_rollouts WHERE rollout_id = ?", (held,)).fetchall()
                )
            finally:
                con.close()
        except sqlite3.Error:
            return False

    with (tmp_path / "serve.log").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(pending, 60, "the pending row")
        assert "PublicReleased" not in _types(db, held), "the daemon started too slowly for this test"
        _edit(pfile, EDITS["date_moved"], held)
        # The embargo over, the scrub's next pass finds it due in the log and the release job
        # releases it (and names the file).
        wait_until(lambda: "PublicReleased" in _types(db, held), 60, "the release")
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).text
        wait_until(
            lambda: held in httpx.get(f"http://127.0.0.1:{port}/public/feed.json", timeout=10).text,
            60,
            "the public feed",
        )
        feed = httpx.get(f"http://127.0.0.1:{port}/public/feed.json", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log = (tmp_path / "serve.log").read_text()
    assert held in feed, (health, log[-1500:])
    assert "projections_tampered" in log, (health, log[-1500:])


def _types(db: Path, rid: str) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [
            r[0]
            for r in con.execute("SELECT type FROM events WHERE stream = ? ORDER BY seq", (f"rollout-{rid}",))
        ]
    finally:
        con.close()


@pytest.mark.anyio
async def test_an_honest_mark_lifted_by_a_passing_rescore_is_served_as_standing(tmp_path: Path) -> None:
    """The check of a row with no mark is the log's rule, not a guess: a released result a
    re-score failed and a later one passed again stands, unmarked, and nothing is named."""
    async with serving(tmp_path) as env:
        distrusted: list[str] = []
        env.pdb.on_distrusted = distrusted.append
        rid = await _released(env)
        await env.store.append(f"rollout-{rid}", [_rescore(rid, False)])
        await env.store.append(f"rollout-{rid}", [_rescore(rid, True)])
        await env.pdb.catch_up(env.store)
        standing = (await env.client.get(f"/public/rollouts/{rid}.json")).text.replace(" ", "")
        body = (await env.client.get("/public/results.jsonl")).text
    assert '"superseded":false' in standing, standing[:600]
    assert rid in body
    assert distrusted == [], distrusted
