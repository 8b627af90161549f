"""A build beside split between two processes: the same rows as a build in one, the part
built by the second process really built there, its failure made good here, and nothing
left running or lying around when the build is cancelled."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from rollwatch.abc import Projection
from rollwatch.events import Recorded
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from tests.pg import ScratchPostgresStore
from tests.test_rebuild import dump, write_log

pytestmark = pytest.mark.anyio


class Where(Projection):
    """Which process applied each ``RunStarted``: a row (seq, pid) per event.

    ``build_weight`` steers the split: the heaviest projection is built here, so one of
    weight 100 keeps every other (weights of a few units) for the second process.
    ``beside``: what it does when applied in another process than the test's: "fail"
    (raise), or "hang" (write its pid to ``pidfile`` and never return).
    """

    types = frozenset({"RunStarted"})

    def __init__(self, name: str, weight: float, beside: str = "", pidfile: str = "") -> None:
        self.name = name  # type: ignore[misc]
        self.tables = (name,)  # type: ignore[misc]
        self.ddl = f"CREATE TABLE IF NOT EXISTS {name} (seq INTEGER PRIMARY KEY, pid INTEGER)"  # type: ignore[misc]
        self.build_weight = weight  # type: ignore[misc]
        self.beside, self.pidfile, self.parent = beside, pidfile, os.getpid()

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        if os.getpid() != self.parent:
            if self.beside == "fail":
                raise RuntimeError("this projection refuses to be built beside")
            if self.beside == "hang":
                Path(self.pidfile).write_text(str(os.getpid()))
                while True:
                    time.sleep(1)
        db.execute(f"INSERT INTO {self.name} VALUES (?, ?)", (rec.seq, os.getpid()))


def pids(file: Path, table: str) -> set[int]:
    db = sqlite3.connect(file)
    try:
        return {r[0] for r in db.execute(f"SELECT pid FROM {table}")}
    finally:
        db.close()


async def build(store: Any, file: Path, extra: list[Projection], split_from: int | None) -> Path:
    async with ProjectionDB(file, [*default_projections(), *extra], setup=False, split_from=split_from) as p:
        await p.rebuild_beside(store)
        return p.file


def without(rows: dict[str, Any], *extra: str) -> dict[str, Any]:
    """``rows`` (a dump) without the tables and checkpoints of the projections ``extra``."""
    out = {t: v for t, v in rows.items() if t not in extra}
    out["projection_state"] = [r for r in out["projection_state"] if r[0] not in extra]
    out["sqlite_master"] = [r for r in out["sqlite_master"] if r[2] not in extra]
    return out


async def test_a_split_build_has_the_rows_of_one_built_in_one_process(tmp_path: Path) -> None:
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await write_log(store, "rw_test_key_0000", runs=3)
        one = dump(await build(store, tmp_path / "one.db", [], None))
        with structlog.testing.capture_logs() as logged:
            file = await build(store, tmp_path / "two.db", [Where("here", 100.0), Where("there", 0.0)], 1)
        two = dump(file)
    assert without(two, "here", "there") == one
    assert len(one["rollouts"]) == 120
    # The second process really built its part: every row of "there" came from another pid.
    assert pids(file, "here") == {os.getpid()}
    (beside,) = pids(file, "there")
    assert beside != os.getpid()
    (split,) = [e for e in logged if e["event"] == "projections_built_split"]
    assert split["here"] == ["here"]
    assert "runs" in split["beside"]
    # The second process's file is gone, and only the linked generation remains.
    assert sorted(p.name for p in file.parent.glob("*.db")) == [file.name]


async def test_a_second_process_that_fails_has_its_part_built_here(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await write_log(store, "rw_test_key_0000", runs=2)
        one = dump(await build(store, tmp_path / "one.db", [], None))
        with structlog.testing.capture_logs() as logged:
            file = await build(
                store, tmp_path / "two.db", [Where("here", 100.0), Where("refuses", 0.0, "fail")], 1
            )
        two = dump(file)
    assert without(two, "here", "refuses") == one
    assert pids(file, "refuses") == {os.getpid()}
    (failed,) = [e for e in logged if e["event"] == "projections_split_failed"]
    assert failed["log_level"] == "warning"
    assert "refuses to be built beside" in failed["error"]
    assert "runs" in failed["projections"]
    # Its own log went where ours goes (the journal, under systemd).
    assert "projections_part_failed" in capfd.readouterr().err


async def test_a_cancelled_split_build_leaves_no_process_and_no_file(tmp_path: Path) -> None:
    pidfile = tmp_path / "beside.pid"
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await write_log(store, "rw_test_key_0000", runs=1)
        async with ProjectionDB(tmp_path / "p.db", default_projections()) as pdb:
            before = pdb.file
            extra = [Where("here", 100.0), Where("hangs", 0.0, "hang", str(pidfile))]
            async with ProjectionDB(
                tmp_path / "p.db", [*default_projections(), *extra], split_from=1
            ) as again:
                with anyio.move_on_after(60) as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(again.rebuild_beside, store)
                        with anyio.fail_after(30):
                            while not pidfile.exists() or not pidfile.read_text():
                                await anyio.sleep(0.02)
                        tg.cancel_scope.cancel()
                assert not scope.cancelled_caught
            pid = int(pidfile.read_text())
            with pytest.raises(ProcessLookupError):  # killed and reaped
                os.kill(pid, 0)
            assert pdb._linked() == before  # still the file in use
            gens = {p.name for p in before.parent.glob("*.db")}
    # Only files in use (and the unfinished one, which nobody holds now) were there; a
    # next build collects what the cancelled one left.
    assert before.name in gens
    assert not list(before.parent.glob("*.part.db*"))


async def test_a_split_build_from_postgresql(tmp_path: Path) -> None:
    async with ScratchPostgresStore() as store:
        await write_log(store, "rw_test_key_0000", runs=2)  # type: ignore[arg-type]
        one = dump(await build(store, tmp_path / "one.db", [], None))
        file = await build(store, tmp_path / "two.db", [Where("here", 100.0), Where("there", 0.0)], 1)
        assert without(dump(file), "here", "there") == one
        assert pids(file, "there") - {os.getpid()}


_KILLED_PARENT = """
import sys, anyio
from pathlib import Path
from rollwatch.projections import ProjectionDB
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from tests.test_split_build import Where

async def main(d: Path) -> None:
    async with SQLiteEventStore(d / "events.db") as store:
        extra = [Where("here", 100.0), Where("hangs", 0.0, "hang", str(d / "beside.pid"))]
        async with ProjectionDB(d / "p.db", [*default_projections(), *extra], split_from=1) as p:
            await p.rebuild_beside(store)

anyio.run(main, Path(sys.argv[1]))
"""


async def test_the_second_process_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL gives a process no chance to stop what it started: the second process of
    its build is killed by the kernel all the same (no orphan building on for nothing)."""
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await write_log(store, "rw_test_key_0000", runs=1)
    pidfile = tmp_path / "beside.pid"
    root = Path(__file__).resolve().parents[1]
    async with await anyio.open_process(
        [sys.executable, "-c", _KILLED_PARENT, str(tmp_path)], cwd=root
    ) as parent:
        with anyio.fail_after(30):
            while not pidfile.exists() or not pidfile.read_text():
                assert parent.returncode is None, "the building process ended early"
                await anyio.sleep(0.02)
        child = int(pidfile.read_text())
        parent.kill()
        await parent.wait()
    with anyio.fail_after(10):
        while True:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # A zombie until init reaps it: dead all the same.
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{child}/stat").read_text().split(") ")[1].startswith("Z"):
                    break
            await anyio.sleep(0.02)


@pytest.mark.parametrize("behind", ["far", "a little"])
async def test_a_file_far_behind_is_built_beside_not_caught_up(tmp_path: Path, behind: str) -> None:
    """A file with three quarters of the log or more left to apply (a daemon down for long)
    is built beside, in two processes, which is sooner; one a little behind is caught up in
    place. Either way the rows are those of a fresh build."""
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await write_log(store, "rw_test_key_0000", runs=1)
        async with ProjectionDB(tmp_path / "p.db", default_projections(), setup=False, split_from=1) as pdb:
            await pdb.build(store)
            before = pdb.file
        await write_log(store, "rw_test_key_0001", runs=6 if behind == "far" else 1)
        with structlog.testing.capture_logs() as logged:
            async with ProjectionDB(
                tmp_path / "p.db", default_projections(), setup=False, split_from=1
            ) as pdb:
                await pdb.build(store)
                after = pdb.file
        fresh = dump(await build(store, tmp_path / "fresh.db", [], None))
    assert dump(after) == fresh
    beside = [e for e in logged if e["event"] == "projections_building_beside"]
    if behind == "far":
        assert after != before
        assert "sooner built beside" in beside[0]["reason"]
        assert any(e["event"] == "projections_built_split" for e in logged)
    else:
        assert after == before
        assert not beside


async def test_a_stuck_second_process_is_killed_and_its_half_built_here(tmp_path: Path) -> None:
    """A second process that never ends (stuck on a lock, say) is not waited for: once this
    process's half is done and the grace has passed, it is killed and its half built here.
    The read models become current all the same."""
    pidfile = tmp_path / "beside.pid"
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await write_log(store, "rw_test_key_0000", runs=1)
        one = dump(await build(store, tmp_path / "one.db", [], None))
        extra = [Where("here", 100.0), Where("hangs", 0.0, "hang", str(pidfile))]
        with structlog.testing.capture_logs() as logged:
            async with ProjectionDB(
                tmp_path / "two.db", [*default_projections(), *extra], setup=False, split_from=1
            ) as pdb:
                pdb.split_grace = 5.0  # time for the second Python to start and hang, on a loaded machine
                with anyio.fail_after(60):
                    await pdb.build(store)
                file = pdb.file
    assert without(dump(file), "here", "hangs") == one
    assert pids(file, "hangs") == {os.getpid()}
    (failed,) = [e for e in logged if e["event"] == "projections_split_failed"]
    assert "killed" in failed["error"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


class Counted(Where):
    """:class:`Where` that counts the events applied to it in this process, by name."""

    applied: dict[str, int] = {}  # noqa: RUF012 (a test's tally)

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        Counted.applied[self.name] = Counted.applied.get(self.name, 0) + 1
        super().apply(db, rec)


def of_version(p: Where, version: int) -> Where:
    p.version = version  # type: ignore[misc]
    return p


class TestOnlyWhatChanged:
    """A release that changed one projection (a new version, or a new one) builds only it
    at the next start; every other is copied from the file in use and caught up. The rows
    are those of a whole build, and a file not otherwise trusted is built whole."""

    async def _first(self, store: SQLiteEventStore, file: Path) -> None:
        async with ProjectionDB(
            file, [*default_projections(), Counted("kept", 0.0), Counted("changed", 0.0)], setup=False
        ) as pdb:
            await pdb.build(store)

    async def _again(self, store: SQLiteEventStore, file: Path, version: int = 2) -> tuple[Path, list[Any]]:
        Counted.applied.clear()
        extra = [Counted("kept", 0.0), of_version(Counted("changed", 0.0), version)]
        with structlog.testing.capture_logs() as logged:
            async with ProjectionDB(file, [*default_projections(), *extra], setup=False, split_from=1) as pdb:
                await pdb.build(store)
                return pdb.file, logged

    async def test_a_new_version_of_one_projection_builds_only_it(self, tmp_path: Path) -> None:
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await write_log(store, "rw_test_key_0000", runs=2)
            await self._first(store, tmp_path / "p.db")
            before = await store.head()
            await write_log(store, "rw_test_key_0001", runs=1)  # more, for the kept ones to catch up
            file, logged = await self._again(store, tmp_path / "p.db")
            applied = dict(Counted.applied)
            whole = dump(
                await build(
                    store, tmp_path / "whole.db", [Counted("kept", 0.0), Counted("changed", 0.0)], None
                )
            )
            runs_started = len(dump(file)["changed"])
            head = await store.head()
        (beside,) = [e for e in logged if e["event"] == "projections_building_beside"]
        assert beside["reason"] == "projection changed is of version 1, now 2"
        assert beside["building"] == ["changed"]
        assert "runs" in beside["keeping"]
        assert "kept" in beside["keeping"]
        # Only the changed one saw the whole log; the kept one only what came after.
        assert applied["changed"] == runs_started
        assert applied.get("kept", 0) == runs_started - 2 == 1
        got = dump(file)
        # The same rows as a whole build (pids aside: the kept rows were built earlier).
        assert [r[0] for r in got["kept"]] == [r[0] for r in whole["kept"]]
        assert without(got, "kept", "changed") == without(whole, "kept", "changed")
        state = {r[0]: r[2] for r in got["projection_state"]}
        assert set(state.values()) == {head}
        assert before < head

    async def test_a_file_of_another_log_is_built_whole(self, tmp_path: Path) -> None:
        """The file in use made from another log (a copy from elsewhere) with a projection
        changed: nothing of it is kept."""
        async with SQLiteEventStore(tmp_path / "other.db") as other:
            await write_log(other, "rw_test_key_0009", runs=1)
            await self._first(other, tmp_path / "p.db")
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await write_log(store, "rw_test_key_0000", runs=1)
            file, logged = await self._again(store, tmp_path / "p.db")
            whole = dump(
                await build(
                    store, tmp_path / "whole.db", [Counted("kept", 0.0), Counted("changed", 0.0)], None
                )
            )
        (beside,) = [e for e in logged if e["event"] == "projections_building_beside"]
        assert beside["reason"] == "made from another log"
        assert "keeping" not in beside
        assert without(dump(file), "kept", "changed") == without(whole, "kept", "changed")

    async def test_a_rewritten_anchor_is_built_whole(self, tmp_path: Path) -> None:
        """The file's last applied event is not the log's any more (the log rewritten under
        it, or the file edited): a changed projection does not let the rest be kept."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await write_log(store, "rw_test_key_0000", runs=1)
            await self._first(store, tmp_path / "p.db")
            db = sqlite3.connect(tmp_path / "p.db")
            # Its first hex digit changed (to "f" unless it is one already: then the edit was none).
            db.execute(
                "UPDATE projection_log SET anchor_hash ="
                " (CASE WHEN substr(anchor_hash, 1, 1) = 'f' THEN 'e' ELSE 'f' END) || substr(anchor_hash, 2)"
            )
            db.commit()
            db.close()
            _file, logged = await self._again(store, tmp_path / "p.db")
        (beside,) = [e for e in logged if e["event"] == "projections_building_beside"]
        assert "is not the log's" in beside["reason"]
        assert "keeping" not in beside
        assert Counted.applied["kept"] == Counted.applied["changed"] > 0

    @pytest.mark.parametrize(
        "edit", ["DROP TABLE feed_items", "ALTER TABLE runs ADD COLUMN extra TEXT", "DROP INDEX rollouts_run"]
    )
    async def test_a_kept_table_not_as_made_is_built_whole(self, tmp_path: Path, edit: str) -> None:
        """A kept projection's table dropped or reshaped in the file in use (by hand, or by
        another program): no copy of it, a whole build instead, with a warning."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await write_log(store, "rw_test_key_0000", runs=1)
            await self._first(store, tmp_path / "p.db")
            db = sqlite3.connect(tmp_path / "p.db")
            db.execute(edit)
            db.commit()
            db.close()
            file, logged = await self._again(store, tmp_path / "p.db")
            whole = dump(
                await build(
                    store, tmp_path / "whole.db", [Counted("kept", 0.0), Counted("changed", 0.0)], None
                )
            )
        (warned,) = [e for e in logged if e["event"] == "projections_not_kept"]
        assert warned["log_level"] == "warning"
        assert Counted.applied["kept"] == Counted.applied["changed"] > 0
        assert without(dump(file), "kept", "changed") == without(whole, "kept", "changed")

    async def test_rebuild_builds_everything(self, tmp_path: Path) -> None:
        """``rebuild`` (the operator's answer to a file they do not trust) never keeps anything."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await write_log(store, "rw_test_key_0000", runs=1)
            await self._first(store, tmp_path / "p.db")
            Counted.applied.clear()
            async with ProjectionDB(
                tmp_path / "p.db",
                [*default_projections(), Counted("kept", 0.0), of_version(Counted("changed", 0.0), 2)],
                setup=False,
            ) as pdb:
                await pdb.rebuild_beside(store)
        assert Counted.applied["kept"] == Counted.applied["changed"] > 0
