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
has "none" there, and :class:`PublicDate` dates such a restore by its own time plus the
embargo the first decision carried. The release job, the read models and ``audit`` all read
the date with :class:`PublicDate`."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from rollwatch.events import (
    PublicationDecided,
    PublicReleased,
    Recorded,
    RolloutRescored,
    RolloutScored,
    parse_rfc3339,
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
    rollout's pass was failed by a re-score before its release (:attr:`PublicDate.withdrawn`),
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


def date_length(decision: PublicationDecided, decided_at: str) -> float:
    """The embargo a public decision dated its result with: its ``embargo_s``, or (a decision
    that does not carry one: 0, the field's default) its date less the time it was logged."""
    if decision.embargo_s:
        return float(decision.embargo_s)
    return max(0.0, (parse_rfc3339(decision.not_before) - parse_rfc3339(decided_at)).total_seconds())


def restored_date(restored_at: str, length: float) -> str:
    """The public date of a pass restored at ``restored_at`` (its event's time) whose withdrawn
    date had the embargo ``length``: one embargo after the restore."""
    return rfc3339(parse_rfc3339(restored_at) + timedelta(seconds=length))


@dataclass(slots=True)
class PublicDate:
    """A rollout's public date as its events make it, applied in the stream's order.

    * the first public decision dates it (a later one changes nothing: readers may rely on
      the date), unless the date was withdrawn;
    * a failing verdict before the release withdraws the date (:attr:`withdrawn`);
    * a passing verdict while withdrawn restores it, dated an embargo (the withdrawn date's)
      after the restore; a public decision appended with that restore (this release's
      :func:`decide`) dates it instead;
    * after the release nothing moves the date.

    :attr:`not_before` is the date in force (None: none, or withdrawn); :attr:`decided_seq`
    the public decision it comes from (or whose embargo a restore reused), and
    :attr:`restored_seq` the restore that dates it when no decision of its own came with it.
    """

    passed: bool = False
    not_before: str | None = None
    length: float = 0.0
    decided_seq: int | None = None
    restored_seq: int | None = None
    withdrawn: bool = False
    released_seq: int | None = None
    decided: set[str] = field(default_factory=set)
    """The audiences decided (not "none")."""

    @property
    def due(self) -> datetime | None:
        """When the result may be released (None: never, as things stand)."""
        if not self.passed or self.not_before is None or self.withdrawn:
            return None
        return parse_rfc3339(self.not_before)

    def apply(self, rec: Recorded) -> None:
        """Take in the rollout's next event."""
        self.take(rec.seq, rec.at, rec.event())

    def take(self, seq: int, at: str, ev: Any) -> None:
        """Take in the event ``ev`` logged at ``seq`` and ``at``."""
        if isinstance(ev, RolloutScored | RolloutRescored):
            passed = bool(ev.passed)
            if self.released_seq is None and self.not_before is not None:
                if not passed and not self.withdrawn:
                    self.withdrawn = True
                elif passed and self.withdrawn:
                    self.withdrawn = False
                    self.not_before = restored_date(at, self.length)
                    self.restored_seq = seq
            self.passed = passed
        elif isinstance(ev, PublicationDecided):
            if ev.audience != "none":
                self.decided.add(ev.audience)
            if ev.audience != "public" or self.released_seq is not None:
                return
            if self.not_before is None or (self.restored_seq is not None and not self.withdrawn):
                # The first decision, or the restore's own (appended with it).
                self.not_before = ev.not_before
                self.length = date_length(ev, at)
                self.decided_seq = seq
                self.restored_seq = None
        elif isinstance(ev, PublicReleased) and self.released_seq is None:
            self.released_seq = seq
