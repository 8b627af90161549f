"""Prometheus metrics, in the text exposition format, without a client library.

Counters about runs, rollouts and provider errors are derived from the events the
daemon sees (the log stays the single source); latencies of appends and the scoring
queue depth are measured where they happen.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rollwatch.events import Recorded

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
        self.events_seen = 0
        self._provider_of: dict[str, str] = {}

    def observe_event(self, ev: Recorded) -> None:
        """Count what one event says (called once per event, in seq order)."""
        self.events_seen = max(self.events_seen, ev.seq)
        t = ev.type
        if t == "RunStarted":
            self.runs_started += 1
        elif t == "RunFinished":
            self.runs_finished[ev.data["status"]] += 1
        elif t == "RolloutRequested":
            d = ev.data
            if len(self._provider_of) > 100_000:
                self._provider_of.clear()
            self._provider_of[d["rollout_id"]] = d["provider"]
        elif t == "RolloutResponded":
            d = ev.data
            self.rollouts["answered"] += 1
            self.request_latency.observe(float(d.get("latency_ms") or 0) / 1000)
        elif t == "RolloutFailed":
            d = ev.data
            prov = self._provider_of.get(d["rollout_id"], "unknown")
            self.provider_errors[(prov, d["kind"])] += 1
            if d.get("final"):
                self.rollouts["failed"] += 1
        elif t == "RolloutScored":
            self.rollouts["passed" if ev.data.get("passed") else "not_passed"] += 1

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
            f'rollwatch_runs_finished_total{{status="{k}"}} {v}'
            for k, v in sorted(self.runs_finished.items())
        ]
        lines += [
            "# HELP rollwatch_rollouts_total Rollouts by outcome (answered, failed, passed, not_passed).",
            "# TYPE rollwatch_rollouts_total counter",
        ]
        lines += [
            f'rollwatch_rollouts_total{{outcome="{k}"}} {v}'
            for k, v in sorted(self.rollouts.items())
            if results or k not in _RESULT_OUTCOMES
        ]
        lines += [
            "# HELP rollwatch_provider_errors_total Failed provider attempts, by provider and kind.",
            "# TYPE rollwatch_provider_errors_total counter",
        ]
        lines += [
            f'rollwatch_provider_errors_total{{provider="{p}",kind="{k}"}} {v}'
            for (p, k), v in sorted(self.provider_errors.items())
        ]
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
