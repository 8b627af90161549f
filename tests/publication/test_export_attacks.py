"""Attacks on ``publish export``: an export directory edited between exports (files deleted, cut
short or added, symbolic links out of it), two exports of one directory at once."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from rollwatch.errors import UsageError
from rollwatch.projections import ProjectionDB
from rollwatch.publication.releases import Archive, check_export, period_of
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import all_projections, start_run
from tests.publication.test_releases import Log, folder_ids, month_start

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, Callable[..., subprocess.CompletedProcess[str]], Path]]:
    """A live log on loopback filled as ``test_tlog_tiles.fill`` does (a signed checkpoint, a
    released result and one under embargo), the ``rollwatch`` command on its configuration
    (usable after the block too), and the folder its exports go to: (live, run, out)."""
    from tests.helpers import rollwatch
    from tests.integrity.test_tlog_tiles import fill, live_log

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    async with live_log(tmp_path) as live:
        cfg = str(live.config_file)

        def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
            return rollwatch("--config", cfg, *args, env={"STATE_DIRECTORY": "", **(env or {})})  # type: ignore[no-any-return]

        await fill(live)
        yield live, run, tmp_path / "site"


def top_ids(out: Path) -> list[str]:
    return [json.loads(x)["rollout_id"] for x in (out / "results.jsonl").read_text().splitlines()]


def this_folder(out: Path) -> Path:
    return out / "releases" / period_of(datetime.now(UTC).timestamp())


class TestLinks:
    async def test_a_linked_results_jsonl_is_refused_not_written_through(
        self, log: Log, tmp_path: Path
    ) -> None:
        """results.jsonl replaced by a link to a file outside DIR: the export stops naming it, and
        the file outside keeps its bytes (it used to be cut and filled with results and NULs)."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(2, month_start(now))
        await log.export(out)
        outside = tmp_path / "outside.txt"
        outside.write_text("precious\n")
        (out / "results.jsonl").unlink()
        (out / "results.jsonl").symlink_to(outside)
        await log.results(2, month_start(now), problem_id="p2")
        with pytest.raises(UsageError, match=r"results\.jsonl: a symbolic link"):
            await log.export(out)
        assert outside.read_text() == "precious\n"

    async def test_a_linked_folder_is_refused(self, log: Log, tmp_path: Path) -> None:
        """The open folder's rollouts/ (or a tile folder) made a link to a folder outside DIR:
        refused, nothing written outside."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(1, month_start(now))
        await log.export(out)
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        rollouts = this_folder(out) / "rollouts"
        for p in rollouts.iterdir():
            os.replace(p, outside / p.name)
        rollouts.rmdir()
        rollouts.symlink_to(outside)
        before = sorted(p.name for p in outside.iterdir())
        await log.results(2, month_start(now), problem_id="p2")
        with pytest.raises(UsageError, match=r"rollouts: a symbolic link"):
            await log.export(out)
        assert sorted(p.name for p in outside.iterdir()) == before

    async def test_a_planted_temporary_link_is_replaced_not_written_through(
        self, log: Log, tmp_path: Path
    ) -> None:
        """A link planted at the temporary name the export writes a result through: the export
        removes the link and writes its own file; the file the link pointed at is untouched."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(1, month_start(now))
        await log.export(out)
        [rid] = await log.results(1, month_start(now), problem_id="p2")
        outside = tmp_path / "outside.txt"
        outside.write_text("precious\n")
        (this_folder(out) / "rollouts" / f"{rid}.json.tmp").symlink_to(outside)
        await log.export(out)
        assert outside.read_text() == "precious\n"
        assert json.loads((this_folder(out) / "rollouts" / f"{rid}.json").read_text())["rollout_id"] == rid
        assert check_export(out) == []


class TestTampered:
    async def test_a_result_deleted_from_the_open_folder_is_named(self, log: Log, tmp_path: Path) -> None:
        """A result file of the open folder deleted or cut short: the next export refuses, naming
        the file, rather than write a manifest that lists it as it was."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        [a, b] = await log.results(2, month_start(now))
        await log.export(out)
        await log.results(1, month_start(now), problem_id="p2")
        kept = (this_folder(out) / "rollouts" / f"{a}.json").read_bytes()
        (this_folder(out) / "rollouts" / f"{a}.json").unlink()
        with pytest.raises(UsageError, match=rf"rollouts/{a}\.json: missing"):
            await log.export(out)
        (this_folder(out) / "rollouts" / f"{a}.json").write_bytes(kept)
        with (this_folder(out) / "rollouts" / f"{b}.json").open("r+b") as f:
            f.truncate(10)
        with pytest.raises(UsageError, match=rf"rollouts/{b}\.json: not the file"):
            await log.export(out)

    async def test_results_jsonl_cut_short_or_deleted_is_made_again_from_the_manifests(
        self, log: Log, tmp_path: Path
    ) -> None:
        """results.jsonl cut short: the next export makes it again from the folders' chunks (it
        used to be padded with NUL bytes to the recorded length). Deleted, with a stray chunk
        added to the open folder: made again from the chunks the manifests list, and the stray
        file is removed rather than served."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        first = await log.results(2, month_start(now, 2))
        second = await log.results(2, month_start(now))
        await log.export(out)
        with (out / "results.jsonl").open("r+b") as f:
            f.truncate(20)
        third = await log.results(1, month_start(now), problem_id="p2")
        await log.export(out)
        data = (out / "results.jsonl").read_bytes()
        assert b"\0" not in data
        assert sorted(top_ids(out)) == sorted(first + second + third)
        (out / "results.jsonl").unlink()
        stray = this_folder(out) / "results-0099.jsonl"
        stray.write_bytes(
            (
                out / "releases" / period_of(month_start(now, 2).timestamp()) / "results-0001.jsonl"
            ).read_bytes()
        )
        fourth = await log.results(1, month_start(now), problem_id="p3")
        await log.export(out)
        assert sorted(top_ids(out)) == sorted(first + second + third + fourth)
        assert not stray.exists()
        assert sorted(folder_ids(out, this_folder(out).name)) == sorted(second + third + fourth)
        assert check_export(out) == []

    async def test_a_closed_folder_deleted_or_its_manifest_edited_is_refused(
        self, log: Log, tmp_path: Path
    ) -> None:
        """A closed folder removed, or its manifest edited: the next export refuses, naming it (it
        used to drop the folder from releases.json, and file that month's late results in a new
        folder of the same name). An index with a field missing is refused in one line too."""
        import shutil

        now = datetime.now(UTC)
        out = tmp_path / "site"
        await log.results(2, month_start(now, 2))
        await log.export(out)
        old = out / "releases" / period_of(month_start(now, 2).timestamp())
        index = (out / "releases.json").read_bytes()
        await log.results(1, month_start(now), problem_id="p2")
        kept = tmp_path / "kept"
        shutil.copytree(old, kept)
        shutil.rmtree(old)
        with pytest.raises(UsageError, match=r"MANIFEST\.json: missing, but releases\.json lists release"):
            await log.export(out)
        shutil.copytree(kept, old)
        manifest = json.loads((old / "MANIFEST.json").read_text())
        manifest["results"] = 1
        (old / "MANIFEST.json").write_text(json.dumps(manifest))
        with pytest.raises(UsageError, match=r"MANIFEST\.json: not the manifest releases\.json names"):
            await log.export(out)
        shutil.copyfile(kept / "MANIFEST.json", old / "MANIFEST.json")
        broken = json.loads(index)
        del broken["exported_seq"]
        (out / "releases.json").write_text(json.dumps(broken))
        with pytest.raises(
            UsageError, match=r"releases\.json: not a rollwatch release index \(bad or missing"
        ):
            await log.export(out)
        (out / "releases.json").write_bytes(index)
        s = await log.export(out)
        assert s.released == 1
        assert check_export(out) == []

    async def test_deleted_top_level_copies_are_put_back(self, log: Log, tmp_path: Path) -> None:
        """rollouts/ID.json at the top (what the feeds link to) deleted: the next export puts it
        back, the folder's copy linked again, or a superseded one with its mark."""
        from tests.publication.test_flip_attacks import rescore

        now = datetime.now(UTC)
        out = tmp_path / "site"
        [a, b] = await log.results(2, month_start(now, 2))
        [c] = await log.results(1, month_start(now), problem_id="p2")
        await rescore(log.store, b, passed=False, previous=True, decide=False)
        await log.export(out)
        for rid in (a, b, c):
            (out / "rollouts" / f"{rid}.json").unlink()
        await log.export(out)
        old = out / "releases" / period_of(month_start(now, 2).timestamp())
        assert (out / "rollouts" / f"{a}.json").read_bytes() == (old / "rollouts" / f"{a}.json").read_bytes()
        assert (out / "rollouts" / f"{c}.json").samefile(this_folder(out) / "rollouts" / f"{c}.json")
        assert json.loads((out / "rollouts" / f"{b}.json").read_text())["superseded"] is True
        assert check_export(out) == []

    async def test_a_cut_manifest_or_a_file_for_a_folder_is_one_line_exit_2(self, tmp_path: Path) -> None:
        """``publish export`` over an open folder whose MANIFEST.json was cut short, or whose
        rollouts/ was replaced by a file: exit 2 and one line naming the path, no traceback."""
        now = datetime.now(UTC)
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
        out = tmp_path / "site"
        async with (
            SQLiteEventStore(tmp_path / "events.db") as store,
            ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
        ):
            log = Log(store, pdb)
            await start_run(store, log.run_id)
            await log.results(1, month_start(now))
            await log.export(out)
            await log.results(1, month_start(now), problem_id="p2")

        def export() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)],
                capture_output=True,
                text=True,
                check=False,
            )

        manifest = this_folder(out) / "MANIFEST.json"
        kept = manifest.read_bytes()
        manifest.write_bytes(kept[: len(kept) // 2])
        p = await anyio.to_thread.run_sync(export)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr
        assert "MANIFEST.json: not a release manifest" in p.stderr
        manifest.write_bytes(kept)
        for f in (this_folder(out) / "rollouts").iterdir():
            f.unlink()
        (this_folder(out) / "rollouts").rmdir()
        (this_folder(out) / "rollouts").write_text("not a folder")
        p = await anyio.to_thread.run_sync(export)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "rollouts" in p.stderr


class TestForeignFolder:
    async def test_a_folder_no_export_made_is_not_written_into(self, log: Log, tmp_path: Path) -> None:
        """DIR mistyped as a folder holding someone's site (an index.html, a LICENSE, work
        in progress in a .tmp): refused, every file left as it was; an empty folder, or one a
        killed first export left, is exported into."""
        now = datetime.now(UTC)
        await log.results(1, month_start(now))
        site = tmp_path / "site"
        site.mkdir()
        mine = {"index.html": "<h1>mine</h1>", "LICENSE": "all rights reserved", "draft.tmp": "half"}
        for name, text in mine.items():
            (site / name).write_text(text)
        with pytest.raises(UsageError, match="no export made it"):
            await log.export(site)
        assert {p.name: p.read_text() for p in site.iterdir()} == mine
        empty = tmp_path / "empty"
        empty.mkdir()
        await log.export(empty)
        assert top_ids(empty)
        # A first export killed after it began: its marker says the folder is its own.
        killed = tmp_path / "killed"
        killed.mkdir()
        (killed / ".export-in-progress").write_bytes(b"")
        (killed / "feed.json.tmp").write_text("{")
        await log.export(killed)
        assert top_ids(killed) == top_ids(empty)
        assert not (killed / "feed.json.tmp").exists()


class TestTwoAtOnce:
    async def test_a_second_export_of_the_same_folder_is_refused(self, log: Log, tmp_path: Path) -> None:
        """While one export holds DIR, a second one stops with a clear error (it used to take the
        first one's unfinished files for a killed export's and remove them); then it may run."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        first = await log.results(2, month_start(now))
        await log.export(out)
        second = await log.results(2, month_start(now), problem_id="p2")
        held = await anyio.to_thread.run_sync(Archive.open, out)
        try:
            with pytest.raises(UsageError, match="another export is writing"):
                await log.export(out)
        finally:
            held.close()
        s = await log.export(out)
        assert s.released == 2
        assert sorted(top_ids(out)) == sorted(first + second)
        assert check_export(out) == []

    async def test_publish_export_waits_for_no_one_it_refuses_in_one_line(self, tmp_path: Path) -> None:
        """Another process holding DIR (an export under way): ``publish export`` exits 2 with one
        line saying so, and writes nothing."""
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
        out = tmp_path / "site"
        async with (
            SQLiteEventStore(tmp_path / "events.db") as store,
            ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
        ):
            log = Log(store, pdb)
            await start_run(store, log.run_id)
            await log.results(1, month_start(datetime.now(UTC)))
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from rollwatch.publication.releases import Archive;"
                " a = Archive.open(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()",
                str(out),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert await anyio.to_thread.run_sync(holder.stdout.readline) == "held\n"
            cmd = [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)]
            p = await anyio.to_thread.run_sync(
                lambda: subprocess.run(cmd, capture_output=True, text=True, check=False)
            )
        finally:
            holder.communicate("")
        assert p.returncode == 2, p.stderr
        assert "another export is writing this folder" in p.stderr
        assert "Traceback" not in p.stderr
        assert not (out / "releases").exists()
        p = await anyio.to_thread.run_sync(
            lambda: subprocess.run(cmd, capture_output=True, text=True, check=False)
        )
        assert p.returncode == 0, p.stderr
        assert check_export(out) == []


class TestAudit:
    async def test_audit_checks_an_export_served_at_the_root_and_fails_an_edited_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``rollwatch audit --url URL --keep FILE --item ID`` against ``python -m http.server``
        serving DIR at its root: the key, checkpoint, feed item and bundle are read from DIR (it
        used to ask for /public/key and stop at a 404), and the proofs it asked the service for
        (consistency with the kept checkpoint, the remembered item's inclusion) are made from the
        exported hash tiles (they used to 404). Then a tile edited on the item's path fails the
        audit, and so does a result whose answer was edited outside its proof (the bundle's events
        were checked, never the fields of the result they came with)."""
        from tests.helpers import rollwatch
        from tests.integrity.conftest import append_n
        from tests.integrity.test_tlog_tiles import add_released, fill, live_log, static_server

        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        out = tmp_path / "site"
        env = {"STATE_DIRECTORY": ""}
        keep = tmp_path / "keep.json"

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return rollwatch("--config", cfg, *args, env=env)  # type: ignore[no-any-return]

        def audit(url: str) -> subprocess.CompletedProcess[str]:
            return run("audit", "--url", url, "--keep", str(keep), "--item", rid)

        async with live_log(tmp_path) as live:
            rid, _ = await fill(live)
            cfg = str(live.config_file)
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
            with static_server(out) as url:
                p = await anyio.to_thread.run_sync(lambda: audit(url))
            assert p.returncode == 0, p.stdout + p.stderr
            assert f"bundle: item {rid}: 6 events" in p.stdout
            await append_n(live.store, 100, per_call=50, tag="g")
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
        p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
        assert p.returncode == 0, p.stderr
        tile = out / "tile" / "0" / "001"  # leaves 256..511: the item's event 305 among them
        kept_tile = tile.read_bytes()
        with static_server(out) as url:
            p = await anyio.to_thread.run_sync(lambda: audit(url))
            assert p.returncode == 0, p.stdout + p.stderr
            assert "consistency: kept size 606 -> size 715: ok" in p.stdout
            assert "remembered: 1 released items still in the signed tree: ok" in p.stdout
            tile.write_bytes(kept_tile[: 32 * 48] + bytes(32) + kept_tile[32 * 49 :])  # leaf 304
            p = await anyio.to_thread.run_sync(lambda: audit(url))
            assert p.returncode == 1, p.stdout + p.stderr
            assert "was rewritten or withdrawn" in p.stdout + p.stderr
            tile.write_bytes(kept_tile)
            record = json.loads((out / "rollouts" / f"{rid}.json").read_text())
            record["answer"] = "print('something else')"
            (out / "rollouts" / f"{rid}.json").write_text(json.dumps(record))
            p = await anyio.to_thread.run_sync(lambda: audit(url))
        assert p.returncode == 1, p.stdout + p.stderr
        assert "the result's answer is not what its logged events say" in p.stdout + p.stderr


class TestAuditArchive:
    async def test_audit_checks_every_line_of_an_exported_results_jsonl(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``rollwatch audit --url URL`` on an export served by ``python -m http.server`` reads
        ``results.jsonl`` and checks every line: an untouched archive passes; a line whose
        ``passed`` was flipped, whose model was changed, a line duplicated, and a line whose
        ``_rollwatch`` event was edited to say what the flipped field says (its proof no longer
        verifies) each fail with exit 1 naming the line and its rollout id (audit used to check
        one ``--item`` only: every other line could be edited unseen). A line stripped of its
        proofs is counted as not checked, never passed silently."""
        import base64
        import hashlib

        from tests.helpers import rollwatch
        from tests.integrity.test_tlog_tiles import add_released, fill, live_log, static_server

        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        out = tmp_path / "site"
        env = {"STATE_DIRECTORY": ""}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return rollwatch("--config", cfg, *args, env=env)  # type: ignore[no-any-return]

        async with live_log(tmp_path) as live:
            await fill(live)
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            cfg = str(live.config_file)
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
        results = out / "results.jsonl"
        kept = results.read_text()
        lines = [json.loads(x) for x in kept.splitlines()]
        assert len(lines) == 2
        assert all("_rollwatch" in x and "proof" in x for x in lines)
        rid = lines[1]["rollout_id"]

        def edited(change: Any) -> subprocess.CompletedProcess[str]:
            second = json.loads(json.dumps(lines[1]))
            change(second)
            rows = [kept.splitlines()[0], json.dumps(second)]  # the first line's bytes as exported
            if not second:  # the change asks for the line to be duplicated
                rows = [*kept.splitlines(), kept.splitlines()[1]]
            results.write_text("\n".join(rows) + "\n")
            try:
                return run("audit", "--url", url)  # type: ignore[no-any-return]
            finally:
                results.write_text(kept)

        def flip(x: dict[str, Any]) -> None:
            x["passed"] = False

        def model(x: dict[str, Any]) -> None:
            x["model"] = "gpt-better"

        def duplicate(x: dict[str, Any]) -> None:
            x.clear()

        def flip_event_too(x: dict[str, Any]) -> None:
            x["passed"] = False
            event = json.loads(x["_rollwatch"]["canonical"])
            event["data"]["passed"] = False
            canonical = json.dumps(event, separators=(",", ":"))
            x["_rollwatch"]["canonical"] = canonical  # and its leaf hash made to match
            x["_rollwatch"]["leaf_hash"] = base64.b64encode(
                hashlib.sha256(b"\x00" + canonical.encode()).digest()
            ).decode()
            x.pop("proof")

        def strip(x: dict[str, Any]) -> None:
            x.pop("proof")
            x.pop("_rollwatch")

        with static_server(out) as url:
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url))
            assert p.returncode == 0, p.stdout + p.stderr
            assert (
                "archive: 2 results of results.jsonl in the signed tree, as their lines say: ok" in p.stdout
            )
            assert "archive: 2 results of the release folders' chunks in the signed tree" in p.stdout
            assert "NOT checked" not in p.stdout
            # A folder's chunk (what mirrors copy, and a closed folder keeps for good) edited alike.
            (chunk,) = (out / "releases").glob("*/results-0001.jsonl")
            name = chunk.relative_to(out).as_posix()
            chunk_kept = chunk.read_text()
            first = json.loads(chunk_kept.splitlines()[0])
            first["passed"] = False
            chunk.write_text(json.dumps(first) + "\n" + "".join(chunk_kept.splitlines(keepends=True)[1:]))
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url))
            chunk.write_text(chunk_kept)
            assert p.returncode == 1, p.stdout + p.stderr
            assert (
                f"FAILED archive: {name} line 1 (rollout {first['rollout_id']}): its passed is False"
                in p.stderr
            )
            for change, said in [
                (flip, "its passed is False, but its logged verdict"),
                (model, "the result's model is not what its logged events say"),
                (duplicate, "the same result is on results.jsonl line 2 too"),
                (flip_event_too, "its proof does not lead to the signed root"),
            ]:
                p = await anyio.to_thread.run_sync(lambda change=change: edited(change))  # type: ignore[misc]
                at = "line 3" if change is duplicate else "line 2"
                assert p.returncode == 1, (change.__name__, p.stdout + p.stderr)
                assert f"FAILED archive: results.jsonl {at} (rollout {rid})" in p.stderr, p.stderr
                assert said in p.stderr, (change.__name__, p.stderr)
            # A line stripped of its proofs used to be "NOT checked" and pass (exit 0): the signed
            # export says which line its folder holds, with its proofs.
            p = await anyio.to_thread.run_sync(lambda: edited(strip))
            assert p.returncode == 1, p.stdout + p.stderr
            assert (
                f"FAILED archive: results.jsonl line 2 (rollout {rid}): not the line releases/" in p.stderr
            ), p.stderr
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url, "--no-archive"))
            assert p.returncode == 0, p.stdout + p.stderr
            assert "archive:" not in p.stdout

    async def test_audit_checks_a_live_daemons_results_jsonl(self, tmp_path: Path) -> None:
        """On a live service, ``audit`` reads ``/public/results.jsonl`` (each line with its proof
        bundle) and checks every result in it against the signed checkpoint."""
        from tests.helpers import rollwatch
        from tests.integrity.test_tlog_tiles import add_released, fill, live_log

        async with live_log(tmp_path) as live:
            await fill(live)
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            cfg = str(live.config_file)
            p = await anyio.to_thread.run_sync(lambda: rollwatch("--config", cfg, "audit", "--url", live.url))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "archive: 2 results of results.jsonl in the signed tree, as their lines say: ok" in p.stdout


class TestAuditCompleteness:
    async def test_audit_finds_what_was_removed_or_edited_in_a_signed_export(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``publish export`` signs ``releases.json`` with the log's key (``releases.json.sig``:
        the checkpoint it was cut at and the index's SHA-256; the index names each manifest's
        SHA-256, each manifest its chunks'). ``rollwatch audit --url`` on the export served by
        ``python -m http.server``: the honest export passes; a line deleted (from its chunk and
        from results.jsonl alike), a chunk deleted (the file alone, or with its manifest entry,
        its lines and the index's hash of the manifest made to match), the folder dropped from the
        index, the manifest edited, a line's proofs stripped in its chunk and in results.jsonl,
        the signature replaced by another key's or its statement edited: each fails with exit 1
        and one line. Each of them used to pass (every line shown was proven, a missing one was
        never looked for; a stripped line was "NOT checked", exit 0)."""
        import hashlib
        import shutil

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from rollwatch.integrity.checkpoint import NoteSigner, split_note
        from tests.integrity.test_tlog_tiles import add_released, static_server

        async with exporting(tmp_path, monkeypatch) as (live, run, out):
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
            assert "NOT signed" not in p.stdout
        assert (out / "releases.json.sig").is_file()
        folder = this_folder(out)
        period = folder.name
        chunk1, chunk2 = folder / "results-0001.jsonl", folder / "results-0002.jsonl"
        assert len(chunk1.read_text().splitlines()) == 2
        assert len(chunk2.read_text().splitlines()) == 1
        honest = tmp_path / "honest"
        shutil.copytree(out, honest)

        def audit() -> subprocess.CompletedProcess[str]:
            return run("audit", "--url", url)

        def rehash_index() -> None:
            """The index's hash of the folder's manifest made to match an edited manifest."""
            index = json.loads((out / "releases.json").read_text())
            raw = (folder / "MANIFEST.json").read_bytes()
            index["releases"][0]["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
            index["releases"][0]["manifest_bytes"] = len(raw)
            (out / "releases.json").write_text(json.dumps(index, indent=1) + "\n")

        def drop_lines(path: Path, rids: set[str]) -> None:
            kept = [
                x
                for x in path.read_text().splitlines(keepends=True)
                if json.loads(x)["rollout_id"] not in rids
            ]
            path.write_text("".join(kept))

        def delete_line() -> None:
            rid = json.loads(chunk1.read_text().splitlines()[1])["rollout_id"]
            drop_lines(chunk1, {rid})
            drop_lines(out / "results.jsonl", {rid})

        def delete_chunk_file() -> None:
            chunk2.unlink()

        def delete_chunk_everywhere() -> None:
            rids = {json.loads(x)["rollout_id"] for x in chunk2.read_text().splitlines()}
            chunk2.unlink()
            drop_lines(out / "results.jsonl", rids)
            m = json.loads((folder / "MANIFEST.json").read_text())
            m["chunks"] = m["chunks"][:1]
            m["files"].pop("results-0002.jsonl")
            m["results"] -= len(rids)
            (folder / "MANIFEST.json").write_text(json.dumps(m, indent=1) + "\n")
            rehash_index()

        def drop_folder() -> None:
            index = json.loads((out / "releases.json").read_text())
            index["releases"], index["results"] = [], 0
            (out / "releases.json").write_text(json.dumps(index, indent=1) + "\n")
            (out / "results.jsonl").write_text("")

        def edit_manifest() -> None:
            m = json.loads((folder / "MANIFEST.json").read_text())
            m["results"] += 1
            (folder / "MANIFEST.json").write_text(json.dumps(m, indent=1) + "\n")

        def strip(path: Path) -> None:
            rows = path.read_text().splitlines()
            first = json.loads(rows[0])
            first.pop("proof")
            first.pop("_rollwatch")
            path.write_text("".join(x + "\n" for x in [json.dumps(first, separators=(",", ":")), *rows[1:]]))

        def strip_chunk() -> None:
            strip(chunk1)

        def strip_both() -> None:
            strip(chunk1)
            strip(out / "results.jsonl")

        def another_key() -> None:
            drop_folder()
            text, _ = split_note((out / "releases.json.sig").read_text())
            sha = hashlib.sha256((out / "releases.json").read_bytes()).hexdigest()
            text = text[: text.index("releases.json sha256 ")] + f"releases.json sha256 {sha}\n"
            forger = NoteSigner("rollwatch.test/log", Ed25519PrivateKey.generate())
            (out / "releases.json.sig").write_text(forger.sign(text))

        def edited_statement() -> None:
            drop_folder()
            note = (out / "releases.json.sig").read_text()
            sha = hashlib.sha256((out / "releases.json").read_bytes()).hexdigest()
            text, _ = split_note(note)
            old = text[text.index("releases.json sha256 ") :].split()[-1]
            (out / "releases.json.sig").write_text(note.replace(old, sha))

        cases = [
            (delete_line, f"{period}/results-0001.jsonl: not the bytes its signed manifest lists"),
            (
                delete_chunk_file,
                f"{period}/results-0002.jsonl: listed in its signed manifest, but not served",
            ),
            (delete_chunk_everywhere, "releases.json is not the index releases.json.sig signs"),
            (drop_folder, "releases.json is not the index releases.json.sig signs"),
            (
                edit_manifest,
                f"releases/{period}/MANIFEST.json is not the manifest the signed releases.json names",
            ),
            (
                strip_chunk,
                "carries no proof, but its signed manifest says its chunk was exported with proofs",
            ),
            (strip_both, "carries no proof, but its signed manifest says its chunk was exported with proofs"),
            (another_key, "releases.json.sig: the note is not signed by rollwatch.test/log"),
            (edited_statement, "releases.json.sig: the signature by rollwatch.test/log does not verify"),
        ]
        with static_server(out) as url:
            p = await anyio.to_thread.run_sync(audit)
            assert p.returncode == 0, p.stdout + p.stderr
            assert (
                "releases.json signed for the checkpoint of size 624: its 1 release folders, 2 chunks and"
                " 3 results all there, unedited, and results.jsonl holds them all: ok"
            ) in p.stdout, p.stdout
            for attack, said in cases:
                await anyio.to_thread.run_sync(attack)
                p = await anyio.to_thread.run_sync(audit)
                shutil.rmtree(out)
                shutil.copytree(honest, out)
                assert p.returncode == 1, (attack.__name__, p.stdout + p.stderr)
                failed = [x for x in p.stderr.splitlines() if x.startswith("FAILED ")]
                assert len(failed) == 1, (attack.__name__, p.stderr)
                assert failed[0].startswith("FAILED archive: "), (attack.__name__, p.stderr)
                assert said in failed[0], (attack.__name__, p.stderr)
                assert "Traceback" not in p.stderr, p.stderr

    async def test_an_older_export_served_whole_fails_max_export_age(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Whoever holds the static host serves an older export whole (its checkpoint, index and
        signature together, as the exporter made them) in place of the current one: every
        signature and hash checks, so it passed every audit without ``--keep``. The signed
        statement now says when the export was made: ``audit`` prints it, and ``--max-export-age``
        fails an export older than that, or one whose statement does not say (signed by an older
        rollwatch), each with one line and exit 1. The "older export" here is the honest one
        signed again by the log's own key with an earlier time, as the exporter would have."""
        from datetime import UTC, datetime, timedelta

        from rollwatch.config import load_config
        from rollwatch.integrity.checkpoint import RELEASE_INDEX_V1, split_note
        from rollwatch.integrity.keys import existing_signer
        from tests.integrity.test_tlog_tiles import add_released, static_server

        async with exporting(tmp_path, monkeypatch) as (live, run, out):
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
            live_url = live.url
            p = await anyio.to_thread.run_sync(
                lambda: run("audit", "--url", live_url, "--no-archive", "--max-export-age", "1d")
            )
            assert p.returncode == 0, p.stdout + p.stderr
            assert "max-export-age: a live service, not a static export: not applicable" in p.stdout
        config = load_config(live.config_file)
        signer = existing_signer(config.integrity.key_path(config.store), config.integrity.name)
        assert signer is not None
        sig = out / "releases.json.sig"
        text, _ = split_note(sig.read_text())
        made = datetime.strptime(text.splitlines()[-1], "exported %Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - made).total_seconds()) < 600, text

        def resign(statement: str) -> None:
            sig.write_text(signer.sign(statement))

        def older(days: int) -> None:
            when = (made - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
            resign(text[: text.index("exported ")] + f"exported {when}\n")

        def first_format() -> None:
            body = text[: text.index("exported ")].replace(text.splitlines()[0], RELEASE_INDEX_V1, 1)
            resign(body)

        def audit(*extra: str) -> subprocess.CompletedProcess[str]:
            return run("audit", "--url", url, *extra)  # type: ignore[no-any-return]

        def failed(p: subprocess.CompletedProcess[str]) -> str:
            assert p.returncode == 1, p.stdout + p.stderr
            lines = [x for x in p.stderr.splitlines() if x.startswith("FAILED ")]
            assert len(lines) == 1, p.stderr
            assert "Traceback" not in p.stderr, p.stderr
            return lines[0]

        with static_server(out) as url:
            p = await anyio.to_thread.run_sync(lambda: audit("--max-export-age", "1d"))
            assert p.returncode == 0, p.stdout + p.stderr
            assert "ago, as its signature says (at most 1d): ok" in p.stdout, p.stdout

            await anyio.to_thread.run_sync(older, 60)
            p = await anyio.to_thread.run_sync(audit)
            assert p.returncode == 0, p.stdout + p.stderr  # without the option: shown, not judged
            assert "60d ago, as its signature says" in p.stdout, p.stdout
            p = await anyio.to_thread.run_sync(lambda: audit("--max-export-age", "30d"))
            assert "60d ago, as its signature says: older than --max-export-age 30d" in failed(p)

            await anyio.to_thread.run_sync(first_format)
            p = await anyio.to_thread.run_sync(audit)
            assert p.returncode == 0, p.stdout + p.stderr
            assert "the export does not say when it was made (it was signed before" in p.stdout, p.stdout
            p = await anyio.to_thread.run_sync(lambda: audit("--max-export-age", "30d"))
            assert "--max-export-age: the export does not say when it was made" in failed(p)

            p = await anyio.to_thread.run_sync(lambda: audit("--max-export-age", "soon"))
            assert p.returncode == 2, p.stderr
            assert "--max-export-age" in p.stderr, p.stderr

    async def test_a_superseded_mark_removed_from_a_signed_export_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``superseded.jsonl`` (released results a re-score later found failing) is part of what
        ``releases.json.sig`` signs: emptied on the host, a re-scored pass reads as a pass again,
        and ``rollwatch audit`` fails it. It used to pass (the signed index named every folder's
        manifest, not the superseded list)."""
        from tests.integrity.test_tlog_tiles import add_released, static_server
        from tests.publication.test_flip_attacks import rescore

        async with exporting(tmp_path, monkeypatch) as (live, run, out):
            rid = await add_released(live.store, live.pdb)
            await rescore(live.store, rid, passed=False, previous=True, decide=False)
            await live.integrity.final_checkpoint()
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
        marks = (out / "superseded.jsonl").read_text().splitlines()
        assert [json.loads(x)["rollout_id"] for x in marks] == [rid]
        with static_server(out) as url:
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url))
            assert p.returncode == 0, p.stdout + p.stderr
            (out / "superseded.jsonl").write_text("")
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url))
        assert p.returncode == 1, p.stdout + p.stderr
        failed = [x for x in p.stderr.splitlines() if x.startswith("FAILED ")]
        assert failed == [
            "FAILED archive: superseded.jsonl is not the one the signed releases.json names"
            " (a superseded mark removed or edited)"
        ], p.stderr

    async def test_a_retired_key_cannot_sign_the_index(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After a key rotation the export's index is signed by the key in force, the one that
        signs the served checkpoint. Someone who holds the retired key (a key is rotated away
        from when it leaked) and the host drops a folder, signs the statement with the retired
        key and serves the log's real rotation chain: ``audit --key OLD`` follows the chain and
        fails the index. It used to pass (the statement was taken from any key of the chain)."""
        import hashlib
        import threading
        from functools import partial
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        import httpx

        from rollwatch.integrity.checkpoint import split_note
        from rollwatch.integrity.keys import existing_signer
        from tests.integrity.test_tlog_tiles import add_released

        async with exporting(tmp_path, monkeypatch) as (live, run, out):
            r = await anyio.to_thread.run_sync(lambda: run("key", "rotate"))
            assert r.returncode == 0, r.stderr
            old_key = r.stdout.split("old key: ")[1].split()[0]
            await live.integrity.reload_signer()  # as the daemon does at its next checkpoint
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
            rotations = (await anyio.to_thread.run_sync(httpx.get, live.url + "public/key/rotations")).content
        [retired_file] = tmp_path.glob("checkpoint.key.retired-*")
        retired = existing_signer(retired_file, "rollwatch.test/log")
        assert retired is not None
        assert retired.vkey == old_key
        served_rotations = tmp_path / "rotations"
        served_rotations.write_bytes(rotations)

        class Handler(SimpleHTTPRequestHandler):
            def translate_path(self, path: str) -> str:
                if path.split("?")[0] == "/key/rotations":  # beside the file "key", as a host may
                    return str(served_rotations)
                return super().translate_path(path)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(out)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url, "--key", old_key))
            assert p.returncode == 0, p.stdout + p.stderr
            assert "rotated at seq" in p.stdout
            # The attack: a folder dropped, the statement signed again by the retired key.
            index = json.loads((out / "releases.json").read_text())
            index["releases"], index["results"] = [], 0
            (out / "releases.json").write_text(json.dumps(index, indent=1) + "\n")
            (out / "results.jsonl").write_text("")
            text, _ = split_note((out / "releases.json.sig").read_text())
            sha = hashlib.sha256((out / "releases.json").read_bytes()).hexdigest()
            text = text[: text.index("releases.json sha256 ")] + f"releases.json sha256 {sha}\n"
            (out / "releases.json.sig").write_text(retired.sign(text))
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url, "--key", old_key))
        finally:
            server.shutdown()
            server.server_close()
        assert p.returncode == 1, p.stdout + p.stderr
        failed = [x for x in p.stderr.splitlines() if x.startswith("FAILED ")]
        assert len(failed) == 1, p.stderr
        assert failed[0].startswith(
            "FAILED archive: releases.json.sig: the note is not signed by rollwatch.test/log"
        ), p.stderr

    @staticmethod
    async def halfway_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path, Path]:
        """An export, and a second one into a copy of it stopped halfway as ``publish export``
        leaves the directory then: the open folder's new manifest and chunk in place, the index,
        its signature and the top-level files not yet, ``.export-in-progress`` there. The command
        that audits, the finished export, the halfway one."""
        import shutil

        from tests.integrity.test_tlog_tiles import add_released

        async with exporting(tmp_path, monkeypatch) as (live, run, out):
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
            halfway = tmp_path / "halfway"
            shutil.copytree(out, halfway)
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
        for name in ("MANIFEST.json", "results-0002.jsonl"):
            shutil.copy2(this_folder(out) / name, this_folder(halfway) / name)
        (halfway / ".export-in-progress").touch()
        return [sys.executable, "-m", "rollwatch", "--config", str(live.config_file), "audit"], out, halfway

    async def test_an_audit_during_an_honest_export_waits_for_it_and_passes(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An audit of a directory an honest export is writing into (its new manifest beside the
        old signed index) says it waits, and passes once the export has finished; before, it
        failed at once: ``FAILED archive: … MANIFEST.json is not the manifest the signed
        releases.json names``, exit 1."""
        import shutil

        from tests.integrity.test_tlog_tiles import static_server

        command, out, halfway = await self.halfway_export(tmp_path, monkeypatch)
        with static_server(halfway) as url:
            async with await anyio.open_process([*command, "--url", url]) as proc:
                assert proc.stdout is not None
                assert proc.stderr is not None
                err = b""
                with anyio.fail_after(60):
                    while b"waiting for it to finish" not in err:
                        try:
                            err += await proc.stderr.receive()
                        except (anyio.EndOfStream, anyio.ClosedResourceError):
                            break  # it ended without waiting
                assert f"an export is being written into {url}" in err.decode(), err
                # The export finishes: the index, its signature and the top-level files, then the
                # mark removed.
                shutil.copytree(out, halfway, dirs_exist_ok=True)
                (halfway / ".export-in-progress").unlink()
                with anyio.fail_after(60):
                    async for chunk in proc.stderr:
                        err += chunk
                    stdout = b"".join([c async for c in proc.stdout])
                    await proc.wait()
        assert proc.returncode == 0, (stdout + err).decode()
        assert err.decode().count("waiting for it to finish") == 1, err
        assert stdout.decode().splitlines()[-1] == "ok", stdout

    async def test_a_halfway_export_without_its_mark_fails_at_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same directory without ``.export-in-progress`` (no export is running: someone put
        another manifest in place) fails as before, without waiting."""
        from tests.integrity.test_tlog_tiles import static_server

        command, _, halfway = await self.halfway_export(tmp_path, monkeypatch)
        (halfway / ".export-in-progress").unlink()
        with static_server(halfway) as url:
            p = await anyio.to_thread.run_sync(
                lambda: subprocess.run([*command, "--url", url], capture_output=True, text=True, timeout=60)
            )
        assert p.returncode == 1, p.stdout + p.stderr
        assert "waiting" not in p.stderr, p.stderr
        assert "MANIFEST.json is not the manifest the signed releases.json names" in p.stderr, p.stderr

    async def test_a_mark_that_stays_only_delays_the_failure(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A mark that never goes away (served by whoever holds the host, or an export that died):
        after ``--export-wait`` the audit fails as it would have, saying an export was in
        progress. The mark never turns a failure into a pass."""
        from tests.integrity.test_tlog_tiles import static_server

        command, _, halfway = await self.halfway_export(tmp_path, monkeypatch)
        with static_server(halfway) as url:
            with anyio.fail_after(60):
                start = anyio.current_time()
                p = await anyio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [*command, "--url", url, "--export-wait", "2s"],
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                )
                waited = anyio.current_time() - start
        assert p.returncode == 1, p.stdout + p.stderr
        assert waited >= 2, waited
        assert p.stderr.count("waiting for it to finish") == 1, p.stderr
        failed = [x for x in p.stderr.splitlines() if x.startswith("FAILED ")]
        assert len(failed) == 1, p.stderr
        assert "MANIFEST.json is not the manifest the signed releases.json names" in failed[0], p.stderr
        assert failed[0].endswith(
            f"(an export was being written into {url.rstrip('/')}/ and .export-in-progress was still"
            " served after waiting 2 s: not checked again)"
        ), p.stderr

    async def test_an_unsigned_export_is_checked_line_by_line_and_fails_as_unsigned(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An export made before exports were signed (no ``releases.json.sig``; the same as one
        whose signature was removed, which audit cannot tell apart) has every line checked as
        before, shown, and then fails as unsigned (exit 1): passing it would let whoever holds
        the host remove the signature to hide a deletion. An export that cannot read the key
        says so, and writes none."""
        from tests.integrity.test_tlog_tiles import add_released, static_server

        async with exporting(tmp_path, monkeypatch) as (live, run, out):
            await add_released(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
            assert p.returncode == 0, p.stderr
        (out / "releases.json.sig").unlink()  # as the previous release wrote it
        with static_server(out) as url:
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url))
        assert p.returncode == 1, p.stdout + p.stderr
        assert "archive: 2 results of results.jsonl in the signed tree, as their lines say: ok" in p.stdout
        assert "archive: 2 results of the release folders' chunks in the signed tree" in p.stdout
        assert (
            p.stderr.strip()
            .splitlines()[-1]
            .startswith(
                "FAILED archive: releases.json is not signed (no releases.json.sig: an export by an older"
                " rollwatch, or its signature removed)"
            )
        ), p.stderr
        assert "\nok\n" not in p.stdout

        # The key out of reach of the exporter (a systemd credential of the daemon's unit only).
        key = next(tmp_path.glob("checkpoint.key*"))
        key.rename(tmp_path / "elsewhere.key")
        p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out)))
        assert p.returncode == 0, p.stderr
        assert "releases.json NOT signed (the checkpoint key cannot be read here)" in p.stdout, p.stdout
        assert not (out / "releases.json.sig").exists()

        # As the README says to run it there: the unit's credentials folder named for this command.
        creds = tmp_path / "credentials"
        creds.mkdir()
        (tmp_path / "elsewhere.key").rename(creds / "checkpoint-key")
        env = {"CREDENTIALS_DIRECTORY": str(creds)}
        p = await anyio.to_thread.run_sync(lambda: run("publish", "export", str(out), env=env))
        assert p.returncode == 0, p.stderr
        assert "NOT signed" not in p.stdout, p.stdout
        with static_server(out) as url:
            p = await anyio.to_thread.run_sync(lambda: run("audit", "--url", url, env=env))
        assert p.returncode == 0, p.stdout + p.stderr


class TestKilled:
    async def test_kills_at_later_points_lose_and_duplicate_nothing(self, tmp_path: Path) -> None:
        """``publish export`` killed with SIGKILL once its chunk is in place, once it has appended
        to results.jsonl, once it has rewritten the feeds: each time the index still describes
        verifying folders, and the next export files every result exactly once, leaving no
        temporary file behind."""
        import signal
        import time

        now = datetime.now(UTC)
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
        out = tmp_path / "site"
        this = out / "releases" / period_of(now.timestamp())
        cmd = [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)]
        filed: list[str] = []

        def mtime(p: Path) -> int:
            return p.stat().st_mtime_ns if p.exists() else 0

        def kill_when(ready: Any) -> int:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if ready():
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.001)  # a poll of the file system, not a wait for time to pass
            return proc.wait()

        kills = 0
        for k, point in enumerate(("chunk", "results.jsonl", "feed.json")):
            async with (
                SQLiteEventStore(tmp_path / "events.db") as store,
                ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
            ):
                log = Log(store, pdb)
                if k == 0:
                    await start_run(store, log.run_id)
                filed += await log.results(300, month_start(now), problem_id=f"k{k}", answer="x = 1\n" * 500)
            chunk = this / f"results-{k + 1:04d}.jsonl"
            marks = {p: mtime(out / p) for p in ("results.jsonl", "feed.json")}
            ready = {
                "chunk": chunk.exists,
                "results.jsonl": lambda m=marks: mtime(out / "results.jsonl") != m["results.jsonl"],
                "feed.json": lambda m=marks: mtime(out / "feed.json") != m["feed.json"],
            }[point]
            rc = await anyio.to_thread.run_sync(kill_when, ready)
            kills += rc == -signal.SIGKILL
            if (out / "releases.json").exists():
                assert check_export(out) == [], point
            p = await anyio.to_thread.run_sync(
                lambda: subprocess.run(cmd, capture_output=True, text=True, check=False)
            )
            assert p.returncode == 0, p.stderr
            assert check_export(out) == [], point
            assert sorted(folder_ids(out, this.name)) == sorted(filed), point
            assert sorted(top_ids(out)) == sorted(filed), point
            assert sorted(x.name for x in (this / "rollouts").iterdir()) == sorted(f"{i}.json" for i in filed)
            assert not list(out.rglob("*.tmp")), point
        assert kills >= 2, "the exports finished before they could be killed"


class TestEmbargo:
    async def test_the_embargo_boundary_and_flips(self, log: Log, tmp_path: Path) -> None:
        """A result public from T is in no file of an export at T less a microsecond and in the
        export at T, once; one flipped to fail while under embargo is never released nor exported; one flipped to fail after its export, then back to
        pass, gets its mark and then loses it, its closed-folder copy unchanged."""
        from rollwatch.publication.release import release_due
        from tests.publication.test_flip_attacks import rescore

        now = datetime.now(UTC)
        out = tmp_path / "site"
        t = now - timedelta(minutes=1)
        [at_t] = await log.results(1, t, answer="AT-T")
        [flipped] = await log.results(1, now + timedelta(hours=1), problem_id="p2", answer="FLIPPED-FAIL")
        [old] = await log.results(1, month_start(now, 2), problem_id="p3")
        await rescore(log.store, flipped, passed=False, previous=True, decide=False)

        def everything() -> bytes:
            return b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())

        await log.export(out, now=t - timedelta(microseconds=1))
        assert at_t.encode() not in everything()
        assert b"AT-T" not in everything()
        s = await log.export(out, now=t)
        assert s.released == 1
        assert top_ids(out).count(at_t) == 1
        await release_due(log.store, log.pdb, now=now + timedelta(hours=2))
        s = await log.export(out, now=now + timedelta(hours=2))
        assert s.released == 0
        assert flipped.encode() not in everything()
        assert b"FLIPPED-FAIL" not in everything()

        period = out / "releases" / period_of(month_start(now, 2).timestamp())
        kept = (period / "rollouts" / f"{old}.json").read_bytes()
        await rescore(log.store, old, passed=False, previous=True, decide=False)
        await log.export(out, now=now + timedelta(hours=2))
        assert json.loads((out / "rollouts" / f"{old}.json").read_text())["superseded"] is True
        assert [json.loads(x)["rollout_id"] for x in (out / "superseded.jsonl").read_text().splitlines()] == [
            old
        ]
        await rescore(log.store, old, passed=True, previous=False, decide=False)
        await log.export(out, now=now + timedelta(hours=2))
        assert (period / "rollouts" / f"{old}.json").read_bytes() == kept
        assert (out / "superseded.jsonl").read_text() == ""
        assert json.loads((out / "rollouts" / f"{old}.json").read_text())["superseded"] is False
        assert sorted(top_ids(out)) == sorted([at_t, old])
        assert check_export(out) == []
