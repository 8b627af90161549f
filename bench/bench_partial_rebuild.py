"""A release that changes one projection: what building only it costs, against a whole build.

Builds a log with the event shapes of a real run (``bench_scale.grow``, default 200k events;
``BENCH_PARTIAL_EVENTS`` for another size), builds every projection into a fresh file (the
baseline, measured in the same run), then for each of a few projections opens that file with
the projection at a new version and times ``ProjectionDB.build``: it builds that projection
beside and copies the others from the file in use. Prints each as a ratio of the whole build.

    python bench/bench_partial_rebuild.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bench_scale
from rollwatch.log import configure_logging
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore

CHANGED = ("runs", "feed", "report_aggregates")


async def build_once(store: SQLiteEventStore, file: Path, bump: str | None) -> float:
    projections = default_projections()
    for p in projections:
        if p.name == bump:
            p.version = p.version + 1  # type: ignore[misc]  # this instance only: "a new release"
    async with ProjectionDB(file, projections, setup=False) as pdb:
        t = time.perf_counter()
        await pdb.build(store)
        return time.perf_counter() - t


async def main() -> None:
    events = int(os.environ.get("BENCH_PARTIAL_EVENTS", "200000"))
    configure_logging("warning", stream=sys.stderr)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        d = Path(tmp)
        head = await bench_scale.grow(d / "events.db", 0, events // bench_scale.EVENTS_PER_ROLLOUT, None)
        async with SQLiteEventStore(d / "events.db", read_only=True) as store:
            for bump in CHANGED:
                shutil.rmtree(d / "p", ignore_errors=True)
                (d / "p").mkdir()
                whole = await build_once(store, d / "p" / "projections.db", None)
                part = await build_once(store, d / "p" / "projections.db", bump)
                print(
                    f"{head:,} events: whole build {whole:.2f} s; {bump} of a new version {part:.2f} s"
                    f" = {part / whole:.2f}x the whole build (the rest copied and caught up)",
                    flush=True,
                )


if __name__ == "__main__":
    anyio.run(main)
