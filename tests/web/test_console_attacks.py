"""The operator's console attacked from outside, against the shared real daemon: a key
revoked while its holder is looking, path tricks in problem and rollout ids (dot
segments, encoded slashes, very long, unicode, bytes that are not UTF-8), and the
public routes asked for what only the console shows (an embargoed rollout's proofs)."""

from __future__ import annotations

import http.client
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest

from rollwatch.events import SubscriberRevoked, subscriber_stream
from rollwatch.store.sqlite import SQLiteEventStore
from tests.test_daemon import events, wait_until
from tests.web.opsd import Daemon

REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # the daemon believes a loopback proxy


def raw_get(daemon: Daemon, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """GET ``path`` exactly as written (no client normalizes its dot segments or escapes)."""
    u = urllib.parse.urlsplit(daemon.url)
    con = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        con.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            con.putheader(k, v)
        con.endheaders()
        r = con.getresponse()
        return r.status, r.getheader("content-type") or "", r.read().decode("utf-8", "replace")
    finally:
        con.close()


class TestKeys:
    def test_a_revoked_ops_key_opens_nothing_from_then_on(self, daemon: Daemon) -> None:
        """An ``ops`` key works from a remote peer until ``subscribers revoke``; then every
        console route (proofs included) answers 401/403 with the error body only."""
        out = daemon.cli("subscribers", "add", "mallory-ops", "--scope", "ops")
        assert out.returncode == 0, out.stderr
        key = out.stdout.split()[0]
        auth = {**REMOTE, "Authorization": f"Bearer {key}"}
        wait_until(
            lambda: httpx.get(daemon.url + "/ops/", headers=auth).status_code == 200, what="the new key"
        )
        assert daemon.cli("subscribers", "revoke", "mallory-ops").returncode == 0
        wait_until(
            lambda: httpx.get(daemon.url + "/ops/", headers=auth).status_code != 200, what="revocation"
        )
        rid = next(d["rollout_id"] for _, t, d in events(daemon.db) if t == "RolloutRequested")
        for path in (
            "/ops/",
            "/ops/problems",
            "/ops/problems/p1",
            f"/ops/rollouts/{rid}/proof",
            "/ops/progress",
        ):
            r = httpx.get(daemon.url + path, headers=auth)
            assert r.status_code in (401, 403), (path, r.status_code)
            assert set(r.json()) == {"error", "message"}, path

    def test_an_expired_ops_key_opens_nothing(self, daemon: Daemon) -> None:
        """An ``ops`` key that expires a few seconds after it is made works until then, and
        from then on every console route refuses it."""
        out = daemon.cli("subscribers", "add", "mallory-expiring", "--scope", "ops", "--expires", "8s")
        assert out.returncode == 0, out.stderr
        auth = {**REMOTE, "Authorization": f"Bearer {out.stdout.split()[0]}"}
        ok = lambda: httpx.get(daemon.url + "/ops/", headers=auth).status_code == 200  # noqa: E731
        wait_until(ok, timeout=6, what="the new key")
        wait_until(lambda: httpx.get(daemon.url + "/ops/", headers=auth).status_code != 200, what="expiry")
        for path in ("/ops/", "/ops/subscribers", "/ops/problems/p1"):
            r = httpx.get(daemon.url + path, headers=auth)
            assert r.status_code in (401, 403), (path, r.status_code)
            assert set(r.json()) == {"error", "message"}, path

    def test_a_poll_that_need_not_wait_gets_nothing_after_a_revocation(self, daemon: Daemon) -> None:
        """``/ops/progress?after=`` asked just after the key is revoked, when the log has
        already moved past ``after`` (so the poll answers at once): the daemon's view of the
        keys is up to half a second old, but the answer must not carry the revocation's
        head. It is refused."""
        out = daemon.cli("subscribers", "add", "mallory-quick", "--scope", "ops")
        assert out.returncode == 0, out.stderr
        auth = {**REMOTE, "Authorization": f"Bearer {out.stdout.split()[0]}"}
        url = daemon.url + "/ops/progress"
        wait_until(lambda: httpx.get(url, headers=auth).status_code == 200, what="the new key")

        async def revoke_between_two_polls() -> tuple[int, int, int]:
            async with SQLiteEventStore(daemon.db) as store, httpx.AsyncClient() as c:
                before = (await c.get(url, headers=auth)).json()["head"]  # the keys just read
                (rec,) = await store.append(
                    subscriber_stream("mallory-quick"), [SubscriberRevoked(name="mallory-quick")]
                )
                r = await c.get(url, params={"after": before, "wait": 20}, headers=auth, timeout=60)
                return rec.seq, r.status_code, r.json().get("head", -1) if r.status_code == 200 else -1

        revoked, status, head = anyio.run(revoke_between_two_polls)
        assert status in (401, 403), (status, head, revoked)

    def test_a_long_poll_opened_before_revocation_delivers_nothing_after_it(self, daemon: Daemon) -> None:
        """``/ops/progress?wait=`` held open with an ``ops`` key while the key is revoked:
        no answer carries data from the revocation on; the poll ends 401/403."""
        out = daemon.cli("subscribers", "add", "mallory-poll", "--scope", "ops")
        assert out.returncode == 0, out.stderr
        auth = {**REMOTE, "Authorization": f"Bearer {out.stdout.split()[0]}"}
        url = daemon.url + "/ops/progress"
        wait_until(lambda: httpx.get(url, headers=auth).status_code == 200, what="the new key")
        head = httpx.get(url, headers=auth).json()["head"]

        def poll(after: int) -> list[tuple[int, int]]:
            seen = []  # (status, head) of every answer, until one refuses
            for _ in range(20):
                r = httpx.get(url, params={"after": after, "wait": 20}, headers=auth, timeout=60)
                seen.append((r.status_code, r.json().get("head", -1) if r.status_code == 200 else -1))
                if r.status_code != 200:
                    break
                after = r.json()["head"]
            return seen

        with ThreadPoolExecutor(1) as pool:
            answers = pool.submit(poll, head)
            assert daemon.cli("subscribers", "revoke", "mallory-poll").returncode == 0
            seen = answers.result(timeout=120)
        (revoked,) = [
            s for s, t, d in events(daemon.db) if t == "SubscriberRevoked" and d["name"] == "mallory-poll"
        ]
        assert seen[-1][0] in (401, 403), seen
        assert all(h < revoked for status, h in seen if status == 200), (seen, revoked)

    def test_a_forwarded_loopback_address_from_a_remote_peer_is_not_trusted(self, daemon: Daemon) -> None:
        """A remote client that puts 127.0.0.1 first in X-Forwarded-For (a proxy appends the
        real peer after it) is still remote."""
        r = httpx.get(daemon.url + "/ops/", headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"})
        assert r.status_code == 401, r.text


HOSTILE_IDS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2E%2E/%2E%2E/subscribers",
    "p1%2F..%2F..%2Fsubscribers",
    "p1%00",
    "%ED%A0%80",  # a lone surrogate in UTF-8: not valid UTF-8
    "%FF%FE",
    "%E2%80%AEp1",  # right-to-left override
    "x" * 60000,
    "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
]


class TestPathTricks:
    @pytest.mark.parametrize("pid", HOSTILE_IDS, ids=lambda p: p[:24])
    def test_hostile_problem_ids_are_refused_without_a_server_error(self, daemon: Daemon, pid: str) -> None:
        """From loopback: 4xx (never 500), no page echoing the id as markup; from a remote
        peer without a key: 401 whatever the id."""
        status, ctype, body = raw_get(daemon, "/ops/problems/" + pid)
        assert 400 <= status < 500, (status, body[:300])
        assert ctype.startswith("application/json"), ctype  # the id comes back as JSON, never in a page
        status, _, _ = raw_get(daemon, "/ops/problems/" + pid, REMOTE)
        assert status in (401, 414, 431), status

    @pytest.mark.parametrize(
        "path",
        [
            "/public/../ops/",
            "/public/%2E%2E/ops/subscribers",
            "/ops/./subscribers",
            "//ops/subscribers",
            "/OPS/",
        ],
    )
    def test_dot_segments_never_reach_the_console_from_a_remote_peer(self, daemon: Daemon, path: str) -> None:
        """Whatever the router makes of dot segments and doubled slashes, a remote peer gets no page."""
        status, _, body = raw_get(daemon, path, REMOTE)
        assert status != 200 or ("Subscribers" not in body and "/ops/" not in body), (status, body[:300])
        assert status != 500

    @pytest.mark.parametrize("rid", HOSTILE_IDS, ids=lambda p: p[:24])
    def test_hostile_rollout_ids_on_the_proof_route(self, daemon: Daemon, rid: str) -> None:
        """The proof route refuses a hostile id with a 4xx, never a 500."""
        status, _, body = raw_get(daemon, f"/ops/rollouts/{rid}/proof")
        assert 400 <= status < 500, (status, body[:300])


class TestEmbargoedProofs:
    def test_the_public_rollout_route_has_nothing_of_an_unreleased_rollout(self, daemon: Daemon) -> None:
        """A failed rollout (never public) has a proof bundle on the console only: the public
        route answers 404 and names none of its events."""
        failed = [
            d["rollout_id"] for _, t, d in events(daemon.db) if t == "RolloutScored" and not d["passed"]
        ]
        assert failed, "the hostile provider's answers fail"
        rid = failed[0]
        assert httpx.get(f"{daemon.url}/ops/rollouts/{rid}/proof").status_code == 200
        r = httpx.get(f"{daemon.url}/public/rollouts/{rid}.json", headers=REMOTE)
        assert r.status_code == 404, r.text
        assert rid not in r.text or set(r.json()) == {"error", "message"}


class TestHugeAnswers:
    @pytest.mark.parametrize(
        "text",
        [
            "\u200b\u200c" * 2_000_000,  # 4M invisible characters, each written out as a mark
            "<" * 4_000_000,  # each escaped to four characters
            "x" * 4_000_000,
        ],
        ids=["hidden", "escaped", "plain"],
    )
    def test_a_huge_answer_makes_a_page_of_bounded_size(self, text: str) -> None:
        """A model's answer (up to 64 MiB) is shown cut, saying how much more there is. Before,
        4M zero-width characters made 164 MB of HTML for the rollout's page, in the daemon's
        memory (each written out as a marked code point)."""
        from rollwatch.web.render import shown

        out = str(shown(text))
        assert len(out) < 2_000_000, len(out)
        assert out.endswith("more characters not shown: the event log holds the whole text⟩</span>"), out[
            -200:
        ]
        assert "<" not in out.replace('<span class="ctl">', "").replace("</span>", "")

    def test_an_answer_within_the_limits_is_shown_whole(self) -> None:
        from rollwatch.web.render import shown

        text = "def f():\n    return 1  # \u202e\n" * 1000
        out = str(shown(text))
        assert "not shown" not in out
        assert out.count("⟨U+202E⟩") == 1000
