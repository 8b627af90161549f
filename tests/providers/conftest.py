"""Fixtures of the provider tests: a loopback server per wire format, and configs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rollwatch.config import ProviderConfig
from tests.providers.fakes import KEY, KEY_ENV, WIRES, Wire, default_reply
from tests.providers.loopback import LoopbackServer, serve

MODEL = "gemini-2.5-pro"
"""The model every contract test asks for (any name works with the fakes)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture(params=sorted(WIRES), ids=sorted(WIRES))
def wire(request: pytest.FixtureRequest) -> Wire:
    """Each wire format in turn: openai, anthropic, gemini."""
    return WIRES[request.param]


@pytest.fixture
async def server(wire: Wire) -> AsyncIterator[LoopbackServer]:
    """A loopback server speaking ``wire``; answers happily unless a test scripts it."""
    async with serve(default_reply(wire)) as s:
        yield s


def provider_config(kind: str, url: str, **overrides: Any) -> ProviderConfig:
    """A provider on ``url`` with test-sized timeouts and backoff."""
    fields: dict[str, Any] = {
        "name": f"test-{kind}",
        "kind": kind,
        "base_url": url,
        "api_key_env": KEY_ENV,
        "max_concurrency": 4,
        "timeout": 2.0,
        "max_attempts": 4,
        "max_rollout_time": 20.0,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "prices": {MODEL: {"input": 1.0, "output": 10.0, "cached_input": 0.1}},
    }
    fields.update(overrides)
    return ProviderConfig.model_validate(fields)


@pytest.fixture
def make_config(wire: Wire, server: LoopbackServer) -> Callable[..., ProviderConfig]:
    """``make_config(**overrides)``: a config of the current wire format on ``server``."""

    def make(**overrides: Any) -> ProviderConfig:
        return provider_config(wire.kind, server.url, **overrides)

    return make
