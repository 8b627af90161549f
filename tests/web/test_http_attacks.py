"""The daemon's HTTP side attacked from outside, against the shared real daemon
(:mod:`tests.web.opsd`): operator keys that should no longer work, spoofed peers and
hosts, hostile paths and parameters. Every refusal is a 4xx with the error body only."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from rollwatch.events import SubscriberRevoked, subscriber_stream
from rollwatch.metrics import Metrics
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from tests.test_daemon import wait_until
from tests.web.opsd import FAKE_KEY, Daemon
from tests.web.test_console_attacks import raw_get
from tests.web.test_http import server


def families(text: str) -> set[str]:
    """The names of the families of an exposition, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name for f in text_string_to_metric_families(text)}


REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # the daemon believes a loopback proxy
PASS_COUNTS = 'outcome="passed"'


def _ops_key(daemon: Daemon, name: str) -> dict[str, str]:
    out = daemon.cli("subscribers", "add", name, "--scope", "ops")
    assert out.returncode == 0, out.stderr
    return {**REMOTE, "Authorization": f"Bearer {out.stdout.split()[0]}"}


def _revoke_then_get(
    daemon: Daemon, name: str, auth: dict[str, str], paths: list[str]
) -> list[httpx.Response]:
    """One request of each path (so the daemon has just read the keys), the revocation
    appended by another process, then each path again at once."""

    async def go() -> list[httpx.Response]:
        async with SQLiteEventStore(daemon.db) as store, httpx.AsyncClient(base_url=daemon.url) as c:
            for p in paths:
                assert (await c.get(p, headers=auth)).status_code == 200, p
            await store.append(subscriber_stream(name), [SubscriberRevoked(name=name)])
            return [await c.get(p, headers=auth) for p in paths]

    return anyio.run(go)


class TestRevokedOpsKey:
    def test_console_and_entry_bundles_refuse_at_once(self, daemon: Daemon) -> None:
        """An ``ops`` key from a remote peer, revoked: the very next request of the console
        and of an entry bundle (every event, embargoed results included) is refused."""
        auth = _ops_key(daemon, "leaks-ops-console")
        wait_until(lambda: httpx.get(daemon.url + "/ops/", headers=auth).status_code == 200, what="the key")
        paths = ["/ops/", "/ops/problems", "/tile/entries/000.p/1"]
        for p, r in zip(paths, _revoke_then_get(daemon, "leaks-ops-console", auth, paths), strict=True):
            assert r.status_code in (401, 403), (p, r.status_code)
            assert set(r.json()) == {"error", "message"}, p

    def test_metrics_hide_pass_counts_at_once(self, daemon: Daemon) -> None:
        """``/metrics`` with an ``ops`` key from a remote peer shows the pass counts; the
        request right after the key's revocation does not."""
        auth = _ops_key(daemon, "leaks-ops-metrics")
        wait_until(
            lambda: PASS_COUNTS in httpx.get(daemon.url + "/metrics", headers=auth).text, what="the key"
        )
        assert PASS_COUNTS not in httpx.get(daemon.url + "/metrics", headers=REMOTE).text
        (r,) = _revoke_then_get(daemon, "leaks-ops-metrics", auth, ["/metrics"])
        assert PASS_COUNTS not in r.text


class TestMetricsForOutsiders:
    def test_the_live_log_length_is_the_operators(self, daemon: Daemon) -> None:
        """``rollwatch_events_applied`` is the log's head as this daemon applied it; a verdict
        that passed is appended with one more event (its public decision) than one that
        failed, so an outsider scraping it around each verdict counts the passes under
        embargo. Outsiders get neither it nor the pass counts; the operator gets both."""
        outsider = httpx.get(daemon.url + "/metrics", headers=REMOTE).text
        operator = httpx.get(daemon.url + "/metrics").text
        for series in ("rollwatch_events_applied", PASS_COUNTS):
            assert series in operator, series
            assert series not in outsider, series

    def test_outsiders_count_no_work(self, daemon: Daemon) -> None:
        """After the daemon's runs, a remote scrape had each provider's requests, answered and
        failed rollouts, input and output tokens and cost, the runs started and finished, and
        the answers' latency counts: sampled around a run, how many rollouts each model had and
        what they cost, every one still under embargo. An outsider now gets only the providers'
        states (disabled, paused) and the process's figures; the operator every family (the control)."""
        outsider = families(httpx.get(daemon.url + "/metrics", headers=REMOTE).text)
        operator = families(httpx.get(daemon.url + "/metrics").text)
        counts = (
            "rollwatch_runs_started",
            "rollwatch_runs_finished",
            "rollwatch_rollouts",
            "rollwatch_provider_requests",
            "rollwatch_provider_rollouts",
            "rollwatch_provider_output_tokens",
            "rollwatch_provider_cost_usd",
            "rollwatch_request_latency_seconds",
            "rollwatch_append_latency_seconds",
        )
        for name in counts:
            assert name in operator, name
            assert name not in outsider, name
        states = {"rollwatch_provider_disabled", "rollwatch_provider_paused_seconds"}
        assert {n for n in outsider if n.startswith("rollwatch_")} <= states
        assert "rollwatch_provider_disabled" in outsider
        assert "process_cpu_seconds" in outsider


class TestKeysNeverEchoed:
    def test_keys_sent_anywhere_reach_no_answer_and_no_log_line(self, daemon: Daemon) -> None:
        """A wrong key, a good one and the provider's key, sent in the header, the query
        string and a form of the header that is not Bearer, on subscriber, operator and public
        routes: no answer body or header and no line of the daemon's log holds any of them."""
        wrong = "rw_" + "W" * 43
        odd = "rw_not-a-key-" + "Q" * 20
        secrets = [wrong, odd, daemon.feed_key, daemon.ops_key, FAKE_KEY]
        answers = []
        for path in ("/v1/feed", "/v1/report", "/v1/rollouts/x", "/ops/", "/metrics", "/public/", "/nope"):
            for key in secrets:
                for headers, params in (
                    ({**REMOTE, "Authorization": f"Bearer {key}"}, {}),
                    ({**REMOTE, "Authorization": f"Token {key}"}, {}),
                    (REMOTE, {"api_key": key, "key": key, "access_token": key}),
                ):
                    r = httpx.get(daemon.url + path, headers=headers, params=params)
                    answers.append(r.text + repr(r.headers))
        log_text = (daemon.config.parent / "serve.err").read_text()
        for key in secrets:
            assert all(key not in a for a in answers), key
            assert key not in log_text, key

    def test_a_key_sent_in_the_path_reaches_no_answer_and_no_log_line(self, daemon: Daemon) -> None:
        """A client that puts its key in the URL's path (``/v1/rollouts/KEY``, ``/v1/feed/KEY``,
        a mistyped route): every request gets one access-log line with its path, and the 400 of
        a bad rollout id quoted the id. Neither may carry the key; the line keeps the route."""
        keys = [daemon.feed_key, daemon.ops_key, "rw_" + "Z" * 43, daemon.feed_key[:20]]
        paths = [
            "/v1/rollouts/{k}",
            "/v1/feed/{k}",
            "/public/rollouts/{k}.json",
            "/ops/rollouts/{k}",
            "/ops/problems/{k}",
            "/{k}",
            "/tile/entries/{k}",
        ]
        answers = []
        for key in keys:
            for path in paths:
                r = httpx.get(
                    daemon.url + path.format(k=key), headers={**REMOTE, "Authorization": f"Bearer {key}"}
                )
                assert r.status_code in (400, 401, 403, 404), (path, r.status_code)
                answers.append(r.text + repr(r.headers))
        log_text = (daemon.config.parent / "serve.err").read_text()
        for key in keys:
            assert all(key not in a for a in answers), key
            assert key not in log_text, key
        assert '"/v1/feed/rw_' in log_text  # the line is there, its key masked


ODD_PATHS = [
    "/public/../ops/",
    "/public/%2e%2e/ops/",
    "/public//ops/",
    "//ops/",
    "/v1/feed/../../ops/",
    "/public/key/../../ops/",
    "/ops/static/..%2f..%2fpyproject.toml",
    "/ops/static/../../etc/passwd",
    "/ops/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/public/rollouts/..%2f..%2fv1%2freport.json",
    "/public/feed.json%00",
    "/public/%00",
    "/tile/entries/../0/000.p/1",
    "/public/tile/entries/000.p/1",
]
HOSTILE_QUERIES = [
    "/public/proof/inclusion?seq=1&size=1&seq=2",
    "/public/proof/inclusion?seq=%EF%BC%91&size=1",
    "/public/proof/inclusion?seq=1&size=" + "9" * 30,
    "/public/proof/consistency?from=-1&to=1",
    "/public/proof/consistency?from=1e3&to=1",
    "/tile/0/" + "x999/" * 20 + "000",
    "/tile/9/000",
    "/tile/0/000.p/255",
    "/tile/0/x999/999/999",
    "/v1/feed?after=%FF",
    "/v1/feed?limit=" + "1" * 5000,
]


class TestOddRequests:
    def test_odd_paths_open_nothing(self, daemon: Daemon) -> None:
        """Dot segments, encoded slashes and NULs, doubled slashes, from a remote peer: a 4xx in
        the error body, never a console page, a file of the host or an entry bundle."""
        for path in ODD_PATHS:
            status, ctype, body = raw_get(daemon, path, REMOTE)
            assert 400 <= status < 500, (path, status)
            assert ctype == "application/json", path
            assert set(json.loads(body)) == {"error", "message"}, path

    def test_hostile_parameters_are_4xx_naming_them(self, daemon: Daemon) -> None:
        """Repeated, non-ASCII, negative, huge or malformed parameters and tile paths: a 4xx in
        the error body, never a 500."""
        for path in HOSTILE_QUERIES:
            status, _ctype, body = raw_get(
                daemon, path, {**REMOTE, "Authorization": f"Bearer {daemon.feed_key}"}
            )
            assert 400 <= status < 500, (path, status, body[:200])
            assert set(json.loads(body)) == {"error", "message"}, path


class TestScopeConfusion:
    def test_a_key_opens_only_its_own_scopes(self, daemon: Daemon) -> None:
        """From a remote peer: a ``feed`` key opens no console page, no pass count and no
        entry bundle; an ``ops`` key reads no subscriber route."""
        feed = {**REMOTE, "Authorization": f"Bearer {daemon.feed_key}"}
        ops = {**REMOTE, "Authorization": f"Bearer {daemon.ops_key}"}
        for path in ("/ops/", "/ops/progress", "/ops/subscribers", "/tile/entries/000.p/1", "/v1/report"):
            r = httpx.get(daemon.url + path, headers=feed)
            assert r.status_code == 403, (path, r.status_code)
            assert set(r.json()) == {"error", "message"}, path
        assert PASS_COUNTS not in httpx.get(daemon.url + "/metrics", headers=feed).text
        assert PASS_COUNTS in httpx.get(daemon.url + "/metrics", headers=ops).text  # the control
        assert httpx.get(daemon.url + "/ops/", headers=ops).status_code == 200
        for path in ("/v1/feed", "/v1/report", "/v1/rollouts/00000000-0000-4000-8000-000000000000"):
            r = httpx.get(daemon.url + path, headers=ops)
            assert r.status_code == 403, (path, r.status_code)
            assert set(r.json()) == {"error", "message"}, path


class TestSpoofedPeers:
    def test_forwarded_for_is_believed_from_loopback_proxies_only(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``FORWARDED_ALLOW_IPS=*`` in the daemon's environment (read by uvicorn, as some
        hosting set-ups export it) made uvicorn take the *leftmost* ``X-Forwarded-For`` entry,
        which the client writes: a remote client sending ``X-Forwarded-For: 127.0.0.1``
        through a proxy that appends its address became the loopback operator (pass counts,
        console, entry bundles). Only a loopback proxy's header counts, whatever the environment."""
        monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
        metrics = Metrics()
        metrics.rollouts.update({"answered": 4, "passed": 3})

        async def scrape() -> list[str]:
            async with server(build_app(metrics)) as url, httpx.AsyncClient(base_url=url) as c:
                return [
                    (await c.get("/metrics", headers={"X-Forwarded-For": xff})).text
                    for xff in ("127.0.0.1, 203.0.113.9", "::1, 203.0.113.9", "203.0.113.9")
                ]

        for text in anyio.run(scrape):
            assert PASS_COUNTS not in text
