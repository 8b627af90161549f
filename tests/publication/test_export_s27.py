"""Session 27's attacks on ``publish export`` (helper s27-emb): exports with another log or
clock into a folder an export made, and what the next export does with them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollwatch.errors import UsageError
from rollwatch.projections import ProjectionDB
from rollwatch.publication.releases import check_export, period_of
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import all_projections, start_run
from tests.publication.test_releases import Log, folder_ids, month_start

pytestmark = pytest.mark.anyio


class TestAnotherLog:
    async def test_an_export_of_another_log_into_a_folder_is_refused(self, log: Log, tmp_path: Path) -> None:
        """DIR holds log A's export; ``publish export`` run with another configuration (log B,
        longer than A) into DIR. Before, B's results were filed beside A's in the same folders
        and the index went on as if one log had made them all."""
        now = datetime.now(UTC)
        a = await log.results(2, now - timedelta(days=2))
        out = tmp_path / "site"
        await log.export(out)
        async with (
            SQLiteEventStore(tmp_path / "b.db") as store,
            ProjectionDB(tmp_path / "b-proj.db", all_projections()) as pdb,
        ):
            other = Log(store, pdb)
            await start_run(store, other.run_id)
            await other.results(5, now - timedelta(days=1))
            with pytest.raises(UsageError, match="another log"):
                await other.export(out)
        assert sorted(folder_ids(out, month_start(now).strftime("%Y-%m"))) == sorted(a)


class TestClockAcrossExports:
    async def test_an_export_whose_clock_was_ahead_stops_the_next_in_one_line(
        self, log: Log, tmp_path: Path
    ) -> None:
        """One export on a clock 40 days ahead closes this month's folder before the month has
        ended; the next export on the right clock crashed with ``AssertionError: release
        YYYY-MM is closed`` (and so every export after it, for 40 days). It is refused now,
        naming the last export's time, and files nothing; a clock behind by less than the skew
        allowed files by the archive's time, which never goes back."""
        now = datetime.now(UTC)
        await log.results(1, now - timedelta(hours=1))
        out = tmp_path / "site"
        await log.export(out, now=now + timedelta(days=40))
        before = (out / "releases.json").read_bytes()
        await log.results(1, now - timedelta(minutes=30))
        with pytest.raises(UsageError, match="the last export into this folder was made at"):
            await log.export(out)
        assert (out / "releases.json").read_bytes() == before
        s = await log.export(out, now=now + timedelta(days=40) - timedelta(seconds=30))
        assert s.released == 1
        index = json.loads((out / "releases.json").read_text())
        assert index["exported_at"] == json.loads(before)["exported_at"]


class TestExportBesideTheRoutes:
    async def test_an_export_shows_what_the_public_routes_show_and_nothing_more(self, tmp_path: Path) -> None:
        """One log: a released pass, a released pass a re-score failed (superseded), a pass
        under embargo, a failure, a run of failures only. The export's feed.json, feed.atom,
        results.jsonl, rollouts/ and index.html name the same results as ``/public/feed.json``,
        ``/public/feed.atom``, ``/public/results.jsonl`` and ``/public/``, with the same
        supersession marks; with ``embargo_counts = false``, no model, problem or id only the
        embargoed results carry is in any exported file (with it, their model's counts are
        shown on both, as the README says)."""
        from rollwatch.publication.export import export_public
        from rollwatch.publication.release import release_due
        from tests.publication.helpers import add_rollout, finish_run, make_config, new_run_id, serving
        from tests.publication.test_flip_attacks import rescore

        now = datetime.now(UTC)
        config = make_config(publication={"embargo": "90d", "embargo_counts": False})
        async with serving(tmp_path, config) as env:
            run = new_run_id()
            await start_run(env.store, run, models=("gpt-x", "secret-model"))
            shown = await add_rollout(env.store, run, passed=True, not_before=now - timedelta(days=1))
            flipped = await add_rollout(
                env.store, run, passed=True, not_before=now - timedelta(days=1), sample=1
            )
            hidden = await add_rollout(
                env.store,
                run,
                passed=True,
                model="secret-model",
                problem_id="secret-problem",
                not_before=now + timedelta(days=30),
                sample=2,
            )
            await add_rollout(env.store, run, passed=False, sample=3, none_embargo_s=90 * 86400.0)
            await finish_run(env.store, run, rollouts=4, passed=3)
            other = new_run_id()
            await start_run(env.store, other, models=("gpt-fail",))
            await add_rollout(env.store, other, passed=False, model="gpt-fail", none_embargo_s=90 * 86400.0)
            await finish_run(env.store, other, rollouts=1, passed=0)
            await release_due(env.store, env.pdb)
            await rescore(env.store, flipped, passed=False, previous=True, decide=False)
            await release_due(env.store, env.pdb)
            out = tmp_path / "site"
            await export_public(
                env.store,
                env.pdb,
                out,
                base_url=env.base + "/public/",
                embargo_s=config.publication.embargo,
                embargo_counts=False,
            )
            live = {
                name: (await env.client.get(f"/public/{name}")).content
                for name in ("feed.json", "feed.atom", "results.jsonl", "")
            }
            for name in live:
                assert (await env.client.get(f"/public/{name}")).status_code == 200, name
        exported = {name: (out / (name or "index.html")).read_bytes() for name in live}

        def ids(body: bytes) -> set[str]:
            return {r for r in (shown, flipped, hidden) if r.encode() in body}

        for name in live:
            assert ids(exported[name]) == ids(live[name]), name
            for secret in (hidden.encode(), b"secret-model", b"secret-problem", b"gpt-fail"):
                assert secret not in exported[name], (name, secret)
                assert secret not in live[name], (name, secret)
        assert ids(exported["results.jsonl"]) == {shown, flipped}
        assert json.loads(live["feed.json"])["items"] == json.loads(exported["feed.json"])["items"]
        for rid in (shown, flipped):
            assert (await _get_json(tmp_path, rid, out)) is not None
        top = json.loads((out / "rollouts" / f"{flipped}.json").read_text())
        assert top["superseded"] is True
        assert not (out / "rollouts" / f"{hidden}.json").exists()
        everything = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file() and "tile" not in p.parts)
        for secret in (hidden.encode(), b"secret-model", b"secret-problem", b"gpt-fail"):
            assert secret not in everything, secret


async def _get_json(tmp_path: Path, rid: str, out: Path) -> dict[str, object] | None:
    p = out / "rollouts" / f"{rid}.json"
    return json.loads(p.read_text()) if p.exists() else None


class TestMonthEnds:
    async def test_a_result_public_at_the_last_and_first_microsecond_of_a_month(
        self, log: Log, tmp_path: Path
    ) -> None:
        """A result public at the month's last microsecond is filed in that month's folder, one
        public at the next month's first instant in the next; an export at that very instant
        closes the old folder with the first result only (held: new, no test filed at a month's
        edge)."""
        now = datetime.now(UTC)
        edge = month_start(now)
        before, after = period_of(month_start(now, 1).timestamp()), period_of(edge.timestamp())
        [last] = await log.results(1, edge - timedelta(microseconds=1))
        [first] = await log.results(1, edge, problem_id="p2")
        out = tmp_path / "site"
        s = await log.export(out, now=edge - timedelta(microseconds=1))
        assert (s.released, s.closed) == (1, ())
        s = await log.export(out, now=edge)
        assert (s.released, s.closed) == (1, (before,))
        assert folder_ids(out, before) == [last]
        assert folder_ids(out, after) == [first]
        assert check_export(out) == []


class TestClosedMonthReplaced:
    async def test_a_closed_month_put_back_as_an_older_export_left_it_is_refused(
        self, log: Log, tmp_path: Path
    ) -> None:
        """Last month's folder as an export made while that month was open left it (a copy
        kept from then) put in place of the closed folder: the next export refuses it and a
        mirror's check names it (held: new, the closed folder edited by a copy of itself)."""
        import shutil

        now = datetime.now(UTC)
        last = month_start(now, 1)
        period = period_of(last.timestamp())
        await log.results(1, last + timedelta(days=1))
        out = tmp_path / "site"
        await log.export(out, now=last + timedelta(days=2))
        shutil.copytree(out / "releases" / period, tmp_path / "then")
        await log.results(1, last + timedelta(days=3), problem_id="p2")
        s = await log.export(out)
        assert period in s.closed
        shutil.rmtree(out / "releases" / period)
        shutil.copytree(tmp_path / "then", out / "releases" / period)
        problems = check_export(out)
        assert [p.path for p in problems] == [f"releases/{period}/MANIFEST.json"], problems
        with pytest.raises(UsageError, match=f"not the manifest releases.json names for release {period}"):
            await log.export(out)


class TestAnotherBaseUrl:
    async def test_an_export_to_another_base_url_rewrites_the_feeds_only(
        self, log: Log, tmp_path: Path
    ) -> None:
        """An export with another base URL into a folder an export made: closed folders are not
        rewritten (they hold no URL), the feeds name the new base only, and the archive still
        checks (held: new)."""
        from rollwatch.publication.export import export_public
        from tests.publication.test_releases import snapshot

        now = datetime.now(UTC)
        await log.results(2, month_start(now, 1) + timedelta(days=1))
        out = tmp_path / "site"
        await log.export(out)
        folders = snapshot(out / "releases")
        await export_public(log.store, log.pdb, out, base_url="https://mirror.example/x", embargo_s=0.0)
        assert snapshot(out / "releases") == folders
        for name in ("feed.json", "feed.atom"):
            body = (out / name).read_text()
            assert "https://mirror.example/x/" in body
            assert "example.org/rw" not in body, name
        assert check_export(out) == []
