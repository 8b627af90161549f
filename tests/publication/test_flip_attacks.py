"""A re-score's flips against the public routes, as an outsider watching them would try
to read them: a flip to pass on a run already disclosed, and flips back and forth under
embargo. Nothing may show before its own release; counts never announce a result that
no longer stands."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollwatch.abc import EventStore
from rollwatch.events import (
    Event,
    PublicationDecided,
    PublicReleased,
    RolloutRescored,
    parse_rfc3339,
    rfc3339,
)
from rollwatch.publication import release_due
from rollwatch.publication.public import PublicView, public_view
from rollwatch.publication.release import caught_up, release_one
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import Env, add_rollout, finish_run, new_run_id, serving, start_run

pytestmark = pytest.mark.anyio

EMBARGO_S = 30 * 86400


async def rescore(store: EventStore, rid: str, *, passed: bool, previous: bool, decide: bool) -> None:
    """What ``rollwatch rescore`` appends on the rollout's stream: the new verdict, and
    with a flip to pass that was never decided public, its public decision."""
    ev = RolloutRescored(
        rollout_id=rid,
        problem_id="p1",
        passed=passed,
        score=float(passed),
        scorer="python-function",
        problem_hash=f"h-{uuid.uuid4().hex[:8]}",
        scorer_version="1",
        rescore_id=str(uuid.uuid4()),
        previous_passed=previous,
    )
    now = datetime.now(UTC)
    extra = [
        PublicationDecided(
            rollout_id=rid,
            audience="public",
            not_before=rfc3339(now + timedelta(seconds=EMBARGO_S)),
            embargo_s=EMBARGO_S,
        )
    ]
    await store.append(f"rollout-{rid}", [ev, *(extra if decide else [])])


async def fresh_view(env: Env) -> PublicView:
    """The public view as the routes compute it, now (the routes reuse one for seconds)."""
    await release_due(env.store, env.pdb)
    await caught_up(env.store, env.pdb)
    return await public_view(env.store, env.pdb, embargo_default=EMBARGO_S)


def counts(view: PublicView) -> list[tuple[str, str, int, int]]:
    return [(e.provider, e.model, e.problems, e.solutions) for e in view.embargoed]


def chart(view: PublicView) -> list[tuple[str, int, int]]:
    return [(p.run_id, p.passed, p.rollouts) for s in view.series for p in s.points]


class TestFlipsOnThePublicPage:
    async def test_a_flip_to_pass_on_a_disclosed_run_shows_nothing_before_its_release(
        self, tmp_path: Path
    ) -> None:
        """A run disclosed at 1/2 passed; its failure flips to pass under a 30-day embargo:
        the chart never shows 2/2 and the flipped rollout appears on no public route."""
        async with serving(tmp_path) as env:
            run = new_run_id()
            await start_run(env.store, run)
            past = datetime.now(UTC) - timedelta(seconds=1)
            await add_rollout(env.store, run, passed=True, problem_id="p0", not_before=past)
            failed = await add_rollout(env.store, run, passed=False, problem_id="p1")
            await finish_run(env.store, run, rollouts=2, passed=1)
            assert chart(await fresh_view(env)) == [(run, 1, 2)], "the run is disclosed before the flip"
            await rescore(env.store, failed, passed=True, previous=False, decide=True)
            view = await fresh_view(env)
            assert (run, 2, 2) not in chart(view)
            assert counts(view) == [("openai", "gpt-x", 1, 1)]
            assert failed not in {r.rollout_id for r in view.recent}
            for route in ("/public/", "/public/feed.json", "/public/feed.atom", "/public/results.jsonl"):
                assert failed not in (await env.client.get(route)).text, route

    async def test_counts_under_embargo_follow_flips_back_and_forth(self, tmp_path: Path) -> None:
        """A pass under embargo flipped to fail is no longer announced as solved (it will
        never be released); flipped to pass again it is, with a release date an embargo after
        the flip back (its first date was withdrawn with it; before, the first date stood, and
        a pass restored after it was released at once: ``test_attacks_emb.py``)."""
        async with serving(tmp_path) as env:
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, problem_id="p1", embargo_s=EMBARGO_S)
            await finish_run(env.store, run, rollouts=1, passed=1)
            first = await fresh_view(env)
            assert counts(first) == [("openai", "gpt-x", 1, 1)]
            await rescore(env.store, rid, passed=False, previous=True, decide=False)
            assert counts(await fresh_view(env)) == [], "a superseded result is announced as solved"
            await rescore(env.store, rid, passed=True, previous=False, decide=False)
            restored = max([r.at async for r in env.store.read(stream=f"rollout-{rid}")])
            again = await fresh_view(env)
            assert counts(again) == counts(first)
            want = rfc3339(parse_rfc3339(restored) + timedelta(seconds=EMBARGO_S))
            assert [e.next_release for e in again.embargoed] == [want]
            assert want > first.embargoed[0].next_release
            assert rid not in (await env.client.get("/public/feed.json")).text


class FlipBeforeRelease:
    """The real store, where another process (a re-score) appends a flip to fail on the
    rollout's stream just before the release job's own append lands."""

    def __init__(self, store: SQLiteEventStore) -> None:
        self.store = store
        self.flipped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def append(
        self, stream: str, events: Sequence[Event], *, expected_version: int | None = None
    ) -> Any:
        if not self.flipped and any(isinstance(ev, PublicReleased) for ev in events):
            self.flipped = True
            await rescore(
                self.store, stream.removeprefix("rollout-"), passed=False, previous=True, decide=False
            )
        return await self.store.append(stream, events, expected_version=expected_version)


class TestReleaseRace:
    async def test_a_flip_to_fail_landing_during_the_release_stops_it(self, tmp_path: Path) -> None:
        """The release job read a due pass; a re-score fails it before the release is
        appended: the release's append conflicts, it reads again, releases nothing."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            run = new_run_id()
            await start_run(store, run)
            past = datetime.now(UTC) - timedelta(seconds=1)
            rid = await add_rollout(store, run, passed=True, problem_id="p1", not_before=past)
            racing = FlipBeforeRelease(store)
            assert await release_one(racing, rid) is False  # type: ignore[arg-type]
            assert racing.flipped, "the race did not happen"
            types = [r.type async for r in store.read(stream=f"rollout-{rid}")]
            assert "PublicReleased" not in types
            assert types[-1] == "RolloutRescored"


class TestTheServedViewMovesAtOnce:
    async def test_a_release_a_mark_and_its_lifting_show_within_the_views_reuse(self, tmp_path: Path) -> None:
        """The routes reuse one public view for seconds while nothing was released or
        marked: a release, a superseded mark and the mark lifted each show on the very next
        request, never after the reuse runs out (the view is keyed on the newest release,
        the newest mark and the number of marks)."""

        async def served() -> dict[str, dict[str, Any]]:
            items = (await env.client.get("/public/feed.json")).json()["items"]
            return {i["_rollwatch"]["rollout_id"]: i["_rollwatch"] for i in items}

        past = datetime.now(UTC) - timedelta(seconds=1)
        async with serving(tmp_path) as env:
            run = new_run_id()
            await start_run(env.store, run)
            first = await add_rollout(env.store, run, passed=True, problem_id="p1", not_before=past)
            await finish_run(env.store, run, rollouts=1, passed=1)
            await release_due(env.store, env.pdb)
            assert set(await served()) == {first}
            second = await add_rollout(env.store, run, passed=True, problem_id="p1", not_before=past)
            await release_due(env.store, env.pdb)
            assert set(await served()) == {first, second}, "a release waited for the view's reuse to end"
            await rescore(env.store, first, passed=False, previous=True, decide=False)
            assert (await served())[first]["superseded"] is True, "a mark waited for the view's reuse to end"
            await rescore(env.store, second, passed=False, previous=True, decide=False)
            assert (await served())[second]["superseded"] is True
            # Lifting the older mark leaves the newest mark as it was: only the count moves.
            await rescore(env.store, first, passed=True, previous=False, decide=False)
            assert (await served())[first]["superseded"] is False, "a lifted mark waited"
