"""Crontab expressions read as cron reads them, on APScheduler 3's ``CronTrigger``.

APScheduler's ``CronTrigger.from_crontab`` differs from crontab(5) in two ways that
move fires to other days without a word: its day-of-week numbers start at Monday
(``0 3 * * 1-5``, weekdays in cron, fired Tuesday to Saturday; ``7``, Sunday, was
refused), and it fires only where the day of the month *and* the day of the week
match (cron fires where either does, when both are restricted). Here the weekdays are
handed to APScheduler by name, and two restricted day fields make two triggers whose
earliest fire wins.

And as cron does on a day the clocks go back, an expression with a fixed hour and
minute fires once in the repeated hour, not twice (``30 2 * * *`` in Europe/Paris
ran at 02:30 summer time and again at 02:30 winter time); one whose hour or minute
starts with ``*`` fires through both, since its fires are spaced by the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast
from zoneinfo import ZoneInfo

#: cron's weekday numbers: 0 (and 7) is Sunday.
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class Trigger(Protocol):
    """What we use of an APScheduler 3 trigger (the package has no type hints)."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first fire time after ``previous_fire_time`` (None: the first ever), or None."""
        ...


def _day(word: str) -> int:
    """A weekday of a crontab field (``0``-``7`` or a name) as cron's number, 0 to 7."""
    if word in _DAYS:
        return _DAYS.index(word)
    if word.isdigit() and 0 <= int(word) <= 7:
        return int(word)
    raise ValueError(f"{word!r} is not a day of the week (0-7, 0 and 7 being Sunday, or sun-sat)")


def weekdays(field: str) -> str:
    """crontab's day-of-week field as APScheduler's ``day_of_week`` (names, which both
    read alike): ``1-5`` is ``mon,tue,wed,thu,fri``, ``0`` and ``7`` are ``sun``."""
    days: set[int] = set()
    for item in field.lower().split(","):
        span, slash, step_text = item.partition("/")
        if (slash and not step_text.isdigit()) or step_text == "0":
            raise ValueError(f"{item!r}: a step is a positive number (e.g. */2)")
        step = int(step_text) if slash else 1
        if span == "*":
            first, last = 0, 6
        else:
            low, dash, high = span.partition("-")
            first = _day(low)
            last = _day(high) if dash else 6 if slash else first
            if last < first:
                raise ValueError(f"{item!r}: the range goes backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days))


@dataclass(frozen=True)
class _Earliest:
    """The earliest fire of several triggers (cron's day-of-month *or* day-of-week)."""

    triggers: tuple[Trigger, ...]

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fires = [t.get_next_fire_time(previous_fire_time, now) for t in self.triggers]
        return min((f for f in fires if f is not None), default=None)


@dataclass(frozen=True)
class CrontabTrigger:
    """A crontab expression's fires (see the module docstring)."""

    base: Trigger
    clock_spaced: bool
    """The hour or minute starts with ``*``: fires in a repeated hour are not skipped."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        at = self.base.get_next_fire_time(previous_fire_time, now)
        while at is not None and not self.clock_spaced and _repeated(at):
            at = self.base.get_next_fire_time(at, at)
        return at


def _repeated(at: datetime) -> bool:
    """Whether ``at`` is the second time its wall-clock reading occurs that night (the
    clocks went back over it)."""
    return at.fold == 1 and at.replace(fold=0).utcoffset() != at.utcoffset()


def crontab(expression: str, timezone: str = "UTC") -> CrontabTrigger:
    """The trigger of a five-field crontab expression (minute hour day month weekday) in
    ``timezone``; ValueError naming what is wrong."""
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, dow = fields
    tz = ZoneInfo(timezone)

    def make(day: str, day_of_week: str) -> Trigger:
        return cast(
            Trigger,
            CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone=tz),
        )

    days = weekdays(dow)
    base: Trigger
    if day.startswith("*") or dow.startswith("*"):
        base = make(day, days)
    else:
        base = _Earliest((make(day, "*"), make("*", days)))
    return CrontabTrigger(base, clock_spaced=minute.startswith("*") or hour.startswith("*"))


__all__ = ["CrontabTrigger", "Trigger", "crontab", "weekdays"]
