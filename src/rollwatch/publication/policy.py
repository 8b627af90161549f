"""The publication decision: who may see a verdict, and from when.

Every verdict goes to subscribers at once; a positive one (``publication.positive``:
passed) also goes to the public once the embargo has passed. The decision is made
once, when the rollout is scored, and recorded with the verdict in the same append
(``PublicationDecided``), so a later change of the embargo never reaches back to
verdicts already decided; ``release_job`` carries the public ones out when due.

Every verdict appends as many decisions, whatever it says: the public checkpoint
(``/public/checkpoint``, served to anyone) carries the log's size, so a pass that made
one event more than a failure would let anyone count the passes still under embargo
from the sizes around a run. So the decision beside "subscribers" is always exactly one
more: ``public`` for a pass not decided public yet, else ``none`` ("nothing of this
verdict goes to the public", dated now, with the embargo in force, which dates the
disclosure of its run's pass rate). A first verdict is always
``RolloutScored`` and two decisions; a re-score always ``RolloutRescored`` and one (two
if "subscribers" was somehow undecided, which does not depend on the verdict either).
Every reader takes ``none`` as no public decision; logs from before it (a failure with
the subscribers decision alone) read as they always did.

A verdict that a re-score flips to a pass (``RolloutRescored``) is decided the same
way, in the same append as that verdict, for the audiences not decided yet: its
embargo counts from the re-score, because the result did not exist as a pass before
(subscribers saw it as a failure until then). A rollout decided public once keeps
that decision through later flips: a flip back to fail supersedes it (marked where already
public), a flip to pass again lifts the mark.

A pass withdrawn before its release (a re-score failed it, no ``PublicReleased`` yet) loses
its public date: a later re-score that passes it again restores it with a new date, an
embargo after the restore. Before, the first date stood: a pass withdrawn and restored after
that date was released at once, as subscribers saw it. The restore appends a public decision
of its own (in place of "none", so as many events as before); a log written before this rule
has "none" there, and :class:`rollwatch.events.PublicDate` dates such a restore by its own time plus the
embargo the first decision carried. The release job, the read models and ``audit`` all read
the date with :class:`rollwatch.events.PublicDate`."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from rollwatch.events import (
    PublicationDecided,
    RolloutRescored,
    RolloutScored,
    rfc3339,
)


class PublicationPolicy(Protocol):
    """What the decision reads of the ``[publication]`` table (``PublicationConfig``)."""

    @property
    def embargo(self) -> float:
        """Seconds between a verdict and its public release."""
        ...


@dataclass(frozen=True, slots=True)
class Embargo:
    """A :class:`PublicationPolicy` of a given embargo (a run's: see ``RunStarted.embargo_s``)."""

    embargo: float


def decide(
    policy: PublicationPolicy,
    verdict: RolloutScored | RolloutRescored,
    now: datetime,
    decided: Collection[str] = (),
    *,
    withdrawn: bool = False,
) -> list[PublicationDecided]:
    """The decisions to record with ``verdict``, scored at ``now``, leaving out the
    audiences already ``decided`` for its rollout (a re-scored verdict's); ``withdrawn``: its
    rollout's pass was failed by a re-score before its release (:attr:`rollwatch.events.PublicDate.withdrawn`),
    so a pass now is decided public again, dated from now.

    Their number does not depend on the verdict: "subscribers" if not decided yet, then
    exactly one of "public" (a pass not decided public yet, or withdrawn) or "none"."""
    rid = verdict.rollout_id
    decisions = []
    if "subscribers" not in decided:
        decisions.append(PublicationDecided(rollout_id=rid, audience="subscribers", not_before=rfc3339(now)))
    if verdict.passed and ("public" not in decided or withdrawn):
        embargo = policy.embargo
        decisions.append(
            PublicationDecided(
                rollout_id=rid,
                audience="public",
                not_before=rfc3339(now + timedelta(seconds=embargo)),
                embargo_s=embargo,
            )
        )
    else:
        # The embargo in force, as a public decision would carry it: a run's figures are
        # disclosed that long after its last score, so a run of failures waits as long as
        # one with a pass decided today (see publication.public).
        decisions.append(
            PublicationDecided(
                rollout_id=rid, audience="none", not_before=rfc3339(now), embargo_s=policy.embargo
            )
        )
    return decisions
