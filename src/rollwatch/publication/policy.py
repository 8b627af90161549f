"""The publication decision: who may see a verdict, and from when.

Every verdict goes to subscribers at once; a positive one (``publication.positive``:
passed) also goes to the public once the embargo has passed. The decision is made
once, when the rollout is scored, and recorded with the verdict in the same append
(``PublicationDecided``), so a later change of the embargo never reaches back to
verdicts already decided; ``release_job`` carries the public ones out when due.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from rollwatch.events import PublicationDecided, RolloutScored, rfc3339


class PublicationPolicy(Protocol):
    """What the decision reads of the ``[publication]`` table (``PublicationConfig``)."""

    @property
    def embargo(self) -> float:
        """Seconds between a verdict and its public release."""
        ...


def decide(policy: PublicationPolicy, verdict: RolloutScored, now: datetime) -> list[PublicationDecided]:
    """The decisions to record with ``verdict``, scored at ``now``."""
    rid = verdict.rollout_id
    decisions = [PublicationDecided(rollout_id=rid, audience="subscribers", not_before=rfc3339(now))]
    if verdict.passed:
        embargo = policy.embargo
        decisions.append(
            PublicationDecided(
                rollout_id=rid,
                audience="public",
                not_before=rfc3339(now + timedelta(seconds=embargo)),
                embargo_s=embargo,
            )
        )
    return decisions
