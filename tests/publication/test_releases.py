"""``publish export`` as release folders: written once, closed folders never touched again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from rollwatch.events import PublicReleased, RolloutRescored, rollout_stream
from rollwatch.projections import ProjectionDB
from rollwatch.publication.export import ExportSummary, export_public
from rollwatch.publication.release import release_due
from rollwatch.publication.releases import check_export, period_of
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.test_tlog_tiles import static_server
from tests.publication.helpers import add_rollout, all_projections, new_run_id, start_run

pytestmark = pytest.mark.anyio

BASE = "https://example.org/rw/"


def month_start(now: datetime, back: int = 0) -> datetime:
    """The first instant of the month ``back`` months before ``now``'s."""
    y, m = now.year, now.month - back
    while m < 1:
        y, m = y - 1, m + 12
    return datetime(y, m, 1, tzinfo=UTC)


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (inode, mtime in ns, SHA-256)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (
                st.st_ino,
                st.st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


def folder_ids(out: Path, period: str) -> list[str]:
    """The rollout ids in a folder's chunks, in order."""
    folder = out / "releases" / period
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    ids = []
    for c in manifest["chunks"]:
        ids += [json.loads(x)["rollout_id"] for x in (folder / c["file"]).read_text().splitlines()]
    return ids


class Log:
    """A log and its projections, with results made public at chosen dates."""

    def __init__(self, store: SQLiteEventStore, pdb: ProjectionDB) -> None:
        self.store, self.pdb = store, pdb
        self.run_id = new_run_id()

    async def results(self, n: int, not_before: datetime, *, release: bool = True, **kw: Any) -> list[str]:
        ids = [
            await add_rollout(self.store, self.run_id, passed=True, not_before=not_before, sample=i, **kw)
            for i in range(n)
        ]
        if release:
            await release_due(self.store, self.pdb)
        return ids

    async def export(self, out: Path, now: datetime | None = None) -> ExportSummary:
        return await export_public(self.store, self.pdb, out, base_url=BASE, embargo_s=0.0, now=now)


class TestFolders:
    async def test_a_second_export_writes_only_the_new_month(self, log: Log, tmp_path: Path) -> None:
        """Results public two months ago go into that month's folder, closed at once; a month of
        new results later, the second export writes that month's folder and the top-level files
        only: every byte, inode and mtime of the older folder stays as it was, and a plain file
        server serves a tree whose manifests verify."""
        now = datetime.now(UTC)
        old, new = period_of(month_start(now, 2).timestamp()), period_of(month_start(now, 1).timestamp())
        first = await log.results(3, month_start(now, 2) + timedelta(days=3))
        out = tmp_path / "site"
        s1 = await log.export(out)
        assert (s1.released, s1.total, s1.closed) == (3, 3, (old,))
        before = snapshot(out / "releases" / old)
        assert set(before) == {
            "MANIFEST.json",
            "LICENSE",
            "results-0001.jsonl",
            *(f"rollouts/{i}.json" for i in first),
        }
        top_before = snapshot(out)

        second = await log.results(4, month_start(now, 1) + timedelta(hours=5))
        s2 = await log.export(out)
        assert (s2.released, s2.total, s2.closed) == (4, 7, (new,))
        assert snapshot(out / "releases" / old) == before
        after = snapshot(out)
        touched = {p for p, v in after.items() if top_before.get(p) != v}
        assert {p for p in touched if p.startswith("releases/")} == {
            f"releases/{new}/{f}"
            for f in (
                "MANIFEST.json",
                "LICENSE",
                "results-0001.jsonl",
                *(f"rollouts/{i}.json" for i in second),
            )
        }
        # Only what is new is written: files counted by the export itself, tiles aside.
        assert s2.files <= 4 + len(second) + 3 + 4
        assert sorted(folder_ids(out, new)) == sorted(second)
        index = json.loads((out / "releases.json").read_text())
        assert [(r["period"], r["state"], r["results"]) for r in index["releases"]] == [
            (old, "closed", 3),
            (new, "closed", 4),
        ]
        assert index["licence"]["id"] == "CC-BY-4.0"
        assert check_export(out) == []

        def served(url: str) -> None:
            with httpx.Client(timeout=30) as c:
                idx = c.get(url + "releases.json").json()
                for entry in idx["releases"]:
                    raw = c.get(url + entry["manifest"]).content
                    assert hashlib.sha256(raw).hexdigest() == entry["manifest_sha256"]
                    manifest = json.loads(raw)
                    assert manifest["state"] == "closed"
                    for rel, meta in manifest["files"].items():
                        body = c.get(url + entry["path"] + rel).content
                        assert hashlib.sha256(body).hexdigest() == meta["sha256"], rel
                for rid in first + second:
                    assert c.get(url + f"rollouts/{rid}.json").json()["rollout_id"] == rid

        with static_server(out) as url:
            await anyio.to_thread.run_sync(served, url)

    async def test_the_open_month_grows_by_one_chunk_per_export(self, log: Log, tmp_path: Path) -> None:
        """This month's folder stays open: each export adds a chunk and never rewrites the earlier
        one; results.jsonl at the top holds every filed result in filing order (each export
        appends its own); a result public in a month already closed goes into the open folder."""
        now = datetime.now(UTC)
        this = period_of(now.timestamp())
        out = tmp_path / "site"
        a = await log.results(2, month_start(now))
        await log.export(out)
        chunk1 = (out / "releases" / this / "results-0001.jsonl").read_bytes()
        old = await log.results(1, month_start(now, 3))  # before: nothing of that month yet
        await log.export(out)
        b = await log.results(2, month_start(now), problem_id="p2")
        late = await log.results(1, month_start(now, 3), problem_id="p3")  # its month is closed now
        await log.export(out)
        assert (out / "releases" / this / "results-0001.jsonl").read_bytes() == chunk1
        got = folder_ids(out, this)
        assert sorted(got[:2]) == sorted(a)
        assert sorted(got[2:]) == sorted(b + late)
        assert folder_ids(out, period_of(month_start(now, 3).timestamp())) == old
        top = [json.loads(x)["rollout_id"] for x in (out / "results.jsonl").read_text().splitlines()]
        assert top == got[:2] + old + got[2:]
        manifest = json.loads((out / "releases" / this / "MANIFEST.json").read_text())
        assert manifest["state"] == "open"
        assert [c["file"] for c in manifest["chunks"]] == ["results-0001.jsonl", "results-0002.jsonl"]
        assert check_export(out) == []

    async def test_embargoed_results_never_appear(self, log: Log, tmp_path: Path) -> None:
        """A result under embargo is in no file of the export; one released ahead of its date (a
        forged or early release) appears only once its date has passed, in a later export."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        shown = await log.results(1, month_start(now, 1))
        [hidden] = await log.results(1, now + timedelta(days=30), answer="SECRET-ANSWER-1")
        [early] = await log.results(1, now + timedelta(hours=1), release=False, answer="SECRET-ANSWER-2")
        await log.store.append(rollout_stream(early), [PublicReleased(rollout_id=early)])
        await log.export(out)
        for p in out.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                for secret in (hidden, early, "SECRET-ANSWER"):
                    assert secret.encode() not in data, p
        assert folder_ids(out, period_of(month_start(now, 1).timestamp())) == shown
        s = await log.export(out, now=now + timedelta(hours=2))
        assert s.released == 1
        assert (out / "rollouts" / f"{early}.json").is_file()
        assert hidden.encode() not in b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
        assert check_export(out) == []

    async def test_a_superseded_result_is_marked_outside_its_closed_folder(
        self, log: Log, tmp_path: Path
    ) -> None:
        """A re-score that fails a result already in a closed folder leaves the folder's bytes as
        they were: superseded.jsonl and the top-level rollouts/ID.json carry the mark."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        [rid] = await log.results(1, month_start(now, 2))
        await log.export(out)
        period = period_of(month_start(now, 2).timestamp())
        folder = snapshot(out / "releases" / period)
        await log.store.append(
            rollout_stream(rid),
            [
                RolloutRescored(
                    rollout_id=rid,
                    problem_id="p1",
                    passed=False,
                    score=0.0,
                    scorer="python-function",
                    problem_hash="h2",
                    scorer_version="1",
                    rescore_id="r1",
                    previous_passed=True,
                )
            ],
        )
        await log.export(out)
        assert snapshot(out / "releases" / period) == folder
        [mark] = [json.loads(x) for x in (out / "superseded.jsonl").read_text().splitlines()]
        assert mark["rollout_id"] == rid
        assert mark["superseded_by_problem_version"] == "h2"
        top = json.loads((out / "rollouts" / f"{rid}.json").read_text())
        assert top["superseded"] is True
        kept = json.loads((out / "releases" / period / "rollouts" / f"{rid}.json").read_text())
        assert kept["superseded"] is False
        assert check_export(out) == []

    async def test_a_folder_with_another_index_is_refused(self, log: Log, tmp_path: Path) -> None:
        """An export into a folder whose releases.json is not ours (or not JSON) stops with a
        message naming the file, and writes no release folder."""
        from rollwatch.errors import UsageError

        for text in ("{not json", '{"format": "something-else/1"}'):
            out = tmp_path / "site"
            out.mkdir(exist_ok=True)
            (out / "releases.json").write_text(text)
            with pytest.raises(UsageError, match=r"releases\.json: not a rollwatch release index"):
                await log.export(out)
            assert sorted(p.name for p in out.iterdir()) == ["releases.json"]


class TestCrash:
    async def test_kill_9_mid_export_leaves_the_previous_export_and_a_rerun_completes(
        self, tmp_path: Path
    ) -> None:
        """``publish export`` killed with SIGKILL while it writes new results leaves the previous
        export valid (its index unchanged, every manifest verifying); the next export completes it,
        each result exactly once."""
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
            first = await log.results(5, month_start(now, 1))
            await log.export(out)
            index = (out / "releases.json").read_bytes()
            long = "x = 1\n" * 2000
            more = []
            for k in range(8):
                more += await log.results(150, month_start(now), problem_id=f"q{k}", answer=long)
        this = out / "releases" / period_of(now.timestamp())

        def run_and_kill() -> int:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                files = this / "rollouts"
                if files.is_dir() and sum(1 for _ in files.iterdir()) > 20:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)  # a poll of the file system, not a wait for time to pass
            return proc.wait()

        rc = await anyio.to_thread.run_sync(run_and_kill)
        assert rc == -signal.SIGKILL, "the export finished before it could be killed"
        assert (out / "releases.json").read_bytes() == index
        assert check_export(out) == []

        def rerun() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)],
                capture_output=True,
                text=True,
                check=False,
            )

        p = await anyio.to_thread.run_sync(rerun)
        assert p.returncode == 0, p.stderr
        assert check_export(out) == []
        assert sorted(folder_ids(out, this.name)) == sorted(more)
        assert sorted(x.name for x in (this / "rollouts").iterdir()) == sorted(f"{i}.json" for i in more)
        assert sorted(folder_ids(out, period_of(month_start(now, 1).timestamp()))) == sorted(first)
        assert not list(out.rglob("*.tmp"))
        top = [json.loads(x)["rollout_id"] for x in (out / "results.jsonl").read_text().splitlines()]
        assert sorted(top) == sorted(first + more), "results.jsonl holds each filed result once"

    async def test_a_kill_after_the_manifests_before_the_index_is_rolled_back(
        self, log: Log, tmp_path: Path
    ) -> None:
        """The disk as an export killed after writing its folders' manifests but before the index
        leaves it (the old ``releases.json``, the in-progress mark): the next export forgets the
        chunk the index never named, reopens the folder it closed, and files each result once."""
        now = datetime.now(UTC)
        out = tmp_path / "site"
        first = await log.results(2, month_start(now, 2))
        await log.export(out)
        index = (out / "releases.json").read_bytes()
        second = await log.results(3, month_start(now, 1))
        this = await log.results(2, month_start(now))
        await log.export(out)
        (out / "releases.json").write_bytes(index)
        (out / ".export-in-progress").write_bytes(b"")
        s = await log.export(out)
        assert s.released == 5
        assert sorted(folder_ids(out, period_of(month_start(now, 1).timestamp()))) == sorted(second)
        assert sorted(folder_ids(out, period_of(now.timestamp()))) == sorted(this)
        assert sorted(folder_ids(out, period_of(month_start(now, 2).timestamp()))) == sorted(first)
        assert check_export(out) == []
        assert not (out / ".export-in-progress").exists()
        top = [json.loads(x)["rollout_id"] for x in (out / "results.jsonl").read_text().splitlines()]
        assert sorted(top) == sorted(first + second + this), "the killed export's lines are cut off"


class TestProofs:
    async def test_results_are_filed_only_under_a_signed_checkpoint(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A folder holds only results whose every event the export's signed checkpoint covers
        (a complete proof bundle, checked end to end against the folder's manifest checkpoint);
        one released after the checkpoint waits for an export under a later one."""
        from tests.integrity.test_tlog_tiles import add_released, fill, live_log, verify_bundle

        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        out = tmp_path / "site"
        async with live_log(tmp_path) as live:
            rid, _ = await fill(live)
            later = await add_released(live.store, live.pdb)
            kw: dict[str, Any] = {"base_url": BASE, "embargo_s": 0.0, "tree": live.integrity.tree}
            s = await export_public(live.store, live.pdb, out, **kw)
            assert s.released == 1
            await live.integrity.final_checkpoint()
            s = await export_public(live.store, live.pdb, out, **kw)
            assert s.released == 1
            async with httpx.AsyncClient(base_url=live.url) as c:
                vkey = (await c.get("/public/key")).text
        this = out / "releases" / period_of(datetime.now(UTC).timestamp())
        manifest = json.loads((this / "MANIFEST.json").read_text())
        sizes = [c["checkpoint"]["tree_size"] for c in manifest["chunks"]]
        assert sizes[0] < sizes[1]
        for chunk, want in zip(manifest["chunks"], ([rid], [later]), strict=True):
            lines = [json.loads(x) for x in (this / chunk["file"]).read_text().splitlines()]
            assert [x["rollout_id"] for x in lines] == want
            for line in lines:
                assert line["proof"]["complete"]
                assert line["proof"]["checkpoint"] == chunk["checkpoint"]["note"]
                verify_bundle(line, vkey)
        assert check_export(out) == []
