"""State belongs to one log: another log's tree and witness are set aside (never a false alarm),
while this log's own state disagreeing with it is still tampering."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import structlog

from rollwatch.config import IntegrityConfig, StoreConfig, postgres_state_folder
from rollwatch.integrity.service import open_integrity
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import append_n

ORIGIN = "rollwatch.test/identity"


async def signed_state(d: Path, n: int, tag: str) -> None:
    """A log of ``n`` events in ``d/events.db`` with its tree, key and witness file, as a daemon leaves them."""
    store_cfg = StoreConfig(url=f"sqlite:{d / 'events.db'}")
    async with SQLiteEventStore(d / "events.db") as store:
        await append_n(store, n, tag=tag)
        async with open_integrity(IntegrityConfig(origin=ORIGIN), store_cfg, store) as integ:
            await integ.tree.catch_up(store)
            assert await integ.final_checkpoint() is not None


class TestAnotherLogsState:
    @pytest.mark.anyio
    async def test_the_daemon_sets_another_logs_tree_aside_and_signs_its_own(self, tmp_path: Path) -> None:
        """Log B started next to log A's tree and witness: one WARNING, A's files renamed (kept), B's tree built and signed."""
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir()
        b.mkdir()
        await signed_state(a, 30, "a")
        async with SQLiteEventStore(b / "events.db") as store:
            await append_n(store, 12, tag="b")
        for name in ("merkle.db", "checkpoint.last"):
            shutil.copy(a / name, b / name)
        store_cfg = StoreConfig(url=f"sqlite:{b / 'events.db'}")
        with structlog.testing.capture_logs() as logged:
            async with (
                SQLiteEventStore(b / "events.db") as store,
                open_integrity(IntegrityConfig(origin=ORIGIN), store_cfg, store) as integ,
            ):
                stop = anyio.Event()
                async with anyio.create_task_group() as tg:
                    await tg.start(integ.run, stop)
                    stop.set()
                assert integ.health.ok
                assert await integ.tree.current_size() >= 12
                assert (
                    await integ.tree.first_hash() == (await store.read_batches(until=1).__anext__())[0].hash
                )
        warnings = [r for r in logged if r["event"] == "state_of_another_log_set_aside"]
        assert len(warnings) == 1
        assert not [r for r in logged if r["log_level"] == "error"]
        aside = sorted(p.name for p in b.iterdir() if ".of-log-" in p.name)
        assert any(n.startswith("merkle.db.of-log-") for n in aside)
        assert any(n.startswith("checkpoint.last.of-log-") for n in aside)

    def test_a_postgresql_log_run_from_a_folder_holding_another_logs_var_passes(self, tmp_path: Path) -> None:
        """The false alarm of the issue: migrate + verify of a PostgreSQL log, run from a folder whose var/
        holds another log's tree, witness and key (at the old shared place and at this database's own), pass."""
        from tests.pg import scratch_database

        work = tmp_path / "work"
        (work / "var").mkdir(parents=True)
        anyio.run(signed_state, work / "var", 25, "other")
        source = tmp_path / "source"
        source.mkdir()

        async def fill() -> None:
            async with SQLiteEventStore(source / "events.db") as store:
                await append_n(store, 40, tag="src")

        anyio.run(fill)
        src_cfg = tmp_path / "src.toml"
        src_cfg.write_text(f'[store]\nurl = "sqlite:{source / "events.db"}"\n')

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "rollwatch", *args],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=120,
            )

        async def main() -> None:
            async with scratch_database() as url:
                # Another log's state also sits in this database's own folder: left out, said so.
                own = work / "var" / postgres_state_folder(url)
                own.mkdir(parents=True)
                for name in ("merkle.db", "checkpoint.last"):
                    shutil.copy(work / "var" / name, own / name)
                res = await anyio.to_thread.run_sync(
                    lambda: cli("--config", str(src_cfg), "migrate", "--to", url)
                )
                assert res.returncode == 0, res.stderr
                pg_cfg = tmp_path / "pg.toml"
                pg_cfg.write_text(f'[store]\nurl = "{url}"\n')
                ver = await anyio.to_thread.run_sync(lambda: cli("--config", str(pg_cfg), "verify"))
                assert ver.returncode == 0, ver.stderr
                assert "40 events" in ver.stdout
                ignored = [
                    json.loads(line)
                    for line in ver.stderr.splitlines()
                    if "state_of_another_log_ignored" in line
                ]
                assert len(ignored) == 1

        anyio.run(main)

    def test_postgresql_state_is_never_the_bare_var_folder(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without $STATE_DIRECTORY, a PostgreSQL log's state goes to var/pg-HOST-PORT-DB; with it, there."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        cfg = StoreConfig(url="postgresql://u@db.example:5433/rollwatch")
        assert cfg.projections_path == Path("var/pg-db.example-5433-rollwatch/projections.db")
        assert IntegrityConfig().tree_path(cfg) == Path("var/pg-db.example-5433-rollwatch/merkle.db")
        monkeypatch.setenv("STATE_DIRECTORY", "/srv/state:/other")
        assert IntegrityConfig().witness_path(cfg) == Path("/srv/state/checkpoint.last")
        assert cfg.projections_path == Path("/srv/state/projections.db")


class TestThisLogsState:
    @pytest.mark.anyio
    async def test_the_tree_records_its_log_and_forgets_it_on_rebuild(self, tmp_path: Path) -> None:
        """The tree records the hash of event 1 of the log it absorbed; a rebuild forgets and re-records it."""
        async with SQLiteEventStore(tmp_path / "events.db") as store, MerkleTree(tmp_path / "m.db") as tree:
            assert await tree.first_hash() is None
            await append_n(store, 3)
            await tree.catch_up(store)
            first = (await store.read_batches(until=1).__anext__())[0].hash
            assert await tree.first_hash() == first
            await tree.rebuild()
            assert await tree.first_hash() is None
            await tree.catch_up(store)
            assert await tree.first_hash() == first


class TestOrigin:
    @pytest.mark.anyio
    async def test_a_fresh_state_gets_its_own_origin_and_keeps_it(self, tmp_path: Path) -> None:
        """Left at defaults, two fresh logs get different origins (host and a random name), each kept across restarts."""
        origins = []
        for name in ("one", "two"):
            d = tmp_path / name
            store_cfg = StoreConfig(url=f"sqlite:{d / 'events.db'}")
            seen = []
            for _ in range(2):
                async with (
                    SQLiteEventStore(d / "events.db") as store,
                    open_integrity(IntegrityConfig(), store_cfg, store) as integ,
                ):
                    await append_n(store, 2)
                    cp = await integ.final_checkpoint()
                    assert cp is not None
                    seen.append((cp.origin, integ.signer.name))
            assert seen[0] == seen[1]
            assert seen[0][0] == seen[0][1] != "rollwatch.example/log"
            assert (d / "origin").read_text().strip() == seen[0][0]
            origins.append(seen[0][0])
        assert origins[0] != origins[1]

    @pytest.mark.anyio
    async def test_a_configured_origin_is_used_and_an_existing_log_keeps_its_own(
        self, tmp_path: Path
    ) -> None:
        """A configured origin wins; a state without an origin file adopts the one its log's checkpoints carry."""
        store_cfg = StoreConfig(url=f"sqlite:{tmp_path / 'events.db'}")
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            await append_n(store, 3)
            async with open_integrity(IntegrityConfig(origin="example.org/mine"), store_cfg, store) as integ:
                cp = await integ.final_checkpoint()
                assert cp is not None
                assert cp.origin == "example.org/mine"
            assert not (tmp_path / "origin").exists()
            async with open_integrity(IntegrityConfig(), store_cfg, store) as integ:
                assert integ.config.origin == "example.org/mine"
        assert (tmp_path / "origin").read_text().strip() == "example.org/mine"


class TestProjections:
    @pytest.mark.anyio
    async def test_projections_of_another_log_are_rebuilt_beside(self, tmp_path: Path) -> None:
        """Projections record their log's event 1; opened against another log they are not
        shown as its own: the build names the reason and builds that log's beside them."""
        from rollwatch.projections import ProjectionDB
        from rollwatch.readmodels import default_projections

        async with (
            SQLiteEventStore(tmp_path / "a.db") as a,
            SQLiteEventStore(tmp_path / "b.db") as b,
            ProjectionDB(tmp_path / "p.db", default_projections()) as pdb,
        ):
            await append_n(a, 4, tag="a")
            await append_n(b, 7, tag="b")  # longer: not caught as a file beyond the log's head
            await pdb.build(a)
            assert set((await pdb.checkpoints()).values()) == {4}
            assert await pdb.distrust(a) is None
            assert await pdb.distrust(b) == "made from another log"
            with structlog.testing.capture_logs() as logged:
                await pdb.build(b)
            assert [r.get("reason") for r in logged if r["event"] == "projections_building_beside"] == [
                "made from another log"
            ]
            assert set((await pdb.checkpoints()).values()) == {7}
            assert await pdb.distrust(b) is None
