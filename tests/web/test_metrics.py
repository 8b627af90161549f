"""/metrics through prometheus_client: every family parses, each provider client's live
figures are exported, label values survive hostile names, and the result-revealing
series stay the operator's."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from rollwatch.metrics import OUTSIDER_FAMILIES, Metrics
from rollwatch.providers import Prompt, ProviderClient
from rollwatch.web.access import Operators
from rollwatch.web.app import build_app
from tests.providers.conftest import provider_config
from tests.providers.fakes import KEY, KEY_ENV, WIRES, RecordingLog, default_reply
from tests.providers.loopback import serve
from tests.web.test_http import server

pytestmark = pytest.mark.anyio

#: Every family name /metrics had before prometheus_client (dashboards rely on them).
KEPT = (
    "rollwatch_runs_started",
    "rollwatch_runs_finished",
    "rollwatch_rollouts",
    "rollwatch_provider_errors",
    "rollwatch_request_latency_seconds",
    "rollwatch_append_latency_seconds",
    "rollwatch_scoring_queue_depth",
    "rollwatch_events_applied",
)
PROVIDER_FAMILIES = (
    "rollwatch_provider_requests",
    "rollwatch_provider_responses",
    "rollwatch_provider_attempt_errors",
    "rollwatch_provider_rollouts",
    "rollwatch_provider_latency_seconds",
    "rollwatch_provider_latency_ms_max",
    "rollwatch_provider_input_tokens",
    "rollwatch_provider_output_tokens",
    "rollwatch_provider_cost_usd",
    "rollwatch_provider_in_flight",
    "rollwatch_provider_window",
    "rollwatch_provider_rate_factor",
    "rollwatch_provider_slowdowns",
    "rollwatch_provider_paused_seconds",
    "rollwatch_provider_disabled",
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def families(text: str) -> dict[str, Metric]:
    """The exposition parsed by prometheus_client's own parser (which raises on bad lines)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Metric], family: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name{labels}`` of ``family``."""
    found = [s.value for s in fams[family].samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, fams[family].samples)
    return found[0]


def sample_labels(fams: Iterable[Metric]) -> list[dict[str, str]]:
    return [s.labels for f in fams for s in f.samples]


def text_of(metrics: Metrics, *, results: bool = True) -> str:
    body, content_type = metrics.render(results=results)
    assert content_type.startswith("text/plain; version=0.0.4")
    return body.decode()


class TestProviderMetrics:
    async def test_a_real_clients_figures_are_exported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """After three answers and one server error from a loopback provider, the parsed
        exposition has that provider's requests, responses, errors by kind, latency, tokens,
        cost, in-flight requests, window and disabled flag."""
        monkeypatch.setenv(KEY_ENV, KEY)
        wire = WIRES["openai"]
        async with serve(default_reply(wire)) as srv:
            srv.then(wire.error(500, "boom"))
            async with ProviderClient(provider_config("openai", srv.url)) as client:
                for _ in range(3):
                    await client.rollout("gemini-2.5-pro", Prompt("p"), {}, RecordingLog())
                metrics = Metrics()
                metrics.providers = lambda: [client.stats]
                fams = families(text_of(metrics))
        p = {"provider": "test-openai"}
        assert sample(fams, "rollwatch_provider_requests", "rollwatch_provider_requests_total", **p) == 4
        assert sample(fams, "rollwatch_provider_responses", "rollwatch_provider_responses_total", **p) == 3
        errors = fams["rollwatch_provider_attempt_errors"]
        assert [(s.labels["kind"], s.value) for s in errors.samples] == [("server_error", 1)]
        assert fams["rollwatch_provider_requests"].type == "counter"
        latency = fams["rollwatch_provider_latency_seconds"]
        assert latency.type == "summary"
        assert sample(fams, latency.name, "rollwatch_provider_latency_seconds_count", **p) == 3
        assert sample(fams, latency.name, "rollwatch_provider_latency_seconds_sum", **p) >= 0
        tokens = 3 * wire.usage.input_tokens
        assert (
            sample(fams, "rollwatch_provider_input_tokens", "rollwatch_provider_input_tokens_total", **p)
            == tokens
        )
        assert fams["rollwatch_provider_cost_usd"].type == "counter"
        assert sample(fams, "rollwatch_provider_in_flight", "rollwatch_provider_in_flight", **p) == 0
        assert fams["rollwatch_provider_in_flight"].type == "gauge"
        assert sample(fams, "rollwatch_provider_window", "rollwatch_provider_window", **p) == 4
        assert sample(fams, "rollwatch_provider_disabled", "rollwatch_provider_disabled", **p) == 0
        outsider = families(text_of(metrics, results=False))  # states only, never counts
        assert sample(outsider, "rollwatch_provider_disabled", "rollwatch_provider_disabled", **p) == 0
        assert "rollwatch_provider_requests" not in outsider
        assert "rollwatch_provider_cost_usd" not in outsider
        answered = {"provider": "test-openai", "outcome": "answered"}
        assert (
            sample(fams, "rollwatch_provider_rollouts", "rollwatch_provider_rollouts_total", **answered) == 3
        )
        assert set(PROVIDER_FAMILIES) <= set(fams)

    def test_every_kept_name_and_the_process_figures_are_there(self) -> None:
        """Every family name of the hand-written exposition is still exported, with its type,
        next to the process's own figures (CPU, memory, Python)."""
        metrics = Metrics()
        metrics.runs_started = 2
        fams = families(text_of(metrics))
        assert set(KEPT) <= set(fams)
        assert fams["rollwatch_runs_started"].type == "counter"
        assert sample(fams, "rollwatch_runs_started", "rollwatch_runs_started_total") == 2
        assert fams["rollwatch_request_latency_seconds"].type == "histogram"
        assert fams["rollwatch_scoring_queue_depth"].type == "gauge"
        assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= set(fams)

    def test_hostile_label_values_round_trip(self) -> None:
        """Provider names and error kinds with quotes, backslashes, newlines, braces and
        non-ASCII come back from the parser exactly as they went in; no sample is forged."""
        hostile = 'we"ird\\na\nme} 1\nrollwatch_rollouts_total{outcome="passed"} 99 ü'
        metrics = Metrics()
        metrics.provider_errors[(hostile, "timeout")] = 2
        text = text_of(metrics)
        fams = families(text)
        assert sample(fams, "rollwatch_provider_errors", "rollwatch_provider_errors_total",
                      provider=hostile, kind="timeout") == 2  # fmt: skip
        assert not [s for s in fams["rollwatch_rollouts"].samples if s.labels.get("outcome") == "passed"]
        assert not [s for s in fams["rollwatch_rollouts"].samples if s.value == 99]

    def test_the_outsiders_exposition_counts_no_work(self) -> None:
        """Without the operator's rights only the families of ``OUTSIDER_FAMILIES`` (states,
        never counts) and the process's own figures are there: no runs, rollouts, pass counts,
        requests, tokens, cost, latency counts or the log's live length. The control (the
        operator's exposition) has every family."""
        metrics = Metrics()
        for outcome, n in (("answered", 5), ("failed", 1), ("passed", 3), ("not_passed", 2)):
            metrics.rollouts[outcome] = n
        metrics.runs_started = 2
        metrics.witnessed = lambda: (10, 1.5, 0)
        full = families(text_of(metrics, results=True))
        outsider = families(text_of(metrics, results=False))
        outcomes = {s.labels["outcome"]: s.value for s in full["rollwatch_rollouts"].samples}
        assert outcomes == {"answered": 5, "failed": 1, "passed": 3, "not_passed": 2}
        assert set(KEPT) <= set(full)
        ours = {name for name in outsider if name.startswith("rollwatch_")}
        assert ours == {name for name in OUTSIDER_FAMILIES if name.startswith("rollwatch_witness")}
        assert {name for name in outsider if not name.startswith("rollwatch_")} >= {"process_cpu_seconds"}
        assert set(outsider) <= set(full)

    def test_openmetrics_when_asked(self) -> None:
        """A scraper asking for OpenMetrics gets it (its parser accepts it, ``# EOF`` included)."""
        metrics = Metrics()
        metrics.rollouts["passed"] = 1
        body, content_type = metrics.render(accept="application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text")
        fams = {f.name: f for f in parse_openmetrics(body.decode())}
        assert set(KEPT) <= set(fams)


class TestMetricsRoute:
    async def test_served_exposition_parses_and_hides_results_from_outsiders(self) -> None:
        """Over HTTP: an outsider (no trusted peer, no key) gets a parseable exposition with the
        process's figures but no count of work; the loopback operator (the default) gets them."""
        metrics = Metrics()
        metrics.rollouts.update({"answered": 4, "passed": 3})
        for operators, has_passes in ((Operators(trusted_peers=[]), False), (None, True)):
            async with server(build_app(metrics, operators=operators)) as url, httpx.AsyncClient() as c:
                r = await c.get(f"{url}/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "Authorization" in r.headers["vary"]
            fams = families(r.text)
            assert ("rollwatch_rollouts" in fams) is has_passes
            if has_passes:
                assert {s.labels["outcome"] for s in fams["rollwatch_rollouts"].samples} == {
                    "answered",
                    "passed",
                }
