"""The public page at scale and under embargo: natural problem order, a chart whose time
axis never repeats a label, releases grouped by day and model, and counts (never details)
of what is solved under embargo, with the switch that turns them off."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollwatch.publication import release_due
from rollwatch.publication.feeds import svg_chart, time_ticks
from rollwatch.publication.public import Point, Series
from tests.publication.helpers import add_rollout, finish_run, make_config, new_run_id, serving, start_run

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 7, 13, tzinfo=UTC).timestamp()


class TestTimeAxis:
    @given(
        start=st.floats(min_value=T0 - 5e8, max_value=T0 + 5e8),
        span=st.floats(min_value=60.0, max_value=20 * 365 * 86400.0),
    )
    def test_ticks_are_few_in_range_and_distinct(self, start: float, span: float) -> None:
        """From a minute to twenty years: at least one and at most six ticks, inside the range,
        in order, every label different."""
        ticks = time_ticks(start, start + span)
        assert 1 <= len(ticks) <= 6, ticks
        labels = [label for _, label in ticks]
        assert len(set(labels)) == len(labels)
        assert all(start <= t <= start + span for t, _ in ticks)
        assert [t for t, _ in ticks] == sorted(t for t, _ in ticks)

    @pytest.mark.parametrize(("span", "shape"), [(7 * 86400, r"\d\d-\d\d"), (2 * 365 * 86400, r"\d{4}-\d\d")])
    def test_one_week_shows_days_two_years_show_months(self, span: float, shape: str) -> None:
        """A week of runs is labelled by day, two years by month."""
        ticks = time_ticks(T0, T0 + span)
        assert len(ticks) >= 3
        assert all(re.fullmatch(shape, label) for _, label in ticks), ticks

    def test_the_chart_labels_each_axis_once(self) -> None:
        """The SVG has one title per axis and no tick label twice, for runs minutes apart too."""
        pts = [Point(at="", ts=T0 + 60 * i, run_id=f"r{i}", rollouts=10, passed=i) for i in range(5)]
        svg = svg_chart([Series("p", "m", pts)])
        texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
        assert texts.count("pass rate") == 1
        assert texts.count("run finished (UTC)") == 1
        assert len(texts) == len(set(texts))


async def _scored(env, run_id: str, model: str, pid: str, *, released: bool, sample: int = 0) -> str:  # type: ignore[no-untyped-def]
    past = datetime.now(UTC) - timedelta(seconds=1)
    if released:
        return await add_rollout(
            env.store, run_id, passed=True, model=model, problem_id=pid, sample=sample, not_before=past
        )
    return await add_rollout(
        env.store, run_id, passed=True, model=model, problem_id=pid, sample=sample, embargo_s=30 * 86400
    )


class TestPage:
    async def test_problems_in_natural_order_as_rows_of_a_scrollable_table(self, tmp_path: Path) -> None:
        """Problem ids sort 1, 2, 10; problems are rows and models columns inside a scroll box,
        so 200 problems × 20 models stay readable."""
        async with serving(tmp_path) as env:
            rid = new_run_id()
            await start_run(env.store, rid)
            for i in (10, 2, 1, 100, 20):
                await _scored(env, rid, "gpt-x", f"p{i}", released=True)
            await finish_run(env.store, rid)
            await release_due(env.store, env.pdb)
            html = (await env.client.get("/public/")).text
            table = html.split('id="by-problem"')[1].split("<tbody>")[1].split("</table>")[0]
            assert '<div class="scroll heat">' in html.split('id="by-problem"')[0][-200:]
            rows = re.findall(r'<tr><th class="p">([^<]+)</th>', table)
            assert rows == ["p1", "p2", "p10", "p20", "p100"]

    async def test_releases_grouped_by_day_and_model(self, tmp_path: Path) -> None:
        """Recent releases: one heading per day, one group per model with its count and problems."""
        async with serving(tmp_path) as env:
            rid = new_run_id()
            await start_run(env.store, rid)
            for model in ("gpt-x", "gpt-y"):
                for pid in ("p1", "p2", "p10"):
                    await _scored(env, rid, model, pid, released=True)
            await finish_run(env.store, rid)
            await release_due(env.store, env.pdb)
            html = (await env.client.get("/public/")).text
            recent = html.split("<h2>Recent releases</h2>")[1]
            assert len(re.findall(r"<h3>\d{4}-\d\d-\d\d</h3>", recent)) == 1
            groups = re.findall(r'<details class="group">\s*<summary>([^<]+)</summary>', recent)
            assert groups == [
                "openai/gpt-x: 3 solutions of 3 problems (p1, p2, p10)",
                "openai/gpt-y: 3 solutions of 3 problems (p1, p2, p10)",
            ]

    async def test_embargoed_counts_without_details(self, tmp_path: Path) -> None:
        """During the embargo the page says, per model, how many problems are solved and when
        the next release is due, and nothing else: no problem id, rollout id or answer."""
        async with serving(tmp_path) as env:
            rid = new_run_id()
            await start_run(env.store, rid)
            hidden = [
                await _scored(env, rid, "gpt-x", "secret-problem-a", released=False),
                await _scored(env, rid, "gpt-x", "secret-problem-a", released=False, sample=1),
                await _scored(env, rid, "gpt-x", "secret-problem-b", released=False),
            ]
            await _scored(env, rid, "gpt-x", "p-public", released=True)
            await add_rollout(env.store, rid, passed=False, model="gpt-z", problem_id="secret-problem-c")
            await finish_run(env.store, rid)
            await release_due(env.store, env.pdb)
            html = (await env.client.get("/public/")).text
            table = html.split('id="embargoed"')[1].split("</table>")[0]
            rows = re.findall(
                r"<tr><td>([^<]*)</td><td>([^<]*)</td><td class=\"n\">(\d+)</td><td class=\"n\">(\d+)</td><td>([^<]*)</td></tr>",
                table,
            )
            assert len(rows) == 1
            provider, model, problems, solutions, due = rows[0]
            assert (provider, model, problems, solutions) == ("openai", "gpt-x", "2", "3")
            due_at = datetime.strptime(due, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
            assert timedelta(days=29) < due_at - datetime.now(UTC) < timedelta(days=31)
            assert "secret-problem" not in html
            assert not any(h in html for h in hidden)
            assert "p-public" in html

    async def test_the_switch_turns_the_counts_off(self, tmp_path: Path) -> None:
        """``publication.embargo_counts = false``: no counts section at all."""
        config = make_config(publication={"embargo_counts": False})
        async with serving(tmp_path, config) as env:
            rid = new_run_id()
            await start_run(env.store, rid)
            await _scored(env, rid, "gpt-x", "secret-problem-a", released=False)
            await finish_run(env.store, rid)
            html = (await env.client.get("/public/")).text
            assert 'id="embargoed"' not in html
            assert "Under embargo" not in html

    async def test_the_switch_is_a_boolean(self) -> None:
        """A string where a boolean belongs is a configuration error naming the key."""
        from rollwatch.errors import ConfigError

        with pytest.raises(ConfigError, match="embargo_counts"):
            make_config(publication={"embargo_counts": "sometimes"})
