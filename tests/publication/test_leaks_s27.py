"""Session 27's outsider attacks (helper s27-leak) on a real loopback server: methods other
than GET and HEAD, and a refused key sent in other spellings, on every keyed and public
route that names a rollout. They found nothing: kept because no earlier test sent them."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.publication.helpers import serving
from tests.publication.test_attacks_att_e import _world, raw, shape

pytestmark = pytest.mark.anyio

_UNKNOWN = "0b1f4c5e-7a1d-4c3e-9f00-000000000000"
_ROUTES = ("/v1/rollouts/{}", "/public/rollouts/{}.json", "/v1/feed?after=0&x={}", "/v1/report?by={}")


async def test_other_methods_and_spellings_tell_an_embargoed_rollout_from_no_rollout(tmp_path: Path) -> None:
    """OPTIONS, TRACE, a made-up method, and a revoked or expired key as ``BEARER``, with a
    tab, or twice in one header: each answer, status, headers and body, is the same for a
    rollout under embargo (pass or failure) as for an id never used, and names neither."""
    async with serving(tmp_path) as env:
        w = await _world(env)

        def probe(method: str, rid: str, headers: dict[str, str]) -> list[tuple[int, dict, str]]:
            return [shape(raw(env.base, method, r.format(rid), headers), rid) for r in _ROUTES]

        spellings = [
            {},
            {"Authorization": f"BEARER {w['revoked']}"},
            {"Authorization": f"Bearer\t{w['expired']}"},
            {"Authorization": f"Bearer {w['revoked']} {w['full']}"},
            {"Authorization": f"Bearer {w['full']}, Bearer {w['revoked']}"},
            {"X-Api-Key": w["full"]},
            {"Cookie": f"key={w['full']}"},
        ]
        for method in ("OPTIONS", "TRACE", "PROPFIND", "GET", "HEAD"):
            for h in spellings:
                unknown = await anyio.to_thread.run_sync(probe, method, _UNKNOWN, h)
                for secret in (w["hidden"], w["failed"]):
                    seen = await anyio.to_thread.run_sync(probe, method, secret, h)
                    assert seen == unknown, (method, h, seen, unknown)
                    for status, _hdrs, body in seen:
                        assert status in (400, 401, 404, 405), (method, h, status, body[:200])
                        assert "gpt-secret" not in body
