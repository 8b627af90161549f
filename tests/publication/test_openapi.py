"""``/openapi.json`` describes every route a live daemon serves, with the limits the routes
enforce (taken from the same pydantic models, never copied)."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.routing import Route

from rollwatch.daemon import Daemon
from rollwatch.publication.openapi import openapi_document
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.params import MAX_LIMIT, MAX_SEQ, MAX_WAIT, FeedQuery
from tests.publication.helpers import add_subscriber, bearer, make_config

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient, str]]:
    """A whole daemon (integrity, publication, health, metrics) on a free loopback port,
    and a subscriber key for it."""
    port = _free_port()
    config = make_config(
        store={"url": f"sqlite:///{tmp_path}/events.db"},
        server={"listen": f"127.0.0.1:{port}"},
    )
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        key = await add_subscriber(store, "alice")
    daemon = Daemon(config, grace=1.0)
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                yield daemon, client, key
        finally:
            daemon.stopping.set()


def app_routes(daemon: Daemon) -> set[tuple[str, str]]:
    """(path, method) of every route of the app the daemon serves (HEAD is implied by GET)."""
    assert daemon.http is not None
    app: Any = daemon.http.server.config.app
    while not hasattr(app, "routes"):
        app = app.app  # through middleware such as the access log
    out = set()
    for r in app.routes:
        assert isinstance(r, Route), r
        # Starlette's {name:converter} is OpenAPI's {name}.
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path)
        out |= {(path, m.lower()) for m in (r.methods or ()) if m != "HEAD"}
    return out


class TestOpenAPI:
    async def test_the_document_names_exactly_the_apps_routes(
        self, live: tuple[Daemon, httpx.AsyncClient, str]
    ) -> None:
        """Every (path, method) the live daemon routes is in the served document and nothing
        else is: checkpoint, key, proofs, /healthz and /metrics included."""
        daemon, client, _ = live
        doc = (await client.get("/openapi.json")).json()
        documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
        routed = app_routes(daemon)
        assert documented == routed
        for path in ("/public/checkpoint", "/public/key", "/public/proof/inclusion", "/healthz", "/metrics"):
            assert (path, "get") in routed

    async def test_documented_limits_are_the_enforced_ones(
        self, live: tuple[Daemon, httpx.AsyncClient, str]
    ) -> None:
        """For each bounded query parameter of /v1/feed and the proofs, the documented maximum
        is accepted as a value and maximum + 1 is a 400 naming the parameter; the bounds are
        the constants the code uses."""
        _, client, key = live
        doc = (await client.get("/openapi.json")).json()
        feed = {
            p["name"]: p["schema"]
            for p in doc["paths"]["/v1/feed"]["get"]["parameters"]
            if p["in"] == "query"
        }
        assert (feed["limit"]["maximum"], feed["wait"]["maximum"]) == (MAX_LIMIT, MAX_WAIT)
        assert feed["after"]["maximum"] == MAX_SEQ
        hi = feed["limit"]["maximum"]
        ok = await client.get(f"/v1/feed?limit={hi}", headers=bearer(key))
        assert ok.status_code == 200, ok.text
        for name, value in (
            ("limit", hi + 1),
            ("limit", feed["limit"]["minimum"] - 1),
            ("after", MAX_SEQ + 1),
        ):
            r = await client.get(f"/v1/feed?{name}={value}", headers=bearer(key))
            assert r.status_code == 400, (name, value)
            assert r.json()["message"].startswith(f"{name}: expected an integer from "), r.text
        incl = doc["paths"]["/public/proof/inclusion"]["get"]["parameters"]
        assert {p["name"]: p["required"] for p in incl} == {"seq": True, "size": True}
        r = await client.get("/public/proof/inclusion?seq=1")
        assert r.status_code == 400
        assert "missing query parameter 'size'" in r.json()["message"]

    def test_parameters_are_the_models(self) -> None:
        """The feed's parameters are generated from the model the route validates with: a new
        field or a changed bound shows up in the document without editing it."""
        params = openapi_document()["paths"]["/v1/feed"]["get"]["parameters"]
        names = [p["name"] for p in params if p["in"] == "query"]
        assert names == list(FeedQuery.model_fields)
        schema = FeedQuery.model_json_schema()["properties"]
        for p in params:
            if p["in"] == "query":
                assert p["schema"]["maximum"] == schema[p["name"]]["maximum"]
                assert p["schema"]["default"] == schema[p["name"]]["default"]
