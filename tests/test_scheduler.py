"""Fire-time rules of schedules: first fire, catch-up after downtime, cron time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rollwatch.config import ScheduleConfig
from rollwatch.scheduler import make_trigger, next_fire

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
