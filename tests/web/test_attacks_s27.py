"""Session 27's attacks on the daemon's HTTP side, against the shared real daemon over
loopback (``tests/web/conftest.py``): every console route and method with every wrong
credential, cross-site forms in every shape a browser can send without a preflight,
security headers, the ``Host`` header, request smuggling variants, pipelining, enormous
requests, clients that leave mid-body, and error answers that could echo what was sent.
In Debian's Chromium (Playwright, as ``tests/web/test_browser.py``): a form posted from another
site, and markup stored in every field a page renders that a model, a provider, a problem file,
the config or a note can set, on a second daemon whose every such field is hostile."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.test_daemon import events, free_port, wait_until
from tests.web.opsd import Daemon, running_daemon

REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # the daemon believes a loopback proxy
STEERING = ("SchedulePaused", "ScheduleResumed", "ScheduleTriggered")


def steering(daemon: Daemon) -> int:
    return sum(len(events(daemon.db, t)) for t in STEERING)


def token(daemon: Daemon) -> str:
    m = re.search(r'name="token" value="([0-9a-f]+)"', httpx.get(daemon.url + "/ops/schedules").text)
    assert m
    return m.group(1)


def port(daemon: Daemon) -> int:
    return int(daemon.url.rsplit(":", 1)[1])


def exchange(daemon: Daemon, raw: bytes, *, timeout: float = 10.0) -> bytes:
    """Write ``raw`` on one connection; everything the server sends until it closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port(daemon)), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):  # a server closing on what it did not read
            pass
        return out


def serve_log(daemon: Daemon) -> str:
    return (daemon.db.parent / "serve.err").read_text(errors="replace")


@pytest.fixture(scope="module")
def revoked_ops_key(daemon: Daemon) -> str:
    """An ``ops`` key that worked, then was revoked (by the CLI: no event loop of our own here,
    where the browser's may be running)."""
    out = daemon.cli("subscribers", "add", "s27-revoked", "--scope", "ops")
    assert out.returncode == 0, out.stderr
    key = out.stdout.split()[0]
    auth = {**REMOTE, "Authorization": f"Bearer {key}"}
    wait_until(lambda: httpx.get(daemon.url + "/ops/", headers=auth).status_code == 200, what="the key")
    assert daemon.cli("subscribers", "revoke", "s27-revoked").returncode == 0
    return key


ROUTES = [
    "/ops",
    "/ops/",
    "/ops/runs/RUN",
    "/ops/rollouts/ROLLOUT",
    "/ops/rollouts/ROLLOUT/proof",
    "/ops/schedules",
    "/ops/schedules/fake-slow/pause",
    "/ops/schedules/fake-slow/resume",
    "/ops/schedules/fake-slow/trigger",
    "/ops/subscribers",
    "/ops/problems",
    "/ops/problems/p1",
    "/ops/progress",
    "/ops/static/console.js",
    "/ops/static/console.css",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class TestAuthorizationMatrix:
    def test_every_route_and_method_refuses_every_wrong_credential(
        self, daemon: Daemon, revoked_ops_key: str
    ) -> None:
        """From a remote peer: no credential, a subscriber's key, an unknown key, a revoked
        ``ops`` key, the ``ops`` key under another scheme (Basic, a bare token), in the query
        (``?key=``, ``?access_token=``) or in a cookie: every console route, with every
        method, answers 401, 403 or 405, with the error body and nothing of the console
        (no form token, no schedule, no run); and nothing is appended. The loopback peer
        asking by a name that is not the daemon's (DNS rebinding) is refused alike, POSTs
        included (tests/publication covers GET /ops/ only)."""
        run = next(d["run_id"] for _, _, d in events(daemon.db, "RunStarted"))
        rollout = next(d["rollout_id"] for _, _, d in events(daemon.db, "RolloutRequested"))
        tok = token(daemon)
        creds: dict[str, tuple[dict[str, str], str]] = {
            "none": (REMOTE, ""),
            "feed-key": ({**REMOTE, "Authorization": f"Bearer {daemon.feed_key}"}, ""),
            "unknown-key": ({**REMOTE, "Authorization": "Bearer rw_" + "A" * 43}, ""),
            "revoked-ops": ({**REMOTE, "Authorization": f"Bearer {revoked_ops_key}"}, ""),
            "basic": ({**REMOTE, "Authorization": f"Basic {daemon.ops_key}"}, ""),
            "bare": ({**REMOTE, "Authorization": daemon.ops_key}, ""),
            "query": (REMOTE, f"?key={daemon.ops_key}&access_token={daemon.ops_key}"),
            "cookie": ({**REMOTE, "Cookie": f"key={daemon.ops_key}; token={daemon.ops_key}"}, ""),
            "rebound": ({"Host": f"rebind.attacker.example:{port(daemon)}"}, ""),
        }
        before = steering(daemon)
        with httpx.Client(base_url=daemon.url) as c:
            for path in ROUTES:
                path = path.replace("RUN", run).replace("ROLLOUT", rollout)
                for method in METHODS:
                    for name, (headers, query) in creds.items():
                        body = {"token": tok, "note": "s27"} if method in ("POST", "PUT", "PATCH") else None
                        r = c.request(method, path + query, headers=headers, data=body)
                        where = (path, method, name, r.status_code, r.text[:200])
                        assert r.status_code in (401, 403, 405), where
                        if method != "HEAD":
                            assert set(r.json()) == {"error", "message"}, where
                        assert tok not in r.text, where
                        assert "fake-hostile" not in r.text, where
        assert steering(daemon) == before

    def test_the_ops_key_itself_is_the_control(self, daemon: Daemon) -> None:
        """The same requests with the ``ops`` key as ``Bearer`` are let in (the matrix above
        refuses for the credential, not for the route)."""
        auth = {**REMOTE, "Authorization": f"Bearer {daemon.ops_key}"}
        for path in ("/ops/", "/ops/schedules", "/ops/problems/p1", "/ops/static/console.js"):
            assert httpx.get(daemon.url + path, headers=auth).status_code == 200, path


class TestCrossSiteForms:
    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            ("text/plain", "token={tok}&note=csrf"),
            ("text/plain;charset=UTF-8", "token={tok}&note=csrf"),
            (
                "multipart/form-data; boundary=x",
                '--x\r\nContent-Disposition: form-data; name="token"\r\n\r\n{tok}\r\n--x--\r\n',
            ),
            ("application/json", '{{"token": "{tok}", "note": "csrf"}}'),
            ("", "token={tok}&note=csrf"),
        ],
        ids=["text-plain", "text-plain-charset", "multipart", "json", "none"],
    )
    def test_bodies_a_page_elsewhere_may_send_are_refused_even_with_the_token(
        self, daemon: Daemon, content_type: str, body: str
    ) -> None:
        """``fetch(url, {mode: "no-cors", method: "POST"})`` and a ``<form enctype=...>`` send
        ``text/plain`` or ``multipart/form-data`` cross-site without a preflight. Even with
        the right token (as if it leaked) and no ``Origin`` (as an old browser or a redirect
        may do), only the console's own form encoding is read: 400, nothing appended."""
        before = steering(daemon)
        headers = {"Content-Type": content_type} if content_type else {}
        r = httpx.post(
            daemon.url + "/ops/schedules/fake-slow/pause",
            content=body.format(tok=token(daemon)).encode(),
            headers=headers,
        )
        assert r.status_code == 400, r.text
        assert steering(daemon) == before

    @pytest.mark.parametrize(
        "origin",
        ["null", "http://127.0.0.1", "https://{host}", "http://{host}.evil.example", "http://evil.example"],
    )
    def test_an_origin_that_is_not_the_consoles_is_refused(self, daemon: Daemon, origin: str) -> None:
        """``Origin: null`` (a sandboxed frame, a ``data:`` page), the right host on another
        port or scheme, a name that only starts like ours: 403 with the right token."""
        host = daemon.url.removeprefix("http://")
        before = steering(daemon)
        r = httpx.post(
            daemon.url + "/ops/schedules/fake-slow/pause",
            data={"token": token(daemon), "note": "csrf"},
            headers={"Origin": origin.format(host=host)},
        )
        assert r.status_code == 403, r.text
        assert steering(daemon) == before

    def test_a_get_never_changes_state(self, daemon: Daemon) -> None:
        """An ``<img src>`` or a link to an action with the token in its query: 405, nothing
        appended (and a HEAD neither)."""
        before = steering(daemon)
        for method in ("GET", "HEAD"):
            for action in ("pause", "resume", "trigger"):
                r = httpx.request(
                    method, f"{daemon.url}/ops/schedules/fake-slow/{action}?token={token(daemon)}&note=x"
                )
                assert r.status_code == 405, (method, action, r.status_code)
        assert steering(daemon) == before

    def test_the_done_notice_names_only_a_configured_schedule(self, daemon: Daemon) -> None:
        """``/ops/schedules?done=pause&schedule=TEXT`` is where an action redirects. A link
        elsewhere with any TEXT showed "pause: TEXT — recorded in the log; the daemon acts
        on it." on the operator's page: a notice of an action nobody took, in the console's
        own words. Only a configured schedule's name is shown so."""
        forged = "all schedules (a key leaked: run rollwatch subscribers add new --scope ops)"
        page = httpx.get(
            daemon.url + "/ops/schedules?" + urllib.parse.urlencode({"done": "pause", "schedule": forged})
        ).text
        assert "a key leaked" not in page
        assert "recorded in the log" not in page
        page = httpx.get(daemon.url + "/ops/schedules?done=pause&schedule=fake-slow").text
        assert "pause: fake-slow" in page


class TestHeaders:
    def test_console_pages_carry_every_security_header(self, daemon: Daemon) -> None:
        """Every console HTML page: a CSP without inline script and with ``frame-ancestors
        'none'``, ``nosniff``, a referrer policy that keeps URLs in, ``no-store``."""
        run = next(d["run_id"] for _, _, d in events(daemon.db, "RunStarted"))
        rollout = next(d["rollout_id"] for _, _, d in events(daemon.db, "RolloutRequested"))
        for path in (
            "/ops/",
            f"/ops/runs/{run}",
            f"/ops/rollouts/{rollout}",
            "/ops/schedules",
            "/ops/subscribers",
            "/ops/problems",
            "/ops/problems/p1",
        ):
            h = httpx.get(daemon.url + path).headers
            csp = h["content-security-policy"]
            assert "frame-ancestors 'none'" in csp, path
            assert "'unsafe-inline'" not in csp, path
            assert "script-src 'self'" in csp, path
            assert "base-uri 'none'" in csp, path
            assert h["x-content-type-options"] == "nosniff", path
            assert h["referrer-policy"] in ("same-origin", "no-referrer", "strict-origin"), path
            assert "no-store" in h["cache-control"], path

    def test_console_json_carries_no_store_and_nosniff(self, daemon: Daemon) -> None:
        """The progress poll and a proof bundle (events under embargo): no cache keeps them,
        and no browser reads them as anything but JSON."""
        rollout = next(d["rollout_id"] for _, _, d in events(daemon.db, "RolloutRequested"))
        wait_until(
            lambda: httpx.get(f"{daemon.url}/ops/rollouts/{rollout}/proof").status_code == 200,
            what="a checkpoint",
        )
        for path in ("/ops/progress", f"/ops/rollouts/{rollout}/proof"):
            h = httpx.get(daemon.url + path).headers
            assert h["content-type"].startswith("application/json"), path
            assert "no-store" in h["cache-control"], path
            assert h.get("x-content-type-options") == "nosniff", path

    def test_answers_that_differ_by_peer_are_never_cached(self, daemon: Daemon) -> None:
        """``/healthz`` names the schedules that cannot run, and why, to the operator only
        (a loopback peer or an ``ops`` key), and ``/metrics`` the pass counts: a cache in
        front that kept the operator's copy would hand it to everyone, and no ``Vary`` can
        name the peer's address. Both are ``no-store`` (``/healthz`` had no ``Cache-Control``)."""
        for path in ("/healthz", "/metrics"):
            for headers in ({}, REMOTE):
                r = httpx.get(daemon.url + path, headers=headers)
                assert "no-store" in r.headers.get("cache-control", ""), (path, headers, r.headers)

    def test_the_public_page_cannot_run_script_on_the_consoles_origin(self, daemon: Daemon) -> None:
        """``/public/`` shows released answers (model text) and is served from the console's
        origin: markup that ever slipped through there would run with the console's trust (read
        the form token, post the forms). It had no CSP and no ``nosniff``; now a policy with
        no script at all, no plugins, no forms, no ``<base>``."""
        h = httpx.get(daemon.url + "/public/").headers
        csp = h.get("content-security-policy", "")
        directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";") if d.strip()}
        assert directives.get("default-src") == "default-src 'none'", csp
        assert "script-src" not in directives, csp  # default-src 'none' covers it
        assert directives.get("base-uri") == "base-uri 'none'", csp
        assert directives.get("form-action") == "form-action 'none'", csp
        assert h.get("x-content-type-options") == "nosniff"

    def test_error_answers_are_json_never_sniffed(self, daemon: Daemon) -> None:
        """A 404 quoting the id asked for (``<script>`` and all, inside a JSON string), the
        router's 404 and 405: ``application/json`` with ``nosniff``, so no browser ever
        reads the echoed markup as a page (the error body had no ``nosniff`` before)."""
        hostile = "<script>alert(1)</script>"
        q = urllib.parse.quote(hostile, safe="")
        for path, method in (
            (f"/ops/runs/{q}", "GET"),
            (f"/ops/rollouts/{q}", "GET"),
            (f"/ops/problems/{q}", "GET"),
            (f"/nope/{q}", "GET"),
            (f"/v1/rollouts/{q}", "GET"),
            (f"/public/rollouts/{q}.json", "GET"),
            ("/public/", "POST"),
        ):
            r = httpx.request(method, daemon.url + path)
            assert r.status_code >= 400, path
            assert r.headers["content-type"].startswith("application/json"), (path, r.headers)
            assert r.headers.get("x-content-type-options") == "nosniff", (path, r.headers)
            assert r.json()["error"], path


class TestHost:
    def test_no_answer_takes_a_url_from_the_host_header(self, daemon: Daemon) -> None:
        """``Host``/``X-Forwarded-Host``/``Forwarded`` naming another site reach no link or
        ``Location`` in any answer: the public page, its feeds, the redirects (``/``,
        ``/ops``, a console action's 303), the OpenAPI document."""
        evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"}
        evil_local = {**evil, "Host": f"127.0.0.1:{port(daemon)}"}
        for path in ("/public/", "/public/feed.json", "/public/feed.atom", "/openapi.json", "/", "/public"):
            for headers in (evil, evil_local):
                r = httpx.get(daemon.url + path, headers=headers)
                assert "evil" not in r.text + r.headers.get("location", ""), (path, headers)
        r = httpx.get(daemon.url + "/ops", headers=evil_local)
        assert r.status_code == 308
        assert "evil" not in r.headers["location"]
        # A pause and its resume (a trigger would start a run other tests read as theirs).
        forwarded = {"X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"}
        for action in ("pause", "resume"):
            r = httpx.post(
                f"{daemon.url}/ops/schedules/fake-slow/{action}",
                data={"token": token(daemon)},
                headers=forwarded,
            )
            assert r.status_code == 303, r.text
            assert r.headers["location"].startswith("/ops/schedules?"), r.headers


def _responses(raw: bytes) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(rb"HTTP/1\.1 (\d{3}) ", raw)]


SMUGGLED = b"GET /ops/subscribers HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class TestWire:
    @pytest.mark.parametrize(
        "head",
        [
            b"Content-Length: 4\r\nContent-Length: 76",  # two lengths
            b"Content-Length: 4, 76",
            b"Content-Length: +4",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            b"Transfer-Encoding: xchunked",
            b"Transfer-Encoding: chunked, identity",
            b"Transfer-Encoding:\tchunked\r\nContent-Length : 4",
            b"X-Fold: a\r\n Transfer-Encoding: chunked",  # obs-fold
        ],
        ids=[
            "two-lengths",
            "length-list",
            "plus-length",
            "two-te",
            "xchunked",
            "te-list",
            "space-name",
            "fold",
        ],
    )
    def test_ambiguous_body_lengths_smuggle_nothing(self, daemon: Daemon, head: bytes) -> None:
        """Variants of CL.TE/TE.CL/CL.CL a proxy and we might read differently, each followed
        by a request to a console page (a loopback peer's: the operator's). At most the first
        request is answered, and the smuggled one never (what is left of the body where we
        read none, ``0``, is a request of its own that is refused with the connection)."""
        raw = b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n\r\n0\r\n\r\n" + SMUGGLED
        out = exchange(daemon, raw)
        codes = _responses(out)
        assert codes, out[:1500]
        assert all(400 <= c < 500 for c in codes), out[:1500]
        assert b"ops-user" not in out, out[:1500]
        assert b"<html" not in out.lower(), out[:1500]

    @pytest.mark.parametrize(
        "first",
        [
            b"POST /ops/schedules/fake-slow/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\n",
        ],
        ids=["refused-post", "get-with-body"],
    )
    def test_a_body_left_unread_is_never_read_as_a_request(self, daemon: Daemon, first: bytes) -> None:
        """A remote peer's request whose body (which the route never reads: refused at the
        gate, or a GET) is a whole request of its own, then a request of the same peer:
        the body is skipped as the body it is, never answered as a request from this
        connection (before the next one, or in its place)."""
        inner = b"GET /ops/subscribers HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        raw = (
            first
            + f"Content-Length: {len(inner)}\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n".encode()
            + inner
            + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        out = exchange(daemon, raw)
        codes = _responses(out)
        assert codes[0] in (200, 401), out[:1500]
        assert codes[1:] in ([], [200]), out[:2000]  # the second request, or a close
        assert b"ops-user" not in out, out[:2000]

    def test_pipelined_requests_are_answered_in_order_each_with_its_own_trust(self, daemon: Daemon) -> None:
        """Keep-alive pipelining: three requests in one write, the middle one a remote peer's
        for the console. Three answers, in order: 200, 401, 200 (the trust of one request
        does not carry to the next on the same connection)."""
        raw = (
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /ops/subscribers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
            b"GET /public/feed.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        out = exchange(daemon, raw)
        assert _responses(out) == [200, 401, 200], out[:2000]
        assert b"ops-user" not in out

    @pytest.mark.parametrize(
        "raw",
        [
            b"GET /public/?" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"GET /ops/" + b"x" * 200_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + b"k" * 1_000_000
            + b"\r\n\r\n",
        ],
        ids=["long-query", "long-path", "many-headers", "huge-authorization"],
    )
    def test_enormous_requests_get_the_error_body_and_the_daemon_answers_on(
        self, daemon: Daemon, raw: bytes
    ) -> None:
        """A 200 kB URL, 20,000 headers, a 1 MB ``Authorization``: refused (a 4xx in the JSON
        error body, quoting nothing of the request, unless the close on the unread rest
        resets the connection before the client reads it); then ``/healthz`` answers at once."""
        out = exchange(daemon, raw)
        top, _, body = out.partition(b"\r\n\r\n")
        if out:
            assert top.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 414 ", b"HTTP/1.1 431 ")), out[:300]
            assert body.startswith(b'{"error":'), out[:500]
        assert b"aaaa" not in body
        assert b"kkkk" not in body
        assert b"xxxx" not in body
        t = time.monotonic()
        assert httpx.get(daemon.url + "/healthz").status_code in (200, 503)
        assert time.monotonic() - t < 2

    def test_a_client_leaving_mid_form_appends_nothing_and_logs_no_error(self, daemon: Daemon) -> None:
        """The operator's form POST whose client sends half the body it announced, then closes
        (a half-open client, a tab closed mid-upload): nothing is appended, and the daemon
        does not log it as a bug of its own (an ERROR with a traceback, which anyone who
        can reach the console's POST could write at will)."""
        tok = token(daemon)
        before, log_before = steering(daemon), len(serve_log(daemon))
        body = f"token={tok}&note=half".encode()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port(daemon)), timeout=5) as s:
                s.sendall(
                    b"POST /ops/schedules/fake-slow/pause HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    + f"Content-Length: {len(body) + 50}\r\n\r\n".encode()
                    + body
                )
                time.sleep(0.3)
        wait_until(lambda: "fake-slow/pause" in serve_log(daemon)[log_before:], 10, "the access lines")
        time.sleep(0.5)
        assert steering(daemon) == before
        new = serve_log(daemon)[log_before:]
        assert "http_unhandled_error" not in new, new[-3000:]
        assert "Traceback" not in new, new[-3000:]

    def test_a_form_body_trickled_past_the_deadline_is_cut(self, daemon: Daemon) -> None:
        """The head deadline covers the body too: an operator's POST whose body trickles in a
        byte at a time is closed by the server within ``server.request_head_timeout`` (10 s)
        plus a little, and appends nothing."""
        tok = token(daemon)
        before = steering(daemon)
        body = f"token={tok}&note=slow".encode()
        with socket.create_connection(("127.0.0.1", port(daemon)), timeout=1) as s:
            s.sendall(
                b"POST /ops/schedules/fake-slow/pause HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                + f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
            )
            start, closed = time.monotonic(), None
            for b in body * 10:
                try:
                    s.sendall(bytes([b]))
                    if s.recv(65536) == b"":
                        closed = time.monotonic()
                        break
                except TimeoutError:
                    pass
                except OSError:
                    closed = time.monotonic()
                    break
                if time.monotonic() - start > 20:
                    break
        assert closed is not None, (start, closed)
        assert closed - start < 14, (start, closed)
        assert steering(daemon) == before


# --- in the browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
PWN = "<img src=x onerror=window.__pwned={n}>"
MARKER = PWN.format(n=21)  # in p2's prompt: the fake provider fails it with a 400 quoting it
HOSTILE_MODEL = 'm"><img src=x onerror=window.__pwned=22>'
HOSTILE_SCHEDULE = "h-s27"  # markup in a schedule name is a configuration error (held)
ANSWER = (
    "```python\ndef solve(x):\n    return x  # </pre><script>window.__pwned=23</script>"
    + PWN.format(n=24)
    + "\n```"
)
"""A right answer to p1 (x + 0): released, so the public page shows it and its model."""


def _problem_toml(title: str, i: int, marker: str) -> str:
    q = "'" * 3
    return (
        f'title = "{title}"\nreleased = 2026-01-01\n'
        f'prompt = {q}\ndef solve(x: int) -> int:\n    """Return x + {i}."""{marker}\n{q}\n'
        '[scorer]\nkind = "python-function"\nentry_point = "solve"\ntests = "tests.py"\ntimeout = "5s"\n'
        '[reference]\nsolution = "solution.py"\n'
    )


def _hostile_setup(tmp: Path, fake_url: str) -> tuple[Path, Path]:
    root = tmp / "problems"
    for i, pid in enumerate(("p1", "p2")):
        d = root / pid
        d.mkdir(parents=True)
        marker = f"\n{MARKER}\n" if pid == "p2" else ""
        (d / "problem.toml").write_text(_problem_toml(PWN.format(n=30 + i), i, marker))
        (d / "tests.py").write_text(f"def check(candidate):\n    assert candidate(1) == {1 + i}\n")
        (d / "solution.py").write_text(f"def solve(x):\n    return x + {i}\n")
    cfg = tmp / "rollwatch.toml"
    cfg.write_text(f"""
node = "s27-hostile"
[store]
url = "sqlite:{tmp / "events.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[publication]
embargo = "1s"
release_check = "200ms"
[integrity]
checkpoint_interval = "1s"
[[problem_sets]]
name = "favorites"
path = "{root}"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = 1
[providers.prices]
{json.dumps(HOSTILE_MODEL)} = {{ input = 1.0, output = 2.0 }}
[[schedules]]
name = {json.dumps(HOSTILE_SCHEDULE)}
provider = "fake"
models = [{json.dumps(HOSTILE_MODEL)}]
problem_set = "favorites"
rollouts = 1
every = "1h"
""")
    return cfg, root


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A second daemon whose problem titles, model, schedule name, provider error and released
    answer are markup (started before the browser: it runs an event loop of its own)."""
    before = os.environ.get("FAKE_PROVIDER_SCRIPT")
    os.environ["FAKE_PROVIDER_SCRIPT"] = json.dumps([[MARKER, {"status": 400}]])
    try:
        tmp = tmp_path_factory.mktemp("s27hostile")
        with running_daemon(tmp, setup=_hostile_setup, answer=ANSWER, runs=1) as d:
            yield d
    finally:
        if before is None:
            os.environ.pop("FAKE_PROVIDER_SCRIPT", None)
        else:
            os.environ["FAKE_PROVIDER_SCRIPT"] = before


@pytest.fixture(scope="module")
def browser(hostile: Daemon, daemon: Daemon) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system` installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.mark.browser
class TestInTheBrowser:
    def test_a_form_posted_from_another_site_changes_nothing(self, daemon: Daemon, browser: Browser) -> None:
        """A page at another origin that the operator opens auto-submits the console's pause
        form (with the real token, as if it had leaked) and fires a ``no-cors`` ``text/plain``
        fetch. Chromium sends the form (the daemon's access log has it: 403, ``Origin`` is not
        the console's) and, in this Chromium, not the fetch at all (Private Network Access
        stops a page elsewhere from fetching loopback; were it sent, the ``text/plain`` body
        is a 400). Nothing is appended."""
        tok = token(daemon)
        action = f"{daemon.url}/ops/schedules/fake-slow/pause"
        html = f"""<!doctype html><body>
<form id=f method=post action="{action}"><input name=token value="{tok}"><input name=note value=csrf></form>
<script>
fetch("{action}", {{method: "POST", mode: "no-cors", body: "token={tok}&note=csrf2",
  headers: {{"Content-Type": "text/plain"}}}}).finally(() => document.getElementById("f").submit());
</script></body>"""
        before, log_before = steering(daemon), len(serve_log(daemon))
        ctx = browser.new_context()
        try:
            page = ctx.new_page()
            page.route(
                "http://attacker.example/**", lambda route: route.fulfill(body=html, content_type="text/html")
            )
            with page.expect_navigation(url=action):
                page.goto("http://attacker.example/")
        finally:
            ctx.close()
        wait_until(
            lambda: serve_log(daemon)[log_before:].count('"/ops/schedules/fake-slow/pause"') >= 1,
            10,
            "the form's request in the access log",
        )
        lines = [ln for ln in serve_log(daemon)[log_before:].splitlines() if "fake-slow/pause" in ln]
        statuses = [json.loads(ln)["status"] for ln in lines]
        assert 403 in statuses, lines
        assert set(statuses) <= {400, 403}, lines
        assert steering(daemon) == before

    def test_markup_in_every_field_a_page_shows_stays_text(self, hostile: Daemon, browser: Browser) -> None:
        """Problem titles, a model name, a provider's error message (quoting
        the prompt), a released answer, a pause note, a revocation note: each is markup here. On every console
        page and the public page none of it becomes an element or runs, and Chromium reports
        no error (no CSP violation: it is escaped, not merely blocked)."""
        d = hostile
        wait_until(lambda: events(d.db, "PublicReleased"), 30, "a released result")
        wait_until(lambda: any(x.get("final") for _, _, x in events(d.db, "RolloutFailed")), 30, "the 400")
        sched = urllib.parse.quote(HOSTILE_SCHEDULE, safe="")
        r = httpx.post(
            f"{d.url}/ops/schedules/{sched}/pause", data={"token": token(d), "note": PWN.format(n=25)}
        )
        assert r.status_code == 303, r.text
        assert d.cli("subscribers", "add", "eve", "--scope", "feed").returncode == 0
        assert d.cli("subscribers", "revoke", "eve", "--note", PWN.format(n=26)).returncode == 0
        run = next(x["run_id"] for _, _, x in events(d.db, "RunStarted"))
        rollouts = [x["rollout_id"] for _, _, x in events(d.db, "RolloutRequested")]
        pages = [
            "/ops/",
            f"/ops/runs/{run}",
            *(f"/ops/rollouts/{rid}" for rid in rollouts),
            "/ops/schedules",
            "/ops/problems",
            "/ops/problems/p1",
            "/ops/problems/p2",
            "/ops/subscribers",
            "/public/",
        ]
        ctx = browser.new_context()
        problems: list[str] = []
        shown = ""
        try:
            page = ctx.new_page()
            page.on(
                "console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type == "error" else None
            )
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            for path in pages:
                page.goto(d.url + path)
                assert page.evaluate("typeof window.__pwned") == "undefined", path
                assert page.locator("img, script:not([src]), b").count() == 0, path
                shown += page.locator("body").inner_text()
        finally:
            ctx.close()
        assert problems == [], problems
        for text in (
            PWN.format(n=30),
            PWN.format(n=31),
            HOSTILE_MODEL,
            PWN.format(n=25),
            PWN.format(n=26),
            MARKER,
            "window.__pwned=23",
        ):
            assert text in shown, text
