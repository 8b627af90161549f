"""Prometheus metrics, in the text exposition format, without a client library.

Counters about runs, rollouts and provider errors are derived from the events the
daemon sees (the log stays the single source); latencies of appends and the scoring
queue depth are measured where they happen; each provider client's live figures
(:class:`~rollwatch.providers.client.ProviderStats`: requests, tokens, cost, the
concurrency window, pauses) are read from ``Metrics.providers`` at each scrape.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rollwatch import events as e
from rollwatch.events import Recorded

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
    from rollwatch.providers.client import ProviderStats

_RESULT_OUTCOMES = frozenset({"passed", "not_passed"})
"""Outcomes that reveal scores, hence results under embargo."""

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass
class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus expects."""

    buckets: tuple[float, ...] = _BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.n += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b}"}} {acc}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        lab = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lab} {self.total}")
        out.append(f"{name}_count{lab} {self.n}")
        return out


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

    def observe_event(self, rec: Recorded) -> None:
        """Count what one event says (called once per event, in seq order)."""
        self.events_seen = max(self.events_seen, rec.seq)
        if rec.type not in _COUNTED:
            return
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

    def render(self, *, results: bool = True) -> str:
        """The text exposition format (version 0.0.4).

        ``results=False`` leaves out the series that tell how answers scored (passed,
        not passed): they count rollouts still under embargo, so only the operator
        may read them (SPEC §7).
        """
        lines = [
            "# HELP rollwatch_runs_started_total Runs started.",
            "# TYPE rollwatch_runs_started_total counter",
            f"rollwatch_runs_started_total {self.runs_started}",
            "# HELP rollwatch_runs_finished_total Runs finished, by status.",
            "# TYPE rollwatch_runs_finished_total counter",
        ]
        lines += [
            f'rollwatch_runs_finished_total{{status="{_label(k)}"}} {v}'
            for k, v in sorted(self.runs_finished.items())
        ]
        lines += [
            "# HELP rollwatch_rollouts_total Rollouts by outcome (answered, failed, passed, not_passed).",
            "# TYPE rollwatch_rollouts_total counter",
        ]
        lines += [
            f'rollwatch_rollouts_total{{outcome="{_label(k)}"}} {v}'
            for k, v in sorted(self.rollouts.items())
            if results or k not in _RESULT_OUTCOMES
        ]
        lines += [
            "# HELP rollwatch_provider_errors_total Failed provider attempts, by provider and kind.",
            "# TYPE rollwatch_provider_errors_total counter",
        ]
        lines += [
            f'rollwatch_provider_errors_total{{provider="{_label(p)}",kind="{_label(k)}"}} {v}'
            for (p, k), v in sorted(self.provider_errors.items())
        ]
        lines += [
            "# HELP rollwatch_batches Provider batches not yet ended, by their last polled state.",
            "# TYPE rollwatch_batches gauge",
        ]
        lines += [
            f'rollwatch_batches{{state="{_label(k)}"}} {v}'
            for k, v in sorted(Counter(self.batches.values()).items())
        ]
        lines += [
            "# HELP rollwatch_batches_ended_total Provider batches ended, by final state.",
            "# TYPE rollwatch_batches_ended_total counter",
        ]
        lines += [
            f'rollwatch_batches_ended_total{{state="{_label(k)}"}} {v}'
            for k, v in sorted(self.batches_ended.items())
        ]
        lines += _provider_lines(sorted(self.providers(), key=lambda st: st.provider))
        lines += [
            "# HELP rollwatch_request_latency_seconds Provider request latency of answered attempts.",
            "# TYPE rollwatch_request_latency_seconds histogram",
            *self.request_latency.render("rollwatch_request_latency_seconds"),
            "# HELP rollwatch_append_latency_seconds Event log append latency (group commit included).",
            "# TYPE rollwatch_append_latency_seconds histogram",
            *self.append_latency.render("rollwatch_append_latency_seconds"),
            "# HELP rollwatch_scoring_queue_depth Answers waiting for a scorer.",
            "# TYPE rollwatch_scoring_queue_depth gauge",
            f"rollwatch_scoring_queue_depth {self.scoring_queue()}",
            "# HELP rollwatch_events_applied The highest seq this daemon has applied.",
            "# TYPE rollwatch_events_applied gauge",
            f"rollwatch_events_applied {self.events_seen}",
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A label value escaped as the exposition format asks (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# (name, type, help, the figure of a ProviderStats)
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


def _number(value: float) -> str:
    """Integers exactly (a token count must not become 1.23457e+06), others in full."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _provider_lines(stats: list[ProviderStats]) -> list[str]:
    """Each provider's live figures, one family per figure, labelled by provider."""
    if not stats:
        return []
    lines: list[str] = []
    for suffix, kind, text, figure in _PROVIDER_SERIES:
        name = f"rollwatch_provider_{suffix}"
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{provider="{_label(st.provider)}"}} {_number(figure(st))}' for st in stats]
    return lines
