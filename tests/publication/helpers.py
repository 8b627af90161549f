"""Logs built by appending events directly, and a real publication server on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx

from rollwatch.abc import EventStore
from rollwatch.config import Config, parse_config
from rollwatch.events import (
    Event,
    PublicationDecided,
    RolloutFailed,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunStarted,
    SubscriberAdded,
    SubscriberRevoked,
    rfc3339,
    subscriber_stream,
)
from rollwatch.metrics import Metrics
from rollwatch.projections import Projection, ProjectionDB
from rollwatch.publication import publication_projections
from rollwatch.publication.keys import SCOPES, hash_key, key_prefix, new_key
from rollwatch.publication.routes import PublicationAPI
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer


def all_projections() -> list[Projection]:
    """Every read model: the daemon's, the report's and publication's."""
    have = default_projections()
    names = {p.name for p in have}
    return have + [p for p in publication_projections() if p.name not in names]


def make_config(**sections: Any) -> Config:
    """A validated config from TOML-like sections, e.g. ``publication={"embargo": "2s"}``."""
    return parse_config(sections)


async def add_subscriber(
    store: EventStore, name: str, *, scopes: list[str] | None = None, expires: datetime | None = None
) -> str:
    """Append a ``SubscriberAdded`` as the CLI does; return the key."""
    key = new_key()
    await store.append(
        subscriber_stream(name),
        [
            SubscriberAdded(
                name=name,
                key_hash=hash_key(key),
                key_prefix=key_prefix(key),
                scopes=list(scopes or SCOPES),
                expires=rfc3339(expires) if expires else None,
            )
        ],
        expected_version=0,
    )
    return key


async def revoke(store: EventStore, name: str) -> int:
    """Append a ``SubscriberRevoked``; return its seq."""
    recs = await store.append(subscriber_stream(name), [SubscriberRevoked(name=name, note="test")])
    return recs[0].seq


def new_run_id() -> str:
    return "run-" + uuid.uuid4().hex[:12]


async def start_run(
    store: EventStore, run_id: str, provider: str = "openai", models: tuple[str, ...] = ("gpt-x",)
) -> None:
    """Append a ``RunStarted``."""
    await store.append(
        f"run-{run_id}",
        [
            RunStarted(
                run_id=run_id,
                schedule="daily",
                provider=provider,
                models=list(models),
                problem_set="favorites",
                node="test-node",
                rollouts=1,
                problems=["p1"],
            )
        ],
        expected_version=0,
    )


async def finish_run(store: EventStore, run_id: str, rollouts: int = 0, passed: int = 0) -> None:
    """Append a ``RunFinished``."""
    await store.append(
        f"run-{run_id}",
        [
            RunFinished(
                run_id=run_id,
                status="completed",
                rollouts=rollouts,
                passed=passed,
                cost_usd=0.0,
            )
        ],
    )


def rollout_events(
    rid: str,
    run_id: str,
    *,
    provider: str = "openai",
    model: str = "gpt-x",
    problem_id: str = "p1",
    problem_hash: str = "h",
    sample: int = 0,
    passed: bool,
    embargo_s: float = 0.0,
    not_before: datetime | None = None,
    failed_first: bool = False,
    answer: str | None = None,
    old_shape: bool = False,
    none_embargo_s: float | None = None,
) -> list[Event]:
    """One rollout's events as ``runs`` appends them: request(s), answer, score, decisions.

    The public decision's ``not_before`` is now + ``embargo_s`` unless given. A failure's
    second decision is "none" (``publication.policy.decide``), or with ``old_shape`` left
    out, as logs from before it have it; ``none_embargo_s`` is the embargo in force that
    "none" decision carries (as ``decide`` records it).
    """
    now = datetime.now(UTC)
    evs: list[Event] = []
    attempt = 1
    common = {
        "rollout_id": rid,
        "run_id": run_id,
        "provider": provider,
        "model": model,
        "problem_id": problem_id,
        "problem_hash": problem_hash,
        "sample": sample,
        "node": "test-node",
    }
    if failed_first:
        evs.append(RolloutRequested(**common, attempt=1, request={"prompt": "solve", "try": 1}))  # type: ignore[arg-type]
        evs.append(
            RolloutFailed(
                rollout_id=rid,
                attempt=1,
                kind="rate_limited",
                status=429,
                retryable=True,
                message="slow down",
            )
        )
        attempt = 2
    evs.append(RolloutRequested(**common, attempt=attempt, request={"prompt": "solve", "try": attempt}))  # type: ignore[arg-type]
    evs.append(
        RolloutResponded(
            rollout_id=rid,
            attempt=attempt,
            text=answer or f"def solve():  # {rid}\n    return 42\n",
            reasoning="think first",
            usage={"input_tokens": 10, "output_tokens": 20},
            cost_usd=0.001,
            latency_ms=12.5,
        )
    )
    evs.append(
        RolloutScored(rollout_id=rid, passed=passed, score=1.0 if passed else 0.0, scorer="python-function")
    )
    evs.append(PublicationDecided(rollout_id=rid, audience="subscribers", not_before=rfc3339(now)))
    if passed:
        nb = not_before or now + timedelta(seconds=embargo_s)
        evs.append(
            PublicationDecided(rollout_id=rid, audience="public", not_before=rfc3339(nb), embargo_s=embargo_s)
        )
    elif not old_shape:
        evs.append(
            PublicationDecided(
                rollout_id=rid, audience="none", not_before=rfc3339(now), embargo_s=none_embargo_s
            )
        )
    return evs


async def add_rollout(
    store: EventStore, run_id: str, *, passed: bool, rid: str | None = None, **kw: Any
) -> str:
    """Append one whole rollout (one append); return its id (``rid``, else a random one)."""
    rid = rid or str(uuid.uuid4())
    await store.append(f"rollout-{rid}", rollout_events(rid, run_id, passed=passed, **kw))
    return rid


@dataclass
class Env:
    """A running publication server and what it reads."""

    store: EventStore
    pdb: ProjectionDB
    config: Config
    client: httpx.AsyncClient
    base: str
    api: PublicationAPI


@asynccontextmanager
async def serving(
    tmp_path: Path,
    config: Config | None = None,
    *,
    store: EventStore | None = None,
    wrap: Callable[[Any], Any] | None = None,
) -> AsyncIterator[Env]:
    """The publication routes in ``build_app`` on an ephemeral loopback port (the app
    wrapped in ``wrap`` when given, to observe it)."""
    config = config or make_config()
    async with (
        store or SQLiteEventStore(tmp_path / "events.db") as st,
        ProjectionDB(tmp_path / "projections.db", all_projections()) as pdb,
    ):
        api = PublicationAPI(st, pdb, config)
        app = build_app(Metrics(), api.routes())
        if wrap is not None:
            app = wrap(app)
        server = HTTPServer(app, "127.0.0.1", 0)
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            base = f"http://127.0.0.1:{server.port}"
            try:
                async with httpx.AsyncClient(base_url=base, timeout=90) as client:
                    yield Env(st, pdb, config, client, base, api)
            finally:
                server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
