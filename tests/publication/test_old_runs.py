"""Runs from before ``RunStarted.embargo_s`` keep the embargo they were decided with.

A run started by an older rollwatch records no embargo of its own; its verdicts' decisions
carry the one in force (``PublicationDecided.embargo_s``, "none" decisions included). A
re-score under a configuration changed since to a shorter embargo must not release the
run's flips sooner than the run's own passes. Real ``rollwatch rescore`` on a SQLite log.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from rollwatch.events import RunStarted, parse_rfc3339
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.publication.helpers import add_rollout, finish_run, new_run_id, start_run

DAYS_90 = 90 * 86400.0


def problems(tmp_path: Path) -> Path:
    """One problem, ``p1``, that the helper's answer (``solve() -> 42``) passes."""
    d = tmp_path / "problems" / "p1"
    d.mkdir(parents=True)
    (d / "problem.toml").write_text(
        'title = "p1"\nreleased = 2026-01-01\nprompt = "def solve() -> int: ..."\n'
        '[scorer]\nkind = "python-function"\nentry_point = "solve"\ntests = "tests.py"\n'
        '[reference]\nsolution = "solution.py"\n'
    )
    (d / "tests.py").write_text("def check(candidate):\n    assert candidate() == 42\n")
    (d / "solution.py").write_text("def solve():\n    return 42\n")
    return tmp_path / "problems"


def seed_old_run(db: Path) -> tuple[str, str]:
    """An old run (``RunStarted`` without ``embargo_s``) scored under 90 days: one pass
    (public in 90 days) and one failure judged by an older problem version ("none", 90
    days). Returns (run id, the failure's rollout id)."""

    async def go() -> tuple[str, str]:
        async with SQLiteEventStore(db) as store:
            run_id = new_run_id()
            await start_run(store, run_id, provider="reference", models=("reference",))
            await add_rollout(store, run_id, passed=True, embargo_s=DAYS_90, problem_hash="old")
            failed = await add_rollout(store, run_id, passed=False, sample=1, problem_hash="old")
            await finish_run(store, run_id, rollouts=2, passed=1)
            return run_id, failed

    return anyio.run(go)


def test_an_old_runs_flip_waits_for_the_embargo_its_verdicts_were_decided_with(tmp_path: Path) -> None:
    """An old run decided under 90 days, re-scored by a configuration that now says no
    embargo: the flip's public decision carries 90 days. Before, it was public at once
    (the fallback for a run without ``embargo_s`` was the configured embargo alone), so
    the release job published it while the run's other pass waited its 90 days."""
    db = tmp_path / "events.db"
    run_id, failed = seed_old_run(db)
    # The failure's "none" decision as the version before RunStarted.embargo_s wrote it:
    # the embargo in force (the helper leaves it out).
    con = sqlite3.connect(db)
    ((started,),) = con.execute("SELECT data FROM events WHERE type = 'RunStarted'").fetchall()
    con.close()
    assert "embargo_s" not in json.loads(started) or json.loads(started)["embargo_s"] is None
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\n'
        f'[[problem_sets]]\nname = "favorites"\npath = "{problems(tmp_path)}"\n'
        '[[providers]]\nname = "reference"\nkind = "reference"\n'
        '[publication]\nembargo = "0s"\n'
    )
    before = datetime.now(UTC)
    res = rollwatch("--config", str(cfg), "rescore", "--run", run_id, timeout=120)
    assert res.returncode == 0, res.stderr
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT data FROM events WHERE type = 'PublicationDecided' AND stream = ? ORDER BY seq",
        (f"rollout-{failed}",),
    ).fetchall()
    con.close()
    public = [d for (raw,) in rows if (d := json.loads(raw))["audience"] == "public"]
    assert len(public) == 1, rows
    assert public[0]["embargo_s"] == DAYS_90, public
    assert parse_rfc3339(public[0]["not_before"]) >= before + timedelta(days=90)


def test_an_old_run_resumed_decides_with_the_embargo_its_verdicts_were_decided_with(tmp_path: Path) -> None:
    """An old run (no ``embargo_s``) cut short after one pass decided under 90 days, resumed
    by ``rollwatch run`` under a configuration that now says no embargo: the rest of its
    passes wait 90 days too. Before, they were decided public at once."""
    db = tmp_path / "events.db"

    async def seed() -> str:
        async with SQLiteEventStore(db) as store:
            run_id = new_run_id()
            await store.append(
                f"run-{run_id}",
                [
                    RunStarted(
                        run_id=run_id,
                        schedule="ref",
                        provider="reference",
                        models=["reference"],
                        problem_set="favorites",
                        node="old-node",
                        rollouts=3,
                        problems=["p1"],
                    )
                ],
                expected_version=0,
            )
            await add_rollout(
                store, run_id, passed=True, embargo_s=DAYS_90, provider="reference", model="reference"
            )
            return run_id

    run_id = anyio.run(seed)
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\n'
        f'[[problem_sets]]\nname = "favorites"\npath = "{problems(tmp_path)}"\n'
        '[[providers]]\nname = "reference"\nkind = "reference"\n'
        '[publication]\nembargo = "0s"\n'
        '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
        'problem_set = "favorites"\nrollouts = 3\ncron = "0 3 1 1 *"\n'
    )
    before = datetime.now(UTC)
    res = rollwatch("--config", str(cfg), "run", "ref", timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"resuming run {run_id}" in res.stderr
    con = sqlite3.connect(db)
    rows = con.execute("SELECT data FROM events WHERE type = 'PublicationDecided' ORDER BY seq").fetchall()
    con.close()
    public = [d for (raw,) in rows if (d := json.loads(raw))["audience"] == "public"]
    assert len(public) == 4, public  # the seeded one (not of the run's own ids) and the run's three
    early = [d for d in public[1:] if parse_rfc3339(d["not_before"]) < before + timedelta(days=90)]
    assert not early, early


@pytest.mark.anyio
async def test_an_old_runs_embargo_counts_decisions_another_node_appended_since(tmp_path: Path) -> None:
    """The embargo of an old run is read from the read models, which a long-running node
    caught up before another node (sharing the log) decided the run's verdicts under 90
    days: they are caught up first, so the run keeps its 90 days. Without it, the run's
    embargo was this node's configured one (none), and its next passes public at once."""
    from rollwatch.config import load_config
    from rollwatch.projections import ProjectionDB
    from rollwatch.readmodels import default_projections
    from rollwatch.runs import RunServices
    from rollwatch.runs.pipeline import run_embargo

    db = tmp_path / "events.db"
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\nprojections = "{tmp_path / "projections.db"}"\n'
        '[publication]\nembargo = "0s"\n'
    )
    config = load_config(cfg)
    async with (
        SQLiteEventStore(db) as store,
        ProjectionDB(config.store.projections_path, default_projections()) as pdb,
    ):
        await pdb.catch_up(store)  # this node is current: the log is empty
        run_id = new_run_id()  # another node's old run and its verdict, decided under 90 days
        await start_run(store, run_id, provider="reference", models=("reference",))
        await add_rollout(store, run_id, passed=True, embargo_s=DAYS_90)
        services = RunServices(
            config=config,
            store=store,
            projections=pdb,
            providers={},
            problem_sets={},
            scorer=None,  # type: ignore[arg-type]  # not used to read an embargo
            node="here",
            locks_dir=tmp_path / "locks",
        )
        assert (await run_embargo(services, run_id)).embargo == DAYS_90
