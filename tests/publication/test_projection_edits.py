"""The projections file edited to publish what the log does not release.

Someone holding the files can edit ``public_rollouts`` rows (the recorded hash of the last
event kept, so nothing tells the file from a faithful one): a failure made a pass, an
embargoed result's date moved into the past with a release seq pointed at any event. Before,
every public route served such a row as released (the answer read from the log beside it).
Now each released result is checked against the log's events at its row's seqs (release,
verdict, public decision and its date, answer) before it is served; one that does not hold is
left out and logged as ERROR ``projections_tampered``. The aggregate figures are not checked
this way (see the README's threat model).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rollwatch.publication import release_due
from tests.publication.helpers import add_rollout, finish_run, new_run_id, serving, start_run

pytestmark = pytest.mark.anyio

PUBLIC = ("/public/", "/public/feed.json", "/public/feed.atom", "/public/results.jsonl")


async def test_an_edited_row_is_not_served_as_released(tmp_path: Path) -> None:
    """A failure edited into a released pass, and an embargoed pass edited to be due and
    released, appear on no public route; the honest release beside them still does."""
    async with serving(tmp_path) as env:
        run = new_run_id()
        await start_run(env.store, run)
        honest = await add_rollout(env.store, run, passed=True, problem_id="p1")
        failed = await add_rollout(env.store, run, passed=False, problem_id="p2", sample=1)
        held = await add_rollout(env.store, run, passed=True, embargo_s=90 * 86400, problem_id="p3", sample=2)
        await finish_run(env.store, run, rollouts=3, passed=2)
        await release_due(env.store, env.pdb)
        assert honest in (await env.client.get("/public/feed.json")).text
        released_seq = (
            await env.pdb.fetchone("SELECT released_seq FROM public_rollouts WHERE rollout_id = ?", (honest,))
        )[0]

        db = sqlite3.connect(env.pdb.file, isolation_level=None)
        try:
            db.execute(
                "UPDATE public_rollouts SET passed = 1, score = 1.0, not_before = '2020-01-01T00:00:00.000000Z',"
                " not_before_ts = 1577836800, decided_seq = COALESCE(decided_seq, scored_seq + 1),"
                " released_at = '2026-01-01T00:00:00.000000Z', released_seq = ? WHERE rollout_id = ?",
                (released_seq, failed),
            )
            db.execute(
                "UPDATE public_rollouts SET not_before = '2020-01-01T00:00:00.000000Z', not_before_ts = 1577836800,"
                " released_at = '2026-01-01T00:00:00.000000Z', released_seq = ? WHERE rollout_id = ?",
                (released_seq + 1, held),
            )
        finally:
            db.close()

        with capture_logs() as logs:
            for path in (*PUBLIC, f"/public/rollouts/{failed}.json", f"/public/rollouts/{held}.json"):
                r = await env.client.get(path)
                assert failed not in r.text, path
                assert held not in r.text, path
            assert honest in (await env.client.get("/public/feed.json")).text
        tampered = {e["rollout_id"] for e in logs if e["event"] == "projections_tampered"}
        assert tampered == {failed, held}
        assert all(e["log_level"] == "error" for e in logs if e["event"] == "projections_tampered")
