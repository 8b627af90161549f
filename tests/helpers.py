"""Helpers for tests that run the real ``rollwatch`` command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any


def write_config(tmp_path: Path, extra: str = "", *, problems: str | None = None) -> Path:
    """A minimal valid config with its log under ``tmp_path``."""
    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n'
        f'[[problem_sets]]\nname = "favorites"\npath = "{problems or root / "config" / "problems"}"\n'
        '[[providers]]\nname = "reference"\nkind = "reference"\n' + extra
    )
    return cfg


def rollwatch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m rollwatch ARGS`` and capture its output (in a process forked from
    one that has loaded the command's modules where it can: see :mod:`tests.forkserver`)."""
    from tests import forkserver

    full_env = {**os.environ, **(env or {})}
    done = forkserver.run(list(args), full_env, timeout, input)
    if done is not None:
        return done
    return subprocess.run(
        [sys.executable, "-m", "rollwatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        input=input,
    )


def make_log(path: Path) -> Path:
    """Create an empty SQLite event log at ``path`` (commands that only read a log refuse a missing one)."""
    import anyio

    from rollwatch.store.sqlite import SQLiteEventStore

    async def create() -> None:
        async with SQLiteEventStore(path):
            pass

    anyio.run(create)
    return path


class WithoutAggregates:
    """A projections database as one without the maintained aggregates shows it (report and
    public page): their readers then group every rollout, the reference the aggregates must equal."""

    def __init__(self, pdb: Any) -> None:
        self.pdb = pdb

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The query's rows, except that neither ``agg_cells`` nor ``pa_cells`` exists."""
        if "sqlite_master" in sql and ("pa_cells" in sql or "agg_cells" in params):
            return []
        rows: list[tuple[Any, ...]] = await self.pdb.fetchall(sql, params)
        return rows

    def __getattr__(self, name: str) -> Any:
        """Anything else as the database has it (``applied``, ``fetchone``, ``distrusted``)."""
        return getattr(self.pdb, name)


@contextlib.asynccontextmanager
async def replayed(events: Sequence[tuple[str, Any]], split: int) -> AsyncIterator[tuple[Any, Any]]:
    """A fresh SQLite log holding runs ``run-0`` and ``run-1`` (provider ``openai``, models
    ``m0`` and ``m1``), then ``events`` ((stream, event) pairs) appended one by one; the
    projections are caught up after event ``split`` (the aggregates must hold across
    batches) and at the end. Yields (store, projections)."""
    from rollwatch.events import RunStarted, run_stream
    from rollwatch.projections import ProjectionDB
    from rollwatch.readmodels import default_projections
    from rollwatch.store.sqlite import SQLiteEventStore

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        async with (
            SQLiteEventStore(d / "events.db") as store,
            ProjectionDB(d / "projections.db", default_projections()) as pdb,
        ):
            for run in ("run-0", "run-1"):
                started = RunStarted(
                    run_id=run,
                    schedule="s",
                    provider="openai",
                    models=["m0", "m1"],
                    problem_set="s",
                    node="n",
                    rollouts=1,
                )
                await store.append(run_stream(run), [started])
            for i, (stream, ev) in enumerate(events):
                await store.append(stream, [ev])
                if i == split:
                    await pdb.catch_up(store)
            await pdb.catch_up(store)
            yield store, pdb
