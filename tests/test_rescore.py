"""Versioned problems and re-scoring (issue 17): a problem's tests strengthened after a
run; `rollwatch rescore` judges the archived answers again without any provider
request; the report shows both versions; public results that no longer pass are
marked superseded on every public route and are never released from then on."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import httpx
import pytest

from rollwatch.events import (
    Event,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunStarted,
    parse_rfc3339,
    rollout_stream,
    run_stream,
)
from rollwatch.projections import ProjectionDB
from rollwatch.publication.release import release_due, release_one
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.test_daemon import ROOT, events, free_port, wait_until

ENV = {"FAKE_PROVIDER_KEY": "sk-test-secret-123"}
WEAK = "def check(candidate):\n    assert isinstance(candidate(), int)\n"
STRONG = "def check(candidate):\n    assert candidate() == 41\n"
ROLLOUTS = 3


def _problem(root: Path, name: str, tests: str, solution: str) -> None:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "problem.toml").write_text(
        f'title = "{name}"\nreleased = 2026-01-01\nprompt = """\ndef solve() -> int:\n    ...\n"""\n'
        '[scorer]\nkind = "python-function"\nentry_point = "solve"\ntests = "tests.py"\ntimeout = "10s"\n'
        '[reference]\nsolution = "solution.py"\n'
    )
    (d / "tests.py").write_text(tests)
    (d / "solution.py").write_text(solution)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider (always answers ``solve() -> 42``); yields (base_url, request log)."""
    port_file, log = tmp_path / "port", tmp_path / "requests.jsonl"
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_provider.py"), str(port_file), str(log), "0.01"]
    )
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text(), 20, "the fake provider")
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        proc.kill()
        proc.wait()


def _setup(
    tmp_path: Path, base_url: str, *, embargo: str, rescore: str = "manual", weak_tests: str = WEAK
) -> tuple[Path, int]:
    """Two problems: ``weak`` (the fake answer 42 passes its tests until they are
    strengthened; with ``weak_tests=STRONG`` it fails them until they are weakened) and
    ``stable`` (never changed, the answer passes); a config on them; returns (config,
    the HTTP port)."""
    problems = tmp_path / "problems"
    _problem(problems, "weak", weak_tests, "def solve():\n    return 41\n")
    _problem(
        problems,
        "stable",
        "def check(candidate):\n    assert candidate() == 42\n",
        "def solve():\n    return 42\n",
    )
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f"""
node = "test-node"
[store]
url = "sqlite:{tmp_path / "events.db"}"
[server]
listen = "127.0.0.1:{port}"
[publication]
embargo = "{embargo}"
[scoring]
workers = 2
rescore = "{rescore}"
[[problem_sets]]
name = "set"
path = "{problems}"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = 4
[[schedules]]
name = "sched"
provider = "fake"
models = ["m1"]
problem_set = "set"
rollouts = {ROLLOUTS}
every = "24h"
""")
    return cfg, port


def _requests(log: Path) -> int:
    return len([line for line in log.read_text().splitlines() if line.strip()])


def _run_and_strengthen(tmp_path: Path, cfg: Path, req_log: Path) -> str:
    """A run (every answer passes both problems' tests), then ``weak``'s tests made
    strong; returns the old version of ``weak``."""
    res = rollwatch("--config", str(cfg), "run", "sched", env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    db = tmp_path / "events.db"
    scored = events(db, "RolloutScored")
    assert len(scored) == 2 * ROLLOUTS
    assert all(d["passed"] for _, _, d in scored)
    old = {d["problem_hash"] for _, _, d in events(db, "RolloutRequested") if d["problem_id"] == "weak"}
    assert len(old) == 1
    assert {d["problem_hash"] for _, _, d in scored} >= old, "verdicts name the problem version"
    assert all(d["scorer_version"] for _, _, d in scored), "verdicts name the scorer version"
    assert {d["time_limit_s"] for _, _, d in scored} == {10.0}, "verdicts record their time limit"
    assert _requests(req_log) == 2 * ROLLOUTS
    (tmp_path / "problems" / "weak" / "tests.py").write_text(STRONG)
    return old.pop()


def _serve(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=60)
    finally:
        proc.kill()


def _released_feed(port: int, want: int) -> list[dict[str, Any]]:
    def items() -> list[dict[str, Any]] | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/public/feed.json", timeout=5)
        except httpx.HTTPError:
            return None
        got = r.json()["items"] if r.status_code == 200 else []
        return got if len(got) >= want else None

    found: list[dict[str, Any]] = wait_until(items, 60, f"{want} released results")
    return found


class TestRescore:
    def test_strengthened_tests_flip_weak_passes_without_a_provider_request(
        self, tmp_path: Path, provider: tuple[str, Path]
    ) -> None:
        """After a run and a public release, `weak`'s tests are strengthened. `rescore`
        flips its three passes (and touches nothing of `stable`), with no request to the
        provider; old verdicts stay; the report shows the newest version by default and
        the old one on request; every public route marks the superseded results (still
        there), and the subscriber feed carries the change."""
        base_url, req_log = provider
        cfg, port = _setup(tmp_path, base_url, embargo="0s")
        db = tmp_path / "events.db"
        assert rollwatch("--config", str(cfg), "schedules", "pause", "sched").returncode == 0
        res = rollwatch("--config", str(cfg), "run", "sched", env=ENV, timeout=120)
        assert res.returncode == 0, res.stderr
        daemon = _serve(cfg)
        try:
            _released_feed(port, 2 * ROLLOUTS)
        finally:
            _stop(daemon)
        old = {
            d["problem_hash"] for _, _, d in events(db, "RolloutRequested") if d["problem_id"] == "weak"
        }.pop()
        (tmp_path / "problems" / "weak" / "tests.py").write_text(STRONG)

        out = rollwatch("--config", str(cfg), "rescore", timeout=120)
        assert out.returncode == 0, out.stderr
        row = next(line.split() for line in out.stdout.splitlines() if line.startswith("weak "))
        assert row[2:] == [str(ROLLOUTS), "0", str(ROLLOUTS)], out.stdout  # rescored, to pass, to fail
        assert not any(line.startswith("stable ") for line in out.stdout.splitlines())
        assert _requests(req_log) == 2 * ROLLOUTS, "a re-score asked the provider"

        (versioned,) = [d for _, _, d in events(db, "ProblemVersioned")]
        assert (versioned["problem_id"], versioned["previous_hash"]) == ("weak", old)
        new = versioned["problem_hash"]
        assert new != old
        rescored = [d for _, _, d in events(db, "RolloutRescored")]
        assert len(rescored) == ROLLOUTS
        assert all(not d["passed"] and d["previous_passed"] for d in rescored)
        assert {(d["problem_hash"], d["previous_problem_hash"]) for d in rescored} == {(new, old)}
        assert all(d["scorer_version"] for d in rescored)
        assert {d["time_limit_s"] for d in rescored} == {10.0}
        # The old verdicts stay in the log.
        assert sum(d["passed"] for _, _, d in events(db, "RolloutScored")) == 2 * ROLLOUTS
        (finished,) = [d for _, _, d in events(db, "RescoreFinished")]
        assert finished["problems"]["weak"]["to_fail"] == ROLLOUTS

        again = rollwatch("--config", str(cfg), "rescore", timeout=120)
        assert again.returncode == 0
        assert "nothing to re-score" in again.stdout
        assert len(events(db, "RolloutRescored")) == ROLLOUTS

        newest = json.loads(
            rollwatch("--config", str(cfg), "report", "--format", "json", "--by", "problem").stdout
        )
        assert {(r["problem_id"], r["rollouts"], r["passed"]) for r in newest} == {
            ("weak", ROLLOUTS, 0),
            ("stable", ROLLOUTS, ROLLOUTS),
        }
        before = rollwatch(
            "--config",
            str(cfg),
            "report",
            "--format",
            "json",
            "--by",
            "problem",
            "--problem-version",
            old[:20],
        )
        assert before.returncode == 0, before.stderr
        assert [(r["problem_id"], r["rollouts"], r["passed"]) for r in json.loads(before.stdout)] == [
            ("weak", ROLLOUTS, ROLLOUTS)
        ]
        unknown = rollwatch("--config", str(cfg), "report", "--problem-version", "sha256:0000dead")
        assert unknown.returncode == 2
        assert "no problem version" in unknown.stderr

        key = rollwatch("--config", str(cfg), "subscribers", "add", "alice").stdout.split()[0]
        daemon = _serve(cfg)
        try:
            items = _released_feed(port, 2 * ROLLOUTS)
            assert len(items) == 2 * ROLLOUTS, "a superseded result was removed"
            marked = [i for i in items if i["_rollwatch"]["superseded"]]
            weak_ids = {d["rollout_id"] for d in rescored}
            assert {i["_rollwatch"]["rollout_id"] for i in marked} == weak_ids
            assert all(str(i["title"]).startswith("[superseded]") for i in marked)
            base = f"http://127.0.0.1:{port}"
            atom = httpx.get(f"{base}/public/feed.atom").text
            page = httpx.get(f"{base}/public/").text
            assert atom.count("[superseded]") == ROLLOUTS
            assert page.count("[superseded]") == ROLLOUTS
            lines = [json.loads(x) for x in httpx.get(f"{base}/public/results.jsonl").text.splitlines()]
            assert {r["rollout_id"] for r in lines if r["superseded"]} == weak_ids
            for rid in weak_ids:
                one = httpx.get(f"{base}/public/rollouts/{rid}.json").json()
                assert one["superseded"] is True
                assert one["superseded_by_problem_version"] == new
            feed = httpx.get(f"{base}/v1/feed?limit=1000", headers={"Authorization": f"Bearer {key}"}).json()
            changes = [i for i in feed["items"] if i["type"] == "RolloutRescored"]
            assert {i["rollout_id"] for i in changes} == weak_ids
            assert all(i["passed"] is False and i["detail"]["problem_hash"] == new for i in changes)
            record = httpx.get(
                f"{base}/v1/rollouts/{next(iter(weak_ids))}", headers={"Authorization": f"Bearer {key}"}
            )
            assert record.json()["score"]["passed"] is True, "the run's verdict stays"
            assert [r["passed"] for r in record.json()["rescores"]] == [False]
            assert record.json()["publication"]["superseded"] is True
            auth = {"Authorization": f"Bearer {key}"}
            rows = httpx.get(f"{base}/v1/report?by=problem&problem_version={old[:20]}", headers=auth).json()
            assert [(r["problem_id"], r["passed"]) for r in rows] == [("weak", ROLLOUTS)]
            rows = httpx.get(f"{base}/v1/report?by=problem", headers=auth).json()
            assert {(r["problem_id"], r["passed"]) for r in rows} == {("weak", 0), ("stable", ROLLOUTS)}
            bad = httpx.get(f"{base}/v1/report?problem_version=sha256:0000dead", headers=auth)
            assert bad.status_code == 400
            assert "no problem version" in bad.json()["message"]
        finally:
            _stop(daemon)
        assert _requests(req_log) == 2 * ROLLOUTS

    def test_a_result_that_no_longer_passes_is_never_released(
        self, tmp_path: Path, provider: tuple[str, Path]
    ) -> None:
        """Under embargo when its problem's tests were strengthened: after `rescore`,
        the release job (even long after the embargo) releases the unchanged problem's
        results and none of the superseded ones, by the projection or by the log."""
        base_url, req_log = provider
        cfg, _ = _setup(tmp_path, base_url, embargo="90d")
        _run_and_strengthen(tmp_path, cfg, req_log)
        # Re-scoring `stable` alone records `weak`'s new version too; the report then
        # says its verdicts are under an older version, until they are re-scored.
        only_stable = rollwatch("--config", str(cfg), "rescore", "--problem", "stable", timeout=120)
        assert "nothing to re-score" in only_stable.stdout, only_stable.stdout
        table = rollwatch("--config", str(cfg), "report", "--format", "table").stdout
        assert f"{ROLLOUTS} verdicts on 1 problem under an older problem version" in table
        assert rollwatch("--config", str(cfg), "rescore", "--problem", "weak", timeout=120).returncode == 0
        assert (
            "older problem version"
            not in rollwatch("--config", str(cfg), "report", "--format", "table").stdout
        )
        db = tmp_path / "events.db"
        weak_ids = {d["rollout_id"] for _, _, d in events(db, "RolloutRescored")}
        assert len(weak_ids) == ROLLOUTS
        later = datetime.now(UTC) + timedelta(days=365)

        async def release() -> int:
            async with (
                SQLiteEventStore(db) as store,
                ProjectionDB(tmp_path / "projections-test.db", default_projections()) as pdb,
            ):
                for rid in weak_ids:
                    assert await release_one(store, rid, later) is False
                return await release_due(store, pdb, later)

        assert anyio.run(release) == ROLLOUTS
        released = {d["rollout_id"] for _, _, d in events(db, "PublicReleased")}
        assert len(released) == ROLLOUTS
        assert not released & weak_ids

    def test_bad_selections_are_bad_usage(self, tmp_path: Path, provider: tuple[str, Path]) -> None:
        """An unknown problem set, problem or run: exit 2 naming it; nothing appended."""
        base_url, _ = provider
        cfg, _ = _setup(tmp_path, base_url, embargo="0s")
        for args, word in (
            (["--problem-set", "nope"], "nope"),
            (["--problem", "nope"], "nope"),
            (["--run", "20260101T000000Z-00000000"], "20260101T000000Z-00000000"),
        ):
            res = rollwatch("--config", str(cfg), "rescore", *args)
            assert res.returncode == 2, res.stderr
            assert word in res.stderr
            assert "Traceback" not in res.stderr
        assert events(tmp_path / "events.db") == []


def _timed(db: Path, type_: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(seq, at, data) of every event of ``type_`` in the log ``db``, oldest first."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT seq, at, data FROM events WHERE type = ? ORDER BY seq", (type_,)
        ).fetchall()
    finally:
        con.close()
    return [(s, a, json.loads(d)) for s, a, d in rows]


def _flip_to_pass(
    tmp_path: Path, cfg: Path, req_log: Path, embargo_then: str | None = None
) -> tuple[set[str], dict[str, Any]]:
    """A run where the answers fail ``weak`` (strong tests) and pass ``stable``, then
    ``weak``'s tests weakened (and with ``embargo_then``, the configured embargo changed to
    it) and `rescore --problem-set --run`: the three failures flip to passes, and every
    flip carries its public decision. Returns the flipped rollouts and, per rollout, its
    events by type (seq, at, data)."""
    assert rollwatch("--config", str(cfg), "schedules", "pause", "sched").returncode == 0
    res = rollwatch("--config", str(cfg), "run", "sched", env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    db = tmp_path / "events.db"
    assert sum(not d["passed"] for _, _, d in events(db, "RolloutScored")) == ROLLOUTS
    (tmp_path / "problems" / "weak" / "tests.py").write_text(WEAK)
    if embargo_then is not None:
        cfg.write_text(re.sub(r'embargo = "[^"]*"', f'embargo = "{embargo_then}"', cfg.read_text()))
    ((_, _, started),) = events(db, "RunStarted")
    # Selected by problem set and run (each the only one, so all of it).
    out = rollwatch(
        "--config", str(cfg), "rescore", "--problem-set", "set", "--run", started["run_id"], timeout=120
    )
    assert out.returncode == 0, out.stderr
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("weak "))
    assert row[2:] == [str(ROLLOUTS), str(ROLLOUTS), "0"], out.stdout  # rescored, to pass, to fail
    assert _requests(req_log) == 2 * ROLLOUTS, "a re-score asked the provider"
    flipped = {d["rollout_id"] for _, _, d in events(db, "RolloutRescored") if d["passed"]}
    assert len(flipped) == ROLLOUTS
    by_rollout: dict[str, Any] = {rid: {} for rid in flipped}
    for t in ("RolloutScored", "RolloutRescored", "PublicationDecided"):
        for seq, at, d in _timed(db, t):
            if d["rollout_id"] in flipped:
                by_rollout[d["rollout_id"]].setdefault(t, []).append((seq, at, d))
    for rid, evs in by_rollout.items():
        # Subscribers and "none" (nothing public) with the run's failing verdict, public
        # with the flip, in the same append as the re-scored verdict.
        assert [d["audience"] for _, _, d in evs["PublicationDecided"]] == [
            "subscribers",
            "none",
            "public",
        ], rid
        ((scored_seq, _, _),) = evs["RolloutScored"]
        ((rescored_seq, _, _),) = evs["RolloutRescored"]
        public_seq = evs["PublicationDecided"][2][0]
        assert public_seq == rescored_seq + 1
        assert scored_seq < rescored_seq
    return flipped, by_rollout


class TestFlipToPass:
    def test_a_flip_to_pass_is_released_with_its_proof_and_a_flip_back_is_superseded(
        self, tmp_path: Path, provider: tuple[str, Path]
    ) -> None:
        """Answers that failed `weak`'s strong tests pass once the tests are weakened:
        `rescore` records, with each flipped verdict, a public decision whose embargo
        (0s here) counts from the re-score, not from the run's verdict. The daemon's
        release job releases them like any pass: on every public route, standing for
        the re-scored verdict (its inclusion proof's leaf), with a proof bundle holding
        the flip and the decision; the subscriber feed carries decision and release.
        Tests strengthened again: the released flips are marked superseded, not removed.
        No request reaches the provider after the run."""
        base_url, req_log = provider
        cfg, port = _setup(tmp_path, base_url, embargo="0s", weak_tests=STRONG)
        flipped, by_rollout = _flip_to_pass(tmp_path, cfg, req_log)
        for evs in by_rollout.values():
            scored_at = parse_rfc3339(evs["RolloutScored"][0][1])
            rescored_at = parse_rfc3339(evs["RolloutRescored"][0][1])
            not_before = parse_rfc3339(evs["PublicationDecided"][2][2]["not_before"])
            assert scored_at < not_before <= rescored_at, "the embargo counts from the re-score"
        db = tmp_path / "events.db"
        key = rollwatch("--config", str(cfg), "subscribers", "add", "alice").stdout.split()[0]
        auth = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{port}"
        daemon = _serve(cfg)
        try:
            items = _released_feed(port, 2 * ROLLOUTS)
            assert len(items) == 2 * ROLLOUTS
            released = {i["_rollwatch"]["rollout_id"]: i for i in items}
            assert set(released) >= flipped
            for rid in flipped:
                meta = released[rid]["_rollwatch"]
                assert meta["superseded"] is False
                rescored_seq, rescored_at, _ = by_rollout[rid]["RolloutRescored"][0]
                assert meta["scored_at"] == rescored_at
                assert meta["seq"] == rescored_seq, "the item stands for the re-scored verdict"
                one = httpx.get(f"{base}/public/rollouts/{rid}.json").json()
                assert one["passed"] is True
                assert one["superseded"] is False
                bundle = one["proof"]
                assert bundle is not None
                proven = {e["seq"]: e["type"] for e in bundle["events"]}
                claim = set(proven) | set(bundle["pending"])
                decision_seq = by_rollout[rid]["PublicationDecided"][2][0]
                assert {rescored_seq, decision_seq} <= claim
                assert proven.get(rescored_seq, "RolloutRescored") == "RolloutRescored"
            page = httpx.get(f"{base}/public/").text
            assert page.count("[superseded]") == 0
            lines = [json.loads(x) for x in httpx.get(f"{base}/public/results.jsonl").text.splitlines()]
            assert {r["rollout_id"] for r in lines} >= flipped
            feed = httpx.get(f"{base}/v1/feed?limit=1000", headers=auth).json()["items"]
            for rid in flipped:
                mine = [(i["type"], i["audience"]) for i in feed if i["rollout_id"] == rid]
                assert mine[-3:] == [
                    ("RolloutRescored", None),
                    ("PublicationDecided", "public"),
                    ("PublicReleased", "public"),
                ], mine
            record = httpx.get(f"{base}/v1/rollouts/{next(iter(flipped))}", headers=auth).json()
            assert record["score"]["passed"] is False, "the run's verdict stays"
            assert record["publication"]["state"] == "released"
        finally:
            _stop(daemon)

        (tmp_path / "problems" / "weak" / "tests.py").write_text(STRONG)
        out = rollwatch("--config", str(cfg), "rescore", timeout=120)
        row = next(line.split() for line in out.stdout.splitlines() if line.startswith("weak "))
        assert row[2:] == [str(ROLLOUTS), "0", str(ROLLOUTS)], out.stdout
        # A flip back to fail decides nothing public ("none", as every verdict not going
        # public: two decisions per rollout with the run's verdict, a public one per flip
        # to pass, a "none" per flip back): the public decision stands, superseded.
        decided = Counter(d["audience"] for _, _, d in events(db, "PublicationDecided"))
        assert decided == {
            "subscribers": 2 * ROLLOUTS,
            "public": ROLLOUTS + ROLLOUTS,
            "none": ROLLOUTS + ROLLOUTS,
        }
        daemon = _serve(cfg)
        try:
            items = _released_feed(port, 2 * ROLLOUTS)
            assert len(items) == 2 * ROLLOUTS, "a superseded result was removed"
            marked = {i["_rollwatch"]["rollout_id"] for i in items if i["_rollwatch"]["superseded"]}
            assert marked == flipped
            assert httpx.get(f"{base}/public/").text.count("[superseded]") == ROLLOUTS
        finally:
            _stop(daemon)
        assert _requests(req_log) == 2 * ROLLOUTS

    def test_a_flip_to_pass_under_embargo_waits_for_its_own_embargo(
        self, tmp_path: Path, provider: tuple[str, Path]
    ) -> None:
        """With a 90-day embargo, a flip's public decision falls due 90 days after the
        re-score: the release job releases nothing of it a second before, and releases
        it a second after (by the log as by the projection)."""
        base_url, req_log = provider
        cfg, _ = _setup(tmp_path, base_url, embargo="90d", weak_tests=STRONG)
        flipped, by_rollout = _flip_to_pass(tmp_path, cfg, req_log)
        dues = set()
        for evs in by_rollout.values():
            rescored_at = parse_rfc3339(evs["RolloutRescored"][0][1])
            public = evs["PublicationDecided"][2][2]
            assert public["embargo_s"] == 90 * 86400
            not_before = parse_rfc3339(public["not_before"])
            assert timedelta(days=90) - timedelta(seconds=30) < not_before - rescored_at <= timedelta(days=90)
            dues.add(not_before)
        db = tmp_path / "events.db"
        first, last = min(dues), max(dues)

        async def release(now: datetime) -> set[str]:
            async with (
                SQLiteEventStore(db) as store,
                ProjectionDB(tmp_path / "projections-test.db", default_projections()) as pdb,
            ):
                await release_due(store, pdb, now)
            return {d["rollout_id"] for _, _, d in events(db, "PublicReleased")}

        stable_due = {
            parse_rfc3339(d["not_before"])
            for _, _, d in events(db, "PublicationDecided")
            if d["audience"] == "public" and d["rollout_id"] not in flipped
        }
        assert max(stable_due) < first, "the run's passes fall due before the flips"
        assert anyio.run(release, first - timedelta(seconds=1)) & flipped == set()
        assert anyio.run(release, last + timedelta(seconds=1)) >= flipped

    def test_a_flip_waits_for_its_runs_embargo_when_the_configured_one_is_shorter(
        self, tmp_path: Path, provider: tuple[str, Path]
    ) -> None:
        """A run started under a 90-day embargo, re-scored by a configuration that says
        none (another node's, or one changed since): a flip's public decision still
        carries the run's 90 days. Before, it was public at once."""
        base_url, req_log = provider
        cfg, _ = _setup(tmp_path, base_url, embargo="90d", weak_tests=STRONG)
        _, by_rollout = _flip_to_pass(tmp_path, cfg, req_log, embargo_then="0s")
        for evs in by_rollout.values():
            rescored_at = parse_rfc3339(evs["RolloutRescored"][0][1])
            public = evs["PublicationDecided"][2][2]
            assert public["embargo_s"] == 90 * 86400
            assert parse_rfc3339(public["not_before"]) - rescored_at > timedelta(days=89)


class TestDaemonNoticesChangedProblems:
    def test_auto_rescore_at_start_and_on_sighup(self, tmp_path: Path, provider: tuple[str, Path]) -> None:
        """With scoring.rescore = "auto": a daemon started after the tests were
        strengthened records the new version and re-scores in the background; tests
        weakened again and SIGHUP: another version, the verdicts flip back. The
        provider is never asked."""
        base_url, req_log = provider
        cfg, _ = _setup(tmp_path, base_url, embargo="90d", rescore="auto")
        assert rollwatch("--config", str(cfg), "schedules", "pause", "sched").returncode == 0
        _run_and_strengthen(tmp_path, cfg, req_log)
        db = tmp_path / "events.db"
        daemon = _serve(cfg)
        try:
            wait_until(lambda: len(events(db, "RolloutRescored")) == ROLLOUTS, 90, "the re-score at start")
            assert all(not d["passed"] for _, _, d in events(db, "RolloutRescored"))
            (tmp_path / "problems" / "weak" / "tests.py").write_text(WEAK)
            daemon.send_signal(signal.SIGHUP)
            wait_until(
                lambda: len(events(db, "RolloutRescored")) == 2 * ROLLOUTS, 90, "the re-score on SIGHUP"
            )
            assert len(events(db, "ProblemVersioned")) == 2
            flipped = [d for _, _, d in events(db, "RolloutRescored")][ROLLOUTS:]
            assert all(d["passed"] and d["previous_passed"] is False for d in flipped)
            assert daemon.poll() is None
        finally:
            _stop(daemon)
        assert _requests(req_log) == 2 * ROLLOUTS


@dataclass(frozen=True, kw_only=True)
class ScoredV1(Event, register=False):
    """``RolloutScored`` as schema 1 wrote it: no problem or scorer version."""

    TYPE: ClassVar[str] = "RolloutScored"
    SCHEMA: ClassVar[int] = 1
    rollout_id: str
    passed: bool
    score: float
    scorer: str


class TestOlderVerdicts:
    def test_a_schema_1_verdict_is_under_the_version_its_request_names(self, tmp_path: Path) -> None:
        """A score event written before verdicts named versions upcasts with no
        versions, and the read models place it under the problem version of its
        request, so `rescore` and `report --problem-version` treat it like any other."""

        async def main() -> None:
            async with (
                SQLiteEventStore(tmp_path / "events.db") as store,
                ProjectionDB(tmp_path / "projections.db", default_projections()) as pdb,
            ):
                await store.append(
                    run_stream("r1"),
                    [
                        RunStarted(
                            run_id="r1",
                            schedule="s",
                            provider="p",
                            models=["m"],
                            problem_set="set",
                            node="n",
                            rollouts=1,
                        )
                    ],
                )
                await store.append(
                    rollout_stream("x1"),
                    [
                        RolloutRequested(
                            rollout_id="x1",
                            run_id="r1",
                            provider="p",
                            model="m",
                            problem_id="weak",
                            problem_hash="sha256:old",
                            sample=0,
                            attempt=1,
                            request={},
                            node="n",
                        ),
                        RolloutResponded(rollout_id="x1", attempt=1, text="x"),
                        ScoredV1(rollout_id="x1", passed=True, score=1.0, scorer="python-function"),
                    ],
                )
                (rec,) = [r async for r in store.read(types={"RolloutScored"})]
                assert rec.schema == 1
                ev = rec.event()
                assert isinstance(ev, RolloutScored)
                assert (ev.problem_hash, ev.scorer_version) == (None, None)
                await pdb.catch_up(store)
                assert await pdb.fetchall(
                    "SELECT problem_id, problem_hash, passed, rescore FROM verdicts"
                ) == [("weak", "sha256:old", 1, 0)]
                assert await pdb.fetchall("SELECT verdict_hash FROM rollouts") == [("sha256:old",)]

        anyio.run(main)


class TestProblemsCheckShowsLimits:
    def test_check_prints_the_measured_runtime_and_the_limit(self, tmp_path: Path) -> None:
        """`problems check` prints each problem's time limit and where it comes from:
        calibrated from the reference's measured runtime, or the problem's own."""
        problems = tmp_path / "problems"
        _problem(problems, "own", WEAK, "def solve():\n    return 41\n")
        d = problems / "calibrated"
        d.mkdir()
        (d / "problem.toml").write_text(
            'title = "c"\nreleased = 2026-01-01\nprompt = "def solve() -> int: ..."\n'
            '[scorer]\nkind = "python-function"\nentry_point = "solve"\ntests = "tests.py"\n'
            '[reference]\nsolution = "solution.py"\n'
        )
        (d / "tests.py").write_text(WEAK)
        (d / "solution.py").write_text("def solve():\n    return 41\n")
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(
            f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[scoring]\nworkers = 1\n'
            f'time_limit_floor = "2s"\n[[problem_sets]]\nname = "set"\npath = "{problems}"\n'
        )
        res = rollwatch("--config", str(cfg), "problems", "check", timeout=120)
        assert res.returncode == 0, res.stderr
        lines = {line.split()[0]: line for line in res.stdout.splitlines() if "time limit" in line}
        assert "time limit 10s (problem)" in lines["own"]
        assert "time limit 2s (reference " in lines["calibrated"]
        assert lines["calibrated"].endswith("ms, calibrated)")
