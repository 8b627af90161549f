"""Waits providers demand, our backoff, and the shared limits (on a fake clock)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import anyio
import pytest

from rollwatch.providers.limits import BURST_SECONDS, ProviderLimits, RateLimiter
from rollwatch.providers.retry import (
    full_jitter,
    google_retry_delay,
    parse_go_duration,
    parse_proto_duration,
    parse_retry_after,
)

NOW = 1_700_000_000.0


class FakeClock:
    """A clock that only moves when someone sleeps on it (one sleeper at a time)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


class TestRetryParsing:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("1s", 1.0),
            ("6m0s", 360.0),
            ("20ms", 0.02),
            ("1h2m3.5s", 3723.5),
            ("0s", 0.0),
            ("150us", 0.00015),
            ("", None),
            ("6 minutes", None),
            ("1x", None),
            ("s", None),
        ],
    )
    def test_go_durations(self, text: str, seconds: float | None) -> None:
        """OpenAI's reset headers are Go durations."""
        assert parse_go_duration(text) == (pytest.approx(seconds) if seconds is not None else None)

    def test_retry_after_seconds_and_date(self) -> None:
        """Retry-After is seconds or an HTTP date; retry-after-ms wins when present."""
        assert parse_retry_after({"retry-after": "7"}, NOW) == 7.0
        assert parse_retry_after({"retry-after": "0.5"}, NOW) == 0.5
        date = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
        assert parse_retry_after({"retry-after": date}, NOW) == pytest.approx(30.0)
        assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, NOW) == 0.25
        assert parse_retry_after({}, NOW) is None
        assert parse_retry_after({"retry-after": "soon"}, NOW) is None

    def test_retry_after_in_the_past_is_now(self) -> None:
        """A date already passed means "go now"; negative seconds are not a wait."""
        date = format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)
        assert parse_retry_after({"retry-after": date}, NOW) == 0.0

    def test_proto_durations(self) -> None:
        """Google's RetryInfo durations: decimal seconds and an ``s``."""
        assert parse_proto_duration("30s") == 30.0
        assert parse_proto_duration("45.837906927s") == pytest.approx(45.837906927)
        assert parse_proto_duration("30") is None
        assert parse_proto_duration(30) is None
        assert google_retry_delay({"error": {"details": "nope"}}) is None

    def test_full_jitter_stays_in_its_window(self) -> None:
        """Backoff n draws from [0, min(cap, base·2^(n-1))]."""
        rng = random.Random(1)
        draws = [full_jitter(4, 1.0, 5.0, rng) for _ in range(1000)]
        assert all(0 <= d <= 5.0 for d in draws)
        assert max(draws) > 4.5
        assert all(0 <= full_jitter(1, 1.0, 5.0, rng) <= 1.0 for _ in range(100))


class TestRateLimiter:
    def test_burst_then_paced(self) -> None:
        """A burst of BURST_SECONDS' worth goes at once, then one per interval."""
        clock = FakeClock()
        limiter = RateLimiter(60.0, clock)  # one a second
        burst = int(BURST_SECONDS) + 1
        goes = [limiter.reserve(1) for _ in range(burst + 3)]
        assert goes[:burst] == [clock.t] * burst
        assert goes[burst:] == [clock.t + 1, clock.t + 2, clock.t + 3]

    def test_debt_delays_later_requests(self) -> None:
        """Tokens used beyond the estimate push the next reservation back."""
        clock = FakeClock()
        limiter = RateLimiter(600.0, clock, burst_seconds=0)  # 10 tokens a second
        assert limiter.reserve(10) == clock.t
        limiter.charge(90)  # the answer used 100 tokens
        assert limiter.reserve(1) == pytest.approx(clock.t + 10.0)

    def test_factor_slows_the_rate(self) -> None:
        """Halving the factor doubles the interval."""
        clock = FakeClock()
        limiter = RateLimiter(60.0, clock, burst_seconds=0)
        limiter.factor = 0.5
        limiter.reserve(1)
        assert limiter.reserve(1) == pytest.approx(clock.t + 2.0)


@pytest.mark.anyio
class TestProviderLimits:
    async def test_pause_holds_every_slot(self) -> None:
        """A pause makes the next slot wait until it ends, and never shortens."""
        clock = FakeClock()
        limits = ProviderLimits(
            max_concurrency=2, requests_per_minute=None, tokens_per_minute=None, clock=clock
        )
        start = clock.t
        limits.pause(3.0)
        limits.pause(1.0)
        async with limits.slot():
            assert clock.t >= start + 3.0

    async def test_rpm_spaces_requests(self) -> None:
        """Beyond the burst, slots come at the configured request rate."""
        clock = FakeClock()
        limits = ProviderLimits(
            max_concurrency=1, requests_per_minute=120, tokens_per_minute=None, clock=clock
        )
        start = clock.t
        for _ in range(int(BURST_SECONDS * 2) + 1 + 4):
            async with limits.slot():
                pass
        assert clock.t == pytest.approx(start + 4 * 0.5)

    async def test_aimd(self) -> None:
        """A cut halves window and rates once per epoch; successes grow them back."""
        clock = FakeClock()
        limits = ProviderLimits(
            max_concurrency=16, requests_per_minute=100, tokens_per_minute=None, clock=clock
        )
        async with limits.slot() as a, limits.slot() as b:
            pass
        assert limits.slow_down(a)
        assert not limits.slow_down(b)  # sent before the cut: no second cut
        assert (limits.window, limits.rate_factor) == (8, 0.5)
        async with limits.slot() as c:
            pass
        assert limits.slow_down(c)
        assert (limits.window, limits.rate_factor) == (4, 0.25)
        for _ in range(200):
            limits.succeeded()
        assert limits.window > 4
        assert limits.rate_factor == 1.0
        for _ in range(10_000):
            limits.succeeded()
        assert limits.window == 16

    async def test_window_limits_concurrency(self) -> None:
        """No more slots are out at once than the window allows."""
        limits = ProviderLimits(
            max_concurrency=3, requests_per_minute=None, tokens_per_minute=None, clock=FakeClock()
        )
        peak = 0
        release = anyio.Event()

        async def hold() -> None:
            nonlocal peak
            async with limits.slot():
                peak = max(peak, limits.in_flight)
                await release.wait()

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(hold)
            await anyio.wait_all_tasks_blocked()
            assert limits.in_flight == 3
            release.set()
        assert peak == 3

    async def test_gentle_cuts_keep_a_floor_and_wait_out_their_hold(self) -> None:
        """A gentle cut takes 15% off the window, at most once per ``hold`` seconds, and
        never below a quarter of ``max_concurrency``; a hard cut may go below that floor."""
        clock = FakeClock()
        limits = ProviderLimits(
            max_concurrency=64, requests_per_minute=None, tokens_per_minute=None, clock=clock
        )
        assert limits.floor == 16
        async with limits.slot() as a:
            pass
        assert limits.slow_down(a, hard=False, hold=1.0)
        assert limits.window == 54  # 64 * 0.85 = 54.4
        async with limits.slot() as b:
            pass
        assert not limits.slow_down(b, hard=False, hold=1.0)  # within the hold
        clock.t += 1.0
        for _ in range(50):
            async with limits.slot() as c:
                pass
            limits.slow_down(c, hard=False, hold=1.0)
            clock.t += 1.0
        assert limits.window == 16
        async with limits.slot() as d:
            pass
        assert limits.slow_down(d, hard=True)
        assert limits.window == 8
