"""/metrics exports each provider client's live figures (ProviderStats), escaped right."""

from __future__ import annotations

import re

import pytest

from rollwatch.metrics import Metrics
from rollwatch.providers import Prompt, ProviderClient
from tests.providers.conftest import provider_config
from tests.providers.fakes import KEY, KEY_ENV, WIRES, RecordingLog, default_reply
from tests.providers.loopback import serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TestProviderMetrics:
    async def test_a_real_clients_figures_are_exported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """After three answers and one server error from a loopback provider, /metrics text has
        that provider's requests, responses, tokens, window and disabled flag."""
        monkeypatch.setenv(KEY_ENV, KEY)
        wire = WIRES["openai"]
        async with serve(default_reply(wire)) as server:
            server.then(wire.error(500, "boom"))
            async with ProviderClient(provider_config("openai", server.url)) as client:
                for _ in range(3):
                    await client.rollout("gemini-2.5-pro", Prompt("p"), {}, RecordingLog())
                metrics = Metrics()
                metrics.providers = lambda: [client.stats]
                text = metrics.render(results=False)
        assert 'rollwatch_provider_requests_total{provider="test-openai"} 4' in text
        assert 'rollwatch_provider_responses_total{provider="test-openai"} 3' in text
        tokens = 3 * wire.usage.input_tokens
        assert f'rollwatch_provider_input_tokens_total{{provider="test-openai"}} {tokens}' in text
        assert 'rollwatch_provider_window{provider="test-openai"} 4' in text
        assert 'rollwatch_provider_disabled{provider="test-openai"} 0' in text
        assert "# TYPE rollwatch_provider_cost_usd_total counter" in text

    def test_every_line_is_valid_exposition_and_labels_are_escaped(self) -> None:
        """Label values with a quote, backslash or newline are escaped; every sample line parses."""
        metrics = Metrics()
        metrics.provider_errors[('we"ird\\na\nme', "timeout")] = 2
        metrics.rollouts["passed"] = 1
        text = metrics.render()
        assert 'provider="we\\"ird\\\\na\\nme"' in text
        sample = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+]+$')
        for line in text.splitlines():
            assert line.startswith("#") or sample.match(line), line
