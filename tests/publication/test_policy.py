"""The publication decision recorded with each verdict (``rollwatch.publication.policy``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rollwatch.config import PublicationConfig
from rollwatch.events import RolloutScored, parse_rfc3339
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
        is decided for subscribers alone."""
        decisions = decide(PublicationConfig(embargo=0), verdict(False), NOW)
        assert [d.audience for d in decisions] == ["subscribers"]
