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

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from rollwatch.events import SchedulePaused
from rollwatch.publication import release_due
from rollwatch.publication.keys import hash_key, key_prefix, new_key
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import (
    add_rollout,
    add_subscriber,
    bearer,
    finish_run,
    new_run_id,
    revoke,
    serving,
    start_run,
)
from tests.test_daemon import free_port, wait_until

PUBLIC = ("/public/", "/public/feed.json", "/public/feed.atom", "/public/results.jsonl")


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_edited_subscriber_rows_open_no_route(tmp_path: Path) -> None:
    """``pub_subscribers`` edited with the recorded hash of the log kept (so the file is
    trusted): a revocation undone, a key added, a key's scopes widened. Before, the keys of a
    restarted daemon came from those rows (the log was read only after the file's
    checkpoint): the revoked key, the added one and the widened scope all opened their routes.
    The keys now come from the log alone."""
    async with serving(tmp_path) as env:
        kept = await add_subscriber(env.store, "kept", scopes=["feed"])
        fired = await add_subscriber(env.store, "fired")
        await revoke(env.store, "fired")
        await env.pdb.catch_up(env.store)
        assert (await env.client.get("/v1/feed", headers=bearer(fired))).status_code == 401
        assert (await env.client.get("/v1/report", headers=bearer(kept))).status_code == 403
    intruder = new_key()
    db = sqlite3.connect((tmp_path / "projections.db").resolve(), isolation_level=None)
    try:
        db.execute("UPDATE pub_subscribers SET revoked_at = NULL, revoked_seq = NULL WHERE name = 'fired'")
        db.execute(
            """UPDATE pub_subscribers SET scopes = '["feed","report","rollouts"]' WHERE name = 'kept'"""
        )
        db.execute(
            "INSERT INTO pub_subscribers (name, key_prefix, key_hash, scopes, added_at, added_seq)"
            """ VALUES ('intruder', ?, ?, '["feed","report","rollouts"]', '2026-01-01T00:00:00Z', 1)""",
            (key_prefix(intruder), hash_key(intruder)),
        )
    finally:
        db.close()
    async with serving(tmp_path) as env:  # a restart on the edited file
        assert (await env.client.get("/v1/feed", headers=bearer(kept))).status_code == 200
        assert (await env.client.get("/v1/report", headers=bearer(kept))).status_code == 403
        for key in (fired, intruder):
            r = await env.client.get("/v1/feed", headers=bearer(key))
            assert r.status_code == 401, r.text
            assert "items" not in r.text


def test_a_daemon_builds_an_edited_file_again(tmp_path: Path) -> None:
    """Under a live daemon, an honest release's row edited so that it no longer holds (its
    release seq moved): the public routes leave it out (``projections_tampered``), the daemon
    builds the read models again from the log (``projections_rebuilding``, then
    ``projections_rebuilt``), and the honest result is served again. Before, it stayed left
    out until an operator ran `rollwatch rebuild`."""
    db = tmp_path / "events.db"
    run = new_run_id()

    async def fill() -> str:
        async with SQLiteEventStore(db) as store:
            await start_run(store, run)
            rid = await add_rollout(store, run, passed=True)
            await finish_run(store, run, rollouts=1, passed=1)
            return rid

    honest = anyio.run(fill)
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\nprojections = "{tmp_path / "projections.db"}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n[publication]\nembargo = "0s"\nrelease_check = "200ms"\n'
    )
    url = f"http://127.0.0.1:{port}/public/feed.json"
    with (tmp_path / "serve.log").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: honest in _get(url), 60, "the honest result to be released")
        edit = sqlite3.connect(tmp_path / "projections.db", isolation_level=None)
        try:
            edit.execute(
                "UPDATE public_rollouts SET released_seq = released_seq - 1 WHERE rollout_id = ?", (honest,)
            )
        finally:
            edit.close()

        async def move_the_log() -> None:  # answers are cached until the log moves
            async with SQLiteEventStore(db) as store:
                await store.append("schedule-x", [SchedulePaused(schedule="x")])

        anyio.run(move_the_log)
        log = tmp_path / "serve.log"
        # Readers find the edit (each request checks what it serves against the log).
        wait_until(
            lambda: (_get(url), "projections_rebuilt" in log.read_text())[1],
            60,
            "the read models built again",
        )
        text = log.read_text()
        assert text.index("projections_tampered") < text.index("projections_rebuilding")
        wait_until(lambda: honest in _get(url), 30, "the honest result served again")
        again = sqlite3.connect(tmp_path / "projections.db")
        try:
            [(seq,)] = again.execute(
                "SELECT released_seq FROM public_rollouts WHERE rollout_id = ?", (honest,)
            )
        finally:
            again.close()
        assert _event_type(db, seq) == "PublicReleased"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _get(url: str) -> str:
    try:
        return httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return ""


def _event_type(db: Path, seq: int) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("SELECT type FROM events WHERE seq = ?", (seq,)).fetchone()[0])
    finally:
        con.close()
