"""Fire-time rules of schedules: first fire, catch-up after downtime, cron time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from rollwatch.config import ScheduleConfig
from rollwatch.scheduler import make_trigger, next_fire, recorded_fire

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def sched(**kw: object) -> ScheduleConfig:
    base: dict[str, object] = {"name": "s", "provider": "p", "models": ["m"], "problem_set": "x"}
    base.update(kw)
    return ScheduleConfig.model_validate(base)


class TestEvery:
    def test_never_ran_fires_at_once(self) -> None:
        """An `every` schedule that never ran starts at once."""
        s = sched(every="1h")
        assert next_fire(s, make_trigger(s), None, NOW) == (NOW, 0, None)

    def test_next_is_one_period_after_the_last_fire(self) -> None:
        """After a fire, the next one is a period later (jitter only ever delays)."""
        s = sched(every="1h", jitter="5m")
        nxt, missed, _ = next_fire(s, make_trigger(s), NOW - timedelta(minutes=10), NOW)
        assert missed == 0
        assert nxt is not None
        assert NOW + timedelta(minutes=50) <= nxt <= NOW + timedelta(minutes=55, seconds=1)

    def test_downtime_collapses_into_one_catch_up(self) -> None:
        """Ten missed periods: one catch-up fire now, and the count of what was missed."""
        s = sched(every="1h")
        nxt, missed, latest = next_fire(s, make_trigger(s), NOW - timedelta(hours=10, minutes=30), NOW)
        assert nxt == NOW
        assert missed == 10
        assert latest is not None
        assert latest <= NOW

    def test_catch_up_window_drops_old_fires(self) -> None:
        """Missed fires older than catch_up are counted but not run; the next fire is in the future."""
        s = sched(every="1h", catch_up="10m")
        nxt, missed, _ = next_fire(s, make_trigger(s), NOW - timedelta(hours=3, minutes=30), NOW)
        assert missed == 3
        assert nxt is not None
        assert nxt > NOW


class TestCron:
    def test_never_ran_waits_for_its_time(self) -> None:
        """A cron schedule that never ran waits for its next time."""
        s = sched(cron="0 3 * * *")
        nxt, missed, _ = next_fire(s, make_trigger(s), None, NOW)
        assert missed == 0
        assert nxt == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)

    def test_time_zone_is_honoured(self) -> None:
        """'0 3 * * *' in Europe/Paris is 02:00 UTC in winter."""
        s = sched(cron="0 3 * * *", timezone="Europe/Paris")
        nxt, _, _ = next_fire(s, make_trigger(s), None, NOW)
        assert nxt is not None
        assert nxt.astimezone(UTC) == datetime(2026, 11, 30, 2, 0, tzinfo=UTC)

    def test_missed_days_collapse(self) -> None:
        """Three missed daily fires: one catch-up now."""
        s = sched(cron="0 3 * * *")
        nxt, missed, _ = next_fire(s, make_trigger(s), datetime(2026, 11, 26, 3, 0, tzinfo=UTC), NOW)
        assert nxt == NOW
        assert missed == 3


class TestJitter:
    def test_drawn_once_per_fire(self) -> None:
        """Asked again and again, at different moments before the fire and from a fresh trigger
        (another process), the next fire is the same instant, delayed by less than the jitter."""
        s = sched(every="1h", jitter="10m")
        last = NOW - timedelta(minutes=10)
        seen = {next_fire(s, make_trigger(s), last, NOW + timedelta(seconds=k * 7))[0] for k in range(50)}
        assert len(seen) == 1
        (nxt,) = seen
        assert nxt is not None
        assert last + timedelta(hours=1) <= nxt < last + timedelta(hours=1, minutes=10)

    def test_spread_over_the_window(self) -> None:
        """Fires of one schedule, and schedules of one period, get different delays spread over
        [0, jitter): not all the same, none outside."""
        delays = []
        for i in range(200):
            s = sched(name=f"s{i}", every="1h", jitter="10m")
            nxt = next_fire(s, make_trigger(s), NOW, NOW)[0]
            assert nxt is not None
            delays.append((nxt - NOW - timedelta(hours=1)).total_seconds())
        assert min(delays) >= 0
        assert max(delays) < 600
        assert len(set(delays)) > 190
        assert min(delays) < 60 < 540 < max(delays)

    def test_cron_is_jittered_too(self) -> None:
        """A cron schedule's jitter delays its fire (it was ignored before) by less than the jitter."""
        s = sched(cron="0 3 * * *", jitter="10m")
        nxt = next_fire(s, make_trigger(s), None, NOW)[0]
        assert nxt is not None
        three = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
        assert three <= nxt < three + timedelta(minutes=10)
        assert nxt == next_fire(s, make_trigger(s), None, NOW + timedelta(hours=5))[0]

    def test_missed_fires_are_counted_through_the_jitter(self) -> None:
        """Downtime of ten periods with jitter: still one catch-up and ten missed."""
        s = sched(every="1h", jitter="10m")
        nxt, missed, _ = next_fire(s, make_trigger(s), NOW - timedelta(hours=10, minutes=59), NOW)
        assert nxt == NOW
        assert 9 <= missed <= 10


class TestCrontabAsCronReadsIt:
    """APScheduler's ``from_crontab`` counted weekdays from Monday and ANDed the two day
    fields: each case below fired on other days than cron's before."""

    @staticmethod
    def fires(expr: str, n: int, tz: str = "UTC", start: datetime = NOW) -> list[datetime]:
        s = sched(cron=expr, timezone=tz)
        trigger = make_trigger(s)
        out: list[datetime] = []
        prev = None
        while len(out) < n:
            at = trigger.get_next_fire_time(prev, prev or start)
            assert at is not None
            out.append(at.astimezone(UTC))
            prev = at
        return out

    def test_weekday_numbers_count_from_sunday(self) -> None:
        """`0` and `7` are Sunday, `1-5` Monday to Friday (they fired Monday, refused, and
        Tuesday to Saturday)."""
        assert {d.strftime("%a") for d in self.fires("0 3 * * 0", 3)} == {"Sun"}
        assert {d.strftime("%a") for d in self.fires("0 3 * * 7", 3)} == {"Sun"}
        assert [d.strftime("%a") for d in self.fires("0 3 * * 1-5", 5)] == ["Mon", "Tue", "Wed", "Thu", "Fri"]
        assert [d.strftime("%a") for d in self.fires("0 3 * * */2", 4)] == ["Tue", "Thu", "Sat", "Sun"]
        assert [d.strftime("%a") for d in self.fires("0 3 * * sat,sun", 2)] == ["Sat", "Sun"]

    def test_day_of_month_or_day_of_week(self) -> None:
        """Both day fields restricted: a fire on either (cron), not only on both."""
        got = self.fires("0 3 1 * 1", 6)  # from Sunday 29 November 2026
        assert [d.date().isoformat() for d in got] == [
            "2026-11-30",  # Monday
            "2026-12-01",  # the 1st (a Tuesday)
            "2026-12-07",
            "2026-12-14",
            "2026-12-21",
            "2026-12-28",
        ]

    def test_a_fixed_time_fires_once_on_the_night_the_clocks_go_back(self) -> None:
        """02:30 in Paris happens twice on 31 October 2027: one fire (two runs that night before)."""
        start = datetime(2027, 10, 29, 12, 0, tzinfo=UTC)
        got = self.fires("30 2 * * *", 3, "Europe/Paris", start)
        assert [d.date().isoformat() for d in got] == ["2027-10-30", "2027-10-31", "2027-11-01"]
        assert got[1] == datetime(2027, 10, 31, 0, 30, tzinfo=UTC)  # the first 02:30 (summer time)

    def test_a_clock_spaced_cron_fires_through_the_repeated_hour(self) -> None:
        """Hourly and every 20 minutes: their fires stay evenly spaced in real time."""
        start = datetime(2027, 10, 30, 23, 30, tzinfo=UTC)
        hourly = self.fires("0 * * * *", 5, "Europe/Paris", start)
        assert [b - a for a, b in pairwise(hourly)] == [timedelta(hours=1)] * 4
        twenty = self.fires("*/20 * * * *", 9, "Europe/Paris", start)
        assert [b - a for a, b in pairwise(twenty)] == [timedelta(minutes=20)] * 8

    def test_spring_forward_and_leap_days(self) -> None:
        """02:30 on the night the clocks go forward still fires once; 29 February every
        four years; the 31st only in months that have one."""
        got = self.fires("30 2 * * *", 2, "Europe/Paris", datetime(2027, 3, 27, 12, 0, tzinfo=UTC))
        assert [d.date().isoformat() for d in got] == ["2027-03-28", "2027-03-29"]
        assert [d.date().isoformat() for d in self.fires("0 0 29 2 *", 2)] == ["2028-02-29", "2032-02-29"]
        assert [d.month for d in self.fires("0 0 31 * *", 4)] == [12, 1, 3, 5]


class TestClockBack:
    def test_an_every_schedule_after_the_clock_went_back_waits_one_period(self) -> None:
        """The wall clock stepped a week back after a fire: the next fire is a period from
        now (it waited the week on top of its hour)."""
        s = sched(every="1h")
        nxt, missed, _ = next_fire(s, make_trigger(s), NOW + timedelta(days=7), NOW)
        assert missed == 0
        assert nxt == NOW + timedelta(hours=1)


class TestLongDowntime:
    def test_more_missed_fires_than_are_counted_make_one_catch_up(self) -> None:
        """A fire a second (or a minute) missed over a year, with a catch-up window: one
        answer, a catch-up now. The next fire was left a year back before, so every look
        recorded another ScheduleMissed (and walked 100,000 fires again: 2.4 s each time
        for a cron, on the daemon's event loop)."""
        for kw in ({"every": "1s"}, {"every": "2s", "jitter": "1s"}, {"cron": "* * * * *"}):
            s = sched(catch_up="10m", **kw)
            trigger = make_trigger(s)
            nxt, missed, latest = next_fire(s, trigger, NOW - timedelta(days=365), NOW)
            assert (nxt, latest) == (NOW, NOW), kw
            assert missed == 10_000
            # The fire recorded now: the next one is a period ahead, nothing missed.
            after, missed, _ = next_fire(s, trigger, NOW, NOW + timedelta(milliseconds=1))
            assert missed == 0
            assert after is not None
            assert NOW < after <= NOW + timedelta(minutes=1)


class TestJitterOverMonths:
    def test_an_every_schedules_fires_stay_within_the_jitter_of_its_own_times(self) -> None:
        """Sixty fires of `every = "24h"`, `jitter = "1h"`, each recorded as the daemon
        records it: each is less than an hour after its day's time. Counted from the jittered
        fire, they came about 30 minutes later each day (15 hours a month on)."""
        s = sched(every="24h", jitter="1h")
        trigger = make_trigger(s)
        last, now = None, NOW
        for k in range(60):
            nxt, missed, _ = next_fire(s, trigger, last, now)
            assert nxt is not None
            assert missed == 0
            due = NOW + timedelta(days=k)
            assert due <= nxt < due + timedelta(hours=1), (k, nxt - due)
            last = recorded_fire(trigger, last, nxt, now)
            now = nxt + timedelta(seconds=1)  # the daemon slept until the fire, then looked again
