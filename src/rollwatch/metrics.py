"""Prometheus metrics, exposed through ``prometheus_client``.

Counters about runs, rollouts and provider errors are derived from the events the
daemon sees (the log stays the single source); latencies of appends and the scoring
queue depth are measured where they happen; each provider client's live figures
(:class:`~rollwatch.providers.client.ProviderStats`: requests, failed attempts by kind,
latency, tokens, cost, requests in flight, the concurrency window, pauses) are read
from ``Metrics.providers`` at each scrape. The process's own figures (CPU, memory,
file descriptors, garbage collection, Python version) come from the library's
standard collectors. Anyone may scrape; only the operator gets the figures that count
work (see :meth:`Metrics.render`).

``prometheus_client`` writes the exposition (label escaping, number formatting, the
text format or OpenMetrics as the scraper's ``Accept`` asks). Our figures are read at
scrape time by a custom collector, so nothing is registered in the library's global
registry and two ``Metrics`` (two daemons in one test process) never collide.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

_COUNTED = frozenset(
    {
        "RunStarted",
        "RunFinished",
        "RolloutRequested",
        "RolloutResponded",
        "RolloutFailed",
        "RolloutScored",
        "BatchSubmitted",
        "BatchPolled",
        "BatchEnded",
    }
)
"""The event types the metrics count (the others are not decoded at all)."""

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.metrics_core import Metric

    from rollwatch.events import Recorded
    from rollwatch.providers.client import ProviderStats

# ``prometheus_client`` and the event classes are imported on first use (a scrape, an
# event): ``rollwatch serve`` answers /healthz before it needs them.

OUTSIDER_FAMILIES = frozenset(
    {
        "rollwatch_provider_disabled",
        "rollwatch_provider_paused_seconds",
        "rollwatch_witnessed_checkpoint_size",
        "rollwatch_witnessed_checkpoint_age_seconds",
        "rollwatch_witness_refusals",
    }
)
"""The rollwatch families anyone may scrape (with the process's own ``process_*`` and
``python_*``): states, never counts of work. Before, outsiders read each provider's requests,
answered and failed rollouts, tokens and cost, runs started and finished, and the latency
histograms' counts: sampled around a run, how many rollouts a model had and what they cost,
under embargo. A family not named here is the operator's, so a new one is by default."""

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass
class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus expects."""

    buckets: tuple[float, ...] = _BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation of ``seconds``."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.n += 1

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """This histogram as a metric family (cumulative buckets up to ``+Inf``)."""
        from prometheus_client.core import HistogramMetricFamily

        buckets: list[tuple[str, float]] = []
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            buckets.append((repr(float(b)), acc))
        buckets.append(("+Inf", self.n))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class Metrics:
    """The daemon's figures; ``observe_event`` is fed every event the daemon applies."""

    def __init__(self) -> None:
        self.runs_started = 0
        self.runs_finished: Counter[str] = Counter()
        self.rollouts: Counter[str] = Counter()
        self.provider_errors: Counter[tuple[str, str]] = Counter()
        self.request_latency = Histogram()
        self.append_latency = Histogram()
        self.scoring_queue: Callable[[], int] = lambda: 0
        self.providers: Callable[[], Iterable[ProviderStats]] = lambda: ()
        """Each provider client's current figures (the daemon sets it)."""
        self.events_seen = 0
        self._provider_of: dict[str, str] = {}
        self.batches: dict[str, str] = {}
        """Open provider batches → their last known state (``submitted`` until polled)."""
        self.batches_ended: Counter[str] = Counter()
        self.witnessed: Callable[[], tuple[int, float | None, int]] | None = None
        """(size, age in seconds, refusals) of the latest witnessed checkpoint (the daemon sets it)."""
        self._registries: dict[bool, CollectorRegistry] = {}

    def observe_event(self, rec: Recorded) -> None:
        """Count what one event says (called once per event, in seq order)."""
        self.events_seen = max(self.events_seen, rec.seq)
        if rec.type not in _COUNTED:
            return
        from rollwatch import events as e

        ev = rec.event()
        if isinstance(ev, e.RunStarted):
            self.runs_started += 1
        elif isinstance(ev, e.RunFinished):
            self.runs_finished[ev.status] += 1
        elif isinstance(ev, e.RolloutRequested):
            if len(self._provider_of) > 100_000:
                self._provider_of.clear()
            self._provider_of[ev.rollout_id] = ev.provider
        elif isinstance(ev, e.RolloutResponded):
            self.rollouts["answered"] += 1
            self.request_latency.observe(float(ev.latency_ms or 0) / 1000)
        elif isinstance(ev, e.RolloutFailed):
            prov = self._provider_of.get(ev.rollout_id, "unknown")
            self.provider_errors[(prov, ev.kind)] += 1
            if ev.final:
                self.rollouts["failed"] += 1
        elif isinstance(ev, e.RolloutScored):
            self.rollouts["passed" if ev.passed else "not_passed"] += 1
        elif isinstance(ev, e.BatchSubmitted):
            self.batches[ev.batch_id] = "submitted"
        elif isinstance(ev, e.BatchPolled) and ev.batch_id in self.batches:
            self.batches[ev.batch_id] = ev.state
        elif isinstance(ev, e.BatchEnded) and self.batches.pop(ev.batch_id, None) is not None:
            # Popped: a resumed run may read an ended batch again; each end counts once.
            self.batches_ended[ev.state] += 1

    def registry(self, *, results: bool = True) -> CollectorRegistry:
        """The registry a scrape reads: with the result-revealing series or without them."""
        if results not in self._registries:
            self._registries[results] = _registry(_Figures(self, results=results))
        return self._registries[results]

    def render(self, *, results: bool = True, accept: str = "") -> tuple[bytes, str]:
        """The exposition for a scraper whose ``Accept`` header is ``accept``, and its
        content type (the text format 0.0.4 unless OpenMetrics is asked for).

        ``results=False`` (anyone but the operator, SPEC §7) gives only what counts no work:
        the process's own figures, whether each provider is disabled or paused, and the
        witnesses' view of the signed checkpoints. Every other series counts or prices the
        work behind results still under embargo (runs, rollouts, pass counts, requests,
        tokens, cost, latencies' counts, appends, the scoring queue, the log's live length):
        the operator's only. See :data:`OUTSIDER_FAMILIES`.
        """
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry(results=results)), content_type


def _registry(figures: _Figures) -> CollectorRegistry:
    """A registry of our figures and the process's (not the library's global one)."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    reg.register(figures)
    return reg


@dataclass(frozen=True)
class _Figures:
    """A collector reading a :class:`Metrics` at each scrape."""

    metrics: Metrics
    results: bool

    def collect(self) -> Iterator[Metric]:
        """Every rollwatch family when ``results``, else only :data:`OUTSIDER_FAMILIES`."""
        for family in self._all():
            if self.results or family.name in OUTSIDER_FAMILIES:
                yield family

    def _all(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        yield CounterMetricFamily("rollwatch_runs_started", "Runs started.", value=m.runs_started)
        runs = CounterMetricFamily("rollwatch_runs_finished", "Runs finished, by status.", labels=["status"])
        for status, n in sorted(m.runs_finished.items()):
            runs.add_metric([status], n)
        yield runs
        rollouts = CounterMetricFamily(
            "rollwatch_rollouts",
            "Rollouts by outcome (answered, failed; passed, not_passed for the operator only).",
            labels=["outcome"],
        )
        for outcome, n in sorted(m.rollouts.items()):
            rollouts.add_metric([outcome], n)
        yield rollouts
        errors = CounterMetricFamily(
            "rollwatch_provider_errors",
            "Failed provider attempts in the log, by provider and kind.",
            labels=["provider", "kind"],
        )
        for (provider, kind), n in sorted(m.provider_errors.items()):
            errors.add_metric([provider, kind], n)
        yield errors
        open_batches = GaugeMetricFamily(
            "rollwatch_batches",
            "Provider batches not yet ended, by their last polled state.",
            labels=["state"],
        )
        for state, n in sorted(Counter(m.batches.values()).items()):
            open_batches.add_metric([state], n)
        yield open_batches
        ended = CounterMetricFamily(
            "rollwatch_batches_ended", "Provider batches ended, by final state.", labels=["state"]
        )
        for state, n in sorted(m.batches_ended.items()):
            ended.add_metric([state], n)
        yield ended
        yield from _provider_families(sorted(m.providers(), key=lambda st: st.provider))
        yield m.request_latency.family(
            "rollwatch_request_latency_seconds", "Provider request latency of answered attempts."
        )
        yield m.append_latency.family(
            "rollwatch_append_latency_seconds", "Event log append latency (group commit included)."
        )
        yield GaugeMetricFamily(
            "rollwatch_scoring_queue_depth", "Answers waiting for a scorer.", value=m.scoring_queue()
        )
        yield GaugeMetricFamily(
            "rollwatch_events_applied", "The highest seq this daemon has applied.", value=m.events_seen
        )
        if m.witnessed is not None:
            size, age, refusals = m.witnessed()
            yield GaugeMetricFamily(
                "rollwatch_witnessed_checkpoint_size",
                "The size of the latest checkpoint a quorum of witnesses cosigned.",
                value=size,
            )
            yield GaugeMetricFamily(
                "rollwatch_witnessed_checkpoint_age_seconds",
                "Seconds since that checkpoint reached its quorum.",
                value=float("nan") if age is None else round(age, 1),
            )
            yield GaugeMetricFamily(
                "rollwatch_witness_refusals",
                "Witnesses that refused a checkpoint as inconsistent (a fork).",
                value=refusals,
            )


# (name, counter or gauge, help, the figure of a ProviderStats)
_PROVIDER_SERIES: tuple[tuple[str, str, str, Callable[[ProviderStats], float]], ...] = (
    ("requests_total", "counter", "Requests sent to the provider (attempts).", lambda st: st.requests),
    ("responses_total", "counter", "Attempts that produced an answer.", lambda st: st.responses),
    ("input_tokens_total", "counter", "Input tokens of answered attempts.", lambda st: st.input_tokens),
    ("output_tokens_total", "counter", "Output tokens of answered attempts.", lambda st: st.output_tokens),
    ("cost_usd_total", "counter", "Cost of answered attempts, in USD.", lambda st: st.cost_usd),
    ("latency_ms_max", "gauge", "The slowest answered attempt, in ms.", lambda st: st.latency_ms_max),
    ("in_flight", "gauge", "Requests in flight now.", lambda st: st.in_flight),
    ("window", "gauge", "The adaptive concurrency window now.", lambda st: st.window),
    ("rate_factor", "gauge", "The fraction of the configured rates in force.", lambda st: st.rate_factor),
    ("slowdowns_total", "counter", "Times a 429 or overload cut the window.", lambda st: st.slowdowns),
    ("paused_seconds", "gauge", "Seconds until a provider-wide pause ends.", lambda st: st.paused_s),
    ("disabled", "gauge", "1 when the provider was disabled (e.g. after a 401).", lambda st: st.disabled),
)


def _provider_families(stats: list[ProviderStats]) -> Iterator[Metric]:
    """This process's provider clients' live figures, one family per figure, by provider."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

    if not stats:
        return
    for suffix, kind, text, figure in _PROVIDER_SERIES:
        name = f"rollwatch_provider_{suffix}"
        fam: CounterMetricFamily | GaugeMetricFamily
        if kind == "counter":
            fam = CounterMetricFamily(name, text, labels=["provider"])
        else:
            fam = GaugeMetricFamily(name, text, labels=["provider"])
        for st in stats:
            fam.add_metric([st.provider], float(figure(st)))
        yield fam
    attempts = CounterMetricFamily(
        "rollwatch_provider_attempt_errors",
        "This process's failed attempts, by provider and error kind (the log's are "
        "rollwatch_provider_errors_total).",
        labels=["provider", "kind"],
    )
    done = CounterMetricFamily(
        "rollwatch_provider_rollouts",
        "This process's rollouts ended by the provider client: answered or failed for good.",
        labels=["provider", "outcome"],
    )
    latency = SummaryMetricFamily(
        "rollwatch_provider_latency_seconds",
        "Latency of this process's answered attempts (sum and count; max in latency_ms_max).",
        labels=["provider"],
    )
    for st in stats:
        for kind, n in sorted(st.errors.items()):
            attempts.add_metric([st.provider, kind], n)
        done.add_metric([st.provider, "answered"], st.rollouts_answered)
        done.add_metric([st.provider, "failed"], st.rollouts_failed)
        latency.add_metric([st.provider], count_value=st.responses, sum_value=st.latency_ms_sum / 1000)
    yield from (attempts, done, latency)
