"""The HTTP layer from outside, on real loopback servers: one error body, strict
parameters, /metrics for the operator only, revocation during a long poll, feed
links that ignore Host, and slowloris."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
import structlog.testing
from anyio.abc import SocketStream
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rollwatch.integrity.routes import integrity_routes
from rollwatch.integrity.tree import MerkleTree
from rollwatch.metrics import Metrics
from rollwatch.publication.keys import SubscriberDirectory
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.access import Operators
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer
from tests.integrity.conftest import append_n
from tests.publication.helpers import (
    add_rollout,
    add_subscriber,
    bearer,
    make_config,
    new_run_id,
    revoke,
    serving,
    start_run,
)
from tests.publication.test_api import SignallingStore

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def server(app: object, *, head_timeout: float = 10.0) -> AsyncIterator[str]:
    """``app`` on a free loopback port; yields its base URL."""
    http = HTTPServer(app, "127.0.0.1", 0, head_timeout=head_timeout)
    async with anyio.create_task_group() as tg:
        await tg.start(http.run)
        try:
            yield f"http://127.0.0.1:{http.port}"
        finally:
            http.stop()


def assert_error_body(r: httpx.Response, status: int, code: str, names: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert names in body["message"]


# Values an integer parameter must refuse: non-ASCII digits (² and Arabic-Indic ٣,
# which str.isdigit accepts), signs, exponents, blanks, separators, and too many digits.
BAD_INTEGERS = ["%C2%B2", "%D9%A3", "-1", "+1", "", "1e3", "%201", "1%20", "1_0", "0x1", "9" * 20, "1.0"]


class TestOneErrorBody:
    @pytest.fixture
    async def proofs(self, tmp_path: Path) -> AsyncIterator[str]:
        """The integrity routes over a five-event log, served on loopback."""
        async with (
            SQLiteEventStore(tmp_path / "events.db") as store,
            MerkleTree(tmp_path / "merkle.db") as tree,
        ):
            await append_n(store, 5)
            await tree.catch_up(store)
            async with server(build_app(Metrics(), integrity_routes(tree, "k+00000000+AA=="))) as url:
                yield url

    @pytest.mark.parametrize("raw", BAD_INTEGERS)
    async def test_proof_parameters_refuse_anything_but_ascii_digits(self, proofs: str, raw: str) -> None:
        """seq, size, from and to: each malformed value is a 400 with the error body naming
        the parameter (``seq=%C2%B2`` used to be a 500)."""
        async with httpx.AsyncClient(base_url=proofs) as c:
            for path, name in [
                (f"/public/proof/inclusion?seq={raw}&size=3", "seq"),
                (f"/public/proof/inclusion?seq=1&size={raw}", "size"),
                (f"/public/proof/consistency?from={raw}&to=3", "from"),
                (f"/public/proof/consistency?from=1&to={raw}", "to"),
            ]:
                assert_error_body(await c.get(path), 400, "bad_request", name)

    async def test_proof_errors_and_router_errors_share_the_body(self, proofs: str) -> None:
        """A size the tree lacks, a size no checkpoint signed yet, an unknown route, a wrong
        method: the same body (good proofs: tests/integrity/test_public.py)."""
        async with httpx.AsyncClient(base_url=proofs) as c:
            assert_error_body(
                await c.get("/public/proof/inclusion?seq=1&size=5"), 400, "bad_request", "signed checkpoint"
            )
            assert_error_body(await c.get("/public/proof/inclusion?seq=1&size=99"), 400, "bad_request")
            assert_error_body(await c.get("/public/checkpoint"), 404, "not_found", "checkpoint")
            assert_error_body(await c.get("/no/such/route"), 404, "not_found")
            assert_error_body(await c.post("/healthz"), 405, "method_not_allowed")

    @pytest.mark.parametrize("raw", BAD_INTEGERS)
    async def test_feed_parameters_use_the_same_parser_and_body(self, tmp_path: Path, raw: str) -> None:
        """/v1/feed refuses the same values with the same body as the proof routes."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice")
            r = await env.client.get(f"/v1/feed?after={raw}", headers=bearer(key))
            assert_error_body(r, 400, "bad_request", "after")

    @pytest.mark.parametrize(
        "raw",
        [
            b"GARBAGE\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon rw_secret\r\n\r\n",
            b"POST /v1/feed HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        ],
        ids=["no-request-line", "header-without-colon", "bad-content-length"],
    )
    async def test_a_request_that_is_not_http_gets_the_body_too(self, raw: bytes) -> None:
        """What the server cannot parse as HTTP is a 400 in the same JSON body, quoting
        nothing of the request. Before, uvicorn answered ``text/plain`` ``Invalid HTTP
        request received.``, against the README's "every 4xx and 5xx answer"."""
        async with server(build_app(Metrics(), [])) as url:
            port = int(url.rsplit(":", 1)[1])
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(raw)
                received = b""
                with anyio.fail_after(5):
                    try:
                        while True:
                            received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                        pass
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), received
        assert b"content-type: application/json" in head.lower(), received
        answer = json.loads(body)
        assert answer["error"] == "bad_request"
        assert "not valid HTTP/1.1" in answer["message"], answer

    @pytest.mark.parametrize(
        "raw",
        [
            b"GARBAGE\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon rw_secret\r\n\r\n",
            b"POST /v1/feed HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nrw_body",
        ],
        ids=["no-request-line", "header-without-colon", "bad-content-length"],
    )
    async def test_a_request_that_is_not_http_has_its_access_line(self, raw: bytes) -> None:
        """The 400 the server gives a request it cannot parse never reaches the app, whose
        middleware writes the access log: before, an operator tailing the log saw nothing of
        it. Now it is one ``http_request`` line with the keys of every other (method and
        path unknown), quoting nothing of the request."""
        with structlog.testing.capture_logs() as captured:
            async with server(build_app(Metrics(), [])) as url:
                port = int(url.rsplit(":", 1)[1])
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    await stream.send(raw)
                    with anyio.fail_after(5):
                        try:
                            while await stream.receive():
                                pass
                        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                            pass
        lines = [e for e in captured if e["event"] == "http_request"]
        assert len(lines) == 1, captured
        line = lines[0]
        assert {k: line[k] for k in ("method", "path", "status", "client", "refused")} == {
            "method": None,
            "path": None,
            "status": 400,
            "client": "127.0.0.1",
            "refused": "not valid HTTP/1.1",
        }
        assert isinstance(line["ms"], float)
        assert line["ms"] >= 0
        assert "rw_" not in repr(captured)

    async def test_an_unexpected_error_is_a_500_with_the_body_and_no_details(self) -> None:
        """A bug in a handler answers 500 in the error body, without the exception's text."""

        async def broken(_: Request) -> Response:
            raise RuntimeError("secret internals")

        app = build_app(Metrics(), [Route("/broken", broken)])
        async with server(app) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/broken")
        assert_error_body(r, 500, "internal")
        assert "secret" not in r.text


class TestMetricsForTheOperatorOnly:
    @pytest.fixture
    async def site(self, tmp_path: Path) -> AsyncIterator[tuple[str, SQLiteEventStore]]:
        """/metrics after 3 passed and 2 failed rollouts, served with *no* trusted peer
        (so this loopback client is an outsider) and ops keys checked against the log."""
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            run = new_run_id()
            await start_run(store, run)
            for passed in (True, True, True, False, False):
                await add_rollout(store, run, passed=passed, embargo_s=3600)
            metrics = Metrics()
            async for ev in store.read():
                metrics.observe_event(ev)
            operators = Operators(trusted_peers=[], keys=SubscriberDirectory(store))
            async with server(build_app(metrics, operators=operators)) as url:
                yield url, store

    async def test_an_outsider_sees_no_pass_counts(self, site: tuple[str, SQLiteEventStore]) -> None:
        """Without credentials, or with a subscriber key lacking ``ops``, /metrics has the
        process's figures but nothing that counts the work: no runs, no rollouts, nothing
        that tells how answers scored."""
        url, store = site
        reader = await add_subscriber(store, "reader")
        async with httpx.AsyncClient(base_url=url) as c:
            for headers in (
                {},
                bearer(reader),
                bearer("rw_" + "x" * 43),
                {"Authorization": "Basic b3BzOm9wcw=="},
            ):
                r = await c.get("/metrics", headers=headers)
                assert r.status_code == 200
                assert "process_cpu_seconds_total" in r.text
                assert "rollwatch_runs_started" not in r.text
                assert "rollwatch_rollouts" not in r.text
                series = [ln for ln in r.text.splitlines() if not ln.startswith("#")]
                assert not [ln for ln in series if "passed" in ln], headers

    async def test_the_operator_sees_them(self, site: tuple[str, SQLiteEventStore]) -> None:
        """With a key of scope ``ops`` (the control: the check above can fail) the counts are there;
        once that key is revoked they are gone again."""
        url, store = site
        ops = await add_subscriber(store, "ops", scopes=["ops"])
        async with httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/metrics", headers=bearer(ops))
            assert 'rollwatch_rollouts_total{outcome="passed"} 3' in r.text
            assert 'rollwatch_rollouts_total{outcome="not_passed"} 2' in r.text
            await revoke(store, "ops")
            with anyio.fail_after(10):
                while 'outcome="passed"' in (await c.get("/metrics", headers=bearer(ops))).text:
                    await anyio.sleep(0.05)

    async def test_loopback_is_trusted_by_default(self, tmp_path: Path) -> None:
        """The default trusted peers are loopback: the operator on the host needs no key."""
        metrics = Metrics()
        metrics.rollouts["passed"] = 7
        async with server(build_app(metrics)) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/metrics")
        assert 'rollwatch_rollouts_total{outcome="passed"} 7' in r.text

    def test_ops_is_opt_in(self) -> None:
        """A key gets the ``ops`` scope only when asked for: ``subscribers add`` without
        --scope makes a subscriber, never an operator."""
        from rollwatch.publication.keys import check_scopes

        assert "ops" not in check_scopes([])
        assert check_scopes(["ops"]) == ["ops"]
        assert check_scopes(["ops", "feed"]) == ["feed", "ops"]

    def test_trusted_peers_is_validated(self) -> None:
        """server.trusted_peers holds IP networks; anything else is a config error naming the key."""
        from rollwatch.errors import ConfigError

        with pytest.raises(ConfigError, match=r"server.trusted_peers\[0\]|server.trusted_peers"):
            make_config(server={"trusted_peers": ["localhost"]})


class TestLongPollRevocation:
    @pytest.mark.parametrize("revoked", [True, False], ids=["revoked", "control"])
    async def test_a_long_poll_opened_before_revoke_delivers_nothing_after_it(
        self, tmp_path: Path, revoked: bool
    ) -> None:
        """A poll waiting when ``subscribers revoke`` is recorded answers 401 with no items
        when an item then arrives; the control (no revocation) gets the item."""
        store = SignallingStore(tmp_path / "events.db")
        async with serving(tmp_path, store=store) as env:
            key = await add_subscriber(env.store, "alice")
            head = await env.store.head()
            got: list[httpx.Response] = []

            async def poll() -> None:
                r = await env.client.get("/v1/feed", params={"after": head, "wait": 30}, headers=bearer(key))
                got.append(r)

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                with anyio.fail_after(10):
                    await store.waiting.wait()
                if revoked:
                    await revoke(env.store, "alice")
                await start_run(env.store, new_run_id())
            [r] = got
            if revoked:
                assert r.status_code == 401
                assert "RunStarted" not in r.text
                assert "items" not in r.text
                assert r.json()["error"] == "unauthorized"
            else:
                assert r.status_code == 200
                assert [i["type"] for i in r.json()["items"]] == ["RunStarted"]


class TestFeedLinks:
    @pytest.mark.parametrize(
        ("server_section", "expected"),
        [
            ({"base_url": "https://feeds.example.org/"}, "https://feeds.example.org/public/"),
            ({}, None),  # the listening socket's address
        ],
        ids=["base_url", "default-listen"],
    )
    async def test_links_ignore_a_hostile_host_header(
        self, tmp_path: Path, server_section: dict[str, str], expected: str | None
    ) -> None:
        """JSON Feed and Atom links use server.base_url (default: the address the server
        listens on), never the request's Host header."""
        config = make_config(server=server_section)
        async with serving(tmp_path, config) as env:
            headers = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
            feed = await env.client.get("/public/feed.json", headers=headers)
            atom = await env.client.get("/public/feed.atom", headers=headers)
            expected = expected or env.base + "/public/"
        assert feed.status_code == atom.status_code == 200
        assert json.loads(feed.text)["feed_url"] == expected + "feed.json"
        assert expected + "feed.atom" in atom.text
        assert "evil" not in feed.text + atom.text


class TestSlowloris:
    async def test_slow_and_idle_clients_are_cut_while_others_are_served(self) -> None:
        """200 sockets (trickling headers, idle, or trickling a second request on a kept-alive
        connection) are closed by the server within the head timeout, while a normal request
        is answered meanwhile."""
        head_timeout = 2.0
        closed: list[float] = []

        async def slow_client(stream: SocketStream, kind: str) -> None:
            async def trickle() -> None:
                if kind == "keepalive":
                    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if kind != "idle":
                    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    while True:  # one header line every 0.2 s: never a whole head
                        await stream.send(b"X-Slow: 1\r\n")
                        await anyio.sleep(0.2)

            async with stream, anyio.create_task_group() as tg:
                tg.start_soon(trickle)
                received = b""
                try:
                    while True:
                        received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    pass
                # A kept-alive client got its first answer, and only that one.
                assert received.count(b"HTTP/1.1 200") == (1 if kind == "keepalive" else 0)
                closed.append(anyio.current_time())
                tg.cancel_scope.cancel()

        async def slow_route(_: Request) -> Response:
            await anyio.sleep(head_timeout * 1.5)  # the server side of a long poll
            return JSONResponse({"slow": True})

        app = build_app(Metrics(), [Route("/slow", slow_route)])
        async with server(app, head_timeout=head_timeout) as url:
            port = int(url.rsplit(":", 1)[1])
            kinds = ["trickle"] * 180 + ["idle"] * 10 + ["keepalive"] * 10
            streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in kinds]
            start = anyio.current_time()
            with anyio.fail_after(head_timeout + 15):
                async with anyio.create_task_group() as tg:
                    for stream, kind in zip(streams, kinds, strict=True):
                        tg.start_soon(slow_client, stream, kind)
                    async with httpx.AsyncClient(base_url=url) as c:
                        assert (await c.get("/healthz")).status_code == 200
                        assert not closed, "the slow clients were cut before the normal request"
                        # A response that takes longer than the head timeout is not cut.
                        assert (await c.get("/slow", timeout=30)).json() == {"slow": True}
        assert len(closed) == len(kinds)
        assert max(closed) - start < head_timeout + 5
