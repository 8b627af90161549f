"""The operator's console over HTTP, against a real daemon (`rollwatch serve`) with runs in
its log: who may see it, what a POST must carry, that model text is never markup, and
that a schedule steered from the console is steered for the CLI too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rollwatch.web.console import Rate
from rollwatch.web.render import natural_key
from tests.test_daemon import events, wait_until
from tests.web.opsd import Daemon, running_daemon

REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # uvicorn believes a loopback proxy


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("console")) as d:
        yield d


def _token(html: str) -> str:
    m = re.search(r'name="token" value="([0-9a-f]+)"', html)
    assert m, "the schedules page has no form token"
    return m.group(1)


class TestAccess:
    def test_root_redirects_to_the_public_page(self, daemon: Daemon) -> None:
        """``GET /`` answers with a redirect to ``/public/`` (the URL uvicorn prints is not a 404)."""
        r = httpx.get(daemon.url + "/")
        assert r.status_code in (302, 307)
        assert r.headers["location"] == "/public/"
        assert httpx.get(daemon.url + "/", follow_redirects=True).status_code == 200

    @pytest.mark.parametrize(
        "path",
        [
            "/ops/",
            "/ops/schedules",
            "/ops/subscribers",
            "/ops/progress",
            "/ops/static/console.js",
            "/ops/runs/x",
        ],
    )
    def test_a_remote_peer_without_a_key_gets_401_and_no_data(self, daemon: Daemon, path: str) -> None:
        """Every console route refuses a non-loopback peer without a key: 401, the error body only."""
        r = httpx.get(daemon.url + path, headers=REMOTE)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "unauthorized"
        assert "fake-hostile" not in r.text

    def test_a_remote_peer_with_a_feed_key_gets_403(self, daemon: Daemon) -> None:
        """A valid subscriber key without the ``ops`` scope is not the operator's."""
        r = httpx.get(daemon.url + "/ops/", headers={**REMOTE, "Authorization": f"Bearer {daemon.feed_key}"})
        assert r.status_code == 403, r.text

    def test_a_remote_peer_with_an_unknown_key_gets_403(self, daemon: Daemon) -> None:
        """A made-up key gets nothing either."""
        r = httpx.get(daemon.url + "/ops/", headers={**REMOTE, "Authorization": "Bearer rw_madeup"})
        assert r.status_code == 403, r.text

    def test_a_remote_peer_with_an_ops_key_sees_the_console(self, daemon: Daemon) -> None:
        """A key with scope ``ops`` opens the console from anywhere."""
        r = httpx.get(daemon.url + "/ops/", headers={**REMOTE, "Authorization": f"Bearer {daemon.ops_key}"})
        assert r.status_code == 200, r.text
        assert "fake-hostile" in r.text

    def test_a_post_from_a_remote_peer_appends_nothing(self, daemon: Daemon) -> None:
        """A schedule action from outside without a key is refused before anything is read or written."""
        before = len(events(daemon.db))
        r = httpx.post(
            daemon.url + "/ops/schedules/ref-hourly/pause", data={"note": "x", "token": "0"}, headers=REMOTE
        )
        assert r.status_code == 401
        assert len(events(daemon.db)) == before


class TestPages:
    def test_runs_page_lists_runs_with_rates_and_intervals(self, daemon: Daemon) -> None:
        """The runs page shows each run with its status, progress and a pass rate with its interval."""
        r = httpx.get(daemon.url + "/ops/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "ref-hourly" in r.text
        assert "fake-hostile" in r.text
        # each run's pass rate with its Wilson interval, as the log's RunFinished counts it
        for _, _, d in events(daemon.db, "RunFinished"):
            rate = str(Rate(d["passed"], d["scored"]))
            row = r.text.split(f'id="run-{d["run_id"]}"')[1].split("</tr>")[0]
            assert f'data-field="rate">{rate}<' in row
            assert f'data-field="status">{d["status"]}<' in row

    def test_run_page_has_the_heatmap_in_natural_order(self, daemon: Daemon) -> None:
        """One run: a cell per model and problem with passes/rollouts, problems in natural order."""
        started = [d for _, _, d in events(daemon.db, "RunStarted") if d["schedule"] == "ref-hourly"]
        run_id = started[0]["run_id"]
        finished = next(d for _, _, d in events(daemon.db, "RunFinished") if d["run_id"] == run_id)
        r = httpx.get(daemon.url + f"/ops/runs/{run_id}")
        assert r.status_code == 200
        cells = re.findall(r'title="[^"]*">(\d+)/(\d+)</td>', r.text)
        assert len(cells) == 10
        assert sum(int(p) for p, _ in cells) == finished["passed"]
        assert all(n == "2" for _, n in cells)
        rows = re.findall(r'<tr><th class="sticky">([^<]+)</th>', r.text.split("<tbody>", 2)[1])
        assert len(rows) == 10

    def test_unknown_run_and_rollout_are_404(self, daemon: Daemon) -> None:
        """A run or rollout that does not exist is a 404 with the error body."""
        assert httpx.get(daemon.url + "/ops/runs/nope").status_code == 404
        assert httpx.get(daemon.url + "/ops/rollouts/nope").status_code == 404

    def test_unknown_query_parameters_are_400(self, daemon: Daemon) -> None:
        """Console pages parse their query strictly, as every route does."""
        r = httpx.get(daemon.url + "/ops/?x=1")
        assert r.status_code == 400
        r = httpx.get(daemon.url + "/ops/progress?wait=99")
        assert r.status_code == 400

    def test_hostile_answer_is_escaped_on_the_rollout_page(self, daemon: Daemon) -> None:
        """An answer with ``<script>``, an ``onerror`` attribute and a ``</pre>`` inside its code is
        shown as text: none of it reaches the page as markup."""
        scored = [d for _, _, d in events(daemon.db, "RolloutRequested") if d["model"] == "m1"]
        r = httpx.get(daemon.url + f"/ops/rollouts/{scored[0]['rollout_id']}")
        assert r.status_code == 200
        assert "<script>window" not in r.text
        assert "<img src=x" not in r.text
        assert "</pre><script>" not in r.text
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in r.text
        # the scored block is highlighted, and every event of the rollout is listed with its hash
        assert '<mark class="code"' in r.text
        for seq, typ, d in events(daemon.db):
            if d.get("rollout_id") == scored[0]["rollout_id"]:
                assert f"<td>{seq}</td><td>{typ}</td>" in r.text

    def test_subscribers_page_never_shows_a_key(self, daemon: Daemon) -> None:
        """Names, scopes and last use are listed; neither key nor key hash appears."""
        assert httpx.get(
            daemon.url + "/v1/feed", headers={"Authorization": f"Bearer {daemon.feed_key}"}
        ).is_success
        r = httpx.get(daemon.url + "/ops/subscribers")
        row = r.text.split("<td>feed-user</td>")[1].split("</tr>")[0]
        assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", row), row
        assert r.status_code == 200
        assert "ops-user" in r.text
        assert "feed-user" in r.text
        assert daemon.ops_key not in r.text
        assert daemon.feed_key not in r.text
        hashes = [d["key_hash"] for _, _, d in events(daemon.db, "SubscriberAdded")]
        assert hashes
        assert not any(h in r.text for h in hashes)

    def test_progress_long_poll_answers_when_the_log_grows(self, daemon: Daemon) -> None:
        """``/ops/progress?after=HEAD&wait=30`` is held until an event is appended, then
        answers with the new head (what moves the console's live figures)."""
        import threading

        head = httpx.get(daemon.url + "/ops/progress").json()["head"]
        assert head == max(s for s, _, _ in events(daemon.db))
        out: dict[str, int] = {}

        def poll() -> None:
            out["head"] = httpx.get(daemon.url + f"/ops/progress?after={head}&wait=30", timeout=60).json()[
                "head"
            ]

        t = threading.Thread(target=poll)
        t.start()
        assert daemon.cli("schedules", "resume", "fake-slow", "--note", "poke").returncode == 0
        t.join(40)
        assert out["head"] > head


class TestActions:
    def test_pause_from_the_console_shows_in_schedules_list(self, daemon: Daemon) -> None:
        """A pause with a note sent from the console's form is the CLI's pause: ``schedules list``
        shows it paused with the note; resume undoes it."""
        token = _token(httpx.get(daemon.url + "/ops/schedules").text)
        r = httpx.post(
            daemon.url + "/ops/schedules/ref-hourly/pause", data={"note": "disk <full>", "token": token}
        )
        assert r.status_code == 303
        listed = daemon.schedules()["ref-hourly"]
        assert listed["state"] == "paused"
        assert listed["note"] == "disk <full>"
        page = httpx.get(daemon.url + "/ops/schedules").text
        assert "disk &lt;full&gt;" in page
        r = httpx.post(daemon.url + "/ops/schedules/ref-hourly/resume", data={"token": token})
        assert r.status_code == 303
        assert daemon.schedules()["ref-hourly"]["state"] == "active"

    @pytest.mark.parametrize(
        ("headers", "data"),
        [
            ({}, {"note": "csrf"}),  # no token
            ({}, {"note": "csrf", "token": "f" * 64}),  # a wrong one
            ({"Origin": "http://evil.example"}, None),  # the right token from another origin
        ],
        ids=["no-token", "wrong-token", "other-origin"],
    )
    def test_a_forged_post_appends_nothing(
        self, daemon: Daemon, headers: dict[str, str], data: dict[str, str] | None
    ) -> None:
        """A cross-site form cannot steer a schedule through the operator's loopback trust."""
        token = _token(httpx.get(daemon.url + "/ops/schedules").text)
        before = len(events(daemon.db, "SchedulePaused"))
        r = httpx.post(
            daemon.url + "/ops/schedules/fake-hostile/pause",
            data=data if data is not None else {"note": "csrf", "token": token},
            headers=headers,
        )
        assert r.status_code == 403, r.text
        assert len(events(daemon.db, "SchedulePaused")) == before
        assert daemon.schedules()["fake-hostile"]["state"] == "active"

    def test_unknown_schedule_or_action_is_404_and_appends_nothing(self, daemon: Daemon) -> None:
        """Only configured schedules and the three actions exist."""
        token = _token(httpx.get(daemon.url + "/ops/schedules").text)
        before = len(events(daemon.db))
        assert httpx.post(daemon.url + "/ops/schedules/nope/pause", data={"token": token}).status_code == 404
        assert (
            httpx.post(daemon.url + "/ops/schedules/ref-hourly/delete", data={"token": token}).status_code
            == 404
        )
        assert len(events(daemon.db)) == before

    def test_a_huge_note_is_cut_not_fatal(self, daemon: Daemon, tmp_path: Path) -> None:
        """A note longer than 500 characters is stored cut; an oversized form is a 400."""
        token = _token(httpx.get(daemon.url + "/ops/schedules").text)
        r = httpx.post(
            daemon.url + "/ops/schedules/fake-hostile/pause", data={"note": "n" * 9000, "token": token}
        )
        assert r.status_code == 400
        r = httpx.post(
            daemon.url + "/ops/schedules/fake-hostile/pause", data={"note": "n" * 2000, "token": token}
        )
        assert r.status_code == 303
        assert daemon.schedules()["fake-hostile"]["note"] == "n" * 500
        httpx.post(daemon.url + "/ops/schedules/fake-hostile/resume", data={"token": token})
        wait_until(lambda: daemon.schedules()["fake-hostile"]["state"] == "active", 10, "resume")


def test_natural_sort_orders_numbers_as_numbers() -> None:
    """Problem ids sort 1, 2, 10 (not 1, 10, 2), with text and numbers mixed."""
    ids = ["p10", "p2", "p1", "HumanEval/100", "HumanEval/9", "a", "p1b", "10", "9"]
    assert sorted(ids, key=natural_key) == [
        "9",
        "10",
        "HumanEval/9",
        "HumanEval/100",
        "a",
        "p1",
        "p1b",
        "p2",
        "p10",
    ]
