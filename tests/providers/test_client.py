"""The client's own duties: keys at start, cost, the reference provider, stats."""

from __future__ import annotations

import anyio
import pytest
import structlog

from rollwatch.config import ProviderConfig
from rollwatch.errors import ConfigError
from rollwatch.providers import Prompt, ProviderClient, Usage
from tests.providers.conftest import provider_config
from tests.providers.fakes import KEY_ENV, WIRES, RecordingLog, default_reply
from tests.providers.loopback import serve

pytestmark = pytest.mark.anyio

USAGE = Usage(
    input_tokens=1_000_000, output_tokens=2_000_000, reasoning_tokens=500_000, cached_tokens=400_000
)


def priced(**price: float) -> ProviderConfig:
    return provider_config("openai", "http://127.0.0.1:9", prices={"m": price})


class TestKeys:
    async def test_missing_key_fails_at_start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A provider whose key is not set cannot start; the error names where to set it."""
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(ConfigError, match=KEY_ENV) as e:
            async with ProviderClient(provider_config("anthropic", "http://127.0.0.1:9")):
                pass
        assert "test-anthropic" in str(e.value)

    async def test_unreadable_key_file(self, tmp_path: object) -> None:
        """An api_key_file that cannot be read is named in the error."""
        config = provider_config(
            "gemini", "http://127.0.0.1:9", api_key_env=None, api_key_file="/nonexistent/key"
        )
        with pytest.raises(ConfigError, match="/nonexistent/key"):
            async with ProviderClient(config):
                pass

    async def test_reference_needs_no_key(self) -> None:
        """The reference provider starts without any key and makes no request."""
        config = ProviderConfig(name="reference", kind="reference")
        async with ProviderClient(config) as client:
            log = RecordingLog()
            answer = await client.rollout(
                "reference", Prompt("p", reference_solution="def f():\n    return 1\n"), {}, log
            )
            assert answer is not None
            assert answer.text == "```python\ndef f():\n    return 1\n```\n"
            assert log.trail == [("requested", 1), ("responded", 1)]
            assert log.records[1].cost == 0.0
            missing = RecordingLog()
            assert await client.rollout("reference", Prompt("p"), {}, missing) is None
            assert missing.trail == [("requested", 1), ("failed", 1)]
            assert missing.records[1].final


class TestCost:
    def test_cached_input_price(self) -> None:
        """Cached tokens bill at cached_input, the rest of the input at input, and output
        (reasoning included) at output; prices are per million tokens."""
        client = ProviderClient(priced(input=1.0, output=10.0, cached_input=0.1))
        assert client.cost("m", USAGE) == pytest.approx(0.6 * 1.0 + 0.4 * 0.1 + 2.0 * 10.0)

    def test_cached_at_input_price_without_cached_price(self) -> None:
        """Without a cached_input price, cached tokens cost the input price."""
        client = ProviderClient(priced(input=2.0, output=8.0))
        assert client.cost("m", USAGE) == pytest.approx(1.0 * 2.0 + 2.0 * 8.0)

    def test_batch_prices(self) -> None:
        """Through a batch API: half the input and output prices unless batch prices are
        set; cached tokens never cost more than the batch input price."""
        half = ProviderClient(priced(input=2.0, output=8.0, cached_input=1.5))
        assert half.cost("m", USAGE, batch=True) == pytest.approx(0.6 * 1.0 + 0.4 * 1.0 + 2.0 * 4.0)
        own = ProviderClient(priced(input=2.0, output=8.0, batch_input=0.5, batch_output=3.0))
        assert own.cost("m", USAGE, batch=True) == pytest.approx(1.0 * 0.5 + 2.0 * 3.0)

    def test_unknown_price_is_none_with_one_warning(self) -> None:
        """A model without a price costs None, with one warning per model, no crash."""
        client = ProviderClient(priced(input=1.0, output=1.0))
        with structlog.testing.capture_logs() as captured:
            assert client.cost("other", USAGE) is None
            assert client.cost("other", USAGE) is None
            assert client.cost("third", USAGE) is None
        warnings = [e for e in captured if e["log_level"] == "warning"]
        assert [w["model"] for w in warnings] == ["other", "third"]
        assert all(w["provider"] == "test-openai" for w in warnings)


class TestAccountDisabled:
    async def test_insufficient_quota_disables(self) -> None:
        """OpenAI's 429 ``insufficient_quota`` is billing: it disables like a bad key."""
        wire = WIRES["openai"]
        async with serve(default_reply(wire)) as server:
            server.then(wire.error(429, "You exceeded your current quota", "insufficient_quota"))
            async with ProviderClient(provider_config("openai", server.url)) as client:
                log = RecordingLog()
                assert await client.rollout("m", Prompt("p"), {}, log) is None
                assert client.disabled is not None
                assert log.trail == [("requested", 1), ("failed", 1)]
                assert await client.rollout("m", Prompt("p"), {}, RecordingLog()) is None
            assert len(server.seen) == 1

    async def test_a_fire_tries_a_disabled_provider_with_one_request(self) -> None:
        """Disabled, the client sends nothing until a schedule fires (``try_again``); then,
        of 20 rollouts at once, the first is the one request sent and the others wait for
        its answer: refused again, all 20 give up (one WARNING ``provider_still_disabled``,
        the 19 with no attempt recorded); answered, the provider is enabled again (INFO
        ``provider_enabled`` with why it had been disabled) and all 20 are answered.
        Before, a disabled client never sent another request."""
        wire = WIRES["openai"]
        quota = wire.error(429, "You exceeded your current quota", "insufficient_quota")

        async def twenty(client: ProviderClient) -> list[tuple[object, RecordingLog]]:
            out: list[tuple[object, RecordingLog]] = []

            async def one() -> None:
                log = RecordingLog()
                out.append((await client.rollout("m", Prompt("p"), {}, log), log))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(one)
            return out

        async with serve(default_reply(wire)) as server:
            server.then(quota)
            async with ProviderClient(provider_config("openai", server.url)) as client:
                assert await client.rollout("m", Prompt("p"), {}, RecordingLog()) is None
                assert client.disabled is not None
                assert [a for a, _ in await twenty(client)] == [None] * 20
                assert len(server.seen) == 1  # no fire: nothing sent
                server.then(quota)
                client.try_again()
                assert client.disabled is None  # a run of the fire goes on
                with structlog.testing.capture_logs() as refused:
                    again = await twenty(client)
                assert [a for a, _ in again] == [None] * 20
                assert sorted(len(log.trail) for _, log in again) == [0] * 19 + [2]
                assert len(server.seen) == 2
                assert client.disabled is not None
                assert client.stats.disabled
                assert [e["event"] for e in refused] == ["provider_still_disabled"]
                assert "quota" in refused[0]["reason"]
                client.try_again()
                with structlog.testing.capture_logs() as enabled:
                    answered = await twenty(client)
                assert all(a is not None for a, _ in answered)
                assert len(server.seen) == 22
                assert client.disabled is None
                assert client.rejected is None
                assert not client.stats.disabled
                on = [e for e in enabled if e["event"] == "provider_enabled"]
                assert len(on) == 1, enabled
                assert "quota" in on[0]["was_disabled_for"]


class TestStats:
    async def test_counters(self) -> None:
        """Stats count requests, answers, errors by kind, tokens, cost and latency."""
        wire = WIRES["gemini"]
        async with serve(default_reply(wire)) as server:
            server.then(wire.error(500, "boom"))
            config = provider_config("gemini", server.url)
            async with ProviderClient(config) as client:
                for _ in range(3):
                    await client.rollout("gemini-2.5-pro", Prompt("p"), {}, RecordingLog())
                stats = client.stats
        assert (stats.requests, stats.responses) == (4, 3)
        assert stats.errors == {"server_error": 1}
        assert (stats.rollouts_answered, stats.rollouts_failed) == (3, 0)
        assert stats.input_tokens == 3 * wire.usage.input_tokens
        assert stats.output_tokens == 3 * wire.usage.output_tokens
        assert stats.cost_usd == pytest.approx(3 * client.cost("gemini-2.5-pro", wire.usage))
        assert stats.latency_ms_sum > 0
        assert stats.in_flight == 0
        assert stats.window == config.max_concurrency
        assert not stats.disabled
