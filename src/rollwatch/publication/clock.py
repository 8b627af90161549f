"""The clock releases go by: the host's wall clock, unless it is found lying.

Every release compares a decision's ``not_before`` with the wall clock, so a clock
stepped forward (an NTP step, a VM restored from an old snapshot then corrected, a
``date -s``) would release early. The daemon keeps, from its start, the offset between
the wall clock and a steady one (``CLOCK_BOOTTIME``, which counts a suspend, so a host
woken up is no jump). Once the two disagree by more than :data:`JUMP_S` (either way),
it logs one ERROR ``clock_jumped`` with the figures and holds: the release job releases
nothing, ``/healthz`` is degraded naming it, and the public routes go by the earlier of
the two clocks (what the wall clock said before the jump, carried on by the steady one).
The hold ends when the clocks agree again (the step was undone), or at a restart: a
clock that stays moved may be the right one (a snapshot's clock corrected), and only
the operator can tell; a restart takes the clock as it then is, with the checks at start.

At start, before the daemon appends anything, the clock is also compared with the log: a
clock behind the newest event's time (by more than :data:`SKEW_S`, the skew allowed between
nodes) cannot be right, and holds releases the same way until it has caught up (each
release pass compares it with that time again; the log is not read again, since the
daemon's own events carry its own clock); one
far ahead of it (more than :data:`AHEAD_S`) is believed, since the daemon may have been
down that long, but said at start in a WARNING naming the gap.

On a log that several machines share (PostgreSQL), the database's clock is the one clock
they all read, and each release pass compares the host's with it: off by more than
:data:`SKEW_S` either way, releases are held the same way (``clock_off_database``) until
they agree again. A node whose clock is that far off at start does not start at all
(:class:`~rollwatch.errors.ClockSkewed`): every event it recorded would carry its time,
and every embargo it decided would end that much early or late, for the other nodes to
release by (a node 100 days ahead released, in the test, the other node's passes 90 days
early).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from rollwatch.abc import EventStore
from rollwatch.errors import ClockSkewed, IntegrityError, UsageError
from rollwatch.events import parse_rfc3339, rfc3339
from rollwatch.log import get_logger

log = get_logger(__name__)

JUMP_S = 60.0
"""How far the wall clock may move from the steady one (NTP slews, it steps only when far off)."""
SKEW_S = 60.0
"""How far behind the log's newest event the clock may be (another node's clock a little ahead)."""
AHEAD_S = 86400.0
"""How far ahead of the log's newest event the clock may be at start without a WARNING."""


def _steady() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


async def newest_event_at(store: EventStore) -> datetime | None:
    """The time of the log's newest event (None when the log is empty)."""
    head = await store.head()
    rec = (await store.read_at([head])).get(head) if head else None
    if rec is None:
        return None
    try:
        return parse_rfc3339(rec.at)
    except ValueError:
        # rollwatch stamps every event with rfc3339(): a row written around it.
        raise IntegrityError(rec.seq, f"its time {rec.at!r} is not one rollwatch writes") from None


def behind_log(now: datetime, newest: datetime | None) -> float | None:
    """Seconds ``now`` is behind the newest event, when more than :data:`SKEW_S` (else None)."""
    if newest is None or (newest - now).total_seconds() <= SKEW_S:
        return None
    return (newest - now).total_seconds()


class ReleaseClock:
    """The daemon's clock for releases; see the module docstring."""

    def __init__(self, wall: Callable[[], float] = time.time, steady: Callable[[], float] = _steady) -> None:
        self._wall = wall
        self._steady = steady
        self._offset = wall() - steady()
        self.jumped: float | None = None
        """Seconds the wall clock moved from the steady one, while they disagree."""
        self.behind: float | None = None
        """Seconds the clock is behind the log's newest event, while it is."""
        self.skewed: float | None = None
        """Seconds the clock is ahead of the shared database's (negative: behind), while
        they disagree by more than :data:`SKEW_S`."""
        self._checked_log = False
        self._newest: datetime | None = None  # the log's newest event time, as first read

    def now(self) -> datetime:
        """The earlier of the wall clock and the one it left at a jump; notes a jump (or its end)."""
        wall = self._wall()
        kept = self._steady() + self._offset
        moved = wall - kept
        if abs(moved) > JUMP_S:
            if self.jumped is None:
                log.error(
                    "clock_jumped",
                    by_s=round(moved, 1),
                    wall=rfc3339(datetime.fromtimestamp(wall, UTC)),
                    expected=rfc3339(datetime.fromtimestamp(kept, UTC)),
                    consequence="no releases until the clocks agree again or the daemon is restarted",
                )
            self.jumped = moved
        elif self.jumped is not None:
            log.warning("clock_agrees", by_s=round(moved, 1), consequence="releases resume")
            self.jumped = None
        return datetime.fromtimestamp(min(wall, kept), UTC)

    async def check_log(self, store: EventStore) -> None:
        """Compare the clock with the log's newest event time, read the first time (the daemon
        calls this at start, before it appends anything, and the release job at each pass);
        the first time, say a big gap ahead."""
        # The log is read once, before this daemon appends: its own events carry its own
        # clock, and events it stamped during a jump (undone since) would hold releases
        # for as long as the jump was. Later passes compare with what was read then.
        if not self._checked_log:
            self._newest = await newest_event_at(store)
        newest = self._newest
        now = self.now()
        behind = behind_log(now, newest)
        if behind is not None and self.behind is None:
            log.error(
                "clock_behind_log",
                behind_s=round(behind, 1),
                clock=rfc3339(now),
                newest_event=rfc3339(newest) if newest else None,
                consequence="no releases until the clock is past the log's newest event",
            )
        elif behind is None and self.behind is not None:
            log.warning("clock_past_log", clock=rfc3339(now), consequence="releases resume")
        self.behind = behind
        await self._check_database(store)
        if not self._checked_log and newest is not None and (now - newest).total_seconds() > AHEAD_S:
            log.warning(
                "clock_ahead_of_log",
                ahead_s=round((now - newest).total_seconds()),
                clock=rfc3339(now),
                newest_event=rfc3339(newest),
                note="believed (the daemon may have been down that long); releases go by it",
            )
        self._checked_log = True

    async def _check_database(self, store: EventStore) -> None:
        """Compare the clock with the shared database's (a log one machine owns has none)."""
        skew = await store.clock_skew()
        skewed = skew if skew is not None and abs(skew) > SKEW_S else None
        if skewed is not None and self.skewed is None:
            log.error(
                "clock_off_database",
                ahead_s=round(skewed, 1),
                clock=rfc3339(datetime.fromtimestamp(self._wall(), UTC)),
                consequence="no releases until this host's clock agrees with the database's",
                hint="nodes sharing a log must keep their clocks within "
                f"{SKEW_S:.0f} s of the database server's (NTP)",
            )
        elif skewed is None and self.skewed is not None:
            log.warning(
                "clock_agrees_with_database", ahead_s=round(skew or 0.0, 1), consequence="releases resume"
            )
        self.skewed = skewed

    def decision_time(self) -> datetime:
        """The time to date a publication decision by: the latest of the wall clock, the one it
        left at a jump (carried on by the steady clock), the log's newest event as read at start,
        and the shared database's clock when this host's is found behind it.

        A decision's ``not_before`` is this time plus the embargo, and any node releases by it:
        a clock stepped back 100 days (after the checks at start) decided a 90-day embargo that
        had ended 10 days before, released at once by a node with the right clock, or by this
        one once its clock was put right. Going by the latest, a clock that lies makes an
        embargo end late, never early."""
        wall = self._wall()
        latest = max(wall, self._steady() + self._offset)
        if self._newest is not None:
            latest = max(latest, self._newest.timestamp())
        if self.skewed is not None and self.skewed < 0:
            latest = max(latest, wall - self.skewed)
        return datetime.fromtimestamp(latest, UTC)

    @property
    def held(self) -> bool:
        """True while releases wait for the clock (checks for a jump first)."""
        self.now()
        return self.jumped is not None or self.behind is not None or self.skewed is not None

    def reasons(self) -> list[str]:
        """Why releases are held, for ``/healthz`` (empty when they are not)."""
        self.now()
        out = []
        if self.jumped is not None:
            out.append(
                f"clock_jumped: the wall clock moved {self.jumped:+.0f} s from the steady clock; releases held"
            )
        if self.skewed is not None:
            out.append(
                f"clock_off_database: this host's clock is {abs(self.skewed):.0f} s "
                f"{'ahead of' if self.skewed > 0 else 'behind'} the database server's; releases held"
            )
        if self.behind is not None:
            out.append(
                f"clock_behind_log: the clock is {self.behind:.0f} s behind the log's newest event; releases held"
            )
        return out


async def deciding_clock(store: EventStore) -> ReleaseClock:
    """The clock a command that scores (``rollwatch run``, ``rollwatch rescore``) decides
    embargoes by, checked against the log first: a clock more than :data:`SKEW_S` behind the
    log's newest event, or off the shared database's, raises :class:`UsageError` before
    anything is appended (``serve`` refuses the database's the same way)."""
    clock = ReleaseClock()
    newest = await newest_event_at(store)
    skew = await store.clock_skew()
    if skew is not None and abs(skew) > SKEW_S:
        raise ClockSkewed(skew, SKEW_S)
    now = clock.now()
    if (behind := behind_log(now, newest)) is not None:
        raise UsageError(
            f"this host's clock ({rfc3339(now)}) is {behind:.0f} s behind the log's newest event"
            f" ({rfc3339(newest) if newest else '-'}): the embargoes it decided would end early;"
            " set the clock right, then run again"
        )
    # Decisions are dated no earlier than the newest event (see decision_time).
    clock._newest, clock._checked_log = newest, True
    return clock
