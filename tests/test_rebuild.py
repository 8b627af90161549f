"""Rebuilding the projections: the same rows as an incremental catch-up, built beside the
file in use (a live daemon keeps answering, a killed rebuild leaves it untouched), and a
file that does not match the log is rebuilt, never trusted."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from rollwatch.events import (
    Event,
    ProblemVersioned,
    PublicationDecided,
    PublicReleased,
    Recorded,
    RolloutFailed,
    RolloutRequested,
    RolloutRescored,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunStarted,
    ScheduleMissed,
    SchedulePaused,
    ScheduleResumed,
    ScheduleSkipped,
    ScheduleTriggered,
    SubscriberAdded,
    SubscriberRevoked,
    problem_stream,
    rollout_stream,
    run_stream,
    schedule_stream,
    subscriber_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.publication.keys import hash_key, key_prefix, new_key
from rollwatch.publication.projections import feed_page
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from tests.test_serve_at_once import free_port, poll

PAST = "2026-01-01T00:00:00.000000Z"


def rollout(run_id: str, n: int, model: str = "m1") -> list[list[Event]]:
    """The appends of one rollout, varied by ``n``: retries, a final failure, no cost, passes
    and fails, public and subscriber decisions, releases (one twice)."""
    rid = f"{run_id}-r{n:04d}"

    def requested(attempt: int) -> RolloutRequested:
        return RolloutRequested(
            rollout_id=rid,
            run_id=run_id,
            provider="p",
            model=model,
            problem_id=f"p{n % 5}",
            problem_hash=f"h{n % 5}",
            sample=n // 5,
            attempt=attempt,
            request={"messages": [{"role": "user", "content": "solve it"}]},
            node="n",
        )

    calls: list[list[Event]] = [[requested(1)]]
    if n % 4 == 1:
        calls.append(
            [
                RolloutFailed(
                    rollout_id=rid, attempt=1, kind="rate_limited", status=429, retryable=True, message="429"
                )
            ]
        )
        calls.append([requested(2)])
    if n % 11 == 7:
        calls.append(
            [
                RolloutFailed(
                    rollout_id=rid,
                    attempt=1,
                    kind="server",
                    status=500,
                    retryable=False,
                    message="down",
                    final=True,
                )
            ]
        )
        return calls
    cost = None if n % 9 == 4 else 0.01 * (1 + n % 3)
    calls.append(
        [
            RolloutResponded(
                rollout_id=rid, attempt=1, text="def f(): pass", cost_usd=cost, model=f"{model}-v1"
            )
        ]
    )
    passed = n % 3 == 0
    audience = "public" if passed else "subscribers"
    calls.append(
        [
            RolloutScored(
                rollout_id=rid, passed=passed, score=float(passed), scorer="python-function", reason="r"
            ),
            PublicationDecided(rollout_id=rid, audience=audience, not_before=PAST, embargo_s=60.0),
        ]
    )
    if passed:
        calls.append([PublicReleased(rollout_id=rid)])
        if n % 2 == 0:
            calls.append(
                [
                    PublicReleased(rollout_id=rid),
                    PublicationDecided(
                        rollout_id=rid, audience="public", not_before="2027-01-01T00:00:00.000000Z"
                    ),
                ]
            )
    if n % 6 == 3:  # re-scored under a new version: superseded (fails) or lifted again (passes)
        calls.append(
            [
                RolloutRescored(
                    rollout_id=rid,
                    problem_id=f"p{n % 5}",
                    passed=n % 12 == 3,
                    score=1.0,
                    scorer="python-function",
                    problem_hash=f"h{n % 5}-2",
                    scorer_version="2",
                    rescore_id="rs1",
                    previous_passed=passed,
                )
            ]
        )
    return calls


async def write_log(store: SQLiteEventStore, key: str, runs: int = 3, per_run: int = 40) -> int:
    """A log with every event type a projection reads, appended a call at a time."""
    await store.append(
        subscriber_stream("reader"),
        [
            SubscriberAdded(
                name="reader", key_hash=hash_key(key), key_prefix=key_prefix(key), scopes=["feed", "report"]
            )
        ],
    )
    await store.append(
        subscriber_stream("gone"),
        [
            SubscriberAdded(name="gone", key_hash="x" * 64, key_prefix="rw_gone"),
            SubscriberRevoked(name="gone", note="left"),
        ],
    )
    sched = schedule_stream("nightly")
    await store.append(
        sched, [SchedulePaused(schedule="nightly", note="hold"), ScheduleResumed(schedule="nightly")]
    )
    await store.append(
        sched,
        [ScheduleTriggered(schedule="nightly"), ScheduleMissed(schedule="nightly", missed=2, since=PAST)],
    )
    await store.append(
        sched, [ScheduleSkipped(schedule="nightly", reason="busy", fire_time=PAST, trigger_seq=5)]
    )
    # A score for a rollout never requested (its context unknown).
    await store.append(
        rollout_stream("stray"), [RolloutScored(rollout_id="stray", passed=True, score=1.0, scorer="s")]
    )
    for r in range(runs):
        run_id = f"run{r}"
        await store.append(
            run_stream(run_id),
            [
                RunStarted(
                    run_id=run_id,
                    schedule="nightly",
                    provider="p",
                    models=["m1", "m2"],
                    problem_set="ps",
                    node="n",
                    rollouts=per_run,
                    problems=[f"p{i}" for i in range(5)],
                    trigger="schedule",
                    budget_usd=5.0,
                )
            ],
        )
        for n in range(per_run):
            for call in rollout(run_id, n, model=("m1", "m2")[n % 2]):
                await store.append(rollout_stream(call[0].rollout_id), call)  # type: ignore[attr-defined]
        await store.append(
            problem_stream("ps", f"p{r % 5}"),
            [ProblemVersioned(problem_set="ps", problem_id=f"p{r % 5}", problem_hash=f"h{r % 5}-2")],
        )
        await store.append(
            run_stream(run_id),
            [
                RunFinished(
                    run_id=run_id, status="completed", rollouts=per_run, passed=per_run // 3, cost_usd=0.5
                )
            ],
        )
    return await store.head()


def dump(file: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the file's own bookkeeping, sorted; and, under
    ``sqlite_master``, the file's schema (every table and index, as made)."""
    db = sqlite3.connect(file)
    try:
        names = [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        rows = {t: sorted(db.execute(f"SELECT * FROM {t}"), key=repr) for t in names if t != "projection_log"}
        rows["sqlite_master"] = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        return rows
    finally:
        db.close()


pytestmark = pytest.mark.anyio


class TestRebuild:
    async def test_a_rebuild_has_the_rows_of_a_catch_up_event_by_event(self, tmp_path: Path) -> None:
        """A projection caught up after every append (batches of one or two events) and one
        rebuilt in one pass (thousands per batch) hold the same rows in every table, and
        render the same feed."""
        key = new_key()
        async with (
            SQLiteEventStore(tmp_path / "events.db") as store,
            ProjectionDB(tmp_path / "inc.db", default_projections()) as inc,
        ):
            real_append = store.append

            async def append_and_apply(stream: str, events: list[Event], **kw: Any) -> Any:
                out = await real_append(stream, events, **kw)
                await inc.catch_up(store)
                return out

            store.append = append_and_apply  # type: ignore[method-assign]
            head = await write_log(store, key)
            store.append = real_append  # type: ignore[method-assign]
            async with ProjectionDB(tmp_path / "full.db", default_projections(), setup=False) as full:
                assert await full.rebuild_beside(store) == head
                assert full.file != full.path
                assert full.path.is_symlink()
                got, want = dump(full.file), dump(inc.file)
                assert set(got) == set(want)
                for table in want:
                    assert got[table] == want[table], table
                assert len(want["rollouts"]) == 120
                assert len(want["verdicts"]) > 120
                assert {r[2] for r in want["projection_state"]} == {head}
                pages = [await feed_page(store, p, after=0, until=head, limit=10_000) for p in (inc, full)]
                assert pages[0] == pages[1]
                assert len(pages[0][0]) > 300

    async def test_read_models_read_nothing_a_lean_read_leaves_out(self, tmp_path: Path) -> None:
        """A catch-up reads events without their id, stream and version (``lean``); built
        from rows that have them, every table is the same (no read model reads them)."""

        class EveryColumn(SQLiteEventStore):
            def read_batches(self, **kw: Any) -> Any:
                return super().read_batches(**{**kw, "lean": False})

        async with SQLiteEventStore(tmp_path / "events.db") as store:
            head = await write_log(store, new_key())
            (first,) = [p async for p in store.read_batches(until=1, lean=True)]
            # Plain rows in Recorded's field order (no Recorded is made for each: the catch-up
            # copies each row into the tuple it hands the read models).
            assert type(first[0]) is tuple
            assert len(first[0]) == len(Recorded._fields)
            assert first[0][:4] == (1, None, None, None)
            async with ProjectionDB(tmp_path / "lean.db", default_projections(), setup=False) as lean:
                assert await lean.rebuild_beside(store) == head
                lean_rows = dump(lean.file)
        async with (
            EveryColumn(tmp_path / "events.db") as store,
            ProjectionDB(tmp_path / "full.db", default_projections(), setup=False) as full,
        ):
            assert await full.rebuild_beside(store) == head
            assert dump(full.file) == lean_rows
        assert len(lean_rows["rollouts"]) == 120

    @pytest.mark.parametrize("edit", ["garbage", "checkpoint beyond the log", "anchor of another log"])
    async def test_a_file_that_does_not_match_the_log_is_rebuilt(self, tmp_path: Path, edit: str) -> None:
        """A file that is not a database, claims events the log does not have, or applied an
        event whose hash is not the log's is rebuilt from the log, never caught up."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            head = await write_log(store, new_key(), runs=1)
            async with ProjectionDB(tmp_path / "p.db", default_projections(), setup=False) as pdb:
                await pdb.build(store)
                want = dump(pdb.file)
                edited = pdb.file
            if edit == "garbage":
                edited.write_bytes(b"this is not a database\n" * 200)
            else:
                db = sqlite3.connect(edited, isolation_level=None)
                if edit == "checkpoint beyond the log":
                    db.execute("UPDATE projection_state SET seq = seq + 1000")
                    db.execute("DELETE FROM rollouts")  # what a catch-up would then never put back
                else:
                    db.execute("UPDATE projection_log SET anchor_hash = 'sha256:feed'")
                    db.execute("UPDATE rollouts SET passed = 1 - passed")
                db.close()
            async with ProjectionDB(tmp_path / "p.db", default_projections(), setup=False) as pdb:
                assert await pdb.build(store) == head
                assert pdb.file != edited
                assert dump(pdb.file) == want
            assert not edited.exists()  # nobody holds it any more: deleted


# --- a live daemon -------------------------------------------------------------------------


def _cli(cfg: Path, *args: str, level: str = "warning") -> list[str]:
    return [sys.executable, "-m", "rollwatch", "--config", str(cfg), "--log-level", level, *args]


def test_rebuild_under_a_live_daemon_and_a_rebuild_killed_midway(tmp_path: Path) -> None:
    """``rollwatch rebuild`` while a daemon serves: the daemon answers every request with
    the same data throughout (the tables are never dropped under it), then follows the
    switch; a rebuild killed with SIGKILL midway leaves the file in use untouched and the
    next rebuild finishes (and deletes the unfinished file)."""
    key = new_key()
    db = tmp_path / "events.db"

    async def build() -> int:
        async with SQLiteEventStore(db) as store:
            return await write_log(store, key, runs=6, per_run=400)

    head = anyio.run(build)
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    link = tmp_path / "projections.db"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\nprojections = "{link}"\n[server]\nlisten = "127.0.0.1:{port}"\nfeed_rate_per_minute = 100000\n'
    )
    auth = {"authorization": f"Bearer {key}"}
    err = (tmp_path / "serve.err").open("w")
    daemon = subprocess.Popen(
        [*_cli(cfg, "serve", "--grace", "2", level="info")], stdout=subprocess.DEVNULL, stderr=err
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            poll(lambda: c.get("/healthz").json()["projections"]["state"] == "current", 120, "current")
            first_file = link.resolve()
            report = c.get("/v1/report?by=model", headers=auth).json()
            feed = c.get("/v1/feed?limit=500", headers=auth).json()
            assert len(feed["items"]) == 500

            def same_answers_while(proc: subprocess.Popen[bytes]) -> int:
                asked = 0
                while proc.poll() is None or asked == 0:
                    r = c.get("/v1/report?by=model", headers=auth)
                    f = c.get("/v1/feed?limit=500", headers=auth)
                    assert r.status_code == 200, r.text
                    assert f.status_code == 200, f.text
                    assert r.json() == report
                    assert f.json() == feed
                    asked += 1
                return asked

            # A rebuild killed midway: the daemon goes on, the link still names its file.
            gens = tmp_path / "projections.gen"
            killed = subprocess.Popen(
                _cli(cfg, "rebuild"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            poll(lambda: len(list(gens.glob("*.db"))) == 2, 60, "the rebuild to start its file")
            killed.send_signal(signal.SIGKILL)
            killed.wait()
            assert link.resolve() == first_file
            assert len(list(gens.glob("*.db"))) == 2  # the unfinished file, left for the next build
            same_answers_while(killed)

            # A rebuild that finishes, the daemon answering throughout.
            rebuild = subprocess.Popen(
                _cli(cfg, "rebuild"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            assert same_answers_while(rebuild) >= 1
            _, errout = rebuild.communicate()
            assert rebuild.returncode == 0, errout
            new_file = link.resolve()
            assert new_file != first_file
            assert first_file.exists()  # the daemon still holds it

            # The daemon follows the switch at its next catch-up: a new event shows up,
            # and the file it left is deleted once it let go of it.
            async def one_more() -> int:
                async with SQLiteEventStore(db) as store:
                    await store.append(
                        run_stream("late"),
                        [
                            RunStarted(
                                run_id="late",
                                schedule="s",
                                provider="p",
                                models=["m1"],
                                problem_set="ps",
                                node="n",
                                rollouts=1,
                            )
                        ],
                    )
                    return await store.head()

            late = anyio.run(one_more)
            poll(
                lambda: any(
                    i["seq"] == late for i in c.get(f"/v1/feed?after={head}", headers=auth).json()["items"]
                ),
                60,
                "the new event in the feed",
            )
            poll(lambda: not first_file.exists(), 60, "the old file to be deleted")
            assert sorted(gens.glob("*.db")) == [new_file]
            assert c.get("/v1/report?by=model", headers=auth).json() == report
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        err.close()
    lines = (tmp_path / "serve.err").read_text()
    assert "projections_following_rebuild" in lines


def _small_log(tmp_path: Path) -> tuple[Path, Path]:
    """A log of one run in ``tmp_path`` and a config naming it; (the config, the projections' link)."""
    db = tmp_path / "events.db"
    link = tmp_path / "projections.db"
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{db}"\nprojections = "{link}"\n')

    async def build() -> None:
        async with SQLiteEventStore(db) as store:
            await write_log(store, new_key(), runs=1)

    anyio.run(build)
    return cfg, link


@pytest.mark.parametrize(
    "command", [("report", "--by", "model", "--format", "json"), ("subscribers", "list", "--json")]
)
def test_a_command_does_not_trust_an_edited_file_either(tmp_path: Path, command: tuple[str, ...]) -> None:
    """``rollwatch report`` (and every command that reads the read models) checks the file
    against the log as the daemon does: one whose rows were edited along with the hash it
    recorded of its last event (so that a catch-up in place would carry the edit on) is
    rebuilt beside it, and the command answers from the log's truth."""
    cfg, link = _small_log(tmp_path)
    truth = subprocess.run(_cli(cfg, *command), capture_output=True, text=True, check=True).stdout
    edited = link.resolve()
    conn = sqlite3.connect(edited, isolation_level=None)
    conn.execute("UPDATE agg_models SET passed = total, scored = total")
    conn.execute("UPDATE pub_subscribers SET revoked_at = '2026-01-01T00:00:00Z', scopes = '[\"ops\"]'")
    conn.execute("UPDATE projection_log SET anchor_hash = 'sha256:' || hex(randomblob(32))")
    conn.close()
    got = subprocess.run(_cli(cfg, *command), capture_output=True, text=True, check=True).stdout
    assert got == truth
    assert link.resolve() != edited


def test_a_named_pipe_among_the_generations_does_not_hold_a_rebuild(tmp_path: Path) -> None:
    """A named pipe called ``*.db`` put in the projections' generations folder: the rebuild's
    clean-up opened each such file to learn whether a process still holds it, and that open
    waited for a writer for good (the command never ended; a daemon's catch-up the same).
    Only regular files are generations: the pipe is left alone and the rebuild ends."""
    cfg, link = _small_log(tmp_path)
    subprocess.run(_cli(cfg, "rebuild"), capture_output=True, check=True, timeout=60)
    pipe = link.resolve().parent / "planted.db"
    os.mkfifo(pipe)
    done = subprocess.run(_cli(cfg, "rebuild"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rebuilt" in done.stdout
    assert pipe.exists()
