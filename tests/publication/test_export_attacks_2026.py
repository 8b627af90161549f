"""More attacks on ``publish export``: an export directory whose manifests, links or folders were
edited by someone with write access to it (or by an operator's backup), between exports."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rollwatch.errors import UsageError
from rollwatch.projections import ProjectionDB
from rollwatch.publication.releases import check_export, period_of
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import all_projections, start_run
from tests.publication.test_releases import Log, month_start

pytestmark = pytest.mark.anyio


def this_folder(out: Path) -> Path:
    return out / "releases" / period_of(datetime.now(UTC).timestamp())


def everything(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


class TestManifestPaths:
    async def test_a_chunk_named_outside_the_folder_is_refused_not_published(
        self, log: Log, tmp_path: Path
    ) -> None:
        """The open folder's MANIFEST.json edited to list a chunk ``../../../secret.txt`` (with its
        size), results.jsonl deleted: the next export refuses the manifest, naming it, instead of
        copying the file outside DIR into the public results.jsonl."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(1, month_start(now))
        await log.export(out)
        secret = tmp_path / "secret.txt"
        secret.write_text("SECRET-OUTSIDE-DIR\n")
        mpath = this_folder(out) / "MANIFEST.json"
        m = json.loads(mpath.read_text())
        rel = "../../../secret.txt"
        m["chunks"].append({"file": rel, "results": 1, "through_seq": 1, "checkpoint": None})
        m["files"][rel] = {"sha256": "0" * 64, "bytes": secret.stat().st_size}
        mpath.write_text(json.dumps(m))
        (out / "results.jsonl").unlink()
        with pytest.raises(UsageError, match=r"MANIFEST\.json: not a release manifest .*secret\.txt"):
            await log.export(out)
        assert b"SECRET-OUTSIDE-DIR" not in everything(out)

    async def test_a_closed_manifest_naming_files_outside_is_refused(self, log: Log, tmp_path: Path) -> None:
        """A closed folder's MANIFEST.json edited the same way (and the index's size for it made
        to match), or listing a result ``rollouts/../../../../x.json``: refused, naming the
        manifest; nothing outside DIR is copied in or linked over."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(1, month_start(now, 2))
        await log.export(out)
        secret = tmp_path / "secret.txt"
        secret.write_text("SECRET-OUTSIDE-DIR\n")
        folder = out / "releases" / period_of(month_start(now, 2).timestamp())
        mpath = folder / "MANIFEST.json"
        kept = mpath.read_bytes()
        for rel, chunk in (("../../../secret.txt", True), ("rollouts/../../../../secret.json", False)):
            m = json.loads(kept)
            if chunk:
                m["chunks"].append({"file": rel, "results": 1, "through_seq": 1, "checkpoint": None})
            m["files"][rel] = {"sha256": "0" * 64, "bytes": secret.stat().st_size}
            mpath.write_text(json.dumps(m))
            index = json.loads((out / "releases.json").read_text())
            index["releases"][0]["manifest_bytes"] = mpath.stat().st_size
            (out / "releases.json").write_text(json.dumps(index))
            (out / "results.jsonl").unlink(missing_ok=True)
            for p in (out / "rollouts").iterdir():
                p.unlink()
            with pytest.raises(UsageError, match=r"MANIFEST\.json: not a release manifest .*secret"):
                await log.export(out)
            assert b"SECRET-OUTSIDE-DIR" not in everything(out)
            assert not (tmp_path / "secret.json").exists()


class TestHardLinks:
    async def test_a_hard_linked_backup_of_dir_is_not_written_through(self, log: Log, tmp_path: Path) -> None:
        """DIR backed up with ``cp -al DIR backup`` (every file a hard link, as rsync --link-dest and
        snapshot scripts do): the next export leaves every byte of the backup as it was (it used
        to append the new results to the backup's results.jsonl too)."""
        import subprocess

        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(2, month_start(now))
        await log.export(out)
        backup = tmp_path / "backup"
        subprocess.run(["cp", "-al", str(out), str(backup)], check=True)
        before = {p: p.read_bytes() for p in backup.rglob("*") if p.is_file()}
        new = await log.results(2, month_start(now), problem_id="p2")
        await log.export(out)
        assert {p: p.read_bytes() for p in backup.rglob("*") if p.is_file()} == before
        lines = (out / "results.jsonl").read_text().splitlines()
        assert sorted(json.loads(x)["rollout_id"] for x in lines[2:]) == sorted(new)
        assert (out / "results.jsonl").stat().st_nlink == 1
        assert check_export(out) == []

    async def test_a_hard_link_at_the_in_progress_mark_is_not_truncated_through(
        self, log: Log, tmp_path: Path
    ) -> None:
        """DIR/.export-in-progress planted as a hard link to a file outside DIR: the export replaces
        it; the file outside keeps its bytes (it used to be truncated to nothing)."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(1, month_start(now))
        await log.export(out)
        outside = tmp_path / "outside.txt"
        outside.write_text("precious\n")
        os.link(outside, out / ".export-in-progress")
        await log.results(1, month_start(now), problem_id="p2")
        await log.export(out)
        assert outside.read_text() == "precious\n"
        assert not (out / ".export-in-progress").exists()
        assert check_export(out) == []


class TestStrayFolders:
    @pytest.mark.parametrize("back", [0, 2])
    async def test_a_copy_of_a_release_folder_is_refused_not_released_twice(
        self, log: Log, tmp_path: Path, back: int
    ) -> None:
        """An operator's copy of a release folder inside releases/ (``cp -r releases/2026-10
        releases/2026-10.bak``), open or closed: the next export refuses it, naming it (a closed
        copy used to be listed in releases.json as a release of its own, every result in it twice;
        an open one stopped the export with a traceback)."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(2, month_start(now, back))
        await log.export(out)
        folder = out / "releases" / period_of(month_start(now, back).timestamp())
        shutil.copytree(folder, folder.with_name(folder.name + ".bak"))
        index = (out / "releases.json").read_bytes()
        await log.results(1, month_start(now), problem_id="p2")
        with pytest.raises(UsageError, match=r"\.bak: not a release folder"):
            await log.export(out)
        assert (out / "releases.json").read_bytes() == index


class TestStaleIndex:
    async def test_an_older_index_restored_files_nothing_twice(self, log: Log, tmp_path: Path) -> None:
        """releases.json restored from a backup one export old (the folders newer than it): the
        next export files every result exactly once, in the folders and in results.jsonl (the
        results the old index did not cover used to be filed a second time)."""
        from tests.publication.test_releases import folder_ids

        now = datetime.now(UTC)
        out = tmp_path / "site"
        first = await log.results(2, month_start(now))
        await log.export(out)
        old = (out / "releases.json").read_bytes()
        second = await log.results(2, month_start(now), problem_id="p2")
        await log.export(out)
        (out / "releases.json").write_bytes(old)
        third = await log.results(1, month_start(now), problem_id="p3")
        await log.export(out)
        period = this_folder(out).name
        assert sorted(folder_ids(out, period)) == sorted(first + second + third)
        top = [json.loads(x)["rollout_id"] for x in (out / "results.jsonl").read_text().splitlines()]
        assert sorted(top) == sorted(first + second + third)
        assert json.loads((out / "releases.json").read_text())["results"] == 5
        assert check_export(out) == []

    async def test_an_index_ahead_of_the_log_is_refused(self, log: Log, tmp_path: Path) -> None:
        """releases.json's exported_seq past the log's end (edited, or DIR reused for a fresh
        database): refused, naming it (the results at or before that seq were skipped for good,
        the export saying it filed 0)."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(1, month_start(now))
        await log.export(out)
        index = json.loads((out / "releases.json").read_text())
        index["exported_seq"] = 10**6
        (out / "releases.json").write_text(json.dumps(index))
        await log.results(2, month_start(now), problem_id="p2")
        with pytest.raises(UsageError, match=r"releases\.json: says results through seq 1000000"):
            await log.export(out)


class TestCommand:
    async def test_publish_export_names_a_bad_folder_or_manifest_in_one_line(self, tmp_path: Path) -> None:
        """``rollwatch publish export DIR`` over a folder copy or a manifest naming ``../events.db``:
        exit 2, one line naming the path, no traceback, nothing of the log in DIR."""
        import anyio

        from tests.helpers import rollwatch

        now = datetime.now(UTC)
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
        out = tmp_path / "site"
        async with (
            SQLiteEventStore(tmp_path / "events.db") as store,
            ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
        ):
            lg = Log(store, pdb)
            await start_run(store, lg.run_id)
            await lg.results(1, month_start(now))

        def export() -> Any:
            return rollwatch("--config", str(cfg), "publish", "export", str(out))

        p = await anyio.to_thread.run_sync(export)
        assert p.returncode == 0, p.stderr
        folder = this_folder(out)
        shutil.copytree(folder, folder.with_name(folder.name + ".bak"))
        p = await anyio.to_thread.run_sync(export)
        assert p.returncode == 2, p.stderr
        assert ".bak: not a release folder" in p.stderr
        assert "Traceback" not in p.stderr
        shutil.rmtree(folder.with_name(folder.name + ".bak"))
        m = json.loads((folder / "MANIFEST.json").read_text())
        rel = "../../../events.db"
        m["chunks"].append({"file": rel, "results": 1, "through_seq": 1, "checkpoint": None})
        m["files"][rel] = {"sha256": "0" * 64, "bytes": (tmp_path / "events.db").stat().st_size}
        (folder / "MANIFEST.json").write_text(json.dumps(m))
        (out / "results.jsonl").unlink()
        p = await anyio.to_thread.run_sync(export)
        assert p.returncode == 2, p.stderr
        assert "events.db' is not a results-NNNN.jsonl" in p.stderr
        assert "Traceback" not in p.stderr
        assert b"SQLite format 3" not in everything(out)
