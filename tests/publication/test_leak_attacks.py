"""The subscriber API and the public release attacked for leaks, on a real loopback server:
keys that should no longer work, embargoed results and their counts through headers,
conditional requests and odd parameters."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import (
    add_rollout,
    add_subscriber,
    bearer,
    new_run_id,
    revoke,
    serving,
    start_run,
)

pytestmark = pytest.mark.anyio


class TestRevokedAtOnce:
    """A key is refused from the moment its revocation is in the log, on every keyed
    route: the request right after the append, with the server's view of the keys read a
    moment before (by a request of the same key), gets 401 and no data."""

    @pytest.mark.parametrize("path", ["/v1/rollouts/{rid}", "/v1/report", "/v1/feed"])
    async def test_the_request_right_after_the_revocation_is_refused(self, tmp_path: Path, path: str) -> None:
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "eve")
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=3600)
            url = path.format(rid=rid)
            # Another process (the CLI) appends the revocation through its own store.
            async with SQLiteEventStore(tmp_path / "events.db") as other:
                assert (await env.client.get(url, headers=bearer(key))).status_code == 200
                await revoke(other, "eve")
                r = await env.client.get(url, headers=bearer(key))
            assert r.status_code == 401, (url, r.status_code, r.text[:200])
            assert set(r.json()) == {"error", "message"}
            assert rid not in r.text

    async def test_a_key_added_is_seen_at_once(self, tmp_path: Path) -> None:
        """The other way round: a key works from the moment its ``SubscriberAdded`` is in the log."""
        async with serving(tmp_path) as env:
            first = await add_subscriber(env.store, "first")
            assert (await env.client.get("/v1/report", headers=bearer(first))).status_code == 200
            with anyio.fail_after(5):
                key = await add_subscriber(env.store, "second")
                r = await env.client.get("/v1/report", headers=bearer(key))
            assert r.status_code == 200, r.text
