"""The limits one provider's rollouts share: concurrency, request and token rates, pauses.

One :class:`ProviderLimits` lives on each :class:`~rollwatch.providers.ProviderClient`,
so every run using the provider draws from the same budget. Three mechanisms:

* **Concurrency** — at most ``window`` requests in flight. ``window`` starts at
  ``max_concurrency`` and follows AIMD (as TCP's congestion window), in two strengths:

  - a *hard* cut (:data:`HARD_DECREASE`, down to 1) when the provider says its whole
    budget is used up (a 429 with a rate-limit window at 0 and a reset time);
  - a *gentle* cut (:data:`GENTLE_DECREASE`, never below :data:`FLOOR_FRACTION` of
    ``max_concurrency``) on any other 429 or overload (503/529). At most one gentle cut
    per ``hold`` seconds (the wait that 429 asked for): the requests sent in that time
    were sent before the cut could show its effect, so their 429s say nothing new.

  Either way only a rejection of a request sent *after* the last cut cuts again, so a
  burst of 429s from requests already in flight cuts once, not 50 times. Each success
  grows the window by ``RECOVERY / window`` (about ``RECOVERY`` per window's worth of
  successes). Why gentle: a 429 without evidence of an exhausted budget is as often a
  load balancer shedding a random request as a sign that we send too much. Halving on
  each one (what rollwatch did until 2026-11) held the window near 1 under 10% random
  429s and made a run 8–10× slower; ``bench/bench_429.py`` measures the difference.
* **Rates** — ``requests_per_minute`` and ``tokens_per_minute`` as GCRA (the
  "virtual scheduling" form of a token bucket): each request reserves its place on a
  time line, so waiting is FIFO and costs no lock or background task. A burst of up to
  ``BURST_SECONDS`` worth goes at once. Token use is not known before the answer, so a
  request reserves an estimate and the real count is charged afterwards (the debt
  delays later requests). Each cut scales both rates by the same factor (``rate_factor``).
* **A shared pause** — ``not_before``: when the provider says its whole budget is used
  up until a reset, every request of the provider waits for the reset. Any other wait
  a provider asks for (Retry-After on a plain 429) delays only the request it answered.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from rollwatch.abc import Clock

#: A rate limiter lets this many seconds' worth of requests (or tokens) go at once.
BURST_SECONDS = 6.0
#: AIMD never scales the configured rates below this fraction.
MIN_RATE_FACTOR = 1 / 64
#: A cut on evidence that the provider's budget is used up: halve, as TCP does on loss.
HARD_DECREASE = 0.5
#: A cut on a 429 or overload without that evidence.
GENTLE_DECREASE = 0.85
#: Gentle cuts never take the window below this fraction of ``max_concurrency``.
FLOOR_FRACTION = 0.25
#: The window grows back by about this many slots per window's worth of successes.
RECOVERY = 2.0


class RateLimiter:
    """A GCRA rate limit of ``per_minute`` units, scaled by a factor the owner sets."""

    def __init__(self, per_minute: float, clock: Clock, burst_seconds: float = BURST_SECONDS) -> None:
        self.per_minute = per_minute
        self.factor = 1.0
        self._clock = clock
        self._burst = burst_seconds
        self._tat = -math.inf  # theoretical arrival time of the next unit

    @property
    def _interval(self) -> float:
        return 60.0 / (self.per_minute * self.factor)

    def reserve(self, units: float) -> float:
        """Reserve ``units`` now; return the clock time at which the caller may go."""
        now = self._clock.now()
        tat = max(self._tat, now)
        go = max(now, tat - self._burst)
        self._tat = tat + units * self._interval
        return go

    def charge(self, units: float) -> None:
        """Account ``units`` more (or fewer, when negative) than were reserved; at most a
        minute's budget more: one request cannot use more (the provider refuses it), so
        an answer claiming 10**15 tokens cannot stop the provider for ages."""
        if self._tat == -math.inf:
            return
        self._tat += min(units, self.per_minute) * self._interval


@dataclass(frozen=True, slots=True)
class Slot:
    """A permission to send one request; ``epoch`` tells a late 429 from a fresh one."""

    epoch: int
    estimate: float


class ProviderLimits:
    """Concurrency, rates and the shared pause of one provider (see the module docstring)."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Clock,
    ) -> None:
        self.max_concurrency = max_concurrency
        self._clock = clock
        self._window = float(max_concurrency)
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._requests = RateLimiter(requests_per_minute, clock) if requests_per_minute else None
        self._tokens = RateLimiter(tokens_per_minute, clock) if tokens_per_minute else None
        self._rpm = requests_per_minute
        self.not_before = -math.inf
        self.epoch = 0
        self.rate_factor = 1.0
        self.cuts = 0
        self.floor = max(1.0, math.floor(max_concurrency * FLOOR_FRACTION))
        self._quiet_until = -math.inf  # no gentle cut before this clock time

    # -- state for metrics ----------------------------------------------------------

    @property
    def window(self) -> int:
        """How many requests may be in flight now (AIMD-adjusted concurrency)."""
        return int(self._limiter.total_tokens)

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self._limiter.borrowed_tokens

    # -- the one entry point ----------------------------------------------------------

    @asynccontextmanager
    async def slot(self, estimated_tokens: float = 0.0) -> AsyncIterator[Slot]:
        """Wait until a request may go (pause, concurrency, rates), and hold its place."""
        await self._wait_pause()
        token = object()  # one borrower per acquisition, not per task
        try:
            # The fast path skips anyio's checkpoints: at hundreds of requests a second
            # each one is a trip round the event loop. FIFO still holds: nowait fails
            # while anyone is queued.
            self._limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:
            await self._limiter.acquire_on_behalf_of(token)
        try:
            now = self._clock.now()
            go = now
            if self._requests is not None:
                go = max(go, self._requests.reserve(1))
            if self._tokens is not None and estimated_tokens > 0:
                go = max(go, self._tokens.reserve(estimated_tokens))
            if go > now:
                await self._clock.sleep(go - now)
                # A pause may have started while this request waited for its turn.
                await self._wait_pause()
            yield Slot(self.epoch, estimated_tokens)
        finally:
            self._limiter.release_on_behalf_of(token)

    async def _wait_pause(self) -> None:
        while (wait := self.not_before - self._clock.now()) > 0:
            await self._clock.sleep(wait)

    # -- feedback from responses ------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every request of this provider for ``seconds`` from now (never shortens)."""
        if seconds > 0:
            self.not_before = max(self.not_before, self._clock.now() + seconds)

    def used_tokens(self, slot: Slot, tokens: int) -> None:
        """Charge the difference between a request's real token use and its estimate."""
        if self._tokens is not None:
            self._tokens.charge(tokens - slot.estimate)

    def slow_down(self, slot: Slot, *, hard: bool = True, hold: float = 0.0) -> bool:
        """Multiplicative decrease after a 429/overload; True if it cut.

        ``hard`` (the provider's budget is used up): halve window and rates, down to 1.
        Otherwise a gentle cut, not below :attr:`floor`, and no further gentle cut for
        ``hold`` seconds. Either way once per epoch (see the module docstring).
        """
        if slot.epoch != self.epoch:
            return False
        now = self._clock.now()
        if not hard and now < self._quiet_until:
            return False
        factor = HARD_DECREASE if hard else GENTLE_DECREASE
        floor = 1.0 if hard else min(self.floor, self._window)
        self.epoch += 1
        self.cuts += 1
        self._quiet_until = now + hold
        self._window = max(floor, self._window * factor)
        self._limiter.total_tokens = max(1, int(self._window))
        self.rate_factor = max(MIN_RATE_FACTOR, self.rate_factor * factor)
        self._apply_rate_factor()
        return True

    def succeeded(self) -> None:
        """Additive increase after a success: about +``RECOVERY`` concurrent requests per
        window of successes, and +1 request per minute of rate per success."""
        if self._window < self.max_concurrency:
            self._window = min(float(self.max_concurrency), self._window + RECOVERY / self._window)
            if int(self._window) != self._limiter.total_tokens:
                self._limiter.total_tokens = int(self._window)
        if self.rate_factor < 1.0:
            step = 1.0 / self._rpm if self._rpm else 1.0 / 60
            self.rate_factor = min(1.0, self.rate_factor + step)
            self._apply_rate_factor()

    def _apply_rate_factor(self) -> None:
        for limiter in (self._requests, self._tokens):
            if limiter is not None:
                limiter.factor = self.rate_factor
