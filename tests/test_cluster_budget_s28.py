"""A shared run's budget when a node dies with requests at the provider.

The provider may answer, and bill, a request whose client died. On SQLite a restarted
daemon counts such an attempt's reservation (session 27); on a PostgreSQL log shared by
several nodes the board dropped it: the node taking the dead node's chunks over reset
their reservations to nothing, and the run went on spending as if those requests had
never been sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.test_cluster import FAST_LEASE, cluster
from tests.test_daemon import one_problem

pytestmark = pytest.mark.anyio

BUDGET = 0.01
USAGE = '{"prompt_tokens": 500, "completion_tokens": 50, "total_tokens": 550}'
"""Each answer costs $0.0006 (m1: $1/M in, $2/M out): the run's 40 rollouts cost more than its budget."""


def may_have_billed(events: list[dict[str, Any]]) -> tuple[float, int]:
    """What the run's attempts may have cost, from the log: an answer its cost, a failed
    attempt its reservation, an attempt with no outcome (its node died while the provider
    held it) its reservation, the most it could cost. And how many had no outcome."""
    outcome: dict[tuple[str, int], float] = {}
    asked: dict[tuple[str, int], float] = {}
    for ev in events:
        key = (ev["rollout_id"], ev["attempt"])
        if ev["type"] == "RolloutRequested":
            asked[key] = float(ev["budget_usd"])
        elif ev["type"] == "RolloutResponded":
            outcome[key] = float(ev["cost_usd"] or 0.0)
        elif ev["type"] == "RolloutFailed":
            outcome[key] = float(ev.get("budget_usd") or 0.0)
    return sum(outcome.get(k, most) for k, most in asked.items()), len(asked.keys() - outcome.keys())


async def test_a_dead_nodes_requests_in_flight_count_against_the_shared_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes share a run with a budget; the provider holds every request, so each
    node has its window of requests out; one node is killed. The other takes its chunks
    over after the lease, the provider is let go, and the run ends at its budget: what
    was answered, plus the dead node's requests at their reservation, stays within it.
    Before, the takeover voided the dead node's reservations and the run spent them again."""
    monkeypatch.setenv("FAKE_PROVIDER_USAGE", USAGE)
    # One problem: every request reserves the same (its prompt's) most.
    async with cluster(
        tmp_path,
        delay=0.05,
        rollouts=40,
        concurrency=2,
        budget=BUDGET,
        cluster=FAST_LEASE,
        hold_after=0,
        problems=one_problem(tmp_path),
    ) as c:
        await c.both_at_work(each=2)
        c.kill("node-a")
        # Past the dead node's lease: its reservations are no longer a live node's.
        conn = await asyncpg.connect(c.url)
        try:
            with anyio.fail_after(60):
                while await conn.fetchval(
                    "SELECT COUNT(*) FROM work_chunks WHERE owner = 'node-a' AND state = 'claimed'"
                    " AND lease_until >= clock_timestamp()"
                ):
                    await anyio.sleep(0.1)
        finally:
            await conn.close()
        c.served.with_name(c.served.name + ".release").touch()
        [fin] = await c.until(120, "RunFinished")
        assert fin["message"].startswith("budget_exhausted: "), fin
        evs = await c.events("RolloutRequested", "RolloutResponded", "RolloutFailed")
        billed, unanswered = may_have_billed(evs)
        assert unanswered >= 2, "node-a's held requests have no outcome in the log"
        assert billed <= BUDGET + 1e-9, (billed, unanswered)
        assert await c.stop("node-b") == 0
