"""The operator's console over HTTP, against a real daemon (`rollwatch serve`) with runs in
its log: who may see it, what a POST must carry, that model text is never markup, and
that a schedule steered from the console is steered for the CLI too."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from rollwatch.web.console import Rate
from rollwatch.web.render import natural_key
from tests.test_daemon import events, wait_until
from tests.web.opsd import EDITED, PROBLEMS, Daemon


def steering(daemon: Daemon) -> int:
    """How many schedule actions the log holds (the shared daemon appends other events,
    checkpoints and runs, meanwhile)."""
    return sum(len(events(daemon.db, t)) for t in ("SchedulePaused", "ScheduleResumed", "ScheduleTriggered"))


REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # uvicorn believes a loopback proxy


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
            "/ops/problems",
            "/ops/problems/p1",
            "/ops/rollouts/x/proof",
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
        before = steering(daemon)
        r = httpx.post(
            daemon.url + "/ops/schedules/ref-hourly/pause", data={"note": "x", "token": "0"}, headers=REMOTE
        )
        assert r.status_code == 401
        assert steering(daemon) == before


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
        assert len(cells) == len(PROBLEMS)
        assert sum(int(p) for p, _ in cells) == finished["passed"]
        assert all(n == "2" for _, n in cells)
        rows = re.findall(r'<tr><th class="sticky">([^<]+)</th>', r.text.split("<tbody>", 2)[1])
        assert rows == list(PROBLEMS)  # p1, p2, p9, p10: not p1, p10, p2, p9

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

        last = max(s for s, _, _ in events(daemon.db))
        head = httpx.get(daemon.url + "/ops/progress").json()["head"]
        assert last <= head <= max(s for s, _, _ in events(daemon.db))  # releases, checkpoints go on
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


def _rollouts_of(daemon: Daemon) -> dict[str, dict[str, object]]:
    """Each rollout's request, and its newest verdict, as the log has them."""
    out: dict[str, dict[str, object]] = {}
    for _, typ, d in events(daemon.db):
        if typ == "RolloutRequested":
            out.setdefault(d["rollout_id"], dict(d))
        elif typ in ("RolloutScored", "RolloutRescored"):
            out[d["rollout_id"]]["passed"] = d["passed"]
    return out


class TestProblems:
    def test_problems_page_lists_each_problem_with_its_rate_and_time_limit(self, daemon: Daemon) -> None:
        """Every configured problem, in natural order, with its pass rate over all models as
        the log counts it (Wilson interval), and its time limit: the problem's own, or for
        p10 (no timeout) the one calibrated from its reference solution, with that runtime."""
        r = httpx.get(daemon.url + "/ops/problems")
        assert r.status_code == 200, r.text
        assert '<a href="/ops/problems">Problems</a>' in r.text  # in the nav
        shown = re.findall(r'<tr id="problem-([^"]+)">', r.text)
        assert shown == list(PROBLEMS)
        rollouts = _rollouts_of(daemon)
        for pid in PROBLEMS:
            row = r.text.split(f'<tr id="problem-{pid}">')[1].split("</tr>")[0]
            mine = [x for x in rollouts.values() if x["problem_id"] == pid and "passed" in x]
            rate = Rate(sum(bool(x["passed"]) for x in mine), len(mine))
            assert rate.n >= 3  # two reference samples and the fake's
            assert f'data-field="rate">{rate}<' in row, row
            if pid == "p10":
                assert re.search(r"\d+(\.\d+)? s <small class=\"muted\">\(reference \d+ ms\)", row), row
            else:
                assert "<td>5 s</td>" in row, row

    def test_problem_page_has_rates_per_model_and_the_calibrated_limit(self, daemon: Daemon) -> None:
        """One problem: per provider and model its rollouts and pass rate with interval; its time
        limit says where it comes from; the reference runtime is this daemon's measurement."""
        r = httpx.get(daemon.url + "/ops/problems/p10")
        assert r.status_code == 200, r.text
        limit = r.text.split('data-field="limit">')[1].split("</dd>")[0]
        assert "calibrated" in limit
        assert re.search(r'data-field="reference">\d+\.\d ms', r.text)
        rollouts = _rollouts_of(daemon)
        models = r.text.split('<table id="models">')[1].split("</table>")[0]
        for provider, model in (("reference", "reference"), ("fake", "m1")):
            mine = [
                x
                for x in rollouts.values()
                if x["problem_id"] == "p10" and x["model"] == model and "passed" in x
            ]
            rate = Rate(sum(bool(x["passed"]) for x in mine), len(mine))
            row = models.split(f"<td>{provider}</td><td>{model}</td>")[1].split("</tr>")[0]
            assert f'data-field="rate">{rate}<' in row
        assert "<td>5 s</td>" not in r.text
        p1 = httpx.get(daemon.url + "/ops/problems/p1").text
        assert "the problem&#39;s own timeout" in p1.split('data-field="limit">')[1].split("</dd>")[0]

    def test_an_edited_problem_shows_its_new_version(self, daemon: Daemon) -> None:
        """Edit a problem's tests and send SIGHUP: the daemon records a new version
        (``ProblemVersioned``); the problem's page lists both content hashes, oldest first,
        the new one marked current, the old one with the verdicts given under it."""
        import os
        import signal

        tests = daemon.problems / EDITED / "tests.py"
        tests.write_text(tests.read_text() + "    assert candidate(2) == 11\n")
        os.kill(daemon.pid, signal.SIGHUP)
        new = wait_until(
            lambda: [d for _, _, d in events(daemon.db, "ProblemVersioned") if d["problem_id"] == EDITED],
            30,
            "the new version",
        )[-1]
        r = httpx.get(daemon.url + f"/ops/problems/{EDITED}")
        versions = r.text.split('<table id="versions" class="mono">')[1].split("</table>")[0]
        hashes = re.findall(r'<td class="hash">(sha256:[0-9a-f]+)', versions)
        assert hashes == [new["previous_hash"], new["problem_hash"]]
        rows = versions.split("<tr")[2:]
        assert "(current)" not in rows[0]
        assert "(current)" in rows[1]
        judged = [x for x in _rollouts_of(daemon).values() if x["problem_id"] == EDITED and "passed" in x]
        assert f"<td>{len(judged)}</td>" in rows[0]
        # the list counts two versions for it
        row = httpx.get(daemon.url + "/ops/problems").text.split(f'<tr id="problem-{EDITED}">')[1]
        assert row.split('data-field="versions">')[1].startswith("2")

    def test_unknown_or_hostile_problem_ids_are_404(self, daemon: Daemon) -> None:
        """A problem that is neither configured nor in the log is a 404; an id with markup
        comes back in the JSON error body, never on a page."""
        r = httpx.get(daemon.url + "/ops/problems/nope")
        assert r.status_code == 404
        r = httpx.get(daemon.url + "/ops/problems/%3Cscript%3Ex%3C%2Fscript%3E")
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("application/json")


class TestProofs:
    def test_rollout_page_links_inclusion_proofs_that_verify(self, daemon: Daemon) -> None:
        """A rollout under embargo (a failed answer is never public) lists each event's hash and,
        once a checkpoint covers it, a link to its inclusion proof: the proof folds up to the
        signed checkpoint's root. The operator's proof bundle carries every event of it."""
        import base64

        from rollwatch.integrity.merkle import leaf_hash, verify_inclusion

        rid = next(d["rollout_id"] for _, _, d in events(daemon.db, "RolloutRequested") if d["model"] == "m1")
        mine = [s for s, _, d in events(daemon.db) if d.get("rollout_id") == rid]
        wait_until(
            lambda: any(d["size"] >= max(mine) for _, _, d in events(daemon.db, "CheckpointSigned")),
            30,
            "a checkpoint over the rollout",
        )
        page = httpx.get(daemon.url + f"/ops/rollouts/{rid}").text
        links = re.findall(r'href="/public/proof/inclusion\?seq=(\d+)&amp;size=(\d+)"', page)
        assert sorted(int(s) for s, _ in links) == mine
        size = int(links[0][1])
        cp = next(d for _, _, d in events(daemon.db, "CheckpointSigned") if d["size"] == size)
        root = base64.b64decode(cp["root"])
        for seq, _ in links:
            proof = httpx.get(daemon.url + f"/public/proof/inclusion?seq={seq}&size={size}").json()
            path = [base64.b64decode(h) for h in proof["path"]]
            assert verify_inclusion(int(seq) - 1, size, base64.b64decode(proof["leaf_hash"]), path, root)
        bundle = httpx.get(daemon.url + f"/ops/rollouts/{rid}/proof").json()
        assert bundle["rollout_id"] == rid
        assert [ev["seq"] for ev in bundle["events"]] + bundle["pending"] == mine
        for ev in bundle["events"]:
            assert base64.b64decode(ev["leaf_hash"]) == leaf_hash(ev["canonical"].encode())
        # not public: the public route has no such result
        assert httpx.get(daemon.url + f"/public/rollouts/{rid}.json").status_code == 404


class TestActions:
    def test_pause_from_the_console_shows_in_schedules_list(self, daemon: Daemon) -> None:
        """A pause with a note sent from the console's form is the CLI's pause: ``schedules list``
        shows it paused with the note; resume undoes it (the browser test checks the same
        through the page's buttons; one ``schedules list`` a test, as each costs seconds)."""
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
        page = httpx.get(daemon.url + "/ops/schedules").text.split('id="schedule-ref-hourly"')[1]
        assert page.split('data-field="state">')[1].startswith("active<")

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

    def test_unknown_schedule_or_action_is_404_and_appends_nothing(self, daemon: Daemon) -> None:
        """Only configured schedules and the three actions exist."""
        token = _token(httpx.get(daemon.url + "/ops/schedules").text)
        before = steering(daemon)
        assert httpx.post(daemon.url + "/ops/schedules/nope/pause", data={"token": token}).status_code == 404
        assert (
            httpx.post(daemon.url + "/ops/schedules/ref-hourly/delete", data={"token": token}).status_code
            == 404
        )
        assert steering(daemon) == before

    def test_a_note_with_a_line_break_or_an_escape_is_a_400_and_appends_nothing(self, daemon: Daemon) -> None:
        """As ``schedules pause --note`` refuses it (it forged a row of ``schedules list``)."""
        token = _token(httpx.get(daemon.url + "/ops/schedules").text)
        before = steering(daemon)
        for note in ("hi\nref  active  forged", "red\x1b[31m", "turn\u202eed"):
            r = httpx.post(
                daemon.url + "/ops/schedules/fake-hostile/pause", data={"note": note, "token": token}
            )
            assert r.status_code == 400, (note, r.text)
            assert "control characters" in r.text
        assert steering(daemon) == before

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
        r = httpx.post(daemon.url + "/ops/schedules/fake-hostile/resume", data={"token": token})
        assert r.status_code == 303
        page = httpx.get(daemon.url + "/ops/schedules").text.split('id="schedule-fake-hostile"')[1]
        assert page.split('data-field="state">')[1].startswith("active<")


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
