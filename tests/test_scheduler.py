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
