"""The HTTP surface attacked below the routes, on a real loopback server: the router's
own redirects, requests the HTTP parser refuses, and requests carrying two sets of
credentials. Each attack here worked before its fix (see each test)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import anyio
import httpx
import pytest

from tests.publication.helpers import (
    Env,
    add_rollout,
    add_subscriber,
    bearer,
    new_run_id,
    serving,
    start_run,
)

pytestmark = pytest.mark.anyio

EVIL = "evil.example"
REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # the server believes a loopback proxy


def _exchange(port: int, request: bytes) -> bytes:
    """``request`` sent as it is (no client would write it) on a new connection; all that
    comes back until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # closed with some of a huge request unread
            pass
    return out


def _port(env: Env) -> int:
    return int(env.base.rsplit(":", 1)[1])


class TestSlashRedirects:
    @pytest.mark.parametrize(
        ("path", "lands_on"),
        [
            ("/public", "/public/"),
            ("/public/feed.json/", "/public/feed.json"),
            ("/v1/feed/?after=3", "/v1/feed?after=3"),
            ("/v1/rollouts/{rid}/", "/v1/rollouts/{rid}"),
            ("/healthz/", "/healthz"),
        ],
    )
    async def test_the_host_header_never_makes_the_location(
        self, tmp_path: Path, path: str, lands_on: str
    ) -> None:
        """``/public`` (no slash) and ``/v1/feed/`` (one too many) are redirected to the route.
        The router wrote the ``Location`` from the request's ``Host`` header, which the
        client writes: ``Host: evil.example`` on ``/public`` answered ``307 Location:
        http://evil.example/public/``, a redirect to anyone's site that a cache or a page
        in front would hand on. The ``Location`` names no host, and following it from the
        URL asked for lands on the route (a subscriber's key and query kept)."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "eve")
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=3600)
            path, lands_on = path.format(rid=rid), lands_on.format(rid=rid)
            r = await env.client.get(path, headers={**bearer(key), "Host": EVIL})
            assert r.status_code == 307, r.text
            location = r.headers["location"]
            assert EVIL not in location, location
            assert not location.startswith("//"), location
            target = httpx.URL(env.base + path).join(location)
            assert target.raw_path.decode() == lands_on, (location, target)
            assert (await env.client.get(target, headers=bearer(key))).status_code == 200

    async def test_no_redirect_out_of_the_server(self, tmp_path: Path) -> None:
        """Paths that would resolve elsewhere once a slash is added or removed (doubled
        slashes, dot segments, several trailing slashes) are 404s in the error body."""
        async with serving(tmp_path) as env:
            for path in (
                "//public",
                "/public//",
                "/v1/feed//",
                "//evil.example/public",
                "/public/..",
                "/nope/",
            ):
                status, _, body = await anyio.to_thread.run_sync(_get_raw, _port(env), path, {"Host": EVIL})
                assert status == 404, (path, status)
                assert set(json.loads(body)) == {"error", "message"}, path


def _get_raw(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` exactly as written: status, headers (lower-case names), body."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", **headers}.items())
    raw = _exchange(port, f"GET {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


class TestUnparsableRequests:
    async def test_requests_the_parser_refuses_get_the_error_body(self, tmp_path: Path) -> None:
        """A NUL in the key, headers of two megabytes, a request line that is not HTTP, two
        ``Host`` headers: h11 refuses them before any route, and uvicorn answered a
        ``text/plain`` "Invalid HTTP request received.", the one 4xx a client could not
        read as ``{"error", "message"}``. Now it is that body (quoting nothing of the
        request: the bad header may hold a key), and the server answers on."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "eve")
            port = _port(env)
            requests = [
                f"GET /v1/report HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\x00\r\n\r\n".encode(),
                b"GET /public/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n",
                b"HELLO THERE\r\n\r\n",
                b"GET /public/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
                b"GET /public/ HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
            ]
            for request in requests:
                raw = await anyio.to_thread.run_sync(_exchange, port, request)
                top, _, body = raw.partition(b"\r\n\r\n")
                assert top.startswith(b"HTTP/1.1 400 "), (request[:60], raw[:200])
                assert b"content-type: application/json" in top.lower(), (request[:60], top)
                answer = json.loads(body)
                assert set(answer) == {"error", "message"}, request[:60]
                assert answer["error"] == "bad_request"
                assert key not in raw.decode("latin-1")
            assert (await env.client.get("/healthz")).status_code == 200


class TestTwoAuthorizationHeaders:
    async def test_two_keys_in_one_request_are_refused(self, tmp_path: Path) -> None:
        """Two ``Authorization`` headers (a key and a wrong one, in either order): the first
        was read, so the request's access depended on their order, and on who reads it (a
        proxy or a log in front may go by the other). Now a 400 naming the header and no
        data, on the subscriber routes and for the operator's pass counts alike; one
        header works as before."""
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "eve", scopes=["feed", "rollouts", "report", "ops"])
            run = new_run_id()
            await start_run(env.store, run)
            rid = await add_rollout(env.store, run, passed=True, embargo_s=3600)
            wrong = "rw_" + "W" * 43
            for path in ("/v1/report", "/v1/feed", f"/v1/rollouts/{rid}", "/metrics"):
                for pair in ((key, wrong), (wrong, key), (key, key)):
                    headers = [("Authorization", f"Bearer {k}") for k in pair] + list(REMOTE.items())
                    r = await env.client.get(path, headers=headers)
                    assert r.status_code == 400, (path, pair.index(key), r.status_code)
                    assert set(r.json()) == {"error", "message"}, path
                    assert "Authorization" in r.json()["message"]
                    assert rid not in r.text
                one = await env.client.get(path, headers={**bearer(key), **REMOTE})
                assert one.status_code == 200, (path, one.text[:200])
