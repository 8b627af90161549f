"""The publication decision recorded with each verdict (``rollwatch.publication.policy``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rollwatch.config import PublicationConfig
from rollwatch.events import RolloutRescored, RolloutScored, parse_rfc3339
from rollwatch.publication.policy import decide

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def verdict(passed: bool) -> RolloutScored:
    return RolloutScored(rollout_id="r-1", passed=passed, score=float(passed), scorer="stdio")


class TestDecide:
    def test_a_pass_goes_to_subscribers_now_and_to_the_public_after_the_embargo(self) -> None:
        """A passed verdict: subscribers at once, the public at score time + embargo."""
        subscribers, public = decide(PublicationConfig(embargo=3600), verdict(True), NOW)
        assert (subscribers.rollout_id, subscribers.audience) == ("r-1", "subscribers")
        assert parse_rfc3339(subscribers.not_before) == NOW
        assert (public.rollout_id, public.audience, public.embargo_s) == ("r-1", "public", 3600)
        assert parse_rfc3339(public.not_before) == NOW + timedelta(hours=1)

    def test_a_failure_and_a_scorer_error_go_to_subscribers_only(self) -> None:
        """Only positives are ever public: a failed verdict (a scorer error included)
        is decided for subscribers, and for the public "none"."""
        decisions = decide(PublicationConfig(embargo=0), verdict(False), NOW)
        assert [d.audience for d in decisions] == ["subscribers", "none"]


def rescored(passed: bool) -> RolloutRescored:
    return RolloutRescored(
        rollout_id="r-1",
        problem_id="p1",
        passed=passed,
        score=float(passed),
        scorer="stdio",
        problem_hash="sha256:new",
        scorer_version="v2",
        previous_passed=not passed,
        previous_problem_hash="sha256:old",
        rescore_id="rs-1",
    )


class TestAsManyDecisionsWhateverTheVerdict:
    """The log's size is public (every checkpoint carries it): a verdict must append as
    many decisions whether it passed or not, or a size comparison counts the passes
    still under embargo."""

    def test_a_failure_is_decided_none_beside_subscribers(self) -> None:
        """Only positives are ever public: a failed verdict (a scorer error included)
        goes to subscribers, and its second decision says "nothing for the public", with
        the embargo in force (its run's figures wait for it, as for a pass)."""
        subscribers, none = decide(PublicationConfig(embargo=3600), verdict(False), NOW)
        assert (subscribers.audience, none.rollout_id, none.audience) == ("subscribers", "r-1", "none")
        assert parse_rfc3339(none.not_before) == NOW
        assert none.embargo_s == 3600

    @pytest.mark.parametrize(
        "decided",
        [(), ("subscribers",), ("subscribers", "public"), ("public",)],
        ids=["first", "subscribers-decided", "both-decided", "public-only"],
    )
    def test_pass_and_fail_make_as_many_decisions(self, decided: tuple[str, ...]) -> None:
        """First verdicts and re-scores, with or without decisions already made: a pass
        and a failure get the same number of decisions, always exactly one that is not
        "subscribers" (public or none), and "subscribers" only while undecided."""
        policy = PublicationConfig(embargo=3600)
        subscribers = [] if "subscribers" in decided else ["subscribers"]
        for make in (verdict, rescored) if not decided else (rescored,):
            got = {
                passed: [d.audience for d in decide(policy, make(passed), NOW, decided)]
                for passed in (True, False)
            }
            public = "none" if "public" in decided else "public"
            assert got == {True: [*subscribers, public], False: [*subscribers, "none"]}, make.__name__
            assert len(got[True]) == len(got[False])

    def test_a_first_verdict_is_always_two_decisions_a_rescore_always_one(self) -> None:
        policy = PublicationConfig(embargo=0)
        for passed in (True, False):
            assert len(decide(policy, verdict(passed), NOW)) == 2
            for decided in (("subscribers",), ("subscribers", "public")):
                assert len(decide(policy, rescored(passed), NOW, decided)) == 1
